"""Per-post encoding on the hot path, byte-identical to the host's ``post_record``/``csv_row``.

The host's functions take an object with attributes (an ORM ``Post``); the
plugin reads plain row tuples, which are cheaper, and encodes them here:

- JSON: records are built as the host builds them, and encoded with orjson
  (``OPT_INDENT_2``), whose output equals simplejson's ``indent=2,
  ensure_ascii=False`` for every value except some floats (orjson writes
  ``1e-7`` where Python writes ``1e-07``) and integers beyond 64 bits (orjson
  refuses them). So embeds and labels are parsed with simplejson, as the host
  parses them (orjson would turn big integers into floats), noting whether a
  float was seen; records with a float, records over ``LARGE_RECORD`` of
  stored text, and any run orjson refuses, are encoded with simplejson.
  Without orjson installed, everything is.
- CSV: the host's columns (``Labels`` where the host has it), flags and media
  hashes (the host's own ``media_hashes``/``label_values``).

If the installed host's columns are not the ones this module knows, the
plugin falls back to the host's own functions (see :func:`make_encoders`).
``tests/test_byte_identity.py`` proves the equality for each host release.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import simplejson
from skyarchive import export as host
from skyarchive.errors import SkyarchiveError
from skyarchive.models import POST_COLUMNS

_dumps: Callable[..., bytes] | None
try:
    from orjson import OPT_INDENT_2
    from orjson import dumps as _dumps
except ImportError:  # pragma: no cover - orjson is a dependency; this keeps exotic platforms working
    _dumps, OPT_INDENT_2 = None, 0

KNOWN_COLUMNS = (
    "uri", "cid", "did", "text", "created_at", "indexed_at", "has_media", "like_count", "repost_count",
    "reply_count", "quote_count", "is_reply", "reply_parent", "embed_type", "embed_data", "labels", "archived_at",
)  # fmt: skip
CSV_15 = (
    "URI", "CID", "DID", "Text", "CreatedAt", "LikeCount", "RepostCount", "ReplyCount", "QuoteCount", "IsReply",
    "ReplyParent", "HasMedia", "MediaFiles", "EmbedType", "IndexedAt",
)  # fmt: skip

#: Rows -> the batch's array items, as pieces to write joined by ",\n": yielded one at a time and as
#: views, so that only one piece is in memory and nothing is copied.
BatchEncoder = Callable[[Sequence[Sequence[Any]], Sequence[int]], Iterator[memoryview]]
#: Records are encoded in runs of about this much stored text (the output of one run is about twice that).
RUN_BYTES = 1 << 20
#: A record with more stored text than this goes to simplejson: orjson reserves worst-case buffer space
#: for long strings (measured: 40 posts of 2 MiB, tracemalloc peak 150 MiB with orjson, 39 MiB without).
LARGE_RECORD = 64 << 10
CsvRows = Callable[[Sequence[Sequence[Any]]], list[list[Any]]]


class _Decoder:
    """simplejson parsing, as the host parses, that notes whether a float was seen."""

    def __init__(self) -> None:
        self.saw_float = False
        self._decode = simplejson.JSONDecoder(parse_float=self._float).decode

    def _float(self, text: str) -> float:
        self.saw_float = True
        return float(text)

    def __call__(self, value: str, column: str, uri: str) -> Any:
        try:
            return self._decode(value)
        except ValueError as exc:  # the host's message, word for word
            raise SkyarchiveError(f"post {uri}: {column} is not valid JSON ({exc})") from None


def json_batch_encoder() -> BatchEncoder:
    """Encode rows (in KNOWN_COLUMNS order) to the items of a posts.json array, indented as in the host's file.

    ``sizes`` are the rows' stored sizes, as the reader counted them for the byte budget.
    """
    decode = _Decoder()
    slow = simplejson.JSONEncoder(**host.JSON_OPTIONS).encode

    def simple(records: list[dict[str, Any]]) -> memoryview:
        return memoryview(slow(records).encode("utf-8"))[2:-2]  # "[\n" + items + "\n]" -> items

    def fast(records: list[dict[str, Any]]) -> memoryview:
        if _dumps is None:
            return simple(records)
        try:
            return memoryview(_dumps(records, option=OPT_INDENT_2))[2:-2]
        except TypeError:  # an integer beyond 64 bits, a lone surrogate: simplejson decides
            return simple(records)

    def encode(rows: Sequence[Sequence[Any]], sizes: Sequence[int]) -> Iterator[memoryview]:
        run: list[dict[str, Any]] = []
        run_bytes = 0
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
            decode.saw_float = False
            if embed_data is not None:
                record["embed_data"] = decode(embed_data, "embed_data", uri)
            if labels is not None:
                record["labels"] = decode(labels, "labels", uri)
            record["archived_at"] = archived_at
            if decode.saw_float or size > LARGE_RECORD:
                if run:
                    yield fast(run)
                    run, run_bytes = [], 0
                yield simple([record])
                continue
            run.append(record)
            run_bytes += size
            if run_bytes >= RUN_BYTES:
                yield fast(run)
                run, run_bytes = [], 0
        if run:
            yield fast(run)

    return encode


def csv_rows_builder(with_labels: bool) -> CsvRows:
    """Build posts.csv rows from rows in KNOWN_COLUMNS order, as the host's ``csv_row`` does."""
    decode = _Decoder()
    media_hashes = host.media_hashes
    label_values: Callable[[Any], list[str]] = getattr(host, "label_values", lambda labels: [])

    def build(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
        out = []
        for (uri, cid, did, text, created_at, indexed_at, has_media, likes, reposts, replies, quotes, is_reply,
             reply_parent, embed_type, embed_data, labels, _archived_at) in rows:  # fmt: skip
            media = "" if embed_data is None else ";".join(media_hashes(decode(embed_data, "embed_data", uri)))
            # None and "" are both written as an empty field; the csv module is much faster with "".
            row = [
                uri, cid, did, text or "", created_at, likes, reposts, replies, quotes,
                "true" if is_reply else "false", reply_parent or "", "true" if has_media else "false", media,
                embed_type or "", indexed_at,
            ]  # fmt: skip
            if with_labels:
                row.append("" if labels is None else ";".join(label_values(decode(labels, "labels", uri))))
            out.append(row)
        return out

    return build


def _host_json_encoder() -> BatchEncoder:
    """The host's own per-post code, for a host whose columns this module does not know."""
    from collections import namedtuple

    post = namedtuple("post", POST_COLUMNS)  # type: ignore[misc]
    slow = simplejson.JSONEncoder(**host.JSON_OPTIONS).encode

    def encode(rows: Sequence[Sequence[Any]], sizes: Sequence[int]) -> Iterator[memoryview]:
        yield memoryview(slow([host.post_record(post._make(row)) for row in rows]).encode("utf-8"))[2:-2]

    return encode


def _host_csv_rows() -> CsvRows:
    from collections import namedtuple

    post = namedtuple("post", POST_COLUMNS)  # type: ignore[misc]
    return lambda rows: [host.csv_row(post._make(row)) for row in rows]


def make_encoders() -> tuple[BatchEncoder, CsvRows]:
    """The fast encoders when the host's schema and CSV columns are the known ones, else the host's own code."""
    header = tuple(host.CSV_HEADER)
    if tuple(POST_COLUMNS) == KNOWN_COLUMNS and header in (CSV_15, (*CSV_15, "Labels")):
        return json_batch_encoder(), csv_rows_builder(with_labels=header[-1:] == ("Labels",))
    return _host_json_encoder(), _host_csv_rows()
