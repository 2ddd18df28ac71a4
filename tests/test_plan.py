"""One plan, made in one place before the read snapshot opens, logged once with why: where the rows come from
and wait, who encodes them, and what the export may use. Each choice as the archive and the process allow it
(real limits where a test can set them: ``ulimit -f``, ``ulimit -n``), and the bytes the host's on each."""

from __future__ import annotations

import fcntl
import logging
import os
import resource
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from export_batching_plugin import batched, plan, spooldir
from export_batching_plugin.plan import COPY, DIRECT

from .harness import export, insert_rows, make_engine, post_row

SETTINGS = {"threshold": 0, "batch_size": 10}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Any]:
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n, text=f"post {n} é") for n in range(60)])
    yield engine
    engine.dispose()


def plans_made(monkeypatch: pytest.MonkeyPatch) -> list[plan.Plan]:
    made: list[plan.Plan] = []
    original = batched.make_plan
    monkeypatch.setattr(batched, "make_plan", lambda *a, **k: made.append(original(*a, **k)) or made[-1])
    return made


def export_both(engine: Any, tmp_path: Path, **settings: Any) -> Any:
    """The host's export and the plugin's; asserts the same bytes; the plugin's outcome."""
    host = export(engine, tmp_path / "host", settings=None)
    plugin = export(engine, tmp_path / "plugin", settings={**SETTINGS, **settings})
    assert plugin.error is None, plugin.error
    assert plugin.posts_bytes == host.posts_bytes
    return plugin


def test_the_plan_is_made_once_and_said_once_with_why(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    made = plans_made(monkeypatch)
    with caplog.at_level(logging.INFO, logger="export_batching_plugin"):
        export_both(engine, tmp_path)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("export_batching: plan: ")]
    assert len(made) == 1 and said == [f"export_batching: plan: {made[0]}"]
    assert made[0].source == COPY and not made[0].child and made[0].threads and made[0].fast
    assert said[0].startswith(f"export_batching: plan: copy the selection into {made[0].spool_dir}")
    assert "encode in this process (60 posts" in said[0]


@pytest.mark.parametrize(
    ("settings", "small", "child"),
    [({}, False, True), ({}, True, False), ({"encoder_process": False}, False, False)],
    ids=["large", "small", "encoder_process off"],
)
def test_a_child_for_large_selections_where_it_is_wanted(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any], small: bool, child: bool
) -> None:
    monkeypatch.setattr(plan, "CHILD_POSTS", 1000 if small else 10)
    made = plans_made(monkeypatch)
    export_both(engine, tmp_path, **settings)
    assert [p.child for p in made] == [child]


def test_no_room_for_a_spool_means_none(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(plan, "_free", lambda folder: 5 << 20)
    monkeypatch.setattr(plan, "CHILD_POSTS", 10)
    made = plans_made(monkeypatch)
    with caplog.at_level(logging.INFO, logger="export_batching_plugin"):
        export_both(engine, tmp_path)
    (chosen,) = made
    assert (chosen.source, chosen.child) == (DIRECT, False)
    assert f"no room for a spool: about 16 MB needed, 0 MB free in {chosen.spool_dir}" in chosen.why


def test_a_file_size_limit_is_room_too(engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ulimit -f``: no spool may be larger than it (a real limit, set on this process for the export)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    made = plans_made(monkeypatch)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, hard))
    try:
        export_both(engine, tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert [p.source for p in made] == [DIRECT]


def test_few_descriptors_mean_no_spool_and_no_child(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ulimit -n`` just above what is open (a real limit, set on this process for the export)."""
    monkeypatch.setattr(plan, "CHILD_POSTS", 10)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    made = plans_made(monkeypatch)
    export(engine, tmp_path / "warm", settings=SETTINGS)  # the pool's connection, the host's modules: opened
    host = export(engine, tmp_path / "host", settings=None)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 5, hard))
    try:
        plugin = export(engine, tmp_path / "plugin", settings=SETTINGS)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert plugin.error is None, plugin.error
    assert plugin.posts_bytes == host.posts_bytes
    assert [(p.source, p.child) for p in made] == [(COPY, True), (DIRECT, False)]


def test_an_address_space_limit_means_the_plain_path(
    engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ulimit -v``: no child, no helper thread (each reserves a stack), no orjson (it crashes where an
    allocation fails): the export runs as skyarchive would. (The limit itself: test_limits.py, from the CLI.)"""
    real = plan._soft
    monkeypatch.setattr(plan, "_soft", lambda limit: 1 << 30 if limit == resource.RLIMIT_AS else real(limit))
    monkeypatch.setattr(plan, "CHILD_POSTS", 10)
    started: list[str] = []
    original = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self.name), original(self))[1])
    made = plans_made(monkeypatch)
    import orjson

    monkeypatch.setattr(orjson, "dumps", lambda *a, **k: pytest.fail("orjson used under an address-space limit"))
    export_both(engine, tmp_path)
    assert [(p.child, p.threads, p.fast) for p in made] == [(False, False, False)]
    assert [name for name in started if name.startswith("export-")] == []


def test_the_spool_is_never_held_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TMPDIR on a tmpfs (memory): the spool goes beside the export instead; elsewhere, in TMPDIR."""
    monkeypatch.setattr(plan.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    monkeypatch.setattr(plan, "in_memory", lambda path: True)
    assert plan.spool_directory(tmp_path / "exports") == tmp_path / "exports"
    monkeypatch.setattr(plan, "in_memory", lambda path: False)
    assert plan.spool_directory(tmp_path / "exports") == tmp_path / "tmp"


def test_which_filesystems_are_memory_is_read_from_the_mounts() -> None:
    assert not plan.in_memory(Path("/proc/self"))
    mounts = Path("/proc/self/mounts").read_text().split()
    if "/dev/shm" in mounts and mounts[mounts.index("/dev/shm") + 1] == "tmpfs":
        assert plan.in_memory(Path("/dev/shm"))


def test_the_spool_directory_is_removed_and_stale_ones_too(tmp_path: Path) -> None:
    """Removed on the way out; one a killed export left (nobody holds its lock, a minute old) by the next one;
    one an export still holds, or made a moment ago, never."""
    old = time.time() - 3600
    stale, held, young = (tmp_path / f"{spooldir.PREFIX}{name}" for name in ("aaaaaaaa", "bbbbbbbb", "cccccccc"))
    for folder in (stale, held, young):
        folder.mkdir()
        (folder / "copy.db").write_bytes(b"x")
    for folder in (stale, held):
        os.utime(folder, (old, old))
    lock = os.open(held, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with spooldir.private_directory(tmp_path) as mine:
            assert mine.is_dir() and mine.name.startswith(spooldir.PREFIX)
            assert not stale.exists() and held.exists() and young.exists()
        assert not mine.exists()
    finally:
        os.close(lock)
