"""Per-post encoding, byte-identical to the host's ``post_record``/``csv_row``, and the self-check that proves it.

The plugin reads plain row tuples (cheaper than the host's ORM objects) and encodes them with its fast
encoders (:func:`.worker.batch_encoder`: :mod:`.jsonenc`, :mod:`.csvlines`), the same in the export and its
child process. At each export, :func:`make_encoders` runs them and the host's own per-post functions (as the
host holds them at that moment) on a fixed set of rows (:data:`PROBES`: every column, every special case of
the fast path, values of the wrong type) and compares the bytes, one row at a time and all rows together. If
anything differs, the export streams with the host's own functions instead (slower, no child process, the
host's bytes) and says so once. ``tests/test_byte_identity.py`` proves the equality on random archives.
"""

from __future__ import annotations

import csv
import io
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import simplejson

from . import host
from .blocks import row_sizes
from .csvlines import LinesEncoder
from .jsonenc import LARGE_RECORD, BatchEncoder, with_room
from .worker import Recipe, batch_encoder, lines_encoder

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


def make_encoders() -> Encoders:
    """The fast encoders when they pass :func:`self_check` on the installed host, else the host's own code."""
    per_post = host.per_post()
    header = per_post.csv_header
    formats = ["json", "csv"] + (["jsonl"] if per_post.jsonl_options is not None else [])
    reason: str | None
    if header not in (CSV_15, (*CSV_15, "Labels")):
        reason = f"its posts.csv header is {', '.join(header)}"
    else:
        recipe = Recipe("", per_post.json_options, per_post.jsonl_options, with_labels=host.has_labels(header))
        fast = {f: batch_encoder(replace(recipe, format=f), host.SkyarchiveError) for f in formats}
        reason = self_check(per_post, fast["json"], fast["csv"], fast.get("jsonl"))
        if reason is None:
            return Encoders(fast, header, recipe=recipe)
    slow: dict[str, BatchEncoder] = {
        "json": host_json_encoder(per_post),
        "csv": lines_encoder(host_csv_lines(per_post)),
    }
    if per_post.jsonl_options is not None:
        slow["jsonl"] = host_jsonl_encoder(per_post)
    return Encoders(slow, header, fallback_reason=reason)


_BASE = (
    "at://did:plc:probe/app.bsky.feed.post/3k", "bafyreiprobe", "did:plc:probe", "plain text",
    "2025-01-01T00:00:00.000Z", "2025-01-01T00:00:01.000Z", 0, 0, 0, 0, 0, 0, None, None, None, None,
    "2025-01-02T00:00:00.000Z",
)  # fmt: skip
_IMAGES = (
    '{"images": [{"fullsize": "https://cdn.bsky.app/img/feed_fullsize/plain/did:plc:x/bafkreiaaa@jpeg", "alt": "é"},'
    ' {"fullsize": ""}, {"fullsize": 5}, {"thumb": "t"}, "not an object", {"fullsize": "a/b@c@d"}]}'
)
#: Hostile values, column by column: each probe row is _BASE with these columns replaced.
PROBES: tuple[dict[str, Any], ...] = (
    {},
    {"text": 'a "quote", a comma\nLF\r\nCRLF\rCR'},
    {"text": None, "reply_parent": "", "embed_type": ""},
    {"text": ""},
    {"text": "cr\ronly"},
    {"text": "lf\nonly", "reply_parent": "at://r"},
    {"text": "\x00\x07\x1f\x7f \u2028\u2029 👩‍👩‍👧 \U0001f600 é \ud7ff"},
    {"text": "  spaced  ", "reply_parent": "at://x/y,z", "embed_type": "images"},
    {"text": "007", "uri": 'at://did:plc:probe/"q",c', "cid": "1e5", "did": "did:plc:probe"},
    {"has_media": 1, "is_reply": 1},
    {"has_media": 2, "is_reply": "false"},
    {"has_media": 0.0, "is_reply": b""},
    {"like_count": 2.5e-05, "repost_count": 1e16, "reply_count": -1, "quote_count": 2**63 - 1},
    {"like_count": 1e-07, "repost_count": 0.1, "reply_count": -0.0, "quote_count": 1.5e300},
    {"like_count": "12a", "repost_count": b"\x01", "reply_count": True, "quote_count": None},
    {"like_count": float("inf")},
    {"embed_type": "images", "embed_data": _IMAGES},
    {"embed_data": '{"media": {"images": [{"fullsize": "x/y/bafkreimedia@png"}]}, "record": {"uri": "at://r"}}'},
    {"embed_data": '{"external": {"thumb": "https://cdn/img/bafthumb@jpeg", "uri": "https://e", "n": 2}}'},
    {"embed_data": '{"external": {"thumb": 7}, "media": [1], "images": {"fullsize": "x@y"}}'},
    {"embed_data": '{"n": 1e-07, "m": 0.1, "big": 123456789012345678901234, "neg": -0.0, "k": [1.5, 2]}'},
    {"embed_data": '{"e": 1E400}'},
    {"embed_data": "NaN"},
    {"embed_data": '[{"images": [{"fullsize": "a@b"}]}]'},
    {"embed_data": '"just a string"'},
    {"embed_data": "null", "labels": "null"},
    {"embed_data": '{"images": [{"fullsize": "\\u0061/\\u00e9@x"}], "t": "\\ud83d\\ude00 \\u2028 \\u0000"}'},
    {"embed_data": '{"t": "\\ud800"}'},
    {"embed_data": '{"images": [{"fullsize": "a/first@1"}], "images": [{"fullsize": "b/second@2"}]}'},
    {"embed_data": "{not json"},
    {"embed_data": b'{"images": [{"fullsize": "x/bafbytes@jpeg"}]}'},
    {"labels": '[{"val": "spam"}, {"val": "!warn"}, {"val": 5}, {"val": null}, {"x": 1}, "s", {"val": ""}]'},
    {"labels": '{"val": "not a list"}'},
    {"labels": '[{"val": "a;b", "w": 0.5}, {"val": 123456789012345678901234}]'},
    {"labels": "[not json"},
    {"text": b"bytes, with a comma"},
    {"text": b"\xff\xfe"},
    {"text": "x" * (LARGE_RECORD + 1)},
    {"text": 17, "reply_parent": 2.5, "embed_type": b"images"},
    {
        "uri": b"at://bytes",
        "cid": b"bafy,bytes",
        "did": None,
        "created_at": b"2025",
        "indexed_at": 5,
        "archived_at": 2.5,
    },
    {"uri": 12, "cid": 1.5, "did": "did:plc:probe", "created_at": None, "indexed_at": "", "archived_at": None},
)


