"""A consistent snapshot: posts written by another process during the export neither appear twice nor go missing.

The writer acts from inside the export, as its first batch is written (with a spool, once the snapshot has
ended; without one, inside it), through its own sqlite3 connection, so the timing is exact; on every plan.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

from export_batching_plugin import worker
from export_batching_plugin.plan import COPY, DIRECT, SPOOL

from .harness import export, force_plan, insert_rows, make_engine, post_row

POSTS = 3000


def pysqlite_recipe(db: Path) -> Engine:
    """SQLAlchemy's documented recipe for pysqlite transactions: the driver's own handling off, BEGIN on begin."""
    engine = create_engine(f"sqlite:///{db}")

    @event.listens_for(engine, "connect")
    def do_connect(dbapi_connection: Any, connection_record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def do_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


ENGINES: dict[str, Callable[[Path], Engine]] = {
    "default": lambda db: create_engine(f"sqlite:///{db}"),
    "pysqlite recipe": pysqlite_recipe,
    "AUTOCOMMIT": lambda db: create_engine(f"sqlite:///{db}", isolation_level="AUTOCOMMIT"),
    "SERIALIZABLE": lambda db: create_engine(f"sqlite:///{db}", isolation_level="SERIALIZABLE"),
    "READ UNCOMMITTED": lambda db: create_engine(f"sqlite:///{db}", isolation_level="READ UNCOMMITTED"),
}


def make_archive(tmp_path: Path, journal_mode: str, setup: str = "default") -> tuple[Any, Path]:
    db = tmp_path / "a.db"
    make_engine(db).dispose()  # the schema
    engine = ENGINES[setup](db)
    with sqlite3.connect(db) as conn:
        assert conn.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0] == journal_mode.lower()
    rows = [
        post_row(n, created_at=f"2025-01-01T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000Z") for n in range(POSTS)
    ]
    insert_rows(engine, rows)
    return engine, db


def change_archive(db: Path, *, timeout: float) -> None:
    """Another process: 100 newer posts in, the 100 oldest out, one transaction each."""
    with sqlite3.connect(db, timeout=timeout) as conn:
        conn.executemany(
            "INSERT INTO posts (uri, cid, did, text, created_at, indexed_at, archived_at)"
            " VALUES (?, 'c', 'did:plc:owner', 'new', '2026-01-01T00:00:00.000Z', 'x', 'x')",
            [(f"at://did:plc:owner/app.bsky.feed.post/new{n:05d}",) for n in range(100)],
        )
    with sqlite3.connect(db, timeout=timeout) as conn:
        conn.execute("DELETE FROM posts WHERE uri IN (SELECT uri FROM posts ORDER BY created_at ASC LIMIT 100)")


@pytest.mark.parametrize("source", [COPY, SPOOL, DIRECT])
@pytest.mark.parametrize("setup", list(ENGINES))
@pytest.mark.parametrize("journal_mode", ["WAL", "DELETE"])
def test_export_equals_the_archive_at_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, journal_mode: str, setup: str, source: str
) -> None:
    """Also on engines set up to begin transactions their own way: the plugin's snapshot respects that setup."""
    force_plan(monkeypatch, source=source, child=False)
    engine, db = make_archive(tmp_path, journal_mode, setup)
    before = export(engine, tmp_path / "before", settings=None)
    assert before.posts_bytes is not None
    writers: list[threading.Thread] = []
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            change_archive(db, timeout=60)
        except BaseException as exc:
            failures.append(exc)

    original = worker.Writer.write

    def write(self: worker.Writer, pieces: Any, *, batch: Any = None, posts: int = 0) -> None:
        if batch is not None and not writers:
            if journal_mode == "WAL" or source != DIRECT:
                writer()  # the archive is free (a spool), or a reader does not block writers (WAL)
            else:
                # Rollback journal, inside the snapshot: the writer must wait for the export's shared lock, so it
                # runs beside it.
                writers.append(threading.Thread(target=writer))
                writers[0].start()
            writers.append(threading.current_thread())
        original(self, pieces, batch=batch, posts=posts)

    monkeypatch.setattr(worker.Writer, "write", write)
    outcome = export(engine, tmp_path / "during", settings={"threshold": 0, "batch_size": 100})
    for thread in writers:
        if thread is not threading.current_thread():
            thread.join(timeout=60)
    assert outcome.error is None, outcome.error
    assert failures == []
    assert outcome.posts_bytes == before.posts_bytes
    uris = [post["uri"] for post in json.loads(outcome.posts_bytes)]
    assert len(uris) == len(set(uris)) == POSTS
    assert outcome.manifest is not None and outcome.manifest["post_count"] == POSTS
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM posts WHERE text = 'new'").fetchone()[0] == 100
        assert conn.execute("SELECT count(*) FROM posts").fetchone()[0] == POSTS
    monkeypatch.setattr(worker.Writer, "write", original)
    after = export(engine, tmp_path / "after", settings={"threshold": 0, "batch_size": 100})
    assert after.posts_bytes != before.posts_bytes
    engine.dispose()
