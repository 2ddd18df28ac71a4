"""Batches, from the spool to the encoders (host-free: the child imports this).

A batch is ``batch_size`` consecutive posts (:class:`Block`), fetched and encoded in chunks of about
``max_batch_bytes`` of stored text (:func:`chunks`). They wait in SQLite's copy of the selection
(:class:`Copy`, sorted after the snapshot into a table of positions) or in a file of rows streamed in export
order (:class:`Spool`). :class:`BatchFailed` is the one carrier of "batch N failed", from any thread or process.
"""

from __future__ import annotations

import csv
import errno
import marshal
import os
import pickle
import sqlite3
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

#: The posts table of skyarchive's documented schema, in column order (the key order of posts.json; host.py checks
#: them against the installed host).
POST_COLUMNS = (
    "uri", "cid", "did", "text", "created_at", "indexed_at", "has_media", "like_count", "repost_count",
    "reply_count", "quote_count", "is_reply", "reply_parent", "embed_type", "embed_data", "labels", "archived_at",
)  # fmt: skip
#: The columns whose size can be large (``text``, ``embed_data``, ``labels``), as indices into a row.
TEXT, EMBED, LABELS = 3, 14, 15
#: Rows and their stored sizes, as fetched for one encoder call.
Chunk = tuple[Sequence[Any], Sequence[int]]


@dataclass(frozen=True)
class Span:
    """A batch as a message names it: its number and its posts (1-based, inclusive)."""

    number: int
    first: int
    last: int

    def __str__(self) -> str:
        return f"batch {self.number} (posts {self.first}-{self.last})"


#: The failures a child process says by their kind, so that the export raises them as it would have itself (the
#: host's ``csv.Error`` for a NUL on Python 3.10); a post that is not JSON is the export's own error.
CARRIED: dict[str, type[BaseException]] = {"os": OSError, "memory": MemoryError, "csv": csv.Error}


class BatchFailed(Exception):
    """What stopped the export at one batch (``span``, or None outside any batch): ``cause``, from any thread or
    process. The export tells it as its own failure (``ExportFailed``), naming the batch."""

    def __init__(self, span: Span | None, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.span, self.cause = span, cause

    def message(self) -> dict[str, Any]:
        """The failure as a child process says it to the export (JSON)."""
        cause, span = self.cause, self.span
        kind = next((name for name, carried in CARRIED.items() if isinstance(cause, carried)), "other")
        said: dict[str, Any] = {"span": [span.number, span.first, span.last] if span else None, "type": kind}
        if isinstance(cause, OSError):
            said.update(errno=cause.errno, strerror=cause.strerror, filename=cause.filename)
        said["post"] = type(cause).__name__ == "InvalidPost"
        said["text"] = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        return said

    @classmethod
    def of(cls, said: dict[str, Any], post_error: type[Exception]) -> BatchFailed:
        """The failure a child process said, its cause as the export itself would have raised it."""
        span = Span(*said["span"]) if said["span"] else None
        if said["type"] == "os":
            return cls(span, OSError(said["errno"], said["strerror"], said["filename"]))
        kind = post_error if said["post"] else CARRIED.get(said["type"], RuntimeError)
        return cls(span, kind(said["text"]))


@dataclass(frozen=True)
class Block:
    """One batch: its number (1-based), its first post's place in the export (0-based), how many posts; in a
    :class:`Spool`, the byte range of its chunks."""

    number: int
    first: int
    count: int
    offset: int = 0
    length: int = 0

    @property
    def span(self) -> Span:
        return Span(self.number, self.first + 1, self.first + self.count)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, (str, bytes)) else 0


def row_sizes(rows: Sequence[Sequence[Any]]) -> list[int]:
    """Each row's stored size for the byte budget: its text, embed and labels (str or bytes; else nothing)."""
    try:
        return [len(row[TEXT] or "") + len(row[EMBED] or "") + len(row[LABELS] or "") for row in rows]
    except TypeError:  # a value of another type (SQLite stores what a column's type does not promise)
        return [_size(row[TEXT]) + _size(row[EMBED]) + _size(row[LABELS]) for row in rows]


