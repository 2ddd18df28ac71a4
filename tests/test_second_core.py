"""Encoding on both cores: the child process (export_batching_plugin/worker.py) encodes batches from the spool
beside the export and writes the posts file, in order, with the batches the export encoded meanwhile.

The same bytes as the host's, on every plan that has a child; its failures told as the export's own (the batch,
the file as the user knows it); where it cannot start or does not answer, the export does the work itself;
it runs nothing but the plugin's code, and never outlives the export.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from export_batching_plugin import blocks, pipeline, plan, worker
from export_batching_plugin.batched import ExportFailed, Span

from .differential import fill, run_both
from .harness import FORMATS, export, force_plan, make_engine

JSON_FORMATS = [f for f in FORMATS if f != "csv"]
CHILD = b"export_batching_plugin.worker"


@pytest.fixture(autouse=True)
def always(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every selection here is large enough for the child process."""
    monkeypatch.setattr(plan, "CHILD_POSTS", 0)


def started(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The child processes the exports start (each a pipeline.Child, or None where none could start)."""
    seen: list[Any] = []
    original = pipeline.Child.start.__func__  # type: ignore[attr-defined]

    def start(cls: type, *args: Any, **kwargs: Any) -> Any:
        made = original(cls, *args, **kwargs)
        seen.append(made)
        return made

    monkeypatch.setattr(pipeline.Child, "start", classmethod(start))
    return seen


def children() -> list[int]:
    """This process's children that are encoder processes, still running."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and CHILD in cmdline:
                found.append(int(pid))
    return found


@pytest.mark.parametrize("source", [plan.COPY, plan.SPOOL])
@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_the_same_bytes_as_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, format: str, batch_size: int, source: str
) -> None:
    """Batches encoded by the child and by the export, written in order by the child (DEPTH 1: both encode)."""
    processes = started(monkeypatch)
    force_plan(monkeypatch, source=source, child=True)
    monkeypatch.setattr(pipeline, "DEPTH", 1)
    engine = make_engine(tmp_path / "a.db")
    templates = [
        {"text": 'a "quote", a comma\nLF', "embed_data": '{"images": [{"fullsize": "x/bafk@jpeg"}], "n": 1e-07}'},
        {"text": "👩‍👩‍👧 \u2028", "labels": '[{"val": "spam"}]', "like_count": 2**63 - 1},
        {"text": None, "embed_data": '{"big": 123456789012345678901234}', "reply_parent": "at://r"},
        {"text": "x" * 70_000},
    ]
    fill(engine, templates, 150)
    run_both(engine, tmp_path, batch_size=batch_size, format=format)
    engine.dispose()
    assert processes and all(p is not None for p in processes), "the child process should have run"
    assert children() == []


@pytest.mark.parametrize("format", FORMATS)
def test_checksums_come_from_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, format: str) -> None:
    started(monkeypatch)
    engine = make_engine(tmp_path / "a.db")
    fill(engine, [{"text": "é"}, {"embed_data": '{"a": 1}'}], 300)
    outcome = export(engine, tmp_path / "out", settings={"threshold": 0, "batch_size": 50, "checksums": True},
                     format=format)  # fmt: skip
    engine.dispose()
    assert outcome.result is not None, outcome.error
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=outcome.result.export_dir, check=False)
    assert check.returncode == 0


def test_the_childs_failure_met_while_handing_it_a_batch_is_told_as_it_said_it() -> None:
    """The child may say it failed (its disk full, at its batch) just as the export hands it the bytes of a later
    batch: that failure reaches the export as the child said it, not wrapped as the later batch's."""
    said = blocks.BatchFailed(Span(3, 101, 150), OSError(errno.ENOSPC, "No space left on device", "posts.json"))

    def write(pieces: Any, *, batch: Any, posts: int) -> None:
        list(pieces)
        raise said

    framing = worker.Framing("jsonl", lambda rows, sizes: iter([b"{}\n" for _ in rows]))
    with pytest.raises(blocks.BatchFailed) as caught:
        worker.encoded(framing, blocks.Block(5, 200, 2), iter([([(1,), (2,)], [0, 0])]), write)
    assert caught.value is said and caught.value.span == Span(3, 101, 150)
    assert isinstance(caught.value.cause, OSError) and caught.value.cause.errno == errno.ENOSPC


