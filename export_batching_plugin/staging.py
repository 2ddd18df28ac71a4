"""Staging: the export is written beside its final place, then renamed into it.

- **The staging directory is the claim of the final name**, ``<exports>/<did>/.<name>.staging-export``: two
  exports of one DID started in the same second meet at once, as ``mkdir`` lets exactly one make it in any process
  or container sharing the volume; the other stops before any work (:class:`ExportClash`), not at the end. The
  final name is checked once the claim is held: an export published there gave its claim up by renaming it.
- **Ownership is a lock, not a PID.** An export holds an exclusive ``flock`` on its staging directory for its
  whole life; the kernel drops it when the process ends, however it ends. "Stale" means "nobody holds its lock",
  true across PID namespaces (containers sharing a volume) and PID reuse, where a PID says nothing; the next
  export into the folder removes a stale one (its claim taken over, if of the same name) under its lock.
- **Where no lock can be taken** (a filesystem without locks, a sandbox refusing ``flock``) the export goes on
  unlocked and says so. Its staging directory is made with the sticky bit, in the same ``mkdir``: an export that
  can lock there (another container) must not take it for stale, and skips it, as it skips what it cannot lock.
  The bit is cleared once the export is in place.
- Publishing never replaces an existing export directory, even an empty one (:func:`rename_noreplace`);
  whether the rename happened is then read from the disk (the final name is our directory, or not).
- **A refused system call is not a failed export** (seccomp, gVisor): ``syncfs`` and ``fsync`` each stand in for
  the other (:func:`sync_tree`), ``renameat2`` is a check then a rename, ``flock`` an export without a lock, a
  directory's ``fsync`` a warning; each said once: at INFO where only speed is lost, a WARNING where a guarantee is.
- On failure or interrupt before publishing, ``with Staging.create(final) as staging`` removes the staging
  directory on the way out, and the owner's folder too if this export made it and it is empty; only what was
  really removed is reported as removed.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from types import TracebackType

from .host import SkyarchiveError, UsageError

log = logging.getLogger("export_batching_plugin")

#: A staging directory: this release's (the claim of ``<name>``), or an earlier release's (named at random).
_STAGING = re.compile(r"^\.(?P<name>\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)\.staging-(export|[0-9a-f]{16})$")
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1
#: What a sandbox's filter (a seccomp profile, gVisor) answers for a system call it refuses.
_REFUSED = frozenset({errno.EPERM, errno.EACCES, errno.ENOSYS})
#: What ``flock`` fails with where no lock can be taken: a filesystem without locks (an NFS mount without a
#: lock manager, some FUSE and SMB mounts; EOPNOTSUPP is ENOTSUP on Linux), or a sandbox refusing the call.
_NO_LOCKS = _REFUSED | {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP}
#: What ``fsync`` of a directory fails with where it is refused, or where the filesystem does not do it.
_NO_DIRECTORY_SYNC = _REFUSED | {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}
#: The mark of a staging directory whose export cannot lock it (see the module's docstring).
_UNLOCKED = stat.S_ISVTX
#: Claims lost to racing exports (ours taken for stale between mkdir and lock, in microseconds) before giving up.
_CLAIM_ATTEMPTS = 10
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class ExportClash(SkyarchiveError):
    """Another export of this DID started in the same second: the final directory ``final`` is there
    (``exists``), or another export is writing it. Raised before any work is done."""

    def __init__(self, final: Path, *, exists: bool) -> None:
        self.final, self.exists = final, exists
        same = "another export of this DID started in the same second"
        what = f"export directory already exists: {final} ({same})" if exists else f"{same} and is writing {final}"
        super().__init__(f"{what}; run this one again")


def check_folder_name(did: str) -> None:
    """Refuse a DID that, as skyarchive names the owner's folder, would lead out of the exports folder."""
    folder = did.replace(":", "_")
    if folder in ("", ".", "..") or "/" in folder or "\x00" in folder or (os.altsep and os.altsep in folder):
        raise UsageError(f"--did {did!r} cannot name a folder inside the exports folder; nothing was exported")


_libc = ctypes.CDLL(None, use_errno=True)  # dlopen(NULL): the running program, libc included; never fails
_syncfs: Callable[..., int] | None = getattr(_libc, "syncfs", None)  # None where libc lacks it: fallbacks below
_renameat2: Callable[..., int] | None = getattr(_libc, "renameat2", None)
FEW_FILES = 8  # up to this many files (an export without media has 3), an fsync of each rather than a syncfs


