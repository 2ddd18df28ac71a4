"""SQLite outside WAL mode, where a reader's transaction blocks every writer's commit: the snapshot copies the
selection into a temporary database of SQLite's own and ends; the export reads the copy with the archive free.

The copy is used only where it helps and can be had (a rollback journal, temporary databases on disk); it
leaves nothing behind (no attached database on the pooled connection, no file, no fd), and the bytes are the
host's either way.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from export_batching_plugin import reading, rows, spoolfile

from .harness import FORMATS, export, insert_rows, make_engine, media_row, open_fds, post_row

SETTINGS = {"threshold": 0, "batch_size": 25, "encoder_process": False}
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


def while_reading(monkeypatch: pytest.MonkeyPatch, db: Path) -> list[bool]:
    """Whether a writer could commit, recorded as each batch is read (put in the row spool)."""
    seen: list[bool] = []
    original = rows.RowSpool.put

    def put(self: rows.RowSpool, batch: rows.Batch) -> None:
        seen.append(a_writer_commits(db))
        original(self, batch)

    monkeypatch.setattr(rows.RowSpool, "put", put)
    return seen


@pytest.mark.parametrize("format", FORMATS)
def test_a_writer_commits_while_the_export_reads(
    archive: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, format: str
) -> None:
    db = tmp_path / "archive.db"
    host = export(archive, tmp_path / "host", settings=None, format=format, media=True)
    seen = while_reading(monkeypatch, db)
    plugin = export(archive, tmp_path / "plugin", settings=SETTINGS, format=format, media=True)
    assert plugin.error is None, plugin.error
    assert len(seen) == 200 // 25 and all(seen), seen  # every batch read with the archive free
    assert plugin.posts_bytes == host.posts_bytes
    assert plugin.manifest is not None and host.manifest is not None
    media = ("media_count", "media_skipped")
    assert [plugin.manifest[key] for key in media] == [host.manifest[key] for key in media]
    assert sum(plugin.manifest[key] for key in media) == 20


def test_the_copy_holds_the_snapshot(archive: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Posts written while the copy is read are not in the export: it is the archive as the snapshot saw it."""
    host = export(archive, tmp_path / "host", settings=None)
    original = rows.RowSpool.put

    def put(self: rows.RowSpool, batch: rows.Batch) -> None:
        if batch.number == 1:  # after the snapshot: a new post, first in the export's order, and one removed
            insert_rows(archive, [post_row(5000, created_at="2000-01-01T00:00:00.000Z")])
            with archive.begin() as conn:
                conn.exec_driver_sql("DELETE FROM posts WHERE uri LIKE '%0000000000199'")
        original(self, batch)

    monkeypatch.setattr(rows.RowSpool, "put", put)
    plugin = export(archive, tmp_path / "plugin", settings=SETTINGS)
    assert plugin.error is None, plugin.error
    assert plugin.posts_bytes == host.posts_bytes


def test_nothing_is_left_attached_or_open(archive: Any, tmp_path: Path) -> None:
    fds = open_fds()
    for n in range(3):  # the pool hands the same connection out again
        outcome = export(archive, tmp_path / f"out{n}", settings=SETTINGS, media=True)
        assert outcome.error is None, outcome.error
    with archive.connect() as conn:
        names = [row[1] for row in conn.exec_driver_sql("PRAGMA database_list")]
    assert reading.COPY_SCHEMA not in names and "main" in names, names
    assert open_fds() <= fds  # SQLite's unlinked temporary file too


def test_a_failed_copy_leaves_the_connection_clean(
    archive: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any, **kwargs: Any) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(reading.Snapshot, "copy_selection", full)
    outcome = export(archive, tmp_path / "out", settings=SETTINGS)
    assert str(outcome.error) == "reading the selection failed: (sqlite3.OperationalError) database or disk is full"
    with archive.connect() as conn:
        assert reading.COPY_SCHEMA not in [row[1] for row in conn.exec_driver_sql("PRAGMA database_list")]
    assert a_writer_commits(tmp_path / "archive.db")


@pytest.mark.parametrize(
    "pragma", ["journal_mode = WAL", "temp_store = MEMORY"], ids=["WAL: readers do not block", "temp in memory"]
)
def test_no_copy_where_it_does_not_help_or_would_be_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pragma: str
) -> None:
    """In WAL mode a reader does not block writers; with temporary databases in memory, the copy would be in
    memory too: the snapshot is held while the rows are read (and the bytes are the same)."""
    engine = make_engine(tmp_path / "archive.db")
    engine.dispose()  # every connection from here on is set up so
    event.listen(engine, "connect", lambda dbapi_connection, record: dbapi_connection.execute(f"PRAGMA {pragma}"))
    insert_rows(engine, [post_row(n) for n in range(100)])
    host = export(engine, tmp_path / "host", settings=None)
    copied = snapshots_copying(monkeypatch)
    plugin = export(engine, tmp_path / "plugin", settings=SETTINGS)
    engine.dispose()
    assert plugin.error is None, plugin.error
    assert copied == [False]
    assert plugin.posts_bytes == host.posts_bytes


def test_no_copy_where_sqlite_keeps_temporary_files_in_memory(
    archive: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TMPDIR on a tmpfs (SQLite makes its temporary databases there): the copy would be held in memory."""
    ram = Path("/dev/shm")
    if spoolfile.filesystem_type(ram) not in ("tmpfs", "ramfs"):
        pytest.skip("no tmpfs at /dev/shm here")
    monkeypatch.delenv("SQLITE_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(ram))
    host = export(archive, tmp_path / "host", settings=None)
    copied = snapshots_copying(monkeypatch)
    plugin = export(archive, tmp_path / "plugin", settings=SETTINGS)
    assert plugin.error is None, plugin.error
    assert copied == [False]
    assert plugin.posts_bytes == host.posts_bytes


def snapshots_copying(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each snapshot opened from here on copies the selection."""
    copied: list[bool] = []
    original = reading.Snapshot.open.__func__  # type: ignore[attr-defined]

    def opened(cls: type[reading.Snapshot], *args: Any, **kwargs: Any) -> reading.Snapshot:
        snapshot = original(cls, *args, **kwargs)
        copied.append(snapshot.copying)
        return snapshot

    monkeypatch.setattr(reading.Snapshot, "open", classmethod(opened))
    return copied


def test_a_rollback_journal_archive_is_copied(archive: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The counterpart of the test above: the default journal mode, temporary databases on disk."""
    copied = snapshots_copying(monkeypatch)
    outcome = export(archive, tmp_path / "out", settings=SETTINGS)
    assert outcome.error is None, outcome.error
    assert copied == [True]
