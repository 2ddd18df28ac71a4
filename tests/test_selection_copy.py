"""SQLite: the snapshot copies the selection into a database file of the export's own (the spool) and ends; the
posts are encoded and written from the copy with the archive free.

In SQLite's default rollback journal a reader's transaction blocks every writer's commit, so the archive is
held only while SQLite copies the rows, in C; the copy is sorted into export order after. It leaves nothing
behind (no attached database on the pooled connection, no file, no directory, no fd); where it outgrows its
room, the export goes on without it (said once), and the bytes are the host's either way.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from export_batching_plugin import blocks, reading, worker
from export_batching_plugin.plan import COPY, DIRECT

from .harness import FORMATS, export, force_plan, insert_rows, make_engine, media_row, no_spool_left, open_fds, post_row

SETTINGS = {"threshold": 0, "batch_size": 25}
OWNER = "did:plc:owner"


@pytest.fixture
def archive(tmp_path: Path) -> Any:
    """An archive file: 200 posts of the owner (every tenth with a media row), 50 of someone else."""
    engine = make_engine(tmp_path / "archive.db")
    posts = [post_row(n, created_at=f"2025-02-{1 + n // 10:02d}T00:00:{n % 60:02d}.000Z") for n in range(200)]
    others = [post_row(1000 + n, did="did:plc:other") for n in range(50)]
    media = [media_row(f"{n:064x}", posts[n], f"m/{n}.jpg") for n in range(0, 200, 10)]
    insert_rows(engine, posts + others, media)
    yield engine
    engine.dispose()


def a_writer_commits(db: Path) -> bool:
    """Whether another connection can commit to the archive at once (no busy wait)."""
    writer = sqlite3.connect(db, timeout=0)
    try:
        writer.execute("CREATE TABLE IF NOT EXISTS probe (x)")
        writer.execute("INSERT INTO probe VALUES (1)")
        writer.commit()
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc), exc
        return False
    finally:
        writer.close()


def while_writing(monkeypatch: pytest.MonkeyPatch, db: Path) -> list[bool]:
    """Whether a writer could commit, recorded as each batch of the posts file is written."""
    seen: list[bool] = []
    original = worker.Writer.write

    def write(self: worker.Writer, pieces: Any, *, batch: Any = None, posts: int = 0) -> None:
        if batch is not None:
            seen.append(a_writer_commits(db))
        original(self, pieces, batch=batch, posts=posts)

    monkeypatch.setattr(worker.Writer, "write", write)
    return seen


@pytest.mark.parametrize("format", FORMATS)
def test_a_writer_commits_while_the_export_writes(
    archive: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, format: str
) -> None:
    db = tmp_path / "archive.db"
    host = export(archive, tmp_path / "host", settings=None, format=format, media=True)
    seen = while_writing(monkeypatch, db)
    plugin = export(archive, tmp_path / "plugin", settings=SETTINGS, format=format, media=True)
    assert plugin.error is None, plugin.error
    assert len(seen) == 200 // 25 and all(seen), seen  # every batch written with the archive free
    assert plugin.posts_bytes == host.posts_bytes
    assert plugin.manifest is not None and host.manifest is not None
    media = ("media_count", "media_skipped")
    assert [plugin.manifest[key] for key in media] == [host.manifest[key] for key in media]
    assert sum(plugin.manifest[key] for key in media) == 20


def test_the_copy_holds_the_snapshot(archive: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Posts written once the copy is made are not in the export: it is the archive as the snapshot saw it."""
    host = export(archive, tmp_path / "host", settings=None)
    original = blocks.Copy.sort

    def sort(self: blocks.Copy) -> int:  # after the snapshot: a new post, first in the export's order, one removed
        insert_rows(archive, [post_row(5000, created_at="2000-01-01T00:00:00.000Z")])
        with archive.begin() as conn:
            conn.exec_driver_sql("DELETE FROM posts WHERE uri LIKE '%0000000000199'")
        return original(self)

    monkeypatch.setattr(blocks.Copy, "sort", sort)
    plugin = export(archive, tmp_path / "plugin", settings=SETTINGS)
    assert plugin.error is None, plugin.error
    assert plugin.posts_bytes == host.posts_bytes


