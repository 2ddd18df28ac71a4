"""Where spool files live, and how they give their space back.

A spool holds what the export has read but not yet written: the posts' rows (:class:`.reading.RowSpool`),
the encoded posts the disk has not taken yet (:class:`.output.Spool`), the media rows. It lives in TMPDIR,
a disk other than the export's as a rule (the export's may be the slow one: a USB stick, a network share);
but when TMPDIR is held in memory (a tmpfs, as on many systemd hosts), beside the export instead, so that
the spool is never held in memory, where a container's memory limit would count it. The files are unnamed
(``tempfile.TemporaryFile``): nothing is left behind if the process dies.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
_RAM_FILESYSTEMS = frozenset({"tmpfs", "ramfs", "devtmpfs"})


def _fallocate() -> Callable[..., int] | None:
    try:
        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):  # pragma: no cover - glibc on Linux has it
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    return function


_punch = _fallocate()


def punch_out(fd: int, offset: int, length: int) -> None:
    """Give the range back to the filesystem (best effort: a filesystem that cannot punch holes keeps it)."""
    if _punch is not None and length > 0:
        _punch(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (``/proc/self/mounts``), or None if it cannot be told."""
    try:
        mounts = Path("/proc/self/mounts").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    where, found = os.path.realpath(path), None
    best = -1
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = where == point or where.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, found = len(point), fields[2]
    return found


def spool_directory(beside: Path) -> Path:
    """Where the spool lives: TMPDIR, a disk other than the export's as a rule (the export's may be the
    slow one); but when TMPDIR is held in memory (tmpfs), beside the export, so that what the disk has not
    taken yet is never held in memory, where a container's memory limit would count it."""
    temporary = Path(tempfile.gettempdir())
    return beside if in_memory(temporary) else temporary


def in_memory(path: Path) -> bool:
    """Whether ``path`` is on a filesystem held in memory (tmpfs, ramfs)."""
    return filesystem_type(path) in _RAM_FILESYSTEMS


def sqlite_temp_directory() -> Path | None:
    """Where SQLite makes its temporary files (os_unix.c, ``unixTempFileDir``): the first writable directory of
    SQLITE_TMPDIR, TMPDIR, /var/tmp, /usr/tmp, /tmp; None if none is."""
    candidates = [os.environ.get("SQLITE_TMPDIR"), os.environ.get("TMPDIR"), "/var/tmp", "/usr/tmp", "/tmp"]
    for candidate in candidates:
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return Path(candidate)
    return None
