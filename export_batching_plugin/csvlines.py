"""posts.csv lines without csv.writer, byte-identical to it (excel dialect, QUOTE_MINIMAL).

The host writes posts.csv with ``csv.writer`` (excel: delimiter ``,``,
quotechar ``"``, doublequote, no escapechar, lineterminator ``\\r\\n``,
QUOTE_MINIMAL). For a row of two or more fields, CPython 3.10-3.13 write each
field as follows (probed on each; ``tests/test_csv_lines.py`` proves the
encoder equal to csv.writer on every version of the tox matrix):

- its text is the value itself for a ``str``, nothing for ``None``, else
  ``str(value)`` (floats as repr: ``1e-07``, ``nan``, ``-0.0``; ``True``;
  ``b'..'`` for bytes; a ``str`` subclass as its characters);
- the field is quoted (``"`` around it, each ``"`` inside doubled) if and only
  if its text contains ``,`` ``"`` ``\\r`` or ``\\n``; nothing else is ever
  quoted: not empty fields, leading or trailing spaces, tabs, U+2028,
  non-BMP characters, lone surrogates, text that looks like a number;
- NUL (``\\x00``): written as is, unquoted, on 3.11+; 3.10's csv.writer raises
  ``_csv.Error: need to escape, but no escapechar set`` (cpython#97503).

Why: csv.writer copies every character into a buffer of its own, whatever it
writes to; the lines built here cost about a third of its time (docs/benchmarks.md, "Measurements behind the design").

:func:`posts_csv_encoder` quotes the text column (and MediaFiles, Labels) row
by row, and builds each line with one f-string. The other columns (URIs, CIDs,
DIDs, timestamps, ReplyParent, EmbedType, the counts) never need quoting in
practice; that is checked in bulk once per batch, in C (:func:`plain_columns`),
and a batch that fails the check (a comma in a URI, bytes or a REAL in a
column, a NUL on 3.10) is written by csv.writer itself: so the output is
csv.writer's for any values.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

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