def _lock(path: Path) -> int | None:
    """An fd of the directory ``path`` holding its exclusive lock, or None if another process holds it.
    FileNotFoundError if ``path`` is gone or was replaced while it was being locked; OSError if it is not a
    directory (a symlink, say) or cannot be locked."""
    fd = os.open(path, _DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not os.path.samestat(os.lstat(path), os.fstat(fd)):
            raise FileNotFoundError(errno.ENOENT, "replaced while it was being locked", str(path))
    except BaseException as error:
        os.close(fd)
        if isinstance(error, BlockingIOError):
            return None
        raise
    return fd


def _can_lock(folder: Path) -> bool:
    """Whether an export can lock its staging directory in ``folder``; where not, say once what that costs."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # dropped with the fd
    except BlockingIOError:  # pragma: no cover - no export locks an owner's folder: locks work there
        pass
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise
        log.warning(
            "export_batching: no file locks in %s (flock: %s); exporting without one. Staging folders left"
            " there by exports that did not finish (.*.staging-*) are not removed automatically: remove them"
            " by hand while no export runs.",
            folder, exc.strerror,
        )  # fmt: skip
        return False
    finally:
        os.close(fd)
    return True


def remove_tree(path: Path) -> OSError | None:
    """Remove the directory ``path`` and all in it, never following symlinks inside (``shutil.rmtree``; with too
    few descriptors for it, entry by entry by path); the error that stopped it, or None (also if it is gone)."""
    try:
        try:
            shutil.rmtree(path)
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            for top, dirs, files in os.walk(path, topdown=False):  # one descriptor at a time
                for entry in (os.path.join(top, name) for name in files + dirs):
                    os.unlink(entry) if os.path.islink(entry) or not os.path.isdir(entry) else os.rmdir(entry)
            os.rmdir(path)
    except OSError as exc:
        return None if isinstance(exc, FileNotFoundError) else exc
    return None


def _remove_stale(path: Path, fd: int) -> OSError | None:
    """Remove the staging directory ``path`` whose lock ``fd`` holds, unless its export could not lock it (marked:
    nobody can tell whether it still runs); the error that stopped it, or None once it is gone. An empty one goes
    silently: nothing was lost (its export had not begun, or was killed right away)."""
    if os.fstat(fd).st_mode & _UNLOCKED:
        return FileExistsError(errno.EEXIST, "made by an export that could not lock it", str(path))
    with suppress(OSError):
        os.rmdir(path)
        return None
    error = remove_tree(path)
    if error is None:
        log.warning("export_batching: removed %s, left by an export that did not finish", path)
    else:
        log.warning("export_batching: could not remove %s, left by an export that did not finish: %s", path, error)
    return error


def unheld_directories(folder: Path, name: re.Pattern[str], young: float = 0) -> Iterator[tuple[Path, int]]:
    """The real directories (not symlinks) in ``folder`` named like ``name`` whose lock nobody holds, none
    modified in the last ``young`` seconds; each with an fd holding its lock until the next is asked for."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        if not name.match(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        if young and time.time() - entry.stat(follow_symlinks=False).st_mtime <= young:
            continue
        try:
            fd = _lock(Path(entry.path))
        except OSError:
            fd = None  # gone meanwhile, or not a directory after all
        if fd is not None:  # None: held by a running export, or gone
            try:
                yield Path(entry.path), fd
            finally:
                os.close(fd)


def remove_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging directories in ``folder`` that no export holds, each under its lock; those removed."""
    return [path for path, fd in unheld_directories(folder, _STAGING) if _remove_stale(path, fd) is None]


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, failing with FileExistsError if ``target`` exists. Where ``renameat2`` is
    missing (ENOSYS, or EINVAL on a filesystem without RENAME_NOREPLACE) or refused (a sandbox): check, then
    rename, said once. A rename onto an empty directory would replace it, so this is safe only while nothing else
    can make ``target``: :class:`Staging` holds the claim of its name."""
    refused = None
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code not in _REFUSED | {errno.EINVAL}:
            raise OSError(code, os.strerror(code), str(target))
        refused = os.strerror(code)
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)
    if refused is not None:
        log.info(
            "export_batching: renameat2 is refused here (%s); the export was put in place by a check, then a"
            " rename (safe: no other export can take a name whose claim it holds)",
            refused,
        )


