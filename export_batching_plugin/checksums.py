"""SHA256SUMS: a checksum of every file of an export, in the format ``sha256sum`` writes and reads.

Each line is ``<64 hex digits>  <path relative to the export directory>``.
A path holding a backslash, a newline or a carriage return is written the way
GNU ``sha256sum`` (coreutils 9) writes it: those characters escaped as
``\\\\``, ``\\n`` and ``\\r``, and the line prefixed with a backslash, so that
``sha256sum -c SHA256SUMS`` finds the file again.

The posts file is hashed as it is written (:class:`StreamDigest`, on a thread
of its own: hashlib lets go of the GIL for large updates, so the hashing runs
on the second core while posts are encoded); the posts file is never read
again.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import queue
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .threads import start_thread

SUMS_NAME = "SHA256SUMS"
_CHUNK = 2 << 20
_BLOCK = 1 << 20


def sums_line(hexdigest: str, path: str) -> bytes:
    """One line of SHA256SUMS, as GNU sha256sum writes it (see the module's docstring)."""
    name = os.fsencode(path)
    escaped = name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
    prefix = b"\\" if escaped != name else b""
    return prefix + hexdigest.encode("ascii") + b"  " + escaped + b"\n"


def stream_digest(stream: IO[bytes]) -> str:
    """The hex sha256 of what is left to read in ``stream``, read in blocks."""
    digest = hashlib.sha256()
    while block := stream.read(_BLOCK):
        digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """The hex sha256 of a file."""
    with open(path, "rb") as stream:
        return stream_digest(stream)


def write_sums(path: Path, *entries: Iterable[tuple[str, str]]) -> None:
    """Write SHA256SUMS (exclusively) from ``(hexdigest, relative path)`` pairs, in their order."""
    with open(path, "xb") as stream:
        for hexdigest, name in itertools.chain(*entries):
            stream.write(sums_line(hexdigest, name))


class StreamDigest:
    """The sha256 of a stream written piece by piece (:meth:`update`), computed on a thread of its own.

    The pieces are copied into one of two buffers of _CHUNK bytes, allocated once; a full buffer goes to
    the hashing thread, which gives it back once hashed. So each ``update`` of the hashing thread is a
    large one (it lets go of the GIL, and must wait for it again after each), and no fresh memory is
    touched for the copies. Larger buffers cost less time and more memory; the measured trade-off, and
    why the buffers are 2 MiB, are in docs/benchmarks.md ("Checksums on JSON"). Where the thread cannot
    be started, each piece is hashed as it is written. A context manager: the thread is stopped on the
    way out.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._full: queue.Queue[Any] = queue.Queue()
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._thread = start_thread(self._run, "export-sha256", doing="hashing the posts file")
        if self._thread is None:
            return
        for _ in range(2):
            self._free.put(bytearray(_CHUNK))
        self._buffer = self._free.get()
        self._used = 0

    def __enter__(self) -> StreamDigest:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.abort()

    def update(self, piece: Any) -> None:
        if self._thread is None:
            self._digest.update(piece)
            return
        view = memoryview(piece).cast("B")
        while view:
            room = _CHUNK - self._used
            taken = view[:room]
            self._buffer[self._used : self._used + len(taken)] = taken
            self._used += len(taken)
            view = view[len(taken) :]
            if self._used == _CHUNK:
                self._hand_over()

    def _hand_over(self) -> None:
        self._full.put((self._buffer, self._used))
        self._buffer, self._used = self._free.get(), 0

    def hexdigest(self) -> str:
        """Once everything is written: the digest."""
        if self._thread is not None:
            self._full.put((self._buffer, self._used))
            self._full.put(None)
            self._thread.join()
        return self._digest.hexdigest()

    def abort(self) -> None:
        """After a failure: stop the thread (again, or after :meth:`hexdigest`: nothing)."""
        if self._thread is not None and self._thread.is_alive():
            self._full.put(None)
            self._thread.join()

    def _run(self) -> None:
        update = self._digest.update
        while (chunk := self._full.get()) is not None:
            buffer, used = chunk
            with memoryview(buffer) as view:
                update(view[:used])
            self._free.put(buffer)
