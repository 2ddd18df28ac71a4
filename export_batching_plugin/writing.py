"""Streaming writers for posts.json and posts.csv.

Each post is encoded by the host's own code (``post_record`` with the host's
simplejson options, ``csv_row``); the writers own only the framing, which
reproduces the host's whole-file output byte for byte:

- JSON: the host writes ``simplejson.dumps(records, indent=2) + "\\n"``. A
  batch encoded the same way is ``"[\\n" + items + "\\n]"`` with each item
  indented exactly as in the whole array, so the file is ``"[\\n"``, the
  batches' items joined by ``",\\n"``, then ``"\\n]\\n"``; no posts: ``"[]\\n"``.
- CSV: BOM and header (the host's ``open_csv``), then rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Any, Protocol

import simplejson
from skyarchive.export import JSON_OPTIONS, csv_row, open_csv, post_record

#: Write buffer of posts.json: a batch of typical posts is a few hundred KiB.
_BUFFER = 1 << 20


class PostsWriter(Protocol):
    path: Path

    def write_batch(self, rows: Sequence[Any]) -> None: ...
    def finish(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class JsonWriter:
    """posts.json, one batch at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stream: IO[str] = open(path, "x", encoding="utf-8", buffering=_BUFFER)  # noqa: SIM115
        self._encode = simplejson.JSONEncoder(**JSON_OPTIONS).encode
        self._separator = "[\n"

    def write_batch(self, rows: Sequence[Any]) -> None:
        if not rows:
            return
        text = self._encode([post_record(row) for row in rows])  # "[\n" + items + "\n]"
        self._stream.write(self._separator)
        self._stream.write(text[2:-2])
        self._separator = ",\n"

    def finish(self) -> None:
        """Close the array (call once, after the last batch) and flush."""
        self._stream.write("[]\n" if self._separator == "[\n" else "\n]\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()

    def abort(self) -> None:
        """Close after a failure: what is still buffered is dropped, errors are ignored."""
        with suppress(OSError):
            self._stream.close()


class CsvWriter:
    """posts.csv, one batch at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stream, self._writer = open_csv(path)

    def write_batch(self, rows: Sequence[Any]) -> None:
        self._writer.writerows([csv_row(row) for row in rows])

    def finish(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()

    def abort(self) -> None:
        """Close after a failure: what is still buffered is dropped, errors are ignored."""
        with suppress(OSError):
            self._stream.close()


def open_writer(format: str, path: Path) -> PostsWriter:
    """The streaming writer of ``format`` ("json" or "csv"), creating ``path`` exclusively."""
    return JsonWriter(path) if format == "json" else CsvWriter(path)
