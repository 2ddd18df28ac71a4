"""The spool's private directory: ``export-batching-<random>`` in the folder the plan chose (:mod:`.plan`).

It holds the copy of the selection (SQLite) or the spool file, read by path by the export's child process. The
export locks it as :mod:`.staging` locks a staging directory (``flock``, for its whole life) and removes it at the
end, whatever happens; one a killed export left is removed by the next export that spools there, but where locks
are refused, none left by others is touched: nobody could tell a running export's from a dead one's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .staging import _lock, remove_tree, unheld_directories

PREFIX = "export-batching-"
_NAME = re.compile(rf"^{PREFIX}[a-z0-9_]{{8}}$")
#: A directory younger than this is never taken for stale (its export may not have locked it yet).
_YOUNG = 60.0


@contextlib.contextmanager
def private_directory(where: Path) -> Iterator[Path]:
    """A new private directory in ``where``, locked while in use and removed on the way out."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=where))
    try:
        fd = _lock(path)
    except OSError:
        fd = None  # locks refused: ours is removed at the end all the same
    else:
        with contextlib.suppress(OSError):
            for stale, _held in unheld_directories(where, _NAME, _YOUNG):
                remove_tree(stale)
    try:
        yield path
    finally:
        with contextlib.suppress(Exception):  # never raises: the export's own error is told (a leftover: see above)
            shutil.rmtree(path, ignore_errors=True)
        if fd is not None:
            os.close(fd)
