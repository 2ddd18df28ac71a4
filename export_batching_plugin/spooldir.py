"""The spool's private directory: ``export-batching-<random>`` in the folder the plan chose (:mod:`.plan`).

It holds the copy of the selection (SQLite) or the spool file, readable by the export's child process by path.
The export holds a lock on it (``flock``) for its whole life and removes it at the end, whatever happens; one
left by an export that was killed (the kernel dropped its lock) is removed by the next export that spools
there. Where locks are refused (a filesystem or sandbox without them), the directory is still removed at the
end, but none left by others is touched: nobody could tell a running export's from a dead one's.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("export_batching_plugin")
PREFIX = "export-batching-"
_NAME = re.compile(rf"^{PREFIX}[a-z0-9_]{{8}}$")
#: A directory younger than this is never taken for stale (its export may not have locked it yet).
_YOUNG = 60.0


def _locked(path: str) -> int | None:
    """An fd of the directory ``path`` holding its exclusive lock; None if another process holds it. Raises
    OSError where locks are refused."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_stale(where: Path) -> None:
    with contextlib.suppress(OSError):
        for entry in os.scandir(where):
            if (
                _NAME.match(entry.name)
                and entry.is_dir(follow_symlinks=False)
                and time.time() - entry.stat(follow_symlinks=False).st_mtime > _YOUNG
            ):
                with contextlib.suppress(OSError):
                    fd = _locked(entry.path)
                    if fd is not None:
                        try:
                            shutil.rmtree(entry.path)
                        finally:
                            os.close(fd)


@contextlib.contextmanager
def private_directory(where: Path) -> Iterator[Path]:
    """A new private directory in ``where``, locked while in use and removed on the way out."""
    path = tempfile.mkdtemp(prefix=PREFIX, dir=where)
    try:
        fd = _locked(path)
    except OSError:
        fd = None  # locks refused: ours is removed at the end all the same
    else:
        _remove_stale(where)
    try:
        yield Path(path)
    finally:
        with contextlib.suppress(Exception):  # never raises: the export's own error is told (a leftover: see above)
            shutil.rmtree(path, ignore_errors=True)
        if fd is not None:
            os.close(fd)