def chunks(
    fetchmany: Callable[[int], Sequence[Any]],
    *,
    rows: int,
    budget: int,
    sizes_of: Callable[[Sequence[Any]], list[int]] = row_sizes,
) -> Iterator[Chunk]:
    """Up to ``rows`` rows of a stream, in chunks of about ``budget`` bytes of stored text.

    How many rows one fetch asks for follows an estimate of the row size: it starts at the whole budget (the
    first fetch is one row), rises at once to any larger row seen and halves after each fetch of smaller ones.
    """
    estimate, left = budget, rows
    while left > 0:
        chunk: list[Any] = []
        sizes: list[int] = []
        size = 0
        while left > 0 and size < budget:
            fetched = fetchmany(min(left, max(1, (budget - size) // max(estimate, 1))))
            if not fetched:
                left = 0
                break
            measured = sizes_of(fetched)
            estimate = max(max(measured), estimate // 2)
            size += sum(measured)
            chunk += fetched
            sizes += measured
            left -= len(fetched)
        if chunk:
            yield chunk, sizes


def planned(total: int, batch_size: int) -> Iterator[Block]:
    """The batches of an export of ``total`` posts."""
    for number, first in enumerate(range(0, total, batch_size), 1):
        yield Block(number, first, min(batch_size, total - first))


class Copy:
    """SQLite's copy of the selection (a database file of the export's own), read by batch.

    The read snapshot copies the rows in whatever order reads them fastest (:mod:`.reading`); :meth:`sort`
    then writes their export order into a table of positions, so that any process can read any batch.
    """

    ORDER = "created_at DESC, uri ASC"  # the host's POST_ORDER (host.py checks that it is this)

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode = OFF")
            self._conn.execute("PRAGMA synchronous = OFF")  # a scratch file: never synced
        return self._conn

    def sort(self) -> int:
        """Write the export order of the copied posts (``ord``: position → rowid); how many there are."""
        self.conn.execute("CREATE TABLE ord (pos INTEGER PRIMARY KEY, rid INTEGER)")
        return int(self.conn.execute(f"INSERT INTO ord (rid) SELECT rowid FROM posts ORDER BY {self.ORDER}").rowcount)

    def chunks(self, block: Block, budget: int) -> Iterator[Chunk]:
        """The rows of ``block``, in export order, in chunks of about ``budget`` bytes."""
        columns = ", ".join(f'p."{name}"' for name in POST_COLUMNS)
        cursor = self.conn.execute(
            f"SELECT {columns} FROM ord o JOIN posts p ON p.rowid = o.rid WHERE o.pos > ? AND o.pos <= ?"
            " ORDER BY o.pos",
            (block.first, block.first + block.count),
        )
        try:
            yield from chunks(cursor.fetchmany, rows=block.count, budget=budget)
        finally:
            cursor.close()

    def media_rows(self, chunk: int = 1000) -> Generator[list[tuple[Any, ...]], None, None]:
        """The copied media rows, in the order they were copied (the host's)."""
        cursor = self.conn.execute("SELECT * FROM media ORDER BY rowid")
        try:
            while rows := cursor.fetchmany(chunk):
                yield rows
        finally:
            cursor.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Spool:
    """Rows streamed in export order, waiting in a file: each chunk marshalled (pickle for a value marshal
    cannot hold, such as a driver's Decimal) and appended with one write; read back by batch, in any process."""

    def __init__(self, path: str, *, append: bool = False) -> None:
        self.path = path
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND if append else os.O_RDONLY
        self.fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        self.size = 0

    def append(self, chunk: Chunk) -> int:
        """Append one chunk; its length in the file."""
        rows, sizes = chunk
        try:
            data, kind = marshal.dumps((list(rows), list(sizes)), 4), b"M"
        except ValueError:
            data, kind = pickle.dumps((list(rows), list(sizes)), pickle.HIGHEST_PROTOCOL), b"P"
        head = kind + len(data).to_bytes(8, "little")
        _write_all(self.fd, [head, data], where=self.path)
        self.size += len(head) + len(data)
        return len(head) + len(data)

    def chunks(self, block: Block, budget: int = 0) -> Iterator[Chunk]:
        """The chunks of ``block``, one at a time."""
        offset, end = block.offset, block.offset + block.length
        while offset < end:
            head = os.pread(self.fd, 9, offset)
            length = int.from_bytes(head[1:], "little")
            data = os.pread(self.fd, length, offset + 9)
            if len(head) < 9 or len(data) < length:
                raise OSError(errno.EIO, "the export's spool file was cut short", self.path)
            offset += 9 + length
            rows, sizes = marshal.loads(data) if head[:1] == b"M" else pickle.loads(data)
            del data
            yield rows, sizes

    def close(self) -> None:
        os.close(self.fd)


def _write_all(fd: int, pieces: Sequence[Any], *, where: str) -> None:
    """``writev`` every byte of ``pieces`` (bytes-like) to ``fd``, however many calls it takes."""
    views = [memoryview(piece).cast("B") for piece in pieces]
    try:
        while views:
            done = os.writev(fd, views[:1024])  # IOV_MAX
            while views and done >= len(views[0]):
                done -= len(views.pop(0))
            if views and done:
                views[0] = views[0][done:]
    except OSError as exc:
        exc.filename = exc.filename or where
        raise
