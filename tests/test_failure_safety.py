"""Failure safety: whatever fails, nothing partial is left, and what the user is told is what is on disk.

The sweep follows SQLite's own I/O-error tests: make the k-th operation of a
kind fail (once, or from then on), for k = 1, 2, ... until the export gets
through, and check what is left after each run, and what the error says.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from skyarchive.cli import run_export
from skyarchive.errors import SkyarchiveError
from skyarchive.models import media_table, posts_table
from skyarchive.seed import seed_archive
from sqlalchemy.exc import OperationalError

from export_batching_plugin import batched, blocks, media, reading, staging, worker
from export_batching_plugin.blocks import Span
from export_batching_plugin.plan import COPY, DIRECT, SPOOL

from .conftest import plugin_toml
from .harness import (
    archive_with_media,
    export,
    force_plan,
    make_engine,
    no_spool_left,
    plugin_manager,
    post_row,
    status_lines,
)

SETTINGS = {"threshold": 0, "batch_size": 10}


@pytest.fixture
def media_archive(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """45 posts, 15 of them with a media file."""
    rows = [post_row(n, created_at=f"2025-01-01T00:{n // 60:02d}:{n % 60:02d}.000Z") for n in range(45)]
    files = {f"m{n}.jpg": (n, b"jpeg %d" % n) for n in range(0, 45, 3)}
    engine, media_dir = archive_with_media(tmp_path, rows, files)
    yield engine, media_dir
    engine.dispose()


def enospc(*_: Any) -> BaseException:
    return OSError(errno.ENOSPC, "No space left on device", "injected")


def connection_lost(*_: Any) -> BaseException:
    return OperationalError("SELECT posts", {}, Exception("server closed the connection unexpectedly"))


class Fault:
    """Wraps one operation: its k-th call fails, and with ``persistent`` every later one too (thread-safe)."""

    def __init__(self, k: int, persistent: bool, error: Callable[..., BaseException]) -> None:
        self.k, self.persistent, self.error, self.calls = k, persistent, error, 0
        self._lock = threading.Lock()

    def wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)  # the same signature: the plugin checks the host's
        def operation(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls += 1
                fail = self.calls == self.k or (self.persistent and self.calls > self.k)
            if fail:
                raise self.error()
            return original(*args, **kwargs)

        return operation


class FaultyStream:
    def __init__(self, stream: Any, fault: Fault) -> None:
        self.fetchmany, self.close = fault.wrap(stream.fetchmany), stream.close


def faulty_stream(original: Callable[..., Any], fault: Fault) -> Callable[..., Any]:
    """Wraps open_stream: the rows it returns fail their fetches through ``fault``."""
    return lambda *args, **kwargs: FaultyStream(original(*args, **kwargs), fault)


def same(original: Callable[..., Any], fault: Fault) -> Callable[..., Any]:
    return fault.wrap(original)


WRITE_BATCH = r"writing batch (?P<batch>\d+) \(posts (?P<first>\d+)-(?P<last>\d+)\)"
READ_BATCH = r"reading batch (?P<batch>\d+) \(posts (?P<first>\d+)-(?P<last>\d+)\)"
LOST = r"\(builtins.Exception\) server closed the connection unexpectedly"
#: (owner, attribute, error, how to wrap, what the error must say, the plans that have it): each is one kind of
#: operation of the batched path.
OPERATIONS: dict[str, tuple[Any, str, Callable[..., BaseException], Callable[..., Any], str, set[str]]] = {
    "copy the selection": (reading.Snapshot, "copy_selection", connection_lost, same,
                           rf"copying the selection failed: {LOST}", {COPY}),
    "sort the copy": (blocks.Copy, "sort", enospc, same, r"sorting the selection failed: disk full: injected", {COPY}),
    "read media rows": (batched, "media_rows", connection_lost, same, rf"reading the media rows failed: {LOST}",
                        {SPOOL, DIRECT}),
    "read copied media rows": (blocks.Copy, "media_rows", enospc, same,
                               r"reading the media rows failed: disk full: injected", {COPY}),
    "fetch posts": (batched, "open_stream", connection_lost, faulty_stream, rf"{READ_BATCH} failed: {LOST}",
                    {SPOOL, DIRECT}),
    "spool posts": (blocks.Spool, "append", enospc, same, rf"{READ_BATCH} failed: disk full: injected", {SPOOL}),
    "read the spool": (blocks.Spool, "chunks", enospc, same, rf"{WRITE_BATCH} failed: disk full: injected", {SPOOL}),
    "read the copy": (blocks.Copy, "chunks", enospc, same, rf"{WRITE_BATCH} failed: disk full: injected", {COPY}),
    "write posts": (worker.Writer, "write", enospc, same,
                    rf"({WRITE_BATCH}|finishing posts\.json) failed: disk full: injected", {COPY, SPOOL, DIRECT}),
    "copy media": (media, "copy_media_file", enospc, same, r"copying media files failed: disk full: injected",
                   {COPY, SPOOL, DIRECT}),
    "write manifest": (batched, "write_manifest", enospc, same, r"writing manifest\.json failed: disk full: injected",
                       {COPY, SPOOL, DIRECT}),
    "sync to disk": (batched, "sync_tree", enospc, same, r"syncing to disk failed: disk full: injected",
                     {COPY, SPOOL, DIRECT}),
    "publish": (staging, "rename_noreplace", enospc, same, r"publishing failed: disk full: injected",
                {COPY, SPOOL, DIRECT}),
}  # fmt: skip


def leftovers(exports: Path) -> list[str]:
    return sorted(str(p.relative_to(exports)) for p in exports.rglob("*") if ".staging-" in p.name)


@pytest.mark.parametrize("persistent", [False, True], ids=["single", "persistent"])
@pytest.mark.parametrize(
    ("operation", "source"), [(op, source) for op, spec in OPERATIONS.items() for source in sorted(spec[5])]
)
def test_fault_sweep(
    media_archive: tuple[Any, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    operation: str,
    source: str,
    persistent: bool,
) -> None:
    """On every plan without a child process (whose own failures: test_second_core.py)."""
    engine, media_dir = media_archive
    out = tmp_path / "exports"
    run = dict(settings=SETTINGS, media=True, media_dir=media_dir)
    earlier = export(engine, out, **run)
    assert earlier.result is not None
    snapshot = {p: p.read_bytes() for p in earlier.result.export_dir.rglob("*") if p.is_file()}
    expected = export(engine, tmp_path / "host", settings=None, media=True, media_dir=media_dir)
    plans = force_plan(monkeypatch, source=source, child=False)

    owner, name, error, wrap, says, _ = OPERATIONS[operation]
    original = getattr(owner, name)
    failures = 0
    for k in range(1, 200):
        fault = Fault(k, persistent, error)
        monkeypatch.setattr(owner, name, wrap(original, fault))
        outcome = export(engine, out, **run)
        monkeypatch.setattr(owner, name, original)
        if outcome.error is None:
            break
        failures += 1
        assert isinstance(outcome.error, SkyarchiveError), repr(outcome.error)
        message = str(outcome.error)
        match = re.fullmatch(says, message)
        assert match, f"{message!r} does not match {says!r}"
        failure = outcome.error
        assert isinstance(failure, batched.ExportFailed)
        assert failure.cause is failure.__cause__ and isinstance(failure.cause, type(error()))
        if match.groupdict().get("batch"):  # a batch that exists, with its real posts
            first, last = int(match["first"]), int(match["last"])
            assert 1 <= first <= last <= 45 and (first - 1) % 10 == 0 and int(match["batch"]) == (first - 1) // 10 + 1
            assert failure.batch == Span(int(match["batch"]), first, last)
            assert failure.phase == message.split(" ", 1)[0]
        else:
            assert failure.batch is None and message.startswith(f"{failure.phase} failed: ")
        assert outcome.job is not None and outcome.job.status == "failed"
        assert leftovers(out) == [] and no_spool_left()
        assert len(list(out.rglob("manifest.json"))) == 1, "only the earlier export may exist"
        assert {p: p.read_bytes() for p in snapshot} == snapshot
    else:
        pytest.fail("the export never got through")
    assert failures >= 1, f"no {operation} fault was ever hit"
    assert {plan.source for plan in plans} == {source}
    assert outcome.posts_bytes == expected.posts_bytes
    assert outcome.manifest is not None and outcome.manifest["media_count"] == 15


@pytest.mark.parametrize("source", [COPY, SPOOL, DIRECT])
def test_disk_full_names_the_file_as_the_user_knows_it(
    media_archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    engine, _ = media_archive
    force_plan(monkeypatch, source=source, child=False)
    seen: list[str] = []

    def full(self: worker.Writer, pieces: Any, *, batch: Any = None, posts: int = 0) -> None:
        seen.append(self.path)
        raise OSError(errno.ENOSPC, "No space left on device", self.path)

    monkeypatch.setattr(worker.Writer, "write", full)
    outcome = export(engine, tmp_path, settings=SETTINGS)
    assert outcome.job is not None and ".staging-" in seen[0], "the file was written in the staging directory"
    final = outcome.job.export_dir / "posts.json"
    assert str(outcome.error) == f"writing batch 1 (posts 1-10) failed: disk full: {final}"


def test_a_failed_final_write_names_no_batch(
    media_archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The closing bracket belongs to no batch: the error says so."""
    engine, _ = media_archive
    original = worker.Writer.write

    def write(self: worker.Writer, pieces: Any, *, batch: Any = None, posts: int = 0) -> None:
        pieces = list(pieces)
        if b"".join(map(bytes, pieces)) == b"\n]\n":
            raise OSError(errno.ENOSPC, "No space left on device", self.path)
        original(self, pieces, batch=batch, posts=posts)

    monkeypatch.setattr(worker.Writer, "write", write)
    outcome = export(engine, tmp_path, settings=SETTINGS)
    assert outcome.job is not None
    assert str(outcome.error) == f"finishing posts.json failed: disk full: {outcome.job.export_dir / 'posts.json'}"


