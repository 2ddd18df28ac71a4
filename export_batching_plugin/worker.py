"""Encoding a batch and writing the posts file, in the export's process and in its child (:func:`main`).

Host-free (the child imports no skyarchive, no SQLAlchemy). Both processes build the same encoders from one
:class:`Recipe` (the host's options, after :mod:`.selfcheck` proved them equal to its functions) and frame a
batch the same way: its bytes depend only on its rows and its place, so either may encode any batch.

The child reads commands from the export, in batch order: ``E`` (encode a batch from the spool and write it),
``B`` (bytes the export encoded: write them), ``Z`` (the end); it answers one line each on a status pipe:
``ready``, ``written BATCH POSTS``, ``done SHA256`` (``done -`` without checksums) or ``failed JSON``. The end
of the command pipe before ``Z`` means the export has stopped: it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import os
import signal
import struct
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .blocks import BatchFailed, Block, Chunk, Copy, Spool, _write_all
from .csvlines import LinesEncoder, copy_lines_encoder, fields, posts_csv_encoder
from .jsonenc import BatchEncoder, json_items, jsonl_lines

#: A command: kind, then five numbers (``E``: the batch's number, first, count, offset, length; ``B``: the batch's
#: number (0: none), the posts the bytes complete, their length, the batch's first and count).
COMMAND = struct.Struct("<c5Q")
#: Bytes handed to the file at once (one writev), and read from the command pipe at once.
PIECE = 1 << 20
#: The disk is asked to start writing the file every this many bytes (so that the sync at the end waits for
#: the last of it only); ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, a hint: where it is refused, nothing.
WRITEBACK = 32 << 20


_write_back = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
if _write_back is not None:
    _write_back.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]


class InvalidPost(ValueError):
    """A post whose ``embed_data`` or ``labels`` is not JSON, in the child; the message is the host's."""


@dataclass(frozen=True)
class Recipe:
    """How to build the fast encoders, in either process: the host's simplejson options, whether posts.csv has
    the Labels column, whether posts.csv comes from PostgreSQL's COPY (:mod:`.pgcopy`), and whether orjson may
    be used (not where memory is limited: it crashes on a failed allocation)."""

    format: str
    json_options: Mapping[str, Any]
    jsonl_options: Mapping[str, Any] | None
    with_labels: bool
    copy_lines: bool = False
    fast: bool = True


def batch_encoder(recipe: Recipe, error: type[Exception]) -> Callable[[Sequence[Any], Sequence[int]], Iterator[Any]]:
    """The fast per-post encoder of ``recipe.format``: rows and their sizes -> pieces of bytes."""
    if recipe.format == "json":
        return json_items(recipe.json_options, error=error, fast=recipe.fast)
    if recipe.format == "jsonl":
        if recipe.jsonl_options is None:
            raise ValueError("this skyarchive writes no JSON Lines")
        return jsonl_lines(recipe.jsonl_options, error=error, fast=recipe.fast)
    media_of, labels_of = fields(error, fast=recipe.fast)
    if recipe.copy_lines:
        to_lines = copy_lines_encoder(media_of, labels_of)
        return lambda rows, sizes: iter((to_lines(rows),))
    return lines_encoder(posts_csv_encoder(with_labels=recipe.with_labels, media_of=media_of, labels_of=labels_of))


def lines_encoder(lines: LinesEncoder) -> BatchEncoder:
    """A posts.csv lines encoder as a batch encoder (UTF-8 bytes)."""
    return lambda rows, sizes: iter((lines(rows).encode("utf-8"),))


class Framing:
    """What the file's format puts around and between the posts: posts.json is ``"[\\n"``, the items joined by
    ``",\\n"``, then ``"\\n]\\n"`` (``"[]\\n"`` without posts); posts.csv a BOM and the header first; posts.jsonl
    nothing."""

    def __init__(self, format: str, encode: BatchEncoder, *, head: bytes = b"") -> None:
        self.format, self._encode, self.head = format, encode, head

    def pieces(self, chunks: Iterable[Chunk], *, opening: bool) -> Generator[Any, None, None]:
        """The bytes of these posts in the file, piece by piece (``opening``: they are the file's first)."""
        if self.format != "json":
            for rows, sizes in chunks:
                yield from self._encode(rows, sizes)
            return
        separator = b"[\n" if opening else b",\n"
        for rows, sizes in chunks:
            for items in self._encode(rows, sizes):
                yield separator
                yield items
                separator = b",\n"

    def tail(self, posts: int) -> bytes:
        return b"" if self.format != "json" else b"\n]\n" if posts else b"[]\n"


def gathered(pieces: Iterable[Any]) -> Iterator[tuple[list[Any], int]]:
    """``pieces`` (bytes-like) in runs of about PIECE bytes, each with its length."""
    held: list[Any] = []
    size = 0
    for piece in pieces:
        held.append(piece)
        size += len(piece)
        if size >= PIECE:
            yield held, size
            held, size = [], 0
    if held:
        yield held, size


