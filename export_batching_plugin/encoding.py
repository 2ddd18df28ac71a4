"""Per-post encoding, byte-identical to the host's ``post_record``/``csv_row``.

The host's functions take an object with attributes (an ORM ``Post``); the plugin reads plain row tuples,
which are cheaper, and encodes them with its fast encoders (:mod:`.worker`'s :func:`~.worker.batch_encoder`,
the same in the export and in its child process):

- JSON: records are built as ``post_record`` builds them, and encoded with orjson (``OPT_INDENT_2``), whose
  output equals simplejson's ``indent=2, ensure_ascii=False`` for str, int (64-bit), bool, None, lists and
  dicts, but not for floats (orjson writes ``1e-7`` where Python writes ``1e-07``, and ``null`` for infinity
  where simplejson refuses it), integers beyond 64 bits or bytes (orjson refuses both). So embeds and labels
  are parsed with simplejson, as the host parses them (orjson would turn big integers into floats), noting
  whether a float was seen; a record with such a float, a count that is not a plain int (SQLite stores what a
  column's declared type does not promise: a REAL or TEXT in an INTEGER column), or more than
  ``LARGE_RECORD`` of stored text, and any run orjson refuses, is encoded with simplejson, as the host
  encodes it (:mod:`.jsonenc`).
- CSV: the fields ``csv_row`` builds (MediaFiles and Labels with the plugin's copies of the host's
  ``media_hashes`` and ``label_values``, embeds parsed with orjson where that gives the same fields), written
  as lines without csv.writer but byte-identical to it (:mod:`.csvlines`).

Before the fast encoders are used, :mod:`.selfcheck` runs them and the host's own functions on a fixed set of
hostile rows (every column, every special case above, values of the wrong type); if any output differs, the
export streams with the host's own per-post functions here instead (slower, same bounded memory, no child
process) and says so once. ``tests/test_byte_identity.py`` proves the equality on random archives for each
host release.
"""

from __future__ import annotations

import csv
import io
from collections import namedtuple
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import simplejson

from . import host
from .csvlines import LinesEncoder
from .jsonenc import BatchEncoder, with_room
from .worker import Recipe

CSV_15 = (
    "URI", "CID", "DID", "Text", "CreatedAt", "LikeCount", "RepostCount", "ReplyCount", "QuoteCount", "IsReply",
    "ReplyParent", "HasMedia", "MediaFiles", "EmbedType", "IndexedAt",
)  # fmt: skip

#: A row tuple with the attributes the host's per-post functions read.
Post = namedtuple("Post", host.POST_COLUMNS)  # type: ignore[misc]


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
    """The per-post encoders of one export, by format, and the header they go with."""

    by_format: Mapping[str, BatchEncoder]
    csv_header: tuple[str, ...]
    #: How to build the fast encoders in any process; None when the host's own functions are used.
    recipe: Recipe | None = None
    #: Why the fast encoders are not used, or None when they are.
    fallback_reason: str | None = None

    @property
    def with_labels(self) -> bool:
        return host.has_labels(self.csv_header)

    def head(self, format: str) -> bytes:
        """What the file starts with: posts.csv's BOM and header (written by csv.writer, as the host does)."""
        if format != "csv":
            return b""
        text = io.StringIO()
        csv.writer(text).writerow(self.csv_header)
        return ("\ufeff" + text.getvalue()).encode("utf-8")
