"""Streaming writers for posts.json and posts.csv: the framing of the host's files, batch by batch.

Each batch of posts is encoded by :mod:`.encoding` (the host's per-post
encoding, reproduced on plain rows and proven equal); the writers own only
the framing, which reproduces the host's whole-file output byte for byte:

- JSON: the host writes ``simplejson.dumps(records, indent=2) + "\\n"``. A
  batch encoded the same way is ``"[\\n" + items + "\\n]"`` with each item
  indented exactly as in the whole array, so the file is ``"[\\n"``, the
  batches' items joined by ``",\\n"``, then ``"\\n]\\n"``; no posts: ``"[]\\n"``.
- CSV: a UTF-8 BOM, the header (``CSV_HEADER``), then the rows, all in the
  csv module's excel dialect (``\\r\\n`` line ends, minimal quoting).
- JSON Lines (skyarchive 0.5): the lines, one per post, each ending in ``\\n``; no posts: an empty file.

The bytes go to an :class:`.output.Output`, which writes them behind the export (UTF-8, a file created
exclusively), so that encoding never waits on the disk.
"""

from __future__ import annotations

import csv
import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .jsonenc import BatchEncoder
from .output import Output
from .rows import Batch

#: A batch's encoded posts are handed to the output in pieces of about this size (1 MiB), so that a batch of
#: large posts is not held whole in memory while the one before it is written.
CHUNK = 1 << 20

if TYPE_CHECKING:  # not imported at run time: the encoder process imports this module without the host
    from .encoding import Encoders


class PostsWriter(ABC):
    """What both writers share: the output, the tag a failure names, ending it, closing it after a failure."""

    def __init__(self, output: Output) -> None:
        self.output = output
        self.path = output.path

    def __enter__(self) -> PostsWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Close the output if it is still open (after a failure: what is not written yet is dropped)."""
        self.output.__exit__(kind, exc, tb)

    @abstractmethod
    def write_batch(self, batch: Batch) -> None:
        """Hand one batch's posts over to be written (a failure writing them names the batch)."""

    def end(self) -> None:  # noqa: B027 - CSV has nothing to close with
        """After the last batch: what closes the file."""

    def finish(self, *, tick: Callable[[], None] = lambda: None) -> str | None:
        """Wait until the whole file is written, sync it; its sha256 (with checksums), else None."""
        return self.output.finish(tick=tick)


class JsonWriter(PostsWriter):
    """posts.json, one batch at a time."""

    def __init__(self, output: Output, encode: BatchEncoder) -> None:
        super().__init__(output)
        self._encode = encode
        self._separator = b"[\n"

    def write_batch(self, batch: Batch) -> None:
        pieces: list[Any] = []
        size = 0
        for items in self._encode(batch.rows, batch.sizes):
            pieces += (self._separator, items)
            self._separator = b",\n"
            size += len(items)
            if size >= CHUNK:  # large posts: handed over as they come, not held for the whole batch
                self.output.write(pieces, tag=batch)
                pieces, size = [], 0
        self.output.write(pieces, posts=len(batch.rows), tag=batch)

    def end(self) -> None:
        self.output.write([b"[]\n" if self._separator == b"[\n" else b"\n]\n"])


class JsonlWriter(PostsWriter):
    """posts.jsonl, one batch at a time: the batch's lines, as they come."""

    def __init__(self, output: Output, encode: BatchEncoder) -> None:
        super().__init__(output)
        self._encode = encode

    def write_batch(self, batch: Batch) -> None:
        pieces: list[Any] = []
        size = 0
        for lines in self._encode(batch.rows, batch.sizes):
            pieces.append(lines)
            size += len(lines)
            if size >= CHUNK:  # large posts: handed over as they come, not held for the whole batch
                self.output.write(pieces, tag=batch)
                pieces, size = [], 0
        self.output.write(pieces, posts=len(batch.rows), tag=batch)


class CsvWriter(PostsWriter):
    """posts.csv, one batch at a time: each batch's lines encoded and handed over at once."""

    def __init__(self, output: Output, header: Sequence[str], encode: Callable[[Sequence[Any]], bytes]) -> None:
        super().__init__(output)
        self._encode = encode
        text = io.StringIO()
        csv.writer(text).writerow(header)  # the host's dialect: excel
        self.output.write([("\ufeff" + text.getvalue()).encode("utf-8")])

    def write_batch(self, batch: Batch) -> None:
        self.output.write([self._encode(batch.rows)], posts=len(batch.rows), tag=batch)


def open_writer(format: str, output: Output, encoders: Encoders) -> PostsWriter:
    """The streaming writer of ``format`` ("json", "jsonl" or "csv") with the encoders', writing to ``output``."""
    if format == "json":
        return JsonWriter(output, encoders.json)
    if format == "jsonl":
        if encoders.jsonl is None:
            raise ValueError("this skyarchive writes no JSON Lines")
        return JsonlWriter(output, encoders.jsonl)
    lines = encoders.csv
    return CsvWriter(output, encoders.csv_header, lambda rows: lines(rows).encode("utf-8"))


def posts_output(path: Path, *, spool_dir: Path, checksums: bool, on_written: Callable[[int], None]) -> Output:
    """The output of the posts file at ``path``; ``on_written(posts written)`` after each batch is written."""
    return Output(path, spool_dir=spool_dir, checksums=checksums, on_written=on_written)
