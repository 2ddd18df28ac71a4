"""Reading: one snapshot, one streamed query (statements do not grow with the archive), byte-bounded batches."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import simplejson
from skyarchive.export import ExportRequest
from sqlalchemy import event

from export_batching_plugin import batched, reading
from export_batching_plugin.reading import Snapshot, read_batches

from .harness import export, insert_rows, make_engine, post_row


def statements_of_one_export(tmp_path: Path, posts: int) -> list[str]:
    engine = make_engine(tmp_path / f"{posts}.db")
    insert_rows(engine, [post_row(n) for n in range(posts)])
    seen: list[str] = []
    # Traced by SQLite itself, so that statements run on the raw cursor count too.
    event.listen(engine, "connect", lambda dbapi_conn, record: dbapi_conn.set_trace_callback(seen.append))
    engine.dispose()
    outcome = export(engine, tmp_path / f"out{posts}", settings={"threshold": 0, "batch_size": 10})
    engine.dispose()
    assert outcome.error is None and outcome.manifest is not None and outcome.manifest["post_count"] == posts
    return seen


def test_statement_count_does_not_grow_with_the_archive(tmp_path: Path) -> None:
    small = statements_of_one_export(tmp_path, 30)
    large = statements_of_one_export(tmp_path, 3000)
    assert len(small) == len(large), (small, large)
    assert not any("LIMIT" in s.upper() or "OFFSET" in s.upper() for s in large)
    assert sum("ORDER BY POSTS.CREATED_AT" in s.upper() for s in large) == 1  # the selection read once


def big_post(n: int, size: int) -> dict[str, Any]:
    return post_row(n, embed_type="external", embed_data=simplejson.dumps({"external": {"description": "x" * size}}))


def batch_shapes(tmp_path: Path, rows: list[dict[str, Any]], **options: int) -> list[tuple[int, int]]:
    """(posts, stored bytes) of each batch that read_batches yields."""
    engine = make_engine(tmp_path / "big.db")
    insert_rows(engine, rows)
    request = ExportRequest.create(did="did:plc:owner", format="json")
    snapshot = Snapshot.open(engine)
    shapes = [
        (len(b.rows), sum(len(r[14] or "") + len(r[3] or "") for r in b.rows))  # embed_data, text
        for b in read_batches(snapshot.conn, request, expected=len(rows), **options)
    ]
    snapshot.end(complete=True)
    engine.dispose()
    return shapes


def test_batches_of_large_posts_shrink_to_the_byte_budget(tmp_path: Path) -> None:
    shapes = batch_shapes(tmp_path, [big_post(n, 100_000) for n in range(40)], batch_size=1000, max_batch_bytes=500_000)
    assert sum(n for n, _ in shapes) == 40
    assert all(size <= 500_000 + 100_100 for _, size in shapes), shapes
    assert max(n for n, _ in shapes) <= 6


def test_small_posts_fill_whole_batches(tmp_path: Path) -> None:
    shapes = batch_shapes(tmp_path, [post_row(n) for n in range(2500)], batch_size=1000, max_batch_bytes=16 << 20)
    assert [n for n, _ in shapes] == [1000, 1000, 500]


def test_a_large_post_among_small_ones_closes_its_batch_early(tmp_path: Path) -> None:
    rows = [post_row(n, created_at=f"2025-01-01T00:{59 - n // 60:02d}:{59 - n % 60:02d}.000Z") for n in range(300)]
    rows[150] = big_post(150, 1_000_000) | {"created_at": rows[150]["created_at"]}
    shapes = batch_shapes(tmp_path, rows, batch_size=100, max_batch_bytes=200_000)
    assert sum(n for n, _ in shapes) == 300
    assert all(size <= 200_000 + 1_000_100 for _, size in shapes)
    assert any(size >= 1_000_000 for _, size in shapes)


def test_stream_ending_before_the_count_warns_and_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n) for n in range(25)])
    real = batched.count_selection
    monkeypatch.setattr(batched, "count_selection", lambda conn, request: real(conn, request) + 3)
    copy = reading.Snapshot.copy_selection  # SQLite's rollback journal: the count is the copy's
    monkeypatch.setattr(reading.Snapshot, "copy_selection", lambda *args, **kwargs: copy(*args, **kwargs) + 3)
    with caplog.at_level(logging.WARNING, logger="export_batching_plugin"):
        outcome = export(engine, tmp_path, settings={"threshold": 0, "batch_size": 10})
    assert outcome.error is None and outcome.manifest is not None
    assert outcome.manifest["post_count"] == 25
    assert "ended after 25 of 28 counted posts" in caplog.text
    assert outcome.events[-1] == (25, 25)


def test_a_snapshot_that_cannot_begin_gives_its_connection_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.engine import Connection

    engine = make_engine(tmp_path / "a.db")
    out: list[int] = []
    event.listen(engine, "checkout", lambda *_: out.append(1))
    event.listen(engine, "checkin", lambda *_: out.append(-1))

    def refuse(self: Connection) -> Any:
        raise RuntimeError("cannot begin")

    monkeypatch.setattr(Connection, "begin", refuse)
    with pytest.raises(RuntimeError, match="cannot begin"):
        Snapshot.open(engine)
    assert out == [1, -1], "the connection was not given back"
    engine.dispose()


@pytest.mark.parametrize(("mine", "others", "hinted"), [(30, 10, True), (10, 10, True), (10, 30, False)])
def test_sqlite_walks_the_date_index_when_the_selection_is_most_of_the_archive(
    tmp_path: Path, mine: int, others: int, hinted: bool
) -> None:
    """``+posts.did``: the same rows in the same order, without sorting the whole selection first."""
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n) for n in range(mine)] + [post_row(n, did="did:plc:other") for n in range(others)])
    seen: list[str] = []
    event.listen(engine, "connect", lambda dbapi_conn, record: dbapi_conn.set_trace_callback(seen.append))
    engine.dispose()
    outcome = export(engine, tmp_path / "out", settings={"threshold": 0, "batch_size": 7})
    alone = export(engine, tmp_path / "host", settings=None)
    engine.dispose()
    assert outcome.posts_bytes == alone.posts_bytes
    query = next(s for s in seen if "ORDER BY posts.created_at" in s and "JOIN" not in s)  # the first export's
    query = query[query.index("SELECT") :]  # the plugin copies it (INSERT INTO … SELECT): its plan is the SELECT's
    assert ("+posts.did" in query) is hinted, query
    with sqlite3.connect(tmp_path / "a.db") as conn:
        plan = " ".join(str(row) for row in conn.execute("EXPLAIN QUERY PLAN " + query))
    assert ("idx_posts_created_at" in plan) is hinted, plan
