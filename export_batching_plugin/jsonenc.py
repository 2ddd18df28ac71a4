"""posts.json and posts.jsonl from plain row tuples, byte-identical to the host's (no host and no SQLAlchemy
here: the child process imports this).

Records are built as ``post_record`` builds them and encoded with orjson (``OPT_INDENT_2``, or compact for
JSON Lines), whose output equals simplejson's (``indent=2`` or compact separators, ``ensure_ascii=False``) for
str, int (64-bit), bool, None, lists and dicts; not for floats (orjson writes ``1e-7`` where Python writes
``1e-07``, ``null`` for an infinity simplejson refuses), integers beyond 64 bits or bytes (orjson refuses
both). So embeds and labels are parsed with simplejson, as the host parses them (orjson would make big
integers floats), noting whether a float was seen; a record with such a float, a count that is not a plain
int (SQLite stores what a column's declared type does not promise: a REAL or TEXT in an INTEGER column), or
more than ``LARGE_RECORD`` of stored text, and any run orjson refuses, is encoded with simplejson, as the host
encodes it. The self-check (:mod:`.selfcheck`) proves it on hostile rows before each export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import simplejson
from orjson import OPT_INDENT_2
from orjson import dumps as _dumps

from .threads import on_fresh_stack

#: Rows and their stored sizes -> the batch's pieces, yielded one at a time (bytes or views, so that nothing
#: is copied): posts.json's array items, to be joined by ",\n"; posts.jsonl's lines, each ending in "\n".
BatchEncoder = Callable[[Sequence[Sequence[Any]], Sequence[int]], Iterator[Any]]
#: Records are encoded in runs of about this much stored text (the output of one run is about twice that).
RUN_BYTES = 1 << 20
#: A record with more stored text than this goes to simplejson: orjson reserves worst-case buffer space
#: for long strings, several times the record's size (docs/benchmarks.md, "Measurements behind the design").
LARGE_RECORD = 64 << 10


class Parser:
    """simplejson parsing, as the host parses (``simplejson.loads``), that notes whether a float was seen."""

    def __init__(self, error: type[Exception]) -> None:
        self._error = error  # what invalid JSON raises, with the host's message (skyarchive's SkyarchiveError)
        self.saw_float = False
        self._decode = simplejson.JSONDecoder(parse_float=self._float).decode

    def _float(self, text: str) -> float:
        self.saw_float = True
        return float(text)

    def __call__(self, value: Any, column: str, uri: Any) -> Any:
        try:
            return self._parse(value, column, uri)
        except RecursionError:  # nested deeper than this stack leaves room for: the host's limit or more
            return on_fresh_stack(self._parse, value, column, uri)

    def _parse(self, value: Any, column: str, uri: Any) -> Any:
        try:
            if type(value) is str:
                return self._decode(value)
            return simplejson.loads(value, parse_float=self._float)  # bytes, as the host's loads takes them
        except ValueError as exc:  # the host's message, word for word
            raise self._error(f"post {uri}: {column} is not valid JSON ({exc})") from None


#: ``(record, simple)`` of each row: the posts.json object as ``post_record`` builds it, and whether it must
#: be encoded by simplejson (see the module's docstring) rather than orjson.
Records = Callable[[Sequence[Sequence[Any]], Sequence[int]], Iterator[tuple[dict[str, Any], bool]]]


def records_of(parse: Parser) -> Records:
    """The records of rows (in POST_COLUMNS order), as ``post_record`` builds them; ``sizes`` are the rows'
    stored sizes, as the reader counted them for the byte budget."""

    def records(rows: Sequence[Sequence[Any]], sizes: Sequence[int]) -> Iterator[tuple[dict[str, Any], bool]]:
        for row, size in zip(rows, sizes, strict=True):
            (uri, cid, did, text, created_at, indexed_at, has_media, likes, reposts, replies, quotes, is_reply,
             reply_parent, embed_type, embed_data, labels, archived_at) = row  # fmt: skip
            record: dict[str, Any] = {
                "uri": uri, "cid": cid, "did": did, "text": text, "created_at": created_at,
                "indexed_at": indexed_at, "has_media": bool(has_media), "like_count": likes,
                "repost_count": reposts, "reply_count": replies, "quote_count": quotes, "is_reply": bool(is_reply),
            }  # fmt: skip
            if reply_parent is not None:
                record["reply_parent"] = reply_parent
            if embed_type is not None:
                record["embed_type"] = embed_type
            parse.saw_float = False
            if embed_data is not None:
                record["embed_data"] = parse(embed_data, "embed_data", uri)
            if labels is not None:
                record["labels"] = parse(labels, "labels", uri)
            record["archived_at"] = archived_at
            plain = type(likes) is int and type(reposts) is int and type(replies) is int and type(quotes) is int
            yield record, parse.saw_float or not plain or size > LARGE_RECORD

    return records


def with_room(encode: Callable[[Any], str], value: Any) -> str:
    """``encode(value)``; on a fresh stack if it is nested deeper than this one leaves room for (the host's
    limit or more: see :func:`.threads.on_fresh_stack`)."""
    try:
        return encode(value)
    except RecursionError:
        result: str = on_fresh_stack(encode, value)
        return result


def _in_runs(
    pairs: Iterator[tuple[dict[str, Any], bool]],
    sizes: Sequence[int],
    fast: Callable[[list[dict[str, Any]]], Any],
    simple: Callable[[dict[str, Any]], Any],
) -> Iterator[Any]:
    """The records of ``pairs`` encoded in runs of about RUN_BYTES of stored text by ``fast``, each record that
    needs simplejson on its own by ``simple``, in order."""
    run: list[dict[str, Any]] = []
    run_bytes = 0
    for (record, needs_simplejson), size in zip(pairs, sizes):  # noqa: B905 - pairs are of the same rows
        if needs_simplejson:
            if run:
                yield fast(run)
                run, run_bytes = [], 0
            yield simple(record)
            continue
        run.append(record)
        run_bytes += size
        if run_bytes >= RUN_BYTES:
            yield fast(run)
            run, run_bytes = [], 0
    if run:
        yield fast(run)


def json_items(options: Mapping[str, Any], *, error: type[Exception], fast: bool = True) -> BatchEncoder:
    """Encode rows (in schema order) to the items of a posts.json array, indented as in the host's file
    (``options``: its simplejson options, ``JSON_OPTIONS``; ``error``: what invalid JSON in a post raises).
    Without ``fast``, everything is encoded by simplejson: where memory is limited (orjson cannot fail an
    allocation: it crashes the process), which raises MemoryError instead."""
    records = records_of(Parser(error))
    slow = simplejson.JSONEncoder(**options).encode

    def simple(run: list[dict[str, Any]]) -> memoryview:
        return memoryview(with_room(slow, run).encode("utf-8"))[2:-2]  # "[\n" + items + "\n]" -> items

    def orjson(run: list[dict[str, Any]]) -> memoryview:
        try:
            return memoryview(_dumps(run, option=OPT_INDENT_2))[2:-2]
        except TypeError:  # an integer beyond 64 bits, bytes, a lone surrogate: simplejson decides
            return simple(run)

    def encode(rows: Sequence[Sequence[Any]], sizes: Sequence[int]) -> Iterator[memoryview]:
        return _in_runs(records(rows, sizes), sizes, orjson if fast else simple, lambda record: simple([record]))

    return encode


def jsonl_lines(options: Mapping[str, Any], *, error: type[Exception], fast: bool = True) -> BatchEncoder:
    """Encode rows (in schema order) to posts.jsonl lines, each ending in a newline, as the host writes them:
    ``simplejson.dumps(post_record(post), **JSONL_OPTIONS)`` and a newline (``options``: ``JSONL_OPTIONS``).
    orjson's compact output is simplejson's with ``separators=(",", ":")`` and ``ensure_ascii=False``, for the
    same values as in posts.json. ``fast``: as for :func:`json_items`."""
    records = records_of(Parser(error))
    slow = simplejson.JSONEncoder(**options).encode

    def simple(record: dict[str, Any]) -> bytes:
        return (with_room(slow, record) + "\n").encode("utf-8")

    def in_simplejson(run: list[dict[str, Any]]) -> bytes:
        return b"".join(map(simple, run))

    def orjson(run: list[dict[str, Any]]) -> bytes:
        try:
            return b"\n".join(map(_dumps, run)) + b"\n"
        except TypeError:  # as in posts.json: simplejson decides, record by record
            return in_simplejson(run)

    def encode(rows: Sequence[Sequence[Any]], sizes: Sequence[int]) -> Iterator[bytes]:
        return _in_runs(records(rows, sizes), sizes, orjson if fast else in_simplejson, simple)

    return encode