def sync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk: with a few files, an ``fsync`` of each; with many
    (media), one ``syncfs`` (one journal commit, but it flushes whatever else is written there and stalls other
    writers meanwhile, an archiver's commits). Where a sandbox refuses the one, the other (a refused syncfs is said
    once at INFO; a refused directory fsync by :func:`fsync_directory`'s caller)."""
    walked = list(os.walk(root, onerror=_raise))
    whole = sum(len(files) for _, _, files in walked) > FEW_FILES
    try:
        _sync(root, walked, whole=whole)
    except OSError as exc:
        if exc.errno not in _REFUSED:
            raise
        _sync(root, walked, whole=not whole)
        if whole:  # (a refused fsync loses nothing: the syncfs flushes the export's files too)
            log.info(
                "export_batching: syncfs is refused here (%s); the export's files were synced one by one", exc.strerror
            )


def _sync(root: Path, walked: list[tuple[str, list[str], list[str]]], *, whole: bool) -> None:
    if not whole:
        for folder, _dirs, files in walked:
            for name in files:
                with open(os.path.join(folder, name), "rb") as file:
                    os.fsync(file.fileno())
            fsync_directory(Path(folder), quiet=True)
        return
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        code = errno.ENOSYS if _syncfs is None else 0 if _syncfs(fd) == 0 else ctypes.get_errno()
    finally:
        os.close(fd)
    if code:
        raise OSError(code, os.strerror(code), str(root))


def _raise(error: OSError) -> None:
    raise error


def fsync_directory(path: Path, *, quiet: bool = False) -> None:
    """Flush the directory ``path`` (its entries) to disk; where that is refused, say so (a WARNING: the names
    are not known to be on disk) rather than fail, unless ``quiet``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIRECTORY_SYNC:
            raise
        if not quiet:
            log.warning(
                "export_batching: fsync of a directory is refused here (%s); %s may lose its newest entries if"
                " the system stops before it writes them",
                exc.strerror, path,
            )  # fmt: skip
    finally:
        os.close(fd)


def _make_folder(folder: Path) -> bool:
    """Make the owner's folder ``folder`` (and the exports folder) where missing; whether this made ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with suppress(FileExistsError):
        folder.mkdir()
        return True
    return False


class Staging:
    """The staging directory of one export, locked by it from creation until it is published or removed."""

    def __init__(self, path: Path, final: Path, fd: int, *, made_folder: bool = False) -> None:
        self.path, self.final = path, final
        self._fd: int | None = fd
        mode = os.fstat(fd)
        self._inode, self._marked = mode.st_ino, bool(mode.st_mode & _UNLOCKED)
        #: Whether this export made the owner's folder (the staging directory's parent): removed if left empty.
        self.made_folder = made_folder
        #: Why the staging directory could not be removed after a failure (None: it was, or it was published).
        self.removal_error: OSError | None = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Release a published directory; remove any other, and the owner's folder if this export made it and it
        is left empty (never raises: the export's own error is told)."""
        try:
            if not self.published():
                self.removal_error = remove_tree(self.path)
                self.release()
                if self.made_folder:
                    _remove_if_empty(self.path.parent)
        except BaseException as error:  # an interrupt while removing: the removal is still reported
            self.removal_error = error if isinstance(error, OSError) else OSError(str(error) or type(error).__name__)
        finally:
            self.release()

    @classmethod
    def create(cls, final: Path) -> Staging:
        """Claim ``final``'s name: remove stale staging beside it, then make and lock its staging directory.
        ExportClash if ``final`` exists or another export holds the claim; FileExistsError if something else (a
        symlink, a file) sits at the staging name: it is never written through."""
        parent, path = final.parent, final.parent / f".{final.name}.staging-export"
        made = _make_folder(parent)
        try:
            locking = _can_lock(parent)
            if locking:
                remove_stale_staging(parent)
            for _ in range(_CLAIM_ATTEMPTS):
                try:
                    fd = cls._claim(path, final, locking)
                except FileNotFoundError:  # the claim, or the owner's folder, removed meanwhile by another export
                    made = _make_folder(parent) or made
                    continue
                if fd is not None:
                    return cls(path, final, fd, made_folder=made)
            raise ExportClash(final, exists=False)
        except BaseException:
            if made:
                _remove_if_empty(parent)
            raise

    @staticmethod
    def _claim(path: Path, final: Path, locking: bool) -> int | None:
        """Make ``path`` and take it: its fd (locked, where ``locking``), or None to look again (a stale one was
        removed, or another export locked ours before we did). ExportClash if another export holds it."""
        try:
            os.mkdir(path, 0o777 if locking else 0o777 | _UNLOCKED)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise  # planted: never followed, never removed
            held = _lock(path) if locking else None  # without locks, nobody can tell whether its export runs
            if held is None:
                raise ExportClash(final, exists=False) from None
            try:
                error = _remove_stale(path, held)
            finally:
                os.close(held)
            if isinstance(error, FileExistsError):  # marked: its export runs without a lock, perhaps still
                raise ExportClash(final, exists=False) from None
            if error is not None:
                raise error from None
            return None
        try:
            fd = _lock(path) if locking else os.open(path, _DIRECTORY)
        except FileNotFoundError:
            raise  # gone: what is at its name now may be another export's claim, never to be removed
        except BaseException:
            with suppress(OSError):
                os.rmdir(path)
            raise
        if fd is not None and os.path.lexists(final):  # published by an export that had the claim before
            with suppress(OSError):
                os.rmdir(path)  # while it is still ours
            os.close(fd)
            raise ExportClash(final, exists=True)
        return fd  # None: locked between our mkdir and our lock (by a claimer, or cleanup about to remove it)

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
        if self._marked and self._fd is not None:  # in place: the mark has done its work
            with suppress(OSError):
                os.fchmod(self._fd, stat.S_IMODE(os.fstat(self._fd).st_mode) & ~_UNLOCKED)

    def release(self) -> None:
        """Drop the lock, when the staging directory is published or removed (again: nothing)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _remove_if_empty(folder: Path) -> None:
    with suppress(OSError):  # not empty (another export's, an earlier export), or gone: left as it is
        os.rmdir(folder)