def test_the_snapshot_ends_before_the_first_post_is_written(
    archive: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However slow the disk: nothing is written while the archive is held."""
    ended: list[float] = []
    original = reading.Snapshot.copy_selection

    def copied(self: reading.Snapshot, *args: Any, **kwargs: Any) -> int:
        count = original(self, *args, **kwargs)
        ended.append(time.monotonic())
        return count

    monkeypatch.setattr(reading.Snapshot, "copy_selection", copied)
    writes: list[float] = []
    write = worker.Writer.write
    monkeypatch.setattr(
        worker.Writer, "write", lambda self, *a, **k: (writes.append(time.monotonic()), write(self, *a, **k))[1]
    )
    plugin = export(archive, tmp_path / "plugin", settings={**SETTINGS, "checksums": True})
    assert plugin.error is None, plugin.error
    (end,) = ended
    assert writes and min(writes) > end


def test_nothing_is_left_attached_or_open(archive: Any, tmp_path: Path) -> None:
    fds = open_fds()
    for n in range(3):  # the pool hands the same connection out again
        outcome = export(archive, tmp_path / f"out{n}", settings=SETTINGS, media=True)
        assert outcome.error is None, outcome.error
    with archive.connect() as conn:
        names = [row[1] for row in conn.exec_driver_sql("PRAGMA database_list")]
    assert reading.COPY_SCHEMA not in names and "main" in names, names
    assert open_fds() <= fds
    assert no_spool_left()


def test_a_failed_copy_leaves_the_connection_clean(
    archive: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(reading.Snapshot, "copy_selection", broken)
    outcome = export(archive, tmp_path / "out", settings=SETTINGS)
    assert str(outcome.error) == "copying the selection failed: (sqlite3.OperationalError) disk I/O error"
    with archive.connect() as conn:
        assert reading.COPY_SCHEMA not in [row[1] for row in conn.exec_driver_sql("PRAGMA database_list")]
    assert a_writer_commits(tmp_path / "archive.db")
    assert no_spool_left()


@pytest.mark.parametrize("format", FORMATS)
def test_a_copy_that_outgrows_its_room_gives_way_to_reading_while_writing(
    archive: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    format: str,
) -> None:
    """The room (free space, ``ulimit -f``) was estimated too high: SQLite stops the copy at it; the export reads
    the archive again, without a copy, and says so once, naming where the copy was to be."""
    plans = force_plan(monkeypatch, source=COPY, child=False)
    insert_rows(archive, [post_row(300 + n, text="x" * 20_000) for n in range(100)])  # 2 MB: more than the room
    original = reading._attach_copy
    monkeypatch.setattr(reading, "_attach_copy", lambda conn, path, room: original(conn, path, 1 << 20))
    host = export(archive, tmp_path / "host", settings=None, format=format, media=True)
    with caplog.at_level(logging.INFO, logger="export_batching_plugin"):
        plugin = export(archive, tmp_path / "plugin", settings=SETTINGS, format=format, media=True)
    assert plugin.error is None, plugin.error
    assert plugin.posts_bytes == host.posts_bytes
    assert plugin.manifest is not None and host.manifest is not None
    assert plugin.manifest["media_skipped"] == host.manifest["media_skipped"]
    said = [r for r in caplog.records if "no room for a copy of the selection" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert str(plans[0].spool_dir) in said[0].getMessage() and "TMPDIR" in said[0].getMessage()
    assert no_spool_left()


def test_in_wal_mode_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader does not block writers there, but the copy still holds the archive for the shortest time and is
    the one spool: the same path, the same bytes."""
    plans = force_plan(monkeypatch, source=COPY, child=False)
    engine = make_engine(tmp_path / "archive.db")
    engine.dispose()
    event.listen(
        engine, "connect", lambda dbapi_connection, record: dbapi_connection.execute("PRAGMA journal_mode=WAL")
    )
    insert_rows(engine, [post_row(n) for n in range(100)])
    host = export(engine, tmp_path / "host", settings=None)
    plugin = export(engine, tmp_path / "plugin", settings=SETTINGS)
    engine.dispose()
    assert plugin.error is None, plugin.error
    assert plugin.posts_bytes == host.posts_bytes
    assert [plan.source for plan in plans] == [COPY]


def test_without_a_copy_the_archive_is_held_while_the_posts_are_written(
    archive: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counterpart (no room for a spool): writers wait, as they do for skyarchive's own read."""
    force_plan(monkeypatch, source=DIRECT, child=False)
    seen = while_writing(monkeypatch, tmp_path / "archive.db")
    plugin = export(archive, tmp_path / "plugin", settings=SETTINGS)
    assert plugin.error is None, plugin.error
    assert seen and not any(seen), seen
