"""Reading: one snapshot, one statement over the archive (statements do not grow with it), rows fetched in
chunks bounded by their stored size."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import simplejson
from skyarchive.export import ExportRequest
from sqlalchemy import event

from export_batching_plugin import batched
from export_batching_plugin.blocks import chunks
from export_batching_plugin.plan import COPY, DIRECT, SPOOL
from export_batching_plugin.reading import Snapshot, open_stream, posts_query

from .harness import export, force_plan, insert_rows, make_engine, post_row


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


@pytest.mark.parametrize("source", [COPY, SPOOL, DIRECT])
def test_statement_count_does_not_grow_with_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    force_plan(monkeypatch, source=source, child=False)
    small = statements_of_one_export(tmp_path, 30)
    large = statements_of_one_export(tmp_path, 3000)
    assert len(small) == len(large), (small, large)
    assert not any("LIMIT" in s.upper() or "OFFSET" in s.upper() for s in large)
    reads = [s for s in large if "FROM POSTS" in s.upper() and "COUNT(" not in s.upper()]
    assert len(reads) == 1, reads  # the selection read from the archive once


def test_the_copy_reads_the_archive_in_its_own_order(tmp_path: Path) -> None:
    """Inside the snapshot, no sort: SQLite copies the rows in whatever order it reads them fastest."""
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n) for n in range(50)] + [post_row(n, did="did:plc:other") for n in range(50)])
    seen: list[str] = []
    event.listen(engine, "connect", lambda dbapi_conn, record: dbapi_conn.set_trace_callback(seen.append))
    engine.dispose()
    outcome = export(engine, tmp_path / "out", settings={"threshold": 0, "batch_size": 7})
    alone = export(engine, tmp_path / "host", settings=None)
    engine.dispose()
    assert outcome.posts_bytes == alone.posts_bytes
    (copy,) = [s for s in seen if s.startswith("INSERT INTO export_batching_copy.posts")]
    query = copy[copy.index("SELECT") :]
    assert "ORDER BY" not in query, query
    with sqlite3.connect(tmp_path / "a.db") as conn:
        plan = " ".join(str(row) for row in conn.execute("EXPLAIN QUERY PLAN " + query))
    assert "TEMP B-TREE" not in plan, plan


def big_post(n: int, size: int) -> dict[str, Any]:
    return post_row(n, embed_type="external", embed_data=simplejson.dumps({"external": {"description": "x" * size}}))


def batch_shapes(tmp_path: Path, rows: list[dict[str, Any]], *, batch_size: int, budget: int) -> list[tuple[int, int]]:
    """(posts, stored bytes) of each chunk the rows are fetched in, a batch of ``batch_size`` at a time."""
    engine = make_engine(tmp_path / "big.db")
    insert_rows(engine, rows)
    request = ExportRequest.create(did="did:plc:owner", format="json")
    with Snapshot.open(engine) as snapshot:
        stream = open_stream(snapshot.conn, posts_query(request), batch_size=batch_size)
        shapes = []
        for _ in range(0, len(rows), batch_size):
            shapes += [
                (len(chunk), sum(len(r[14] or "") + len(r[3] or "") for r in chunk))  # embed_data, text
                for chunk, _sizes in chunks(stream.fetchmany, rows=batch_size, budget=budget)
            ]
        stream.close()
    engine.dispose()
    return shapes


def test_batches_of_large_posts_shrink_to_the_byte_budget(tmp_path: Path) -> None:
    shapes = batch_shapes(tmp_path, [big_post(n, 100_000) for n in range(40)], batch_size=1000, budget=500_000)
    assert sum(n for n, _ in shapes) == 40
    assert all(size <= 500_000 + 100_100 for _, size in shapes), shapes
    assert max(n for n, _ in shapes) <= 6


def test_small_posts_fill_whole_batches(tmp_path: Path) -> None:
    shapes = batch_shapes(tmp_path, [post_row(n) for n in range(2500)], batch_size=1000, budget=16 << 20)
    assert [n for n, _ in shapes] == [1000, 1000, 500]


def test_a_large_post_among_small_ones_closes_its_batch_early(tmp_path: Path) -> None:
    rows = [post_row(n, created_at=f"2025-01-01T00:{59 - n // 60:02d}:{59 - n % 60:02d}.000Z") for n in range(300)]
    rows[150] = big_post(150, 1_000_000) | {"created_at": rows[150]["created_at"]}
    shapes = batch_shapes(tmp_path, rows, batch_size=100, budget=200_000)
    assert sum(n for n, _ in shapes) == 300
    assert all(size <= 200_000 + 1_000_100 for _, size in shapes)
    assert any(size >= 1_000_000 for _, size in shapes)


@pytest.mark.parametrize("source", [SPOOL, DIRECT])
def test_stream_ending_before_the_count_warns_and_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, source: str
) -> None:
    """(The copy counts what it copied.)"""
    force_plan(monkeypatch, source=source, child=False)
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n) for n in range(25)])
    real = batched.count_selection
    monkeypatch.setattr(batched, "count_selection", lambda conn, request: real(conn, request) + 3)
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
