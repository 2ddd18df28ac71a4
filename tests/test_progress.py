"""Progress: after every batch, monotonic, ending at the total, heartbeats in slow batches, none after a failure."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from export_batching_plugin import writing
from export_batching_plugin.progress import ProgressReporter

from .harness import export, insert_rows, make_engine, post_row

SETTINGS = {"threshold": 0, "batch_size": 10}


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n) for n in range(35)])
    yield engine
    engine.dispose()


@pytest.mark.parametrize("format", ["json", "csv"])
def test_one_event_per_batch_ending_at_the_total(engine: Any, tmp_path: Path, format: str) -> None:
    outcome = export(engine, tmp_path, settings=SETTINGS, format=format)
    assert outcome.error is None
    assert outcome.events == [(0, 35), (10, 35), (20, 35), (30, 35), (35, 35)]
    assert outcome.job is not None and (outcome.job.processed, outcome.job.total) == (35, 35)


def test_heartbeat_inside_a_slow_batch(engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = writing.JsonWriter.write_batch

    def slow(self: writing.JsonWriter, batch: Any) -> None:
        time.sleep(0.6)
        original(self, batch)

    monkeypatch.setattr(writing.JsonWriter, "write_batch", slow)
    outcome = export(engine, tmp_path, settings={**SETTINGS, "batch_size": 100, "progress_interval": 0.1})
    assert outcome.error is None
    zeros = [event for event in outcome.events if event == (0, 35)]
    assert len(zeros) >= 3, f"expected heartbeats repeating (0, 35) during the slow batch, got {outcome.events}"
    assert outcome.events[-1] == (35, 35)
    assert [done for done, _ in outcome.events] == sorted(done for done, _ in outcome.events)


def test_no_event_after_a_failure(engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    original = writing.JsonWriter.write_batch

    def failing(self: writing.JsonWriter, batch: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device", "posts.json")
        original(self, batch)

    monkeypatch.setattr(writing.JsonWriter, "write_batch", failing)
    outcome = export(engine, tmp_path, settings={**SETTINGS, "progress_interval": 0.05})
    assert outcome.error is not None
    assert "batch 2 (posts 11-20) failed: disk full: posts.json" in str(outcome.error)
    seen = list(outcome.events)
    assert seen == [(0, 35), (10, 35)]
    time.sleep(0.3)
    assert outcome.events == seen, "no progress may be reported once the export has failed"
    assert outcome.job is not None and outcome.job.status == "failed"


def test_reporter_repeats_the_count_when_idle() -> None:
    events: list[tuple[int, int]] = []
    with ProgressReporter(lambda d, t: events.append((d, t)), 5, interval=0.05) as progress:
        time.sleep(0.4)
        progress.advance(5)
    assert events[0] == (0, 5) and events[-1] == (5, 5)
    assert events.count((0, 5)) >= 3
