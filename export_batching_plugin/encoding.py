"""Per-post encoding on the hot path, byte-identical to the host's ``post_record``/``csv_row``.

The host's functions take an object with attributes (an ORM ``Post``); the
plugin reads plain row tuples, which are cheaper, and encodes them here:

- JSON: records are built as ``post_record`` builds them, and encoded with
  orjson (``OPT_INDENT_2``), whose output equals simplejson's ``indent=2,
  ensure_ascii=False`` for str, int (64-bit), bool, None, lists and dicts, but
  not for floats (orjson writes ``1e-7`` where Python writes ``1e-07``, and
  ``null`` for infinity where simplejson refuses it), integers beyond 64 bits
  or bytes (orjson refuses both). So embeds and labels are parsed with
  simplejson, as the host parses them (orjson would turn big integers into
  floats), noting whether a float was seen; a record with such a float, a
  count that is not a plain int (SQLite stores what a column's declared type
  does not promise: a REAL or TEXT in an INTEGER column), or more than
  ``LARGE_RECORD`` of stored text, and any run orjson refuses, is encoded
  with simplejson, as the host encodes it.
- CSV: the fields ``csv_row`` builds, with the host's own ``media_hashes`` and
  ``label_values`` (embeds parsed with orjson where that gives the same fields,
  :func:`fields_of`), written as lines without csv.writer but byte-identical to
  it (:mod:`.csvlines`).

Before the fast encoders are used, :mod:`.selfcheck` runs them and the
host's own functions on a fixed set of hostile rows (every column, every
special case above, values of the wrong type); if any output differs, the
export streams with the host's own per-post functions instead (slower, same
bounded memory) and says so once.
``tests/test_byte_identity.py`` proves the equality on random archives for
each host release.
"""

from __future__ import annotations

import csv
import io
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import simplejson
from orjson import OPT_INDENT_2, JSONDecodeError
from orjson import dumps as _dumps
from orjson import loads as _loads

from . import host
from .csvlines import Field, LinesEncoder, posts_csv_encoder
from .threads import on_fresh_stack

#: Rows and their stored sizes -> the batch's pieces, yielded one at a time (bytes or views, so that nothing
#: is copied): posts.json's array items, to be joined by ",\n"; posts.jsonl's lines, each ending in "\n".
BatchEncoder = Callable[[Sequence[Sequence[Any]], Sequence[int]], Iterator[Any]]
#: Records are encoded in runs of about this much stored text (the output of one run is about twice that).
RUN_BYTES = 1 << 20
#: A record with more stored text than this goes to simplejson: orjson reserves worst-case buffer space
#: for long strings, several times the record's size (docs/benchmarks.md, "Measurements behind the design").
LARGE_RECORD = 64 << 10
CSV_15 = (
    "URI", "CID", "DID", "Text", "CreatedAt", "LikeCount", "RepostCount", "ReplyCount", "QuoteCount", "IsReply",
    "ReplyParent", "HasMedia", "MediaFiles", "EmbedType", "IndexedAt",
)  # fmt: skip

#: A row tuple with the attributes the host's per-post functions read.
Post = namedtuple("Post", host.POST_COLUMNS)  # type: ignore[misc]


class _Parser:
    """simplejson parsing, as the host parses (``simplejson.loads``), that notes whether a float was seen."""

    def __init__(self) -> None:
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
            raise host.SkyarchiveError(f"post {uri}: {column} is not valid JSON ({exc})") from None


#: ``(record, simple)`` of each row: the posts.json object as ``post_record`` builds it, and whether it must
#: be encoded by simplejson (see the module's docstring) rather than orjson.
Records = Callable[[Sequence[Sequence[Any]], Sequence[int]], Iterator[tuple[dict[str, Any], bool]]]


def records_of(parse: _Parser) -> Records:
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


def _with_room(encode: Callable[[Any], str], value: Any) -> str:
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


def json_batch_encoder(per_post: host.PerPost) -> BatchEncoder:
    """Encode rows (in POST_COLUMNS order) to the items of a posts.json array, indented as in the host's file."""
    records = records_of(_Parser())
    slow = simplejson.JSONEncoder(**per_post.json_options).encode

    def simple(run: list[dict[str, Any]]) -> memoryview:
        return memoryview(_with_room(slow, run).encode("utf-8"))[2:-2]  # "[\n" + items + "\n]" -> items

    def fast(run: list[dict[str, Any]]) -> memoryview:
        try:
            return memoryview(_dumps(run, option=OPT_INDENT_2))[2:-2]
        except TypeError:  # an integer beyond 64 bits, bytes, a lone surrogate: simplejson decides
            return simple(run)

    def encode(rows: Sequence[Sequence[Any]], sizes: Sequence[int]) -> Iterator[memoryview]:
        return _in_runs(records(rows, sizes), sizes, fast, lambda record: simple([record]))

    return encode


