"""Staging: the export is written beside its final place, then renamed into it.

- The staging directory is ``<exports>/<did>/.<name>.staging-<16 hex digits>``:
  hidden, on the same filesystem as the final directory, named at random.
- **Ownership is a lock, not a PID.** The export that creates a staging
  directory holds an exclusive ``flock`` on it for its whole life; the kernel
  drops the lock when that process ends, however it ends. So "stale" means
  "nobody holds its lock", which stays true across PID namespaces (containers
  sharing an exports volume) and PID reuse, where a PID says nothing. On a
  filesystem without locks the export goes on unlocked (and says so): nobody
  can take its directory for stale there, since cleanup skips what it cannot lock.
- Publishing renames the staging directory to the final name with
  ``renameat2(RENAME_NOREPLACE)``: an existing export directory, even an empty
  one, is never replaced. Whether the rename happened is then read from the
  disk (the final name is our directory, or not), not assumed.
- On failure or interrupt before publishing, the staging directory is removed,
  and only what was really removed is reported as removed. ``with Staging.create(final) as staging``
  does that by itself: on the way out it releases a published directory and removes any other.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from .host import SkyarchiveError, UsageError

log = logging.getLogger("export_batching_plugin")

_STAGING = re.compile(r"^\.(?P<name>\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)\.staging-[0-9a-f]{16}$")
_AT_FDCWD = -100
#: What ``flock`` fails with on a filesystem that does not do locks (an NFS mount without a lock manager,
#: some FUSE and SMB mounts). EOPNOTSUPP is ENOTSUP on Linux.
_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
_RENAME_NOREPLACE = 1


def check_folder_name(did: str) -> None:
    """Refuse a DID that, as skyarchive names the owner's folder, would lead out of the exports folder."""
    folder = did.replace(":", "_")
    if folder in ("", ".", "..") or "/" in folder or "\x00" in folder or (os.altsep and os.altsep in folder):
        raise UsageError(f"--did {did!r} cannot name a folder inside the exports folder; nothing was exported")


def _libc_function(name: str) -> Callable[..., int] | None:
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):  # pragma: no cover - glibc on Linux has them
        return None
    return function


_syncfs = _libc_function("syncfs")
_renameat2 = _libc_function("renameat2")


def _lock(path: Path) -> int | None:
    """An fd of the directory ``path`` holding its exclusive lock, or None if another process holds it.

    Raises OSError when ``path`` is not there, or is not a directory (a symlink, say).
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    try:
        here = os.lstat(path)
    except OSError:
        here = None
    mine = os.fstat(fd)
    if here is None or (here.st_dev, here.st_ino) != (mine.st_dev, mine.st_ino):  # removed or replaced meanwhile
        os.close(fd)
        return None
    return fd


def remove_tree(path: Path) -> OSError | None:
    """Remove the directory ``path`` and everything in it; the error that stopped it, or None.

    ``shutil.rmtree`` never follows symlinks inside the tree.
    """
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc
    return None


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging directories in ``folder`` that no export holds; return those removed.

    Only entries named exactly like a staging directory that are real
    directories (not symlinks) and whose lock nobody holds are touched, and
    only inside ``folder``. Each is removed while this process holds its lock.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not _STAGING.match(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        try:
            fd = _lock(path)
        except OSError:
            continue  # gone meanwhile, or not a directory after all
        if fd is None:
            continue  # a running export's
        try:
            error = remove_tree(path)
        finally:
            os.close(fd)
        if error is None:
            log.warning("export_batching: removed %s, left by an export that did not finish", path)
            removed.append(path)
        else:
            log.warning("export_batching: could not remove %s, left by an export that did not finish: %s", path, error)
    return removed


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


def sync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk.

    Linux: one ``syncfs`` of the filesystem that holds ``root`` (it also flushes other files there; on a
    filesystem with little else being written that costs nothing, and it commits the journal once instead
    of once per file). Elsewhere: an ``fsync`` of each file and directory.
    """
    if _syncfs is not None:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs(fd) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code), str(root))
        finally:
            os.close(fd)
        return
    for folder, _dirs, files in os.walk(root):  # pragma: no cover - no syncfs: not Linux
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(Path(folder))


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Staging:
    """The staging directory of one export, locked by it from creation until it is published or removed."""

    def __init__(self, path: Path, final: Path, fd: int) -> None:
        self.path, self.final = path, final
        self._fd: int | None = fd
        self._inode = os.fstat(fd).st_ino
        #: Why the staging directory could not be removed after a failure (None: it was, or it was published).
        self.removal_error: OSError | None = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Release a published directory; remove any other (never raises: the export's own error is told)."""
        try:
            if not self.published():
                self.removal_error = self.remove()
        except BaseException as error:  # an interrupt while removing: the removal is still reported
            self.removal_error = error if isinstance(error, OSError) else OSError(str(error) or type(error).__name__)
        finally:
            self.release()

    @classmethod
    def create(cls, final: Path) -> Staging:
        """Remove stale staging beside ``final``, then create and lock a fresh staging directory."""
        parent = final.parent
        parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(parent)
        if os.path.lexists(final):
            raise SkyarchiveError(f"export directory already exists: {final}")
        while True:
            path = parent / f".{final.name}.staging-{secrets.token_hex(8)}"
            path.mkdir()  # FileExistsError on a planted name: stop, do not write through it
            try:
                fd = _lock(path)
            except FileNotFoundError:
                fd = None
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    with suppress(OSError):
                        path.rmdir()
                    raise
                fd = cls._unlocked(path, exc)
            if fd is not None:
                return cls(path, final, fd)
            # Between our mkdir and our lock, another export took it for stale and removed it: a new name.

    @staticmethod
    def _unlocked(path: Path, why: OSError) -> int:
        """On a filesystem without locks: go on without one, and say what that means.

        Nobody can take such a directory for stale (cleanup skips what it cannot lock), so the export is
        as safe as with a lock; only a staging directory left by an export that was killed stays.
        """
        log.warning(
            "export_batching: %s does not support file locks (%s); exporting without one. Staging folders"
            " left there by exports that did not finish (.*.staging-*) are not removed automatically: remove"
            " them by hand while no export runs.",
            path.parent, why.strerror,
        )  # fmt: skip
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)

    def published(self) -> bool:
        """Whether the final name is this staging directory now (it was renamed into place)."""
        try:
            return os.lstat(self.final).st_ino == self._inode
        except OSError:
            return False

    def publish(self) -> None:
        """Rename into the final name (never replacing anything there)."""
        try:
            rename_noreplace(self.path, self.final)
        except FileExistsError:
            raise SkyarchiveError(f"export directory already exists: {self.final}") from None

    def remove(self) -> OSError | None:
        """Remove the staging directory (after a failure); the error that stopped it, or None."""
        error = remove_tree(self.path)
        self.release()
        return error

    def release(self) -> None:
        """Drop the lock, when the staging directory is published or removed (again: nothing)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
