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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import simplejson
from orjson import JSONDecodeError
from orjson import loads as _loads

from . import host
from .csvlines import Field, LinesEncoder, posts_csv_encoder
from .jsonenc import BatchEncoder, Parser, json_items, jsonl_lines, with_room

CSV_15 = (
    "URI", "CID", "DID", "Text", "CreatedAt", "LikeCount", "RepostCount", "ReplyCount", "QuoteCount", "IsReply",
    "ReplyParent", "HasMedia", "MediaFiles", "EmbedType", "IndexedAt",
)  # fmt: skip

#: A row tuple with the attributes the host's per-post functions read.
Post = namedtuple("Post", host.POST_COLUMNS)  # type: ignore[misc]


def json_batch_encoder(per_post: host.PerPost) -> BatchEncoder:
    """The fast posts.json items (:func:`.jsonenc.json_items`) with the installed host's ``JSON_OPTIONS``."""
    return json_items(per_post.json_options, error=host.SkyarchiveError)


def jsonl_batch_encoder(per_post: host.PerPost) -> BatchEncoder:
    """The fast posts.jsonl lines (:func:`.jsonenc.jsonl_lines`) with the installed host's ``JSONL_OPTIONS``."""
    if per_post.jsonl_options is None:
        raise ValueError("the host writes no JSON Lines")
    return jsonl_lines(per_post.jsonl_options, error=host.SkyarchiveError)


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
    parse = Parser(host.SkyarchiveError)

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
        yield memoryview(with_room(whole, rows).encode("utf-8"))[2:-2]

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
        yield with_room(lines, rows).encode("utf-8")

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
    #: The host's simplejson options of posts.json and of a posts.jsonl line (the encoder process's encoders).
    json_options: Mapping[str, Any] | None = None
    jsonl_options: Mapping[str, Any] | None = None