def jsonl_batch_encoder(per_post: host.PerPost) -> BatchEncoder:
    """Encode rows (in POST_COLUMNS order) to posts.jsonl lines, each ending in ``\n``, as the host writes them:
    ``simplejson.dumps(post_record(post), **JSONL_OPTIONS) + "\n"``. orjson's compact output is simplejson's
    with ``separators=(",", ":")`` and ``ensure_ascii=False``, for the same values as in posts.json."""
    if per_post.jsonl_options is None:
        raise ValueError("the host writes no JSON Lines")
    records = records_of(_Parser())
    slow = simplejson.JSONEncoder(**per_post.jsonl_options).encode

    def simple(record: dict[str, Any]) -> bytes:
        return (_with_room(slow, record) + "\n").encode("utf-8")

    def fast(run: list[dict[str, Any]]) -> bytes:
        try:
            return b"\n".join(map(_dumps, run)) + b"\n"
        except TypeError:  # as in posts.json: simplejson decides, record by record
            return b"".join(map(simple, run))

    def encode(rows: Sequence[Sequence[Any]], sizes: Sequence[int]) -> Iterator[bytes]:
        return _in_runs(records(rows, sizes), sizes, fast, simple)

    return encode


def fields_of(per_post: host.PerPost) -> tuple[Field, Field]:
    """``(media_of, labels_of)``: the MediaFiles and Labels fields of a post, as the host computes them.

    The host computes ``";".join(media_hashes(simplejson.loads(embed_data)))``. Here the embed is parsed
    with orjson (half the time), and on any orjson error with simplejson, which then decides (a document
    orjson refuses but simplejson takes: NaN, a lone surrogate, a BOM, 1e400; or the host's error).
    ``media_hashes`` keeps only ``str`` values, on which the two parsers agree, as on lists, objects and
    duplicate keys (the last wins); they differ only on numbers (orjson makes integers beyond 64 bits
    floats), which it ignores. Labels: ``str(label["val"])`` shows numbers, so orjson's parse is used
    only when every ``val`` is a str (or missing).
    """
    media_hashes, label_values = per_post.media_hashes, per_post.label_values
    if media_hashes is None or (host.has_labels(per_post.csv_header) and label_values is None):
        raise ValueError("the host has no media_hashes/label_values")
    parse = _Parser()

    def media_of(embed_data: Any, uri: Any) -> str:
        try:
            embed = _loads(embed_data)
        except (JSONDecodeError, TypeError):  # TypeError: not str or bytes (a number in a TEXT column)
            embed = parse(embed_data, "embed_data", uri)
        return ";".join(media_hashes(embed))

    def labels_of(labels: Any, uri: Any) -> str:
        assert label_values is not None
        try:
            parsed = _loads(labels)
        except (JSONDecodeError, TypeError):
            parsed = None
        else:
            if isinstance(parsed, list) and all(
                not isinstance(label, dict) or label.get("val") is None or isinstance(label["val"], str)
                for label in parsed
            ):
                return ";".join(label_values(parsed))
        return ";".join(label_values(parse(labels, "labels", uri)))

    return media_of, labels_of


def csv_lines_encoder(per_post: host.PerPost, fields: tuple[Field, Field] | None = None) -> LinesEncoder:
    """The fast posts.csv lines (:mod:`.csvlines`) with the host's own ``media_hashes``/``label_values``.

    ``fields``: :func:`fields_of` ``per_post``, when the caller has them already.
    """
    media_of, labels_of = fields if fields is not None else fields_of(per_post)
    return posts_csv_encoder(with_labels=host.has_labels(per_post.csv_header), media_of=media_of, labels_of=labels_of)


def host_json_encoder(per_post: host.PerPost) -> BatchEncoder:
    """The host's own per-post code: ``post_record``, encoded with ``JSON_OPTIONS``."""
    slow = simplejson.JSONEncoder(**per_post.json_options).encode
    post_record = per_post.post_record

    def whole(rows: Sequence[Sequence[Any]]) -> str:
        return slow([post_record(Post._make(row)) for row in rows])

    def encode(rows: Sequence[Sequence[Any]], sizes: Sequence[int]) -> Iterator[memoryview]:
        yield memoryview(_with_room(whole, rows).encode("utf-8"))[2:-2]

    return encode


def host_jsonl_encoder(per_post: host.PerPost) -> BatchEncoder:
    """The host's own per-post code: ``post_record``, each record encoded with ``JSONL_OPTIONS``."""
    if per_post.jsonl_options is None:
        raise ValueError("the host writes no JSON Lines")
    slow = simplejson.JSONEncoder(**per_post.jsonl_options).encode
    post_record = per_post.post_record

    def lines(rows: Sequence[Sequence[Any]]) -> str:
        return "".join(slow(post_record(Post._make(row))) + "\n" for row in rows)

    def encode(rows: Sequence[Sequence[Any]], sizes: Sequence[int]) -> Iterator[bytes]:
        yield _with_room(lines, rows).encode("utf-8")

    return encode


def host_csv_lines(per_post: host.PerPost) -> LinesEncoder:
    """The host's own per-post code: ``csv_row``, written by csv.writer."""
    csv_row = per_post.csv_row
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def encode(rows: Sequence[Sequence[Any]]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerows(csv_row(Post._make(row)) for row in rows)
        return buffer.getvalue()

    return encode


@dataclass(frozen=True)
class Encoders:
    """The per-post encoders of one export, and the header they go with."""

    json: BatchEncoder
    csv: LinesEncoder
    csv_header: tuple[str, ...]
    #: posts.jsonl's lines; None on a host that writes no JSON Lines (before skyarchive 0.5).
    jsonl: BatchEncoder | None = None
    #: The fast path's ``(media_of, labels_of)``; None when the host's own functions are used.
    fields: tuple[Field, Field] | None = None
    #: Why the fast encoders are not used, or None when they are.
    fallback_reason: str | None = None
