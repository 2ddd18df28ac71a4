"""The plan of one export, made in one place before the read snapshot opens, and logged once at INFO with why:
where the rows wait (:data:`COPY`, :data:`SPOOL` or :data:`DIRECT`), whether a child process encodes too, and
whether helper threads and orjson may be used; each as the archive and the process allow (free space in the
spool's folder, ``ulimit -f``, ``-n``, ``-v``). The table of choices: docs/how-it-works.md, "The plan".
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection

from . import pgcopy
from .config import Settings
from .reading import count_archive

log = logging.getLogger("export_batching_plugin")

COPY, SPOOL, DIRECT = "copy", "spool", "direct"
#: Selections this large get a child process.
CHILD_POSTS = 10_000
#: The spool of N posts takes about this share of their room in the archive (measured: docs/benchmarks.md),
#: with room left for SQLite's sort of the copy.
SPOOL_SHARE = 0.8
#: Free space left to everything else.
MARGIN_BYTES = 16 << 20
#: Descriptors each part of an export holds at once: the staging directory's lock and the posts file; SQLite's
#: sort (two temporary files); the spool (a file, and SQLite's sort of the copy); the child process (two pipes,
#: its error file, and the pipes' other ends while it starts); media copying on one thread (the spool of rows,
#: the sums of two threads, a source and a copy) and on each more; what a child process needs of its own.
BASE_FDS, SORT_FDS, SPOOL_FDS, CHILD_FDS, MEDIA_FDS, THREAD_FDS, CHILD_OWN_FDS = 2, 2, 3, 5, 5, 2, 16
#: More descriptors than this, and nothing need be counted.
PLENTY_FDS = 64
UNLIMITED = 1 << 62
_RAM_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs"})


@dataclass(frozen=True)
class Plan:
    """How one export runs (see the module's docstring)."""

    source: str
    child: bool
    copy_lines: bool
    in_date_order: bool
    threads: bool
    fast: bool
    spool_dir: Path | None
    room: int
    why: str

    def __str__(self) -> str:
        where = {
            COPY: f"copy the selection into {self.spool_dir}, sort it there",
            SPOOL: f"spool the rows in {self.spool_dir}",
            DIRECT: "encode the rows as they are read (the archive is held until the posts file is written)",
        }[self.source]
        cores = "on two cores (a child process)" if self.child else "in this process"
        lines = ", posts.csv lines from PostgreSQL's COPY" if self.copy_lines else ""
        return f"{where}; encode {cores}{lines} ({self.why})"


def make_plan(
    conn: Connection,
    *,
    selected: int,
    format: str,
    media: bool,
    settings: Settings,
    fast_encoders: bool,
    beside: Path,
) -> Plan:
    """The plan for exporting ``selected`` posts to ``format`` (and ``media``) over ``conn`` (see the module's
    docstring); ``beside``: the folder the export is written into."""
    reasons: list[str] = []
    limited = min(_soft(resource.RLIMIT_AS), _soft(resource.RLIMIT_DATA)) < UNLIMITED
    if limited:
        reasons.append("an address-space limit: no child, no helper threads, no orjson")
    spool_dir = spool_directory(beside)
    archived = count_archive(conn)
    need = int(_stored(conn, archived) * selected // max(archived, 1) * SPOOL_SHARE) + MARGIN_BYTES
    room = min(_free(spool_dir), _soft(resource.RLIMIT_FSIZE)) - MARGIN_BYTES
    fds, limit = _free_fds()
    threads = not limited and fds >= PLENTY_FDS
    fds -= BASE_FDS + (MEDIA_FDS + THREAD_FDS * threads if media else 0)
    source = COPY if conn.dialect.name == "sqlite" else SPOOL
    if need > room:
        reasons.append(
            f"no room for a spool: about {need >> 20} MB needed, {max(room, 0) >> 20} MB free in {spool_dir}"
        )
        source = DIRECT
    elif fds < SPOOL_FDS + SORT_FDS:
        reasons.append(f"too few descriptors for a spool ({fds + BASE_FDS} more may be opened)")
        source = DIRECT
    child = settings.encoder_process and selected >= CHILD_POSTS and fast_encoders and not limited
    child = child and source != DIRECT and fds >= SPOOL_FDS + SORT_FDS + CHILD_FDS and limit >= CHILD_OWN_FDS
    if not reasons:
        reasons.append(f"{selected:,} posts, {room >> 20} MB free in the spool's folder")
    copy_lines = format == "csv" and fast_encoders and pgcopy.usable(conn)  # PostgreSQL's CSV writer: pgcopy
    # Without a spool on SQLite, where SQLite could not open its sort's files, or the selection is most of the
    # archive: its created_at index walked, no sort of the whole selection (the ties on created_at sorted alone).
    in_date_order = source == DIRECT and conn.dialect.name == "sqlite" and (
        fds < SORT_FDS or 2 * selected >= archived
    )  # fmt: skip
    plan = Plan(
        source, child, copy_lines, in_date_order, threads, fast_encoders and not limited, spool_dir, max(room, 0),
        "; ".join(reasons),
    )  # fmt: skip
    log.info("export_batching: plan: %s", plan)
    return plan


def spool_directory(beside: Path) -> Path:
    """Where the spool lives: TMPDIR, a disk other than the export's as a rule (the export's may be the slow
    one); but when TMPDIR is held in memory (tmpfs), beside the export, so that the spool is never held in
    memory, where a container's memory limit would count it."""
    temporary = Path(tempfile.gettempdir())
    return beside if in_memory(temporary) else temporary


def in_memory(path: Path) -> bool:
    """Whether ``path`` is on a filesystem held in memory (tmpfs, ramfs), from ``/proc/self/mounts``."""
    try:
        mounts = Path("/proc/self/mounts").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    where, found, best = os.path.realpath(path), None, -1
    for line in mounts:
        fields = line.split()
        if len(fields) >= 3:
            point = fields[1].replace("\\040", " ")
            if (where == point or where.startswith(point.rstrip("/") + "/")) and len(point) > best:
                best, found = len(point), fields[2]
    return found in _RAM_FILESYSTEMS


def _stored(conn: Connection, archived: int) -> int:
    """About how many bytes the archive's ``archived`` posts take (SQLite: its file; PostgreSQL: table, indexes)."""
    if conn.dialect.name == "sqlite":
        return int(conn.exec_driver_sql("PRAGMA main.page_count").scalar_one()) * int(
            conn.exec_driver_sql("PRAGMA main.page_size").scalar_one()
        )
    if conn.dialect.name == "postgresql":
        return int(conn.execute(text("SELECT coalesce(pg_total_relation_size(to_regclass('posts')), 0)")).scalar_one())
    return archived * 2048  # no way to ask: a generous post


def _free(folder: Path) -> int:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


def _soft(limit: int) -> int:
    """The soft limit ``limit`` of this process (UNLIMITED where there is none)."""
    soft = resource.getrlimit(limit)[0]
    return UNLIMITED if soft == resource.RLIM_INFINITY else soft


def _free_fds() -> tuple[int, int]:
    """How many more descriptors this process may open, and how many a process may have."""
    limit = min(_soft(resource.RLIMIT_NOFILE), 1 << 20)
    try:
        used = len(os.listdir("/proc/self/fd")) - 1  # less the one listing it
    except OSError as exc:
        return (0 if exc.errno in (errno.EMFILE, errno.ENFILE) else PLENTY_FDS), limit
    return limit - used, limit
