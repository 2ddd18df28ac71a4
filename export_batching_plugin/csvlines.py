"""posts.csv lines without csv.writer, byte-identical to it (excel dialect, QUOTE_MINIMAL).

For a row of two or more fields, CPython 3.10-3.13's csv.writer writes each field so (``tests/test_csv_lines.py``
proves the encoder equal to it on every version of the tox matrix): its text is the value itself for a ``str``,
nothing for ``None``, else ``str(value)`` (floats as repr, ``b'..'`` for bytes, a ``str`` subclass as its
characters); it is quoted (``"`` around it, each ``"`` inside doubled) if and only if it contains ``,`` ``"``
``\\r`` or ``\\n`` (never an empty field, spaces, tabs, U+2028, number-like text); NUL is written as is on 3.11+,
while 3.10's csv.writer raises on it (cpython#97503).

Why: csv.writer copies every character into a buffer of its own; these lines cost about a third of its time
(docs/benchmarks.md, "Measurements behind the design"). :func:`posts_csv_encoder` quotes the text column (and
MediaFiles, Labels) row by row and builds each line with one f-string; the other columns never need quoting in
practice, which is checked in bulk once per batch, in C (:func:`plain_columns`), a batch that fails the check
being written by csv.writer itself: so the output is csv.writer's for any values.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

from orjson import JSONDecodeError
from orjson import loads as _loads

from .jsonenc import Parser

#: 3.10's csv.writer raises on NUL (cpython#97503); 3.11+ write it unquoted.
NUL_RAISES = sys.version_info < (3, 11)

#: (stored JSON text, the post's uri) -> the field's text, as the host computes it; raises the host's error.
Field = Callable[[Any, Any], str]
#: A batch of rows in schema order (17 values, ``uri`` ... ``archived_at``) -> their lines, as one string.
LinesEncoder = Callable[[Sequence[Sequence[Any]]], str]


def csv_field(value: Any) -> str:
    """``value`` as csv.writer writes it as one field of a row of two or more fields.

    Raises ``csv.Error`` where csv.writer does (NUL on 3.10).
    """
    text = "" if value is None else str.__str__(value) if isinstance(value, str) else str(value)
    if NUL_RAISES and "\0" in text:
        raise csv.Error("need to escape, but no escapechar set")
    if '"' in text:
        return '"' + text.replace('"', '""') + '"'
    if "," in text or "\n" in text or "\r" in text:
        return '"' + text + '"'
    return text


def plain_columns(rows: Sequence[Sequence[Any]]) -> bool:
    """Whether the columns the fast path writes unquoted need no quoting in any of these rows."""
    try:
        (uri, cid, did, _text, created_at, indexed_at, _has_media, likes, reposts, replies, quotes, _is_reply,
         reply_parent, embed_type, *_) = zip(*rows, strict=True)  # fmt: skip
        # "".join raises TypeError on a value that is not a str (None in a NOT NULL column, bytes, a REAL);
        # filter(None, ...) drops the NULLs (written as nothing) of the nullable columns, and other false
        # values, whose str() cannot need quoting either.
        text = "".join(
            chain(uri, cid, did, created_at, indexed_at, filter(None, reply_parent), filter(None, embed_type))
        )
        sum(chain(likes, reposts, replies, quotes))  # raises unless every count is a number
    except (TypeError, ValueError):
        return False
    return not ("," in text or '"' in text or "\n" in text or "\r" in text or (NUL_RAISES and "\0" in text))


def posts_csv_encoder(*, with_labels: bool, media_of: Field, labels_of: Field) -> LinesEncoder:
    """The posts.csv lines of a batch of rows in schema order, as csv.writer writes the host's ``csv_row``.

    ``with_labels``: the 16th column (skyarchive 0.4); without, the 15 columns of 0.3. ``media_of`` and
    ``labels_of`` give the MediaFiles and Labels fields of a post's stored embed and labels.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # the slow path: csv.writer itself

    def exact(rows: Sequence[Sequence[Any]]) -> str:
        buffer.seek(0)
        buffer.truncate()
        for (uri, cid, did, text, created_at, indexed_at, has_media, likes, reposts, replies, quotes, is_reply,
             reply_parent, embed_type, embed_data, labels, _archived_at) in rows:  # fmt: skip
            fields = [
                uri, cid, did, text, created_at, likes, reposts, replies, quotes, "true" if is_reply else "false",
                reply_parent, "true" if has_media else "false",
                "" if embed_data is None else media_of(embed_data, uri), embed_type, indexed_at,
            ]  # fmt: skip
            if with_labels:
                fields.append("" if labels is None else labels_of(labels, uri))
            writer.writerow(fields)
        return buffer.getvalue()

    def encode(rows: Sequence[Sequence[Any]]) -> str:
        if not plain_columns(rows):
            return exact(rows)
        lines: list[str] = []
        line = lines.append
        try:
            for (uri, cid, did, text, created_at, indexed_at, has_media, likes, reposts, replies, quotes, is_reply,
                 reply_parent, embed_type, embed_data, labels, _archived_at) in rows:  # fmt: skip
                if text.__class__ is not str:
                    text = "" if text is None else csv_field(text)
                elif '"' in text:
                    text = '"' + text.replace('"', '""') + '"'
                elif "," in text or "\n" in text or "\r" in text:
                    text = '"' + text + '"'
                media = "" if embed_data is None else media_of(embed_data, uri)
                if media:
                    media = csv_field(media)
                if with_labels:
                    label = "" if labels is None else labels_of(labels, uri)
                    end = f",{csv_field(label)}\r\n" if label else ",\r\n"
                else:
                    end = "\r\n"
                line(
                    f"{uri},{cid},{did},{text},{created_at},{likes},{reposts},{replies},{quotes},"
                    f"{'true' if is_reply else 'false'},{'' if reply_parent is None else reply_parent},"
                    f"{'true' if has_media else 'false'},{media},{'' if embed_type is None else embed_type},"
                    f"{indexed_at}{end}"
                )
        except Exception:  # csv.writer's path raises it again, in the host's order (a NUL on 3.10 before bad JSON)
            return exact(rows)
        out = "".join(lines)
        if NUL_RAISES and "\0" in out:  # 3.10: a NUL in the text; csv.writer raises its error
            return exact(rows)
        return out

    return encode