class Writer:
    """The posts file (an open descriptor), written in order, a piece of about PIECE at a time, and hashed as
    it goes (with checksums); ``on_written(batch, posts)`` after each batch."""

    def __init__(self, fd: int, *, path: str, checksums: bool, on_written: Callable[[int, int], None]) -> None:
        self.fd, self.path, self.checksums = fd, path, checksums
        self._digest = hashlib.sha256() if checksums else None
        self._on_written = on_written
        self.posts = self.size = self._written_back = 0

    def write(self, pieces: Iterable[Any], *, batch: Block | None = None, posts: int = 0) -> None:
        """Write ``pieces`` (bytes-like, of ``batch``); then, if they complete ``posts`` posts, say so."""
        for held, _ in gathered(pieces):
            self._put(held)
        if posts:
            self.posts += posts
            self._on_written(batch.number if batch is not None else 0, self.posts)

    def _put(self, pieces: list[Any]) -> None:
        _write_all(self.fd, pieces, where=self.path)
        if self._digest is not None:
            for piece in pieces:
                self._digest.update(piece)
        self.size += sum(len(piece) for piece in pieces)
        if self.size - self._written_back >= WRITEBACK and _write_back is not None:
            _write_back(self.fd, self._written_back, self.size - self._written_back, 2)  # SYNC_FILE_RANGE_WRITE
            self._written_back = self.size

    def finish(self) -> str | None:
        """The sha256 of what was written (with checksums), else None. (The export's one sync at the end,
        :func:`.staging.sync_tree`, makes the file durable.)"""
        return self._digest.hexdigest() if self._digest is not None else None


def encoded(framing: Framing, block: Block, chunks: Iterable[Chunk], write: Callable[..., None], *,
            posts: int | None = None, opening: bool | None = None) -> None:  # fmt: skip
    """Encode ``block`` (or, with ``posts``, that many of its posts in ``chunks``) and hand its pieces to
    ``write``; whatever stops it is told as that batch's failure."""
    pieces = framing.pieces(chunks, opening=block.first == 0 if opening is None else opening)
    try:
        write(pieces, batch=block, posts=block.count if posts is None else posts)
    except Exception as exc:  # an OSError, MemoryError, a post that is not JSON, the child's failure as it said
        raise (exc if isinstance(exc, BatchFailed) else BatchFailed(block.span, exc)) from None
    finally:  # the rows' cursor closed now, not when the failure is forgotten
        pieces.close()
        if isinstance(chunks, Generator):
            chunks.close()


# -- the child process ------------------------------------------------------------------------------------


class Stopped(Exception):
    """The export went away (its end of the command pipe closed before ``Z``)."""


def _read(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = os.read(fd, size - len(data))
        if not more:
            raise Stopped
        data += more
    return data


def _serve(config: dict[str, Any], say: Callable[[str], None]) -> None:
    recipe = Recipe(**config["recipe"])
    framing = Framing(recipe.format, batch_encoder(recipe, InvalidPost))
    source: Copy | Spool = Copy(config["copy"]) if config.get("copy") else Spool(config["spool"])
    writer = Writer(
        config["posts"], path=config["path"], checksums=config["checksums"],
        on_written=lambda batch, posts: say(f"written {batch} {posts}"),
    )  # fmt: skip
    commands, budget = config["commands"], config["budget"]
    say("ready")
    while True:
        kind, *numbers = COMMAND.unpack(_read(commands, COMMAND.size))
        if kind == b"E":
            block = Block(*numbers)
            encoded(framing, block, source.chunks(block, budget), writer.write)
        elif kind == b"B":
            number, posts, length, first, count = numbers
            batch = Block(number, first, count) if number else None
            try:
                while length:
                    data = _read(commands, min(length, PIECE))
                    length -= len(data)
                    writer.write([data], batch=batch)
                writer.write((), batch=batch, posts=posts)
            except OSError as exc:
                raise BatchFailed(batch.span if batch else None, exc) from None
        else:
            say(f"done {writer.finish() or '-'}")
            return


def main(argv: list[str]) -> int:
    """The child: serve the export's commands (see the module's docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the export stops this process itself
    config = json.loads(argv[0])
    say = functools.partial(print, file=os.fdopen(config["status"], "w", encoding="utf-8"), flush=True)
    try:
        _serve(config, say)
    except Stopped:
        return 1
    except BatchFailed as failed:
        with contextlib.suppress(OSError):
            say("failed " + json.dumps(failed.message()))
        return 1
    except BaseException as exc:  # anything else: said, then the export fails with it
        with contextlib.suppress(OSError):
            say("failed " + json.dumps(BatchFailed(None, exc).message()))
        return 1
    return 0