def test_a_staging_directory_that_cannot_be_removed_is_reported(
    media_archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = media_archive
    monkeypatch.setattr(batched, "write_manifest", lambda *a, **k: (_ for _ in ()).throw(enospc()))
    monkeypatch.setattr(
        staging.shutil, "rmtree", lambda path, *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied", path))
    )
    outcome = export(engine, tmp_path / "out", settings=SETTINGS, folder="f")
    message = str(outcome.error)
    left = leftovers(tmp_path / "out")
    assert len(left) == 1, left
    assert message.startswith("writing manifest.json failed: disk full: injected; the incomplete export could not")
    assert message.endswith(f"{tmp_path / 'out' / left[0]} (denied)")


def test_an_existing_export_directory_is_never_replaced(media_archive: tuple[Any, Path], tmp_path: Path) -> None:
    engine, _ = media_archive
    first = export(engine, tmp_path, settings=SETTINGS)
    assert first.job is not None and first.result is not None
    for planted in ("empty", "symlink"):
        job = first.job
        target = job.export_dir.with_name("2030-01-01_00-00-00")
        if planted == "empty":
            target.mkdir()
        else:
            (tmp_path / "elsewhere").mkdir()
            target.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        job.export_dir, job.status = target, "pending"
        with pytest.raises(SkyarchiveError, match="export directory already exists"):
            run_export(job, plugin_manager(SETTINGS))
        assert os.listdir(target) == [] and leftovers(tmp_path) == []
        os.unlink(target) if planted == "symlink" else target.rmdir()


def test_a_directory_appearing_at_publish_time_is_not_replaced(
    media_archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = media_archive
    first = export(engine, tmp_path, settings=SETTINGS)
    assert first.job is not None
    job = first.job
    job.export_dir, job.status = job.export_dir.with_name("2032-01-01_00-00-00"), "pending"
    original = staging.Staging.publish

    def racing(self: staging.Staging) -> None:
        job.export_dir.mkdir()  # another process takes the name just before the rename
        original(self)

    monkeypatch.setattr(staging.Staging, "publish", racing)
    with pytest.raises(SkyarchiveError, match="publishing failed: export directory already exists"):
        run_export(job, plugin_manager(SETTINGS))
    assert os.listdir(job.export_dir) == [] and leftovers(tmp_path) == []


def test_a_planted_staging_name_is_not_written_through(
    media_archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = media_archive
    first = export(engine, tmp_path, settings=SETTINGS)
    assert first.job is not None
    victim = tmp_path / "victim"
    victim.mkdir()
    job = first.job
    job.export_dir, job.status = job.export_dir.with_name("2031-01-01_00-00-00"), "pending"
    (job.export_dir.parent / ".2031-01-01_00-00-00.staging-export").symlink_to(victim)
    with pytest.raises(SkyarchiveError, match="creating the staging directory failed: File exists"):
        run_export(job, plugin_manager(SETTINGS))
    assert os.listdir(victim) == [] and not job.export_dir.exists()


@pytest.mark.parametrize("when", ["during the rename", "syncing the folder after it"])
def test_an_interrupt_once_the_export_is_in_place_is_a_success(
    media_archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str, caplog: Any
) -> None:
    """Ctrl-C after the rename: the export is complete on disk, so the outcome reported is success."""
    engine, _ = media_archive
    if when == "during the rename":
        original = staging.rename_noreplace

        def rename(source: Path, target: Path) -> None:
            original(source, target)
            raise KeyboardInterrupt  # as if delivered just after the system call returned

        monkeypatch.setattr(staging, "rename_noreplace", rename)
    else:
        original_sync = batched.fsync_directory

        def sync(path: Path) -> None:
            if not path.name.startswith(".") and not (path / "manifest.json").exists():
                raise KeyboardInterrupt
            original_sync(path)

        monkeypatch.setattr(batched, "fsync_directory", sync)
    outcome = export(engine, tmp_path, settings=SETTINGS)
    assert outcome.error is None and outcome.result is not None, outcome.error
    assert outcome.job is not None and outcome.job.status == "done"
    assert outcome.manifest is not None and outcome.manifest["post_count"] == 45
    assert "is complete" in caplog.text and leftovers(tmp_path) == []


def test_no_signal_handler_of_its_own(media_archive: tuple[Any, Path], tmp_path: Path) -> None:
    """The plugin leaves the host's signal handling alone (it may be a server or a notebook)."""
    engine, _ = media_archive
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    seen: list[Any] = []
    outcome = export(engine, tmp_path, settings=SETTINGS, listener=lambda *_: seen.append(signal.getsignal(15)))
    assert outcome.error is None
    assert {s: signal.getsignal(s) for s in before} == before
    assert set(map(id, seen)) == {id(before[signal.SIGTERM])}, "SIGTERM's handler changed during the export"


# -- real signals and a real full disk, in a subprocess -------------------------------------------


@pytest.fixture(scope="module")
def folder_of_60k_posts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big")
    engine = make_engine(root / "skyarchive.db")
    seed_archive(engine, posts_table, media_table, posts=60_000, media_every=0, media_dir=root / "media")
    engine.dispose()
    return root


def start_export(root: Path, out: Path, *, measured: bool = True, batch_size: int = 20) -> subprocess.Popen[str]:
    """The export as a user runs it; ``measured=False``: without coverage's tracer in it (see below)."""
    from skyarchive.seed import DEFAULT_DID

    env = dict(os.environ)
    if not measured:
        env.pop("COVERAGE_PROCESS_CONFIG", None)
        env.pop("COVERAGE_PROCESS_START", None)
    config = out.parent / f"batches-of-{batch_size}.toml"
    config.write_text(plugin_toml(threshold=0, batch_size=batch_size), encoding="utf-8")
    command = ["export", "--did", DEFAULT_DID, "--format", "json", "--out", str(out)]
    return subprocess.Popen(
        [sys.executable, "-m", "skyarchive", "--config", str(config), *command],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_export_cleans_up(folder_of_60k_posts: Path, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "exports"
    # Not under coverage: the KeyboardInterrupt that skyarchive's SIGTERM handler raises can land between
    # coverage's tracer taking its data lock (a Python threading.Lock) and releasing it, and the export's
    # next new function then waits on that lock forever (seen in CI, py3.10: the main thread stuck in
    # coverage/collector.py lock_data, called from staging.published). The interrupt paths themselves are
    # measured in-process by the tests above.
    process = start_export(folder_of_60k_posts, out, measured=False, batch_size=1)  # about 1 s of batches to come
    assert process.stderr is not None
    first = process.stderr.readline()  # printed as the first batch is read
    assert first.startswith("export: 0/60000"), first
    staging_dirs = list(out.glob("*/.*.staging-*"))
    assert staging_dirs, "the export should be under way, in its staging directory"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "skyarchive: error: interrupted"
    assert leftovers(out) == [] and list(out.glob("*/*")) == []


@pytest.mark.slow
def test_a_really_full_disk(folder_of_60k_posts: Path, tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if made.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here ({made.stderr.decode().strip()}); test_fault_sweep injects ENOSPC"
        )
    try:
        process = start_export(folder_of_60k_posts, mount)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 1
        error = stderr.strip().splitlines()[-1]
        assert re.fullmatch(
            rf"skyarchive: error: {WRITE_BATCH} failed: disk full: {mount}/\S+/[\d_-]+/posts.json", error
        ), error
        assert leftovers(mount) == []
        assert [p for p in mount.rglob("*") if p.is_file()] == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_media_copy_that_fails_mid_write_names_the_copy(
    media_archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write to an open file does not say which file: the error still names the copy, as the user will see it."""
    engine, media_dir = media_archive

    def full_while_writing(*args: Any) -> tuple[bool, str | None]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(media, "copy_media_file", functools.wraps(media.copy_media_file)(full_while_writing))
    outcome = export(engine, tmp_path, settings=SETTINGS, media=True, media_dir=media_dir)
    assert outcome.job is not None
    message = str(outcome.error)
    final = re.escape(str(outcome.job.export_dir))
    assert re.fullmatch(rf"copying media files failed: disk full: {final}/media/m\d+\.jpg", message), message
    assert leftovers(tmp_path) == []


def test_an_interrupt_that_leaves_staging_behind_says_so(
    media_archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine, _ = media_archive

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(batched, "write_manifest", interrupted)
    monkeypatch.setattr(
        staging.shutil, "rmtree", lambda path, *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied", path))
    )
    with pytest.raises(KeyboardInterrupt):
        export(engine, tmp_path, settings=SETTINGS)
    (left,) = leftovers(tmp_path)
    said = f"export_batching: interrupted; the incomplete export could not be removed: {tmp_path / left} (denied)"
    assert said in caplog.text


def test_a_slow_finish_says_what_it_is_doing(
    media_archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine, _ = media_archive
    real_sync = batched.sync_tree

    def slow_sync(root: Path) -> None:
        time.sleep(0.5)
        real_sync(root)

    monkeypatch.setattr(batched, "sync_tree", slow_sync)
    outcome = export(engine, tmp_path, settings={**SETTINGS, "progress_interval": 0.2})
    assert outcome.error is None
    lines = status_lines(outcome, caplog.records)
    assert "syncing to disk" in lines, lines
