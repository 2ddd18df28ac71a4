"""Media files that cost only what changed (what each way saves: docs/benchmarks.md, "Media: clones and links").

- **Clones** (:func:`clone_or_copy`): ``FICLONE`` where the filesystem shares blocks (btrfs, XFS with reflink, ZFS
  2.2+, bcachefs), no data written; else ``copy_file_range`` (in-kernel, server-side on NFS 4.2), else a plain
  copy, each refusal (a sandbox's seccomp filter, an old kernel) falling back, per file, to the next.
- **Links** (:class:`Earlier`, ``link_unchanged_media = true``): a file unchanged since the newest complete earlier
  export of the DID is hard-linked from it, by ``rsync --link-dest``'s quick check (same name, same size, modified
  before that export began); that export is never written to (a link changes only link counts and ctimes).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import stat
import sys
import threading
from contextlib import suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from .checksums import SUMS_NAME, sums_line
from .host import MANIFEST_NAME, MEDIA_DIR_NAME

_FICLONE = 0x40049409  # _IOW(0x94, 9, int), linux/fs.h
_CHUNK = 1 << 20
#: A source must have been modified this long before the earlier export began: FAT stores times to 2 s, so a
#: file rewritten just after that export copied it can carry a time from before it began.
_COARSE_NS = 2_000_000_000
#: A SHA256SUMS line of a media file, as GNU sha256sum writes it (escaped when it starts with a backslash).
_SUMS_LINE = re.compile(rb"(\\?)([0-9a-fA-F]{64}) [ *](" + MEDIA_DIR_NAME.encode() + rb"/[^/\n]+)\n?")


def clone_or_copy(src: int, dst: int) -> None:
    """Give the empty file ``dst`` the contents of ``src`` (open file descriptors): cloned, else copied."""
    if sys.platform == "linux":  # pragma: no branch - elsewhere, a plain copy
        try:
            fcntl.ioctl(dst, _FICLONE, src)
            return
        except OSError:  # no clones here, another filesystem, refused: copy
            os.ftruncate(dst, 0)  # whatever a clone that failed half-way left
        with suppress(OSError, AttributeError):  # refused (a sandbox, another filesystem), or a Python without it
            while os.copy_file_range(src, dst, _CHUNK):
                pass
    while block := os.read(src, _CHUNK):  # what copy_file_range left (also where it stopped short)
        view = memoryview(block)
        while view:
            view = view[os.write(dst, view) :]


class Earlier:
    """The newest complete earlier export of the DID: published under its final name (staging directories are
    hidden), with a readable ``manifest.json`` (skyarchive writes it last). With checksums, its media files'
    SHA256SUMS lines wait in a temporary SQLite database, so that memory does not grow with the number of files."""

    def __init__(self, media: Path, began_ns: int, like: tuple[int, int, int], sums: sqlite3.Connection | None) -> None:
        self.media, self._began_ns, self._like, self._sums = media, began_ns, like, sums
        self._lock = threading.Lock()

    @classmethod
    def find(cls, dest: Path, *, checksums: bool) -> Earlier | None:
        """The earlier export to link from into ``dest`` (the new export's media folder), or None; with
        ``checksums``, one without a SHA256SUMS is none (its files' lines are what the new one reuses)."""
        try:
            exports = [
                Path(e.path)
                for e in os.scandir(dest.parent.parent)  # <exports>/<did>, beside the new export's staging directory
                if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
            ]
        except OSError:
            return None
        began, path = max(((b, p) for p in exports if (b := _began(p)) is not None), default=(0, None))
        if path is None:
            return None
        here = os.stat(dest)
        # A file made now in ``dest`` would have its owner, group and 0o644 less its umask (or default ACL).
        like = (here.st_uid, here.st_gid, 0o644 & stat.S_IMODE(here.st_mode))
        try:
            sums = _read_sums(path / SUMS_NAME) if checksums else None
        except (OSError, sqlite3.Error):  # none there (or no temporary space): copy every file
            return None
        return cls(path / MEDIA_DIR_NAME, began, like, sums)

    def link(self, name: str, source: os.stat_result, target: Path) -> str | None:
        """Hard-link ``target`` to the earlier export's file ``name`` if the source (``source``: its stat) is
        unchanged since; then the file's sha256 as its SHA256SUMS says ("" without checksums), else None.
        FileExistsError if ``target`` exists, as creating it would."""
        if not stat.S_ISREG(source.st_mode) or source.st_mtime_ns >= self._began_ns - _COARSE_NS:
            return None
        earlier = self.media / name
        try:
            found = os.lstat(earlier)
        except OSError:
            return None
        like = (found.st_uid, found.st_gid, stat.S_IMODE(found.st_mode))
        if not stat.S_ISREG(found.st_mode) or found.st_size != source.st_size or like != self._like:
            return None
        digest = ""
        if self._sums is not None:
            key = sums_line("", f"{MEDIA_DIR_NAME}/{name}")[:-1]  # as _read_sums keys it
            with self._lock:
                row = self._sums.execute("SELECT digest FROM sums WHERE line = ?", (key,)).fetchone()
            if row is None:
                return None
            digest = row[0]
        try:
            os.link(earlier, target, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError:  # another filesystem (EXDEV), too many links (EMLINK), refused: copy instead
            return None
        made = os.lstat(target)
        if (made.st_dev, made.st_ino) != (found.st_dev, found.st_ino):  # replaced since it was checked
            os.unlink(target)
            return None
        return digest

    def close(self) -> None:
        if self._sums is not None:
            self._sums.close()


def _began(export: Path) -> int | None:
    """When ``export`` began (its manifest's ``exported_at``, in ns), if it is complete and has a media folder."""
    try:
        if not stat.S_ISDIR(os.lstat(export / MEDIA_DIR_NAME).st_mode):
            return None
        with _open_file(export / MANIFEST_NAME) as stream:
            manifest = json.loads(stream.read(1 << 20))
        moment = datetime.strptime(manifest["exported_at"], "%Y-%m-%dT%H:%M:%S.%fZ")  # UTC, as is the epoch below
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return (moment - datetime(1970, 1, 1)) // timedelta(microseconds=1) * 1000


def _open_file(path: Path) -> BinaryIO:
    """``path`` opened for reading, never through a symlink, never waiting (on a FIFO someone left there)."""
    return open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb")


def _read_sums(path: Path) -> sqlite3.Connection:
    """The media lines of the SHA256SUMS ``path``, in a temporary database: each line less its checksum and line end
    (the name as it is written there, escaped or not, so that no line needs unescaping) -> its sha256."""
    db = sqlite3.connect("", check_same_thread=False)  # "": a private temporary file, gone when closed
    try:
        db.execute("CREATE TABLE sums (line BLOB PRIMARY KEY, digest TEXT) WITHOUT ROWID")
        with _open_file(path) as stream:
            lines = filter(None, map(_SUMS_LINE.fullmatch, stream))
            rows = ((m[1] + b"  " + m[3], m[2].decode()) for m in lines)
            db.executemany("INSERT OR IGNORE INTO sums VALUES (?, ?)", rows)
    except BaseException:
        db.close()
        raise
    return db
