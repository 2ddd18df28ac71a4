"""Byte identity under SQLite's loose typing: whatever a column holds, the host's bytes, or both fail alike.

SQLite keeps what a column's declared type does not promise: a REAL or TEXT
in an INTEGER column, a BLOB (or text that is not UTF-8) in a TEXT column,
flags other than 0 and 1. Other tools may write such rows straight into the
archive. The rows are written here with the stdlib sqlite3 module, so that
SQLAlchemy's types do not tidy them on the way in.
"""

from __future__ import annotations

import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from export_batching_plugin.host import POST_COLUMNS

from .differential import OWNER, run_both
from .harness import FORMATS, make_engine, post_row

NOT_NULL = {"uri", "cid", "did", "created_at", "indexed_at", "has_media", "like_count", "repost_count",
            "reply_count", "quote_count", "is_reply", "archived_at"}  # fmt: skip


@dataclass(frozen=True)
class InvalidText:
    """TEXT whose bytes are not UTF-8 (written with CAST(? AS TEXT), as a C program could)."""

    data: bytes


loose = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.sampled_from([2.5e-05, 1e-07, -0.0, 1e16, 1.5, float("inf"), float("-inf")]),
    st.text(max_size=8),
    st.sampled_from(["12", "1.5", "1e5", " 7", "true", "false", "", "0x10", 'a "b", c\r\nd']),
    st.binary(max_size=6),
    st.sampled_from([b"", b"\xff\xfe", b"bytes, with a comma", b'{"images": [{"fullsize": "a/b@c"}]}']),
    st.builds(InvalidText, st.sampled_from([b"\xff", b"ok\xc3"])),
)
json_text = st.sampled_from(
    [
        '{"images": [{"fullsize": "https://cdn/img/did:plc:x/bafkreiabc@jpeg"}], "n": 2.5e-05}',
        '{"external": {"thumb": "x/y@z"}}',
        '[{"val": "spam"}, {"val": 5}]',
        "NaN",
        "{broken",
    ]
)


@st.composite
def loose_rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    rows = []
    for n in range(draw(st.integers(1, 8))):
        row = post_row(n, did=OWNER)
        columns = draw(st.sets(st.sampled_from(POST_COLUMNS[1:]), max_size=5))
        for column in columns:
            value = draw(st.one_of(loose, json_text) if column in ("embed_data", "labels") else loose)
            if value is None and column in NOT_NULL:
                continue
            row[column] = value
        if draw(st.integers(0, 9)) == 0:
            row["uri"] = f"uri {n}".encode()  # a BLOB primary key
        if row["did"] != OWNER and draw(st.booleans()):
            row["did"] = OWNER
        rows.append(row)
    return rows


def write_raw(db: Path, rows: list[dict[str, Any]]) -> None:
    with sqlite3.connect(db) as conn:
        for row in rows:
            values = [row[column] for column in POST_COLUMNS]
            marks = ["CAST(? AS TEXT)" if isinstance(v, InvalidText) else "?" for v in values]
            params = [v.data if isinstance(v, InvalidText) else v for v in values]
            conn.execute(f"INSERT INTO posts ({', '.join(POST_COLUMNS)}) VALUES ({', '.join(marks)})", params)


def check(rows: list[dict[str, Any]], format: str, batch_size: int, *, exact: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(Path(tmp) / "a.db")
        try:
            write_raw(Path(tmp) / "a.db", rows)
            run_both(engine, Path(tmp), batch_size=batch_size, format=format, exact=exact)
        finally:
            engine.dispose()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rows=loose_rows(), format=st.sampled_from(FORMATS), batch=st.integers(1, 10))
@example(rows=[post_row(0, like_count=2.5e-05)], format="json", batch=1)
@example(rows=[post_row(0, like_count=float("inf"))], format="json", batch=1)
@example(rows=[post_row(0, text=b""), post_row(1, reply_parent=0, embed_type=0.0)], format="csv", batch=1)
@example(rows=[post_row(0, has_media=2, is_reply="false"), post_row(1, has_media=0.5)], format="json", batch=2)
@example(rows=[post_row(0, text=InvalidText(b"\xff"))], format="csv", batch=1)
def test_loosely_typed_archives(rows: list[dict[str, Any]], format: str, batch: int) -> None:
    check(rows, format, batch)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize(
    "values",
    [
        {"like_count": 2.5e-05, "repost_count": 1e-07, "reply_count": 1e16},
        {"like_count": float("inf")},
        {"quote_count": "twelve", "like_count": b"\x01\x02"},
        {"text": b"", "reply_parent": b"at://x", "embed_type": b"images"},
        {"text": b"\xff\xfe"},
        {"has_media": 2, "is_reply": -1},
        {"has_media": "no", "is_reply": b""},
        {"embed_data": b'{"images": [{"fullsize": "x/bafblob@jpeg"}]}', "labels": b'[{"val": "a"}]'},
        {"created_at": b"2025-01-01", "indexed_at": 17, "archived_at": 2.5},
    ],
    ids=lambda v: ",".join(v),
)
def test_each_kind_of_loose_value(values: dict[str, Any], format: str) -> None:
    rows = [post_row(n) for n in range(5)]
    rows[2].update(values)
    check(rows, format, batch_size=2, exact=True)