def probe_rows() -> list[tuple[Any, ...]]:
    """The self-check's rows, in POST_COLUMNS order."""
    rows = []
    for n, probe in enumerate(PROBES):
        values = dict(zip(host.POST_COLUMNS, _BASE, strict=True))
        values["uri"] = f"{values['uri']}{n}"  # unique, unless a probe replaces it
        values.update(probe)
        rows.append(tuple(values[column] for column in host.POST_COLUMNS))
    return rows


def _outcome(produce: Callable[[], bytes]) -> bytes | str:
    """What ``produce`` returns, or the type of what it raised (messages may give different positions)."""
    try:
        return produce()
    except Exception as exc:
        return f"raises {type(exc).__name__}"


def self_check(
    per_post: host.PerPost,
    encode_json: BatchEncoder,
    encode_csv: BatchEncoder,
    encode_jsonl: BatchEncoder | None = None,
) -> str | None:
    """None when the fast encoders give the host's bytes on every probe row; else what differed."""
    whole = simplejson.JSONEncoder(**per_post.json_options).encode
    host_lines = host_csv_lines(per_post)

    def run(encode: BatchEncoder, rows: list[tuple[Any, ...]]) -> list[bytes]:
        return [bytes(piece) for piece in encode(rows, row_sizes(rows))]

    def host_json(rows: list[tuple[Any, ...]]) -> bytes:
        return whole([per_post.post_record(Post._make(row)) for row in rows]).encode("utf-8")

    def fast_json(rows: list[tuple[Any, ...]]) -> bytes:
        items = b",\n".join(run(encode_json, rows))
        return b"[\n" + items + b"\n]" if items else b"[]"

    def host_csv(rows: list[tuple[Any, ...]]) -> bytes:
        return host_lines(rows).encode("utf-8")

    checks: list[tuple[str, Callable[[list[tuple[Any, ...]]], bytes], Callable[[list[tuple[Any, ...]]], bytes]]] = [
        ("posts.json", host_json, fast_json),
        ("posts.csv", host_csv, lambda rows: b"".join(run(encode_csv, rows))),
    ]
    if encode_jsonl is not None and per_post.jsonl_options is not None:
        line = simplejson.JSONEncoder(**per_post.jsonl_options).encode

        def host_jsonl(rows: list[tuple[Any, ...]]) -> bytes:
            return "".join(line(per_post.post_record(Post._make(row))) + "\n" for row in rows).encode("utf-8")

        checks.append(("posts.jsonl", host_jsonl, lambda rows: b"".join(run(encode_jsonl, rows))))
    good: dict[str, list[tuple[Any, ...]]] = {what: [] for what, _, _ in checks}  # the rows the host encodes
    for row in probe_rows():
        for what, expected, actual in checks:
            outcome = _outcome(partial(expected, [row]))
            if outcome != _outcome(partial(actual, [row])):
                return f"{what} differs on the self-check's row {row[0]!r}"
            if isinstance(outcome, bytes):
                good[what].append(row)
    for what, expected, actual in checks:
        if _outcome(partial(expected, good[what])) != _outcome(partial(actual, good[what])):
            return f"{what} differs on the self-check's rows together"
    return None