def _hash_of(url: Any) -> str | None:
    if not isinstance(url, str) or not url:
        return None
    return url.rsplit("/", 1)[-1].split("@", 1)[0] or None


def _image_hashes(images: Any) -> list[str | None]:
    if not isinstance(images, list):
        return []
    return [_hash_of(image.get("fullsize")) for image in images if isinstance(image, dict)]


def media_hashes(embed: Any) -> list[str]:
    """The media hashes an embed names (images' and media.images' fullsize, external.thumb), as skyarchive's
    ``media_hashes`` finds them: a copy of it, so that the child process needs no skyarchive; the self-check
    (:mod:`.selfcheck`) proves the lines it makes equal to the installed host's ``csv_row``."""
    if not isinstance(embed, dict):
        return []
    found = _image_hashes(embed.get("images"))
    media = embed.get("media")
    if isinstance(media, dict):
        found += _image_hashes(media.get("images"))
    external = embed.get("external")
    if isinstance(external, dict):
        found.append(_hash_of(external.get("thumb")))
    return [h for h in found if h]


def label_values(labels: Any) -> list[str]:
    """The ``val`` of each label object, in order (skyarchive's ``label_values``; see :func:`media_hashes`)."""
    if not isinstance(labels, list):
        return []
    return [str(label["val"]) for label in labels if isinstance(label, dict) and label.get("val") is not None]


def fields(error: type[Exception], *, fast: bool = True) -> tuple[Field, Field]:
    """``(media_of, labels_of)``: the MediaFiles and Labels fields of a post, as the host computes them
    (``";".join(media_hashes(simplejson.loads(embed_data)))``; ``error``: what invalid JSON raises). With
    ``fast``, the embed is parsed with orjson (faster), on any orjson error with simplejson, which then
    decides; the parsers agree on all ``media_hashes`` keeps (strings, lists, objects, duplicate keys) and differ
    only on numbers, which it ignores. Labels show numbers (``str(val)``): orjson's parse is used only when every
    ``val`` is a str (or missing)."""
    parse = Parser(error)

    def media_of(embed_data: Any, uri: Any) -> str:
        try:
            if not fast:
                raise TypeError
            embed = _loads(embed_data)
        except (JSONDecodeError, TypeError):  # TypeError: not str or bytes (a number in a TEXT column)
            embed = parse(embed_data, "embed_data", uri)
        return ";".join(media_hashes(embed))

    def labels_of(labels: Any, uri: Any) -> str:
        try:
            parsed = _loads(labels) if fast else None
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


def copy_lines_encoder(media_of: Field, labels_of: Field) -> Callable[[Sequence[bytes]], bytes]:
    """PostgreSQL's COPY CSV rows of :func:`.pgcopy.copy_query` (bytes, each ending with ``\\n``) -> their posts.csv
    lines, with MediaFiles and Labels put in (see :mod:`.pgcopy`)."""

    def value(field: bytes) -> str | None:
        if not field:
            return None  # NULL
        if field == b'""':
            return ""  # an empty string: PostgreSQL quotes it
        return bytes.fromhex(field.decode("ascii")).decode("utf-8")

    def fields(embed: str | None, labels: str | None, uri: Any) -> tuple[str, str]:
        return (
            "" if embed is None else media_of(embed, uri),
            "" if labels is None else labels_of(labels, uri),
        )

    def splice(row: bytes) -> bytes:
        _has_json, embed_hex, labels_hex, after, rest = row.split(b",", 4)
        rest = rest[:-1]
        embed, labels = value(embed_hex), value(labels_hex)
        try:
            media, label = fields(embed, labels, None)
        except Exception:  # the host's message names the post: its uri, from the line (rare)
            uri = next(csv.reader([rest.decode("utf-8")]))[0]
            media, label = fields(embed, labels, uri)
        if media:
            cut = len(rest) - int(after)
            rest = rest[:cut] + csv_field(media).encode("utf-8") + rest[cut:]
        if label:
            rest += csv_field(label).encode("utf-8")
        return rest

    def encode(rows: Sequence[bytes]) -> bytes:
        lines = [row[5:-1] if row[:1] == b"0" else splice(row) for row in rows]
        return b"\r\n".join(lines) + b"\r\n" if lines else b""

    return encode
