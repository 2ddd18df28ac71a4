"""Streaming writers for posts.json and posts.csv.

Each batch of posts is encoded by :mod:`.encoding` (the host's per-post
encoding, reproduced on plain rows and proven equal); the writers own only
the framing, which reproduces the host's whole-file output byte for byte:

- JSON: the host writes ``simplejson.dumps(records, indent=2) + "\\n"``. A
  batch encoded the same way is ``"[\\n" + items + "\\n]"`` with each item
  indented exactly as in the whole array, so the file is ``"[\\n"``, the
  batches' items joined by ``",\\n"``, then ``"\\n]\\n"``; no posts: ``"[]\\n"``.
- CSV: a UTF-8 BOM, the header (``CSV_HEADER``), then the rows, all in the
  csv module's excel dialect (``\\r\\n`` line ends, minimal quoting).

Both write UTF-8 bytes to a binary file, created exclusively.
"""

from __future__ import annotations

import csv
import io
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from .encoding import BatchEncoder, Encoders
from .reading import Batch

#: Write buffer of the posts file: a batch of typical posts is a few hundred KiB.
_BUFFER = 1 << 20
#: Receives every piece written, in order (for a checksum), or None.
Sink = Callable[[Any], None]


class PostsWriter(ABC):
    """What both writers share: the file, ending it, syncing it, closing it after a failure."""

    def __init__(self, path: Path, sink: Sink | None = None) -> None:
        self.path = path
        self._stream = cast(io.BufferedWriter, open(path, "xb", buffering=_BUFFER))  # noqa: SIM115 - closed by sync()/abort()
        self._sink = sink

    def __enter__(self) -> PostsWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Close the file if it is still open (after a failure: what is still buffered is dropped)."""
        self.abort()

    def _write(self, data: Any) -> None:
        with self._naming_the_file():
            self._stream.write(data)
        if self._sink is not None:
            self._sink(data)

    @contextmanager
    def _naming_the_file(self) -> Iterator[None]:
        """An OSError from a buffered write does not say which file it was writing: this one."""
        try:
            yield
        except OSError as exc:
            if exc.filename is None:
                exc.filename = str(self.path)
            raise

    @abstractmethod
    def write_batch(self, batch: Batch) -> None:
        """Write one batch's posts."""

    def end(self) -> None:
        """After the last batch: write what closes the file, and flush it."""
        with self._naming_the_file():
            self._stream.flush()

    def sync(self) -> None:
        """Flush the file to disk and close it."""
        with self._naming_the_file():
            os.fsync(self._stream.fileno())
            self._stream.close()

    def abort(self) -> None:
        """Close after a failure (again, or after :meth:`sync`: nothing): what is still buffered is dropped
        (the file descriptor is closed first, so nothing more is written), and nothing raises."""
        with suppress(BaseException):
            self._stream.raw.close()
        with suppress(BaseException):
            self._stream.close()


class JsonWriter(PostsWriter):
    """posts.json, one batch at a time."""

    def __init__(self, path: Path, encode: BatchEncoder, sink: Sink | None = None) -> None:
        super().__init__(path, sink)
        self._encode = encode
        self._separator = b"[\n"

    def write_batch(self, batch: Batch) -> None:
        for items in self._encode(batch.rows, batch.sizes):
            self._write(self._separator)
            self._write(items)
            self._separator = b",\n"

    def end(self) -> None:
        self._write(b"[]\n" if self._separator == b"[\n" else b"\n]\n")
        super().end()


class CsvWriter(PostsWriter):
    """posts.csv, one batch at a time: each batch's lines encoded and written at once."""

    def __init__(
        self, path: Path, header: Sequence[str], encode: Callable[[Sequence[Any]], bytes], sink: Sink | None = None
    ) -> None:
        super().__init__(path, sink)
        self._encode = encode
        text = io.StringIO()
        csv.writer(text).writerow(header)  # the host's dialect: excel
        self._write(("\ufeff" + text.getvalue()).encode("utf-8"))

    def write_batch(self, batch: Batch) -> None:
        self._write(self._encode(batch.rows))


def open_writer(format: str, path: Path, encoders: Encoders, sink: Sink | None = None) -> PostsWriter:
    """The streaming writer of ``format`` ("json" or "csv") with the encoders' lines, creating ``path`` exclusively."""
    if format == "json":
        return JsonWriter(path, encoders.json, sink)
    lines = encoders.csv
    return CsvWriter(path, encoders.csv_header, lambda rows: lines(rows).encode("utf-8"), sink)
