"""The rows of an export, as they travel from the read snapshot to the encoders (no SQLAlchemy, no host: the
encoder process imports this too).

A :class:`Batch` is a run of consecutive posts; :class:`RowSpool` holds the batches read inside the snapshot
until they are encoded, in an unnamed file, so that the snapshot lasts as long as the rows take to read.
"""

from __future__ import annotations

import errno
import marshal
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .spoolfile import punch_out

#: The posts table's columns whose size can be large, as indices into a row in schema order (``text``,
#: ``embed_data``, ``labels``); they make up a row's size for the byte budget. host.py checks the order.
TEXT, EMBED, LABELS = 3, 14, 15


@dataclass(frozen=True)
class Batch:
    """A run of consecutive posts of the export, in export order."""

    number: int  #: 1-based
    offset: int  #: position of its first post in the export (0-based)
    rows: Sequence[Sequence[Any]]  #: row tuples, columns in schema order
    sizes: Sequence[int]  #: each row's stored size (text, embed, labels), as counted for the byte budget

    def describe(self) -> str:
        return f"batch {self.number} (posts {self.offset + 1}-{self.offset + len(self.rows)})"


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes)) else 0


def row_size(row: Sequence[Any]) -> int:
    """A row's stored size for the byte budget: its text, embed and labels."""
    return _size(row[TEXT]) + _size(row[EMBED]) + _size(row[LABELS])


class RowSpool:
    """The selection's batches as they are read inside the snapshot, waiting in an unnamed file to be encoded:
    the snapshot lasts as long as the rows take to read, at the database's speed, not as long as encoding and
    writing them take.

    Each batch is marshalled (``marshal``: the row tuples as the driver made them, in C; pickle for a value
    marshal cannot hold), length-prefixed, and appended with one write; :func:`read_spool` reads them back in
    order, as they come if need be (the encoder process reads the file while it grows), and gives each one's
    space back once read. The file lives where :func:`.spoolfile.spool_directory` says (TMPDIR, or beside the
    export when TMPDIR is held in memory), unnamed: nothing is left if the process dies. A context manager.
    """

    def __init__(self, directory: Path) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=directory, buffering=0)  # noqa: SIM115 - see close()
        self.fd = self._file.fileno()
        self.directory = directory
        self.size = 0  #: bytes written (the most the file holds: what is read back is given back)
        self.count = 0  #: batches written

    def __enter__(self) -> RowSpool:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def put(self, batch: Batch) -> None:
        """Append one batch (its number, offset, rows and sizes)."""
        record = (batch.number, batch.offset, list(batch.rows), list(batch.sizes))
        try:
            data, kind = marshal.dumps(record, 4), b"M"
        except ValueError:  # a value marshal cannot hold (a driver's Decimal, datetime, row object): pickle
            data, kind = pickle.dumps(record, pickle.HIGHEST_PROTOCOL), b"P"
        head = kind + len(data).to_bytes(8, "little")
        try:
            written = os.pwritev(self.fd, [head, data], self.size)  # no copy of the batch's bytes
            if written < 9 + len(data):  # a short write (rare): the rest, from one buffer
                rest = memoryview(head + data)[written:]
                while rest:
                    rest = rest[os.pwrite(self.fd, rest, self.size + 9 + len(data) - len(rest)) :]
        except OSError as exc:
            exc.filename = exc.filename or f"{self.directory} (the export's spool file)"
            raise
        self.size += 9 + len(data)
        self.count += 1

    def batches(self) -> Iterator[Batch]:
        """The batches put, in order (once, after the last put)."""
        return read_spool(self.fd, wait=lambda: False, where=self.directory)

    def close(self) -> None:
        self._file.close()


def read_spool(fd: int, *, wait: Callable[[], bool], where: Path | str = "") -> Iterator[Batch]:
    """The batches of the spool file ``fd`` in order, each one's space given back once read; at the end of
    what is there, ``wait()``: True when more may have come (read on), False when no more will."""
    offset = 0
    while True:
        head = os.pread(fd, 9, offset)
        length = int.from_bytes(head[1:], "little") if len(head) == 9 else 0
        data = os.pread(fd, length, offset + 9) if len(head) == 9 else b""
        if len(head) < 9 or len(data) < length:
            if wait():
                continue
            if head:
                raise OSError(errno.EIO, "the export's spool file was cut short", str(where))
            return
        number, first, rows, sizes = marshal.loads(data) if head[:1] == b"M" else pickle.loads(data)
        del data  # not held while the batch is encoded
        punch_out(fd, offset, 9 + length)
        offset += 9 + length
        yield Batch(number=number, offset=first, rows=rows, sizes=sizes)