@pytest.mark.parametrize(
    ("cause", "told"),
    [
        (csv.Error("need to escape, but no escapechar set"), csv.Error),  # a NUL in posts.csv on Python 3.10
        (OSError(errno.ENOSPC, "No space left on device", "posts.json"), OSError),
        (MemoryError("cannot allocate the batch"), MemoryError),
        (worker.InvalidPost("embed_data is not valid JSON"), LookupError),  # the export's own error for it
        (RecursionError("maximum recursion depth exceeded"), RuntimeError),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else None,
)
def test_a_failure_the_child_says_is_raised_as_the_export_would_raise_it(cause: BaseException, told: type) -> None:
    """What the child says crosses a pipe as JSON; the export raises it as the kind of error it would have met
    itself (the differential tests compare the kinds with skyarchive's own: a ``csv.Error`` must stay one)."""
    said = json.loads(json.dumps(blocks.BatchFailed(Span(2, 4, 6), cause).message()))
    again = blocks.BatchFailed.of(said, LookupError)
    assert type(again.cause) is told and again.span == Span(2, 4, 6)
    assert str(again.cause) == str(cause).splitlines()[0]
    if isinstance(cause, OSError):
        assert (again.cause.errno, again.cause.filename) == (errno.ENOSPC, "posts.json")


def test_a_post_that_is_not_json_fails_as_with_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    processes = started(monkeypatch)
    engine = make_engine(tmp_path / "a.db")
    fill(engine, [{"text": "ok"}, {"text": "ok"}, {"embed_data": "{not json"}], 30)
    run_both(engine, tmp_path, batch_size=4, format="json")
    plugin = export(engine, tmp_path / "again", settings={"threshold": 0, "batch_size": 4})
    engine.dispose()
    assert processes[0] is not None
    failure = plugin.error
    assert isinstance(failure, ExportFailed) and failure.phase == "writing" and failure.batch is not None
    assert "embed_data is not valid JSON" in str(failure)


@pytest.mark.parametrize("depth", [pipeline.DEPTH, 0], ids=["child-encodes", "export-encodes"])
def test_a_full_disk_in_the_encoder_names_the_batch_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, depth: int
) -> None:
    """The encoder process writes posts.json: a disk that fills up (a real 1 MiB tmpfs) is told as the export's,
    whether the child fills it with a batch it encoded or with bytes the export encoded and handed it (depth 0)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=False).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        monkeypatch.setattr(pipeline, "DEPTH", depth)
        processes = started(monkeypatch)
        engine = make_engine(tmp_path / "a.db")
        fill(engine, [{"text": "x" * 3000}], 1000)
        outcome = export(engine, mount, settings={"threshold": 0, "batch_size": 50})
        engine.dispose()
        assert processes[0] is not None
        failure = outcome.error
        assert isinstance(failure, ExportFailed), failure
        assert failure.phase == "writing" and isinstance(failure.batch, Span), failure
        assert "disk full: " in str(failure) and str(failure).endswith("/posts.json"), failure
        assert ".staging-" not in str(failure)
        assert not any(".staging-" in p.name for p in mount.rglob("*"))
        assert children() == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_child_that_is_killed_fails_the_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed once it has written a batch (before it is ready, the export would do without it)."""
    processes = started(monkeypatch)
    engine = make_engine(tmp_path / "a.db")
    fill(engine, [{"text": "x"}], 4000)
    killed: list[int] = []
    original = pipeline.Child.poll

    def poll(self: pipeline.Child, timeout: float = 0.0) -> bool:
        if self.written_batch >= 1 and not killed:
            killed.extend(children())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
        return original(self, timeout)

    monkeypatch.setattr(pipeline.Child, "poll", poll)
    outcome = export(engine, tmp_path / "out", settings={"threshold": 0, "batch_size": 20})
    engine.dispose()
    assert processes[0] is not None and killed
    assert isinstance(outcome.error, ExportFailed), outcome.error
    assert "the export's encoder process ended (killed by signal 9)" in str(outcome.error)
    assert not any(".staging-" in p.name for p in (tmp_path / "out").rglob("*"))
    assert children() == []


@pytest.mark.parametrize("how", ["no process", "not ready"])
def test_without_an_encoder_the_export_encodes_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "no process":

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")  # as fork fails under a task limit

        monkeypatch.setattr(subprocess, "Popen", refuse)
    else:  # an interpreter that cannot run the encoder: it exits before it is ready
        monkeypatch.setattr(sys, "executable", "/bin/false")
    engine = make_engine(tmp_path / "a.db")
    fill(engine, [{"text": "é"}, {"embed_data": '{"a": [1, 2]}'}], 120)
    run_both(engine, tmp_path, batch_size=25, format="json")
    engine.dispose()
    assert children() == []


