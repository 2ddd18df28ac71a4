"""Staging: the export is written beside its final place, then renamed into it.

- The staging directory is ``<exports>/<did>/.<name>.staging-<pid>``: hidden,
  on the same filesystem as the final directory, and named for the process
  that owns it, so that one left by a killed process can be recognised.
- Publishing syncs the files and the directory to disk, then renames the
  staging directory to the final name with ``renameat2(RENAME_NOREPLACE)``:
  an existing export directory, even an empty one, is never replaced.
- On any failure, or interrupt, the staging directory is removed.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from skyarchive.errors import SkyarchiveError

log = logging.getLogger("export_batching_plugin")

_STAGING = re.compile(r"^\.(?P<name>\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)\.staging-(?P<pid>[1-9]\d*)$")
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def staging_dir_for(export_dir: Path) -> Path:
    """``<parent>/.<name>.staging-<this process's pid>``."""
    return export_dir.parent / f".{export_dir.name}.staging-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove staging directories in ``folder`` whose process is gone; return them.

    Only entries named exactly like a staging directory, that are real
    directories (not symlinks) and whose owning process no longer exists
    are removed.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = _STAGING.match(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        log.warning("export_batching: removed %s, left by an export that did not finish (process %d)", entry.path, pid)
        removed.append(Path(entry.path))
    return removed


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder, name))
        _fsync_path(Path(folder), directory=True)


def _libc_renameat2() -> Callable[..., int] | None:
    try:
        function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    return function


_renameat2 = _libc_renameat2()


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, failing with FileExistsError if ``target`` exists."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(code, os.strerror(code), str(target))
    # No renameat2 here: check, then rename (a rename onto an existing empty directory would succeed).
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


@contextmanager
def staged(export_dir: Path) -> Iterator[Path]:
    """Yield a fresh staging directory; publish it as ``export_dir`` when the block succeeds."""
    parent = export_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(parent)
    if os.path.lexists(export_dir):
        raise SkyarchiveError(f"export directory already exists: {export_dir}")
    staging = staging_dir_for(export_dir)
    staging.mkdir()
    try:
        yield staging
        sync_tree(staging)
        try:
            rename_noreplace(staging, export_dir)
        except FileExistsError:
            raise SkyarchiveError(f"export directory already exists: {export_dir}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        _fsync_path(parent, directory=True)
    except OSError as exc:
        # The export is complete under its final name; only the durability of that name is in doubt.
        log.warning("export_batching: %s is complete, but syncing %s failed: %s", export_dir, parent, exc)
