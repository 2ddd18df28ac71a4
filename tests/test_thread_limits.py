"""A thread that cannot be started (a container's task limit) is work done on the export's own thread.

Never a false error, a leftover, a held transaction, a checked-out connection or an open file: the export
completes with the host's bytes, and after it (or after any failure) the archive is writable at once, the
pool has nothing checked out and ``/proc/self/fd`` is as it was. In-process with ``Thread.start`` failing
for some or all of the export's threads, and from the CLI in a real pids cgroup (``pids.max``, as ``docker
run --pids-limit`` sets it), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine

from export_batching_plugin.batched import ExportFailed, Span
from export_batching_plugin.plan import COPY, DIRECT, SPOOL

from .conftest import plugin_toml
from .harness import (
    FORMATS,
    Outcome,
    add_slow_media_file,
    archive_with_media,
    export,
    fail_writing,
    feed_fifo,
    force_plan,
    insert_rows,
    media_row,
    open_fds,
    post_row,
    status_lines,
)  # fmt: skip
from .postgres import pg_url  # noqa: F401 - a fixture

SETTINGS = {"threshold": 0, "batch_size": 10, "checksums": True}
#: Which threads fail to start: a pattern of their names (the export's threads are all named "export-…").
WHICH = {
    "every thread": r"export-.*",
    "the second media worker": r"export-media-1",
    "the media dispatcher": r"export-media-rows",
    "the progress heartbeat": r"export-progress",
}


def failing_starts(monkeypatch: pytest.MonkeyPatch, pattern: str) -> list[str]:
    """Make ``Thread.start`` fail, as under a task limit, for threads named like ``pattern``; returns their names."""
    refused: list[str] = []
    original = threading.Thread.start

    def start(self: threading.Thread) -> None:
        if re.fullmatch(pattern, self.name):
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return refused


class Checkouts:
    """How many connections of ``engine`` are checked out, whatever its pool (SQLAlchemy 1.4's SQLite NullPool too)."""

    def __init__(self, engine: Engine) -> None:
        self.out = 0
        event.listen(engine, "checkout", lambda *_: self._add(1))
        event.listen(engine, "checkin", lambda *_: self._add(-1))

    def _add(self, n: int) -> None:
        self.out += n


def assert_let_go(checkouts: Checkouts, db: Path | None) -> None:
    """The archive is writable at once (SQLite), and the pool has nothing checked out."""
    assert checkouts.out == 0
    if db is not None:
        with closing(sqlite3.connect(db, timeout=0)) as conn:  # "database is locked" at once if anything reads
            conn.execute("UPDATE posts SET like_count = like_count + 1 WHERE rowid = 1")
            conn.commit()
            conn.execute("DELETE FROM posts WHERE uri LIKE 'at://new%'")


@pytest.fixture
def media_archive(tmp_path: Path) -> Iterator[tuple[Engine, Path, Path]]:
    """45 posts, 15 with a media file: (engine, media_dir, database file)."""
    rows = [post_row(n, created_at=f"2025-01-01T00:{n // 60:02d}:{n % 60:02d}.000Z") for n in range(45)]
    files = {f"m{n}.jpg": (n, b"jpeg %d" % n) for n in range(0, 45, 3)}
    engine, media_dir = archive_with_media(tmp_path, rows, files)
    yield engine, media_dir, tmp_path / "a.db"
    engine.dispose()


def export_twice(engine: Engine, out: Path, media_dir: Path, **run: Any) -> tuple[Outcome, Outcome, set[str]]:
    """The host's export, then the plugin's (with the fds open before it): the pool is warm for both."""
    host = export(engine, out / "host", settings=None, media=True, media_dir=media_dir, **run)
    fds = open_fds()
    plugin = export(engine, out / "plugin", settings=SETTINGS, media=True, media_dir=media_dir, **run)
    return host, plugin, fds


def media_files(outcome: Outcome) -> dict[str, bytes]:
    assert outcome.result is not None, outcome.error
    return {p.name: p.read_bytes() for p in (outcome.result.export_dir / "media").iterdir()}


@pytest.mark.parametrize("source", [COPY, SPOOL, DIRECT])
@pytest.mark.parametrize("which", list(WHICH))
@pytest.mark.parametrize("format", FORMATS)
def test_the_export_does_the_work_itself(
    media_archive: tuple[Engine, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    which: str,
    format: str,
    source: str,
) -> None:
    engine, media_dir, db = media_archive
    force_plan(monkeypatch, source=source, child=False)
    checkouts = Checkouts(engine)
    refused = failing_starts(monkeypatch, WHICH[which])
    host, plugin, fds = export_twice(engine, tmp_path, media_dir, format=format)
    assert refused, "no thread was refused: the test tests nothing"
    assert plugin.error is None, plugin.error
    assert plugin.posts_bytes == host.posts_bytes
    assert media_files(plugin) == media_files(host)
    assert plugin.manifest is not None and plugin.manifest["media_count"] == 15
    assert plugin.result is not None
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=plugin.result.export_dir, check=False)
    assert check.returncode == 0
    assert plugin.events[0] == (0, 45) and plugin.events[-1] == (45, 45)
    assert list(tmp_path.rglob("*.staging-*")) == []
    assert_let_go(checkouts, db)
    assert open_fds() <= fds


@pytest.mark.parametrize("which", ["every thread", "the second media worker"])
def test_a_failure_without_threads_still_unwinds_everything(
    media_archive: tuple[Engine, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    """The bug of e1e3fca: a media worker that did not start made the cleanup join it, which raised, and the
    snapshot, the staging directory and its lock's fd were left."""
    engine, media_dir, db = media_archive
    checkouts = Checkouts(engine)
    export(engine, tmp_path / "warm", settings=SETTINGS, media=True, media_dir=media_dir)
    fail_writing(monkeypatch, batch=3, error=OSError(errno.ENOSPC, "No space left on device"))
    refused = failing_starts(monkeypatch, WHICH[which])
    fds = open_fds()
    outcome = export(engine, tmp_path / "out", settings=SETTINGS, media=True, media_dir=media_dir)
    assert refused
    failure = outcome.error
    assert isinstance(failure, ExportFailed), failure
    assert (failure.phase, failure.batch) == ("writing", Span(3, 21, 30))
    assert isinstance(failure.cause, OSError) and failure.cause is failure.__cause__
    assert str(failure).startswith("writing batch 3 (posts 21-30) failed: disk full: ")
    assert not any(".staging-" in p.name for p in (tmp_path / "out").rglob("*"))
    assert_let_go(checkouts, db)
    assert open_fds() <= fds


@pytest.mark.slow
def test_without_a_heartbeat_the_export_keeps_the_console_going_itself(
    media_archive: tuple[Engine, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While it waits for a slow media file, the export's own thread logs the status lines the heartbeat would."""
    engine, media_dir, _ = media_archive
    fifo = add_slow_media_file(engine, media_dir)
    feeder = threading.Thread(target=lambda: (time.sleep(1.2), feed_fifo(fifo)))
    refused = failing_starts(monkeypatch, WHICH["the progress heartbeat"])
    feeder.start()
    caplog.set_level(logging.WARNING, logger="export_batching_plugin")
    outcome = export(engine, tmp_path, settings={**SETTINGS, "progress_interval": 0.2}, media=True, media_dir=media_dir)
    feeder.join()
    assert refused and outcome.error is None, outcome.error
    statuses = [line for line in status_lines(outcome, caplog.records) if "copying media files:" in line]
    assert len(statuses) >= 3, statuses


@pytest.mark.postgresql
@pytest.mark.parametrize("which", ["every thread", "the progress heartbeat"])
def test_on_postgresql_too(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str) -> None:  # noqa: F811
    from skyarchive.models import Base

    engine = create_engine(pg_url)
    Base.metadata.create_all(engine)
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    posts = [post_row(n, created_at=f"2025-01-01T00:{n // 60:02d}:{n % 60:02d}.000Z") for n in range(45)]
    for n in range(0, 45, 5):
        (media_dir / f"m{n}.jpg").write_bytes(b"jpeg %d" % n)
    insert_rows(engine, posts, [media_row(f"h{n}", posts[n], f"m{n}.jpg") for n in range(0, 45, 5)])
    checkouts = Checkouts(engine)
    try:
        refused = failing_starts(monkeypatch, WHICH[which])
        for format in ("json", "csv"):
            host, plugin, fds = export_twice(engine, tmp_path / format, media_dir, format=format)
            assert plugin.error is None, plugin.error
            assert plugin.posts_bytes == host.posts_bytes
            assert media_files(plugin) == media_files(host)
            assert_let_go(checkouts, None)
            assert open_fds() <= fds
        assert refused
    finally:
        engine.dispose()


# -- a real task limit, from the CLI ---------------------------------------------------------------

PIDS = Path("/sys/fs/cgroup/pids")


def pids_cgroup() -> Path:
    """A new pids cgroup (cgroup v1 or v2) where this process may put a child; skip (fail under CI) if none."""
    candidates = [PIDS, Path("/sys/fs/cgroup")]
    for root in candidates:
        if not (root / "cgroup.procs").exists() or not os.access(root, os.W_OK):
            continue
        if root == Path("/sys/fs/cgroup") and "pids" not in (root / "cgroup.controllers").read_text().split():
            continue
        group = root / f"export-batching-test-{uuid.uuid4().hex[:8]}"
        try:
            group.mkdir()
        except OSError:
            continue
        if (group / "pids.max").exists():
            return group
        group.rmdir()
    reason = "no pids cgroup this process may create (needs root and the pids controller)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"a real task limit is required under CI: {reason}")
    pytest.skip(reason)


def run_limited(group: Path, args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m skyarchive *args`` as the only task allowed in ``group`` (its own threads cannot start)."""
    (group / "pids.max").write_text("1")
    script = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
    command = ["sh", "-c", script, str(group), sys.executable, "-m", "skyarchive", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def cgroup() -> Iterator[Path]:
    group = pids_cgroup()
    yield group
    group.rmdir()


def seeded_root(root: Path, url: str | None = None) -> tuple[Path, dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if k != "SKYARCHIVE_CONFIG"}
    db = ["--db", url] if url else []
    done = subprocess.run(
        [sys.executable, "-m", "skyarchive", *db, "seed", "--posts", "400", "--media-every", "3"],
        cwd=root, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root, env


def exported(done: subprocess.CompletedProcess[str]) -> Path:
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", "SHA256SUMS")
    }


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_a_real_task_limit_from_the_cli(cgroup: Path, tmp_path: Path, backend: str, request: Any) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    root, env = seeded_root(tmp_path, url)
    db = ["--db", url] if url else []
    from skyarchive.seed import DEFAULT_DID

    results: dict[str, Path] = {}
    for name, config in (("host", ""), ("plugin", plugin_toml(threshold=0, batch_size=50, checksums=True))):
        (root / f"{name}.toml").write_text(config, encoding="utf-8")
        for format in ("json", "csv"):
            args = ["--config", f"{name}.toml", *db, "export", "--did", DEFAULT_DID, "--format", format, "--media"]
            done = run_limited(cgroup, [*args, "--out", f"out-{name}-{format}"], root, env)
            results[f"{name}-{format}"] = exported(done)
            assert "can't start new thread" not in done.stderr, done.stderr
    for format in ("json", "csv"):
        host, plugin = results[f"host-{format}"], results[f"plugin-{format}"]
        assert tree(plugin) == tree(host)
        check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=plugin, check=False)
        assert check.returncode == 0
    assert list(root.rglob("*.staging-*")) == []


@pytest.mark.slow
def test_the_limit_is_real(cgroup: Path, tmp_path: Path) -> None:
    """In the cgroup, a thread really cannot start (else the test above tests nothing)."""
    (cgroup / "pids.max").write_text("1")
    code = "import threading; threading.Thread(target=print).start()"
    script = 'echo $$ > "$0/cgroup.procs" && exec "$@"'
    done = subprocess.run(["sh", "-c", script, str(cgroup), sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0 and "can't start new thread" in done.stderr, done.stderr