def test_a_failed_export_stops_its_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure while reading (the database gone, say): the child is stopped and reaped, nothing is left."""
    processes = started(monkeypatch)
    force_plan(monkeypatch, source=plan.SPOOL, child=True)
    engine = make_engine(tmp_path / "a.db")
    fill(engine, [{"text": "x"}], 300)
    original = blocks.Spool.append
    calls = {"n": 0}

    def append(self: blocks.Spool, chunk: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.EIO, "Input/output error", "the archive")
        return original(self, chunk)

    monkeypatch.setattr(blocks.Spool, "append", append)
    outcome = export(engine, tmp_path / "out", settings={"threshold": 0, "batch_size": 20})
    engine.dispose()
    assert processes[0] is not None
    assert isinstance(outcome.error, ExportFailed) and outcome.error.phase == "reading", outcome.error
    assert children() == []
    assert not any(".staging-" in p.name for p in (tmp_path / "out").rglob("*"))


def test_the_encoder_goes_when_the_export_process_dies(tmp_path: Path) -> None:
    """The export killed outright (SIGKILL, OOM): its encoder process notices and ends; nothing runs on."""
    engine = make_engine(tmp_path / "skyarchive.db")
    fill(engine, [{"text": "x" * 200}], 20_000)
    engine.dispose()
    script = (
        "import sys, time\n"
        "from export_batching_plugin import blocks\n"
        "original = blocks.Copy.sort\n"
        "def sort(self):\n"
        "    print('sorting', flush=True); time.sleep(60)\n"
        "blocks.Copy.sort = sort\n"
        "from skyarchive.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    (tmp_path / "skyarchive.toml").write_text(
        '[plugins]\nenabled = ["export_batching"]\n[plugins.export_batching]\nthreshold = 0\nbatch_size = 100\n',
        encoding="utf-8",
    )
    export_process = subprocess.Popen(
        [sys.executable, "-c", script, "export", "--did", "did:plc:owner", "--format", "json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert export_process.stdout is not None
    assert export_process.stdout.readline().strip() == "sorting"
    encoders = [pid for pid in all_encoders() if parent_of(pid) == export_process.pid]
    assert encoders, "the export should have started its encoder"
    export_process.kill()
    export_process.wait()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in encoders) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in encoders), "the encoder must not outlive the export"


def all_encoders() -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if CHILD in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                continue
    return found


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_encoder_never_runs_code_from_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``python -m`` would import these from the folder the user exports from; the child is started isolated."""
    processes = started(monkeypatch)
    planted = tmp_path / "planted"
    planted.mkdir()
    for name in ("random", "json", "threading", "encodings", "orjson", "export_batching_plugin"):
        (planted / f"{name}.py").write_text(f"open({str(planted / ('ran-' + name))!r}, 'w').close()\n")
    monkeypatch.chdir(planted)
    monkeypatch.setenv("PYTHONPATH", str(planted))
    monkeypatch.setenv("PYTHONSTARTUP", str(planted / "random.py"))
    engine = make_engine(tmp_path / "a.db")
    fill(engine, [{"text": "é"}, {"embed_data": '{"a": [1, 2]}'}], 120)
    run_both(engine, tmp_path, batch_size=25, format="json")
    engine.dispose()
    assert processes and processes[0] is not None and processes[0].ready, "the child process should have run"
    assert sorted(p.name for p in planted.glob("ran-*")) == []


def test_an_encoder_that_never_gets_ready_costs_little_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An embedding host's ``sys.executable`` that ignores its arguments and runs on (and starts a process of
    its own): the export waits at most READY_TIMEOUT for it, encodes itself, and nothing it started outlives it."""
    marker = f"{time.time_ns() % 10**6}.5"
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(f"#!/bin/sh\nsleep {marker} &\nexec sleep {marker}\n")
    wrapper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(wrapper))
    engine = make_engine(tmp_path / "a.db")
    fill(engine, [{"text": "é"}], 120)
    started_at = time.monotonic()
    run_both(engine, tmp_path, batch_size=25, format="json")
    elapsed = time.monotonic() - started_at
    engine.dispose()
    assert elapsed < pipeline.READY_TIMEOUT + 8, elapsed  # the host's export, the plugin's, and the deadline
    left = [pid for pid in os.listdir("/proc") if pid.isdigit() and marker.encode() in _cmdline(pid)]
    assert left == [], "a process the wrapper started outlived the export"


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
