"""Streaming writers for posts.json and posts.csv.

Each batch of posts is encoded by :mod:`.encoding` (the host's per-post
encoding, reproduced on plain rows and proven equal by the differential
tests); the writers own only the framing, which reproduces the host's
whole-file output byte for byte:

- JSON: the host writes ``simplejson.dumps(records, indent=2) + "\\n"``. A
  batch encoded the same way is ``"[\\n" + items + "\\n]"`` with each item
  indented exactly as in the whole array, so the file is ``"[\\n"``, the
  batches' items joined by ``",\\n"``, then ``"\\n]\\n"``; no posts: ``"[]\\n"``.
- CSV: BOM and header (the host's ``open_csv``), then rows.
"""

from __future__ import annotations

import csv
import io
from contextlib import suppress
from pathlib import Path
from typing import IO, Any, Protocol

from skyarchive.export import open_csv

from .encoding import BatchEncoder, CsvRows, make_encoders
from .reading import Batch

#: Write buffer of posts.json: a batch of typical posts is a few hundred KiB.
_BUFFER = 1 << 20


class PostsWriter(Protocol):
    path: Path

    def write_batch(self, batch: Batch) -> None: ...
    def finish(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class _FileWriter:
    """What both writers do with their file: flush, close, and close after a failure."""

    path: Path
    _stream: IO[Any]

    def finish(self) -> None:
        """Call once, after the last batch."""
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()

    def abort(self) -> None:
        """Close after a failure: what is still buffered is dropped, errors are ignored."""
        with suppress(OSError):
            self._stream.close()


class JsonWriter(_FileWriter):
    """posts.json, one batch at a time (UTF-8 bytes, as the host's text file holds them)."""

    def __init__(self, path: Path, encode: BatchEncoder) -> None:
        self.path = path
        self._encode = encode
        self._stream = open(path, "xb", buffering=_BUFFER)  # noqa: SIM115 - closed by close()/abort()
        self._separator = b"[\n"

    def write_batch(self, batch: Batch) -> None:
        for items in self._encode(batch.rows, batch.sizes):
            self._stream.write(self._separator)
            self._stream.write(items)
            self._separator = b",\n"

    def finish(self) -> None:
        """Close the array (call once, after the last batch) and flush."""
        self._stream.write(b"[]\n" if self._separator == b"[\n" else b"\n]\n")
        super().finish()


class CsvWriter(_FileWriter):
    """posts.csv, one batch at a time."""

    def __init__(self, path: Path, build: CsvRows) -> None:
        self.path = path
        self._build = build
        self._stream, _ = open_csv(path)  # BOM and header, as the host writes them
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer)  # the host's dialect: excel

    def write_batch(self, batch: Batch) -> None:
        # One write per batch: the csv module's many small writes are slow on a file's text layer.
        self._buffer.seek(0)
        self._buffer.truncate()
        self._writer.writerows(self._build(batch.rows))
        self._stream.write(self._buffer.getvalue())


def open_writer(format: str, path: Path) -> PostsWriter:
    """The streaming writer of ``format`` ("json" or "csv"), creating ``path`` exclusively."""
    encode, build = make_encoders()
    return JsonWriter(path, encode) if format == "json" else CsvWriter(path, build)
