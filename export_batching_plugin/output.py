"""The posts file, written behind the export: reading runs at the database's speed, never at the disk's.

The export encodes each batch on its own thread and hands the pieces over (:meth:`Output.write`, which
never waits on the output disk); a writer thread writes them to the posts file, in order, with one
``writev`` per batch, and hashes them as it goes (with checksums: hashlib lets go of the GIL, so the
hashing runs on the second core). What the writer has not taken yet waits in memory, up to ``memory``
bytes, and beyond that in an unnamed spool file (:class:`Spool`): so on a slow disk (a USB stick, a
network share) the export still reads and encodes every post, and ends its read transaction, as fast as
the database hands the rows over, while memory stays bounded. The spool takes what the disk has not
taken yet, and gives back what the writer has written (its consumed ranges are punched out).

Where no writer thread can be started (a container's task limit), every piece goes to the spool, and
:meth:`Output.finish` copies the spool into the posts file once the snapshot has ended: the same
bytes, the database still let go before the disk is waited for.

A failure of the writer thread is raised on the export's thread at its next :meth:`~Output.write` or
at :meth:`~Output.finish`, as :class:`WriteBehindError` naming the piece (the batch) that failed.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from types import TracebackType
from typing import Any

from .spoolfile import punch_out
from .threads import start_thread

log = logging.getLogger("export_batching_plugin")

#: Encoded bytes held in memory for the writer before the rest goes to the spool file.
MEMORY = 4 << 20
#: ``writev`` takes at most this many buffers at once (Linux's IOV_MAX).
_IOV_MAX = 1024


class WriteBehindError(Exception):
    """The writer thread failed on the piece tagged ``tag`` (the export's batch, or None); ``cause`` is why."""

    def __init__(self, tag: Any, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.tag, self.cause = tag, cause


class Spool:
    """An unnamed file holding byte ranges until they are read back once (then their space is given back).

    Not thread-safe: :class:`Output` calls it under its lock.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed by close()
        self._fd = self._file.fileno()
        self._end = 0
        self.held = self.peak = 0  #: bytes in the spool now, and at most

    def put(self, pieces: Sequence[Any]) -> tuple[int, int]:
        """Append ``pieces``; their ``(offset, length)``."""
        offset, length = self._end, sum(len(piece) for piece in pieces)
        done = 0
        while done < length:
            try:
                done += os.pwritev(self._fd, _rest(pieces, done), offset + done)
            except OSError as exc:
                exc.filename = exc.filename or f"{self.directory} (the export's spool file)"
                raise
        self._end += length
        self.held += length
        self.peak = max(self.peak, self.held)
        return offset, length

    def take(self, offset: int, length: int) -> bytes:
        """Read a range back (once), and give its space back to the filesystem."""
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise OSError(errno.EIO, "the export's spool file was cut short", str(self.directory))
        self.held -= length
        if self.held == 0:
            os.ftruncate(self._fd, 0)
            self._end = 0
        else:
            punch_out(self._fd, offset, length)
        return data

    def close(self) -> None:
        self._file.close()


def _rest(pieces: Sequence[Any], skip: int) -> list[Any]:
    """``pieces`` less their first ``skip`` bytes, as views (at most _IOV_MAX of them)."""
    rest: list[Any] = []
    for piece in pieces:
        view = memoryview(piece).cast("B")
        if skip >= len(view):
            skip -= len(view)
            continue
        rest.append(view[skip:])
        skip = 0
        if len(rest) == _IOV_MAX:
            break
    return rest


class Output:
    """The posts file at ``path`` (created exclusively), written behind by a thread; a context manager that
    closes everything on the way out. ``written``: the posts whose pieces are in the file; ``on_written(written)``
    is called (on the writer thread) after each write that completes posts."""

    def __init__(
        self,
        path: Path,
        *,
        spool_dir: Path,
        checksums: bool,
        on_written: Callable[[int], None] = lambda written: None,
        memory: int | None = None,
        spill: bool = True,
    ) -> None:
        self.path = path
        self._on_written = on_written
        self._spill = spill  # False: write() waits for room in memory instead of spooling
        self._file = open(path, "xb", buffering=0)  # noqa: SIM115 - closed by finish()/close()
        self._digest = hashlib.sha256() if checksums else None
        self._spool_dir = spool_dir
        self._spool: Spool | None = None
        self._memory, self._limit = 0, MEMORY if memory is None else memory
        self._queue: collections.deque[tuple[Any, int, Any]] = collections.deque()  # (pieces or range, posts, tag)
        self._ready = threading.Condition()
        self._ending = self._stopped = False
        self._failure: WriteBehindError | None = None
        self.written = 0
        self._thread = start_thread(self._run, "export-writer", doing="writing the posts file once it is read")

    @property
    def spool_peak(self) -> int:
        """The most bytes the spool file held at once (0: it was never needed)."""
        return self._spool.peak if self._spool is not None else 0

    def __enter__(self) -> Output:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Stop the writer and close the files (after :meth:`finish`: nothing left to do); never raises."""
        with suppress(BaseException):
            self.close()

    def write(self, pieces: Sequence[Any], *, posts: int = 0, tag: Any = None) -> None:
        """Hand ``pieces`` (bytes-like) over to be written, in order; ``posts``: how many posts they complete,
        ``tag``: what a failure writing them names. Never waits on the disk; raises the writer's failure."""
        self._raise_failure()
        size = sum(len(piece) for piece in pieces)
        with self._ready:
            # What is held counts until it is written (the piece the writer is at too); one piece larger than
            # the limit is held only when nothing else is.
            while not self._spill and self._thread is not None and self._memory and self._memory + size > self._limit:
                self._ready.wait(0.1)  # the writer takes a piece and notifies, or fails
                self._raise_failure()
            if self._thread is not None and (self._memory + size <= self._limit or not self._memory):
                self._queue.append((list(pieces), posts, tag))
                self._memory += size
            else:
                if self._spool is None:
                    self._spool = Spool(self._spool_dir)
                self._queue.append((self._spool.put(pieces), posts, tag))
            self._ready.notify()

    def finish(self, *, tick: Callable[[], None] = lambda: None) -> str | None:
        """After the last write: wait until everything is in the file (``tick`` at least every 0.1 s), sync
        and close it; the sha256 of what was written (with checksums), else None. Raises the writer's failure."""
        with self._ready:
            self._ending = True
            self._ready.notify()
        if self._thread is not None:
            while not self._thread.wait(0.1):
                tick()
        else:
            while self._queue:
                self._write(*self._queue.popleft())
                tick()
        self._raise_failure()
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            exc.filename = exc.filename or str(self.path)
            raise
        self.close()
        return self._digest.hexdigest() if self._digest is not None else None

    def close(self, *, timeout: float = 10.0) -> None:
        """Stop the writer (it finishes the piece at hand), close the posts file and the spool (again: nothing).

        A writer still blocked on storage that does not answer after ``timeout`` seconds is left to end by
        itself, with its files open: closing them under it could let its next write reach another file.
        """
        with self._ready:
            self._stopped = True
            self._ready.notify()
        if self._thread is not None and not self._thread.wait(timeout):
            log.warning("export_batching: a write of %s is still waiting on its storage; left to end", self.path)
            return
        self._file.close()
        if self._spool is not None:
            self._spool.close()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._ending and not self._stopped:
                    self._ready.wait()
                if self._stopped or not self._queue:
                    return
                item = self._queue.popleft()
            try:
                self._write(*item)
            except BaseException as exc:  # raised on the export's thread, at its next write
                if isinstance(exc, OSError) and exc.filename is None:  # a write does not say which file
                    exc.filename = str(self.path)
                self._failure = WriteBehindError(item[2], exc)
                return

    def _write(self, where: Any, posts: int, tag: Any) -> None:
        if isinstance(where, tuple):
            assert self._spool is not None
            with self._ready:  # the spool's bookkeeping is shared with write()
                pieces: list[Any] = [self._spool.take(*where)]
        else:
            pieces = where
        size = sum(len(piece) for piece in pieces)
        done = 0
        while done < size:
            done += os.writev(self._file.fileno(), _rest(pieces, done))
        if self._digest is not None:
            for piece in pieces:
                self._digest.update(piece)
        with self._ready:
            if not isinstance(where, tuple):
                self._memory -= size
            self.written += posts
            self._ready.notify_all()  # a write() waiting for room
        if posts:
            self._on_written(self.written)
