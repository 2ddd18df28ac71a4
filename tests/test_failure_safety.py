"""Failure safety: whatever fails, nothing partial is left, no staging directory, earlier exports untouched.

The sweep follows SQLite's own I/O-error tests: make the k-th operation of a
kind fail (once, or from then on), for k = 1, 2, ... until the export gets
through, and check what is left after each run.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from skyarchive.errors import SkyarchiveError
from skyarchive.models import media_table, posts_table
from skyarchive.seed import seed_archive
from sqlalchemy.exc import OperationalError

from export_batching_plugin import batched, media, reading, staging, writing

from .harness import export, insert_rows, make_engine, post_row

SETTINGS = {"threshold": 0, "batch_size": 10}


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    rows = [post_row(n, created_at=f"2025-01-01T00:{n // 60:02d}:{n % 60:02d}.000Z") for n in range(45)]
    files = []
    for n in range(0, 45, 3):
        (media_dir / f"m{n}.jpg").write_bytes(b"jpeg %d" % n)
        files.append({"hash": f"h{n}", "post_uri": rows[n]["uri"], "mime_type": "image/jpeg",
                      "file_path": f"m{n}.jpg", "size_bytes": 6, "created_at": rows[n]["created_at"]})  # fmt: skip
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, rows, files)
    yield engine, media_dir
    engine.dispose()


def enospc(*_: Any) -> BaseException:
    return OSError(errno.ENOSPC, "No space left on device", "injected")


def connection_lost(*_: Any) -> BaseException:
    return OperationalError("SELECT posts", {}, Exception("server closed the connection unexpectedly"))


class FaultyStream:
    """The posts stream, with its fetches going through a fault."""

    def __init__(self, inner: Any, fetchmany: Callable[..., Any]) -> None:
        self._inner, self.fetchmany = inner, fetchmany

    def close(self) -> None:
        self._inner.close()


def faulty_stream(original: Callable[..., Any], fault: Fault) -> Callable[..., Any]:
    """Wraps reading._stream: the stream it returns fails its fetches through ``fault``."""
    return lambda *args: (lambda inner: FaultyStream(inner, fault.wrap(inner.fetchmany)))(original(*args))


# (owner, attribute, error, how to wrap): each is one kind of operation of the batched path.
OPERATIONS: dict[str, tuple[Any, str, Callable[..., BaseException], Callable[..., Any]]] = {
    "write posts": (writing.JsonWriter, "write_batch", enospc, lambda original, fault: fault.wrap(original)),
    "copy media": (media, "copy_media_file", enospc, lambda original, fault: fault.wrap(original)),
    "fetch posts": (reading, "_stream", connection_lost, faulty_stream),
    "write manifest": (batched, "write_manifest", enospc, lambda original, fault: fault.wrap(original)),
    "sync to disk": (staging, "_fsync_path", enospc, lambda original, fault: fault.wrap(original)),
    "publish": (staging, "rename_noreplace", enospc, lambda original, fault: fault.wrap(original)),
}


class Fault:
    """Wraps one operation: its k-th call fails, and with ``persistent`` every later one too."""

    def __init__(self, k: int, persistent: bool, error: Callable[..., BaseException]) -> None:
        self.k, self.persistent, self.error, self.calls = k, persistent, error, 0

    def wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def operation(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.k or (self.persistent and self.calls > self.k):
                raise self.error()
            return original(*args, **kwargs)

        return operation


def leftovers(exports: Path) -> list[str]:
    return sorted(str(p.relative_to(exports)) for p in exports.rglob("*") if ".staging-" in p.name)


@pytest.mark.parametrize("persistent", [False, True], ids=["single", "persistent"])
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_fault_sweep(
    archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str, persistent: bool
) -> None:
    engine, media_dir = archive
    out = tmp_path / "exports"
    run = dict(settings=SETTINGS, media=True, media_dir=media_dir)
    earlier = export(engine, out, **run)
    assert earlier.result is not None
    snapshot = {p: p.read_bytes() for p in earlier.result.export_dir.rglob("*") if p.is_file()}
    expected = export(engine, tmp_path / "host", settings=None, media=True, media_dir=media_dir)

    owner, name, error, wrap = OPERATIONS[operation]
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
        assert isinstance(outcome.error, (SkyarchiveError, OSError)), repr(outcome.error)
        assert "\n" not in str(outcome.error)
        if operation in ("write posts", "copy media", "fetch posts"):
            assert "batch " in str(outcome.error) and "(posts " in str(outcome.error)
        assert outcome.job is not None and outcome.job.status == "failed"
        assert leftovers(out) == []
        assert len([p for p in out.rglob("manifest.json")]) == 1, "only the earlier export may exist"
        assert {p: p.read_bytes() for p in snapshot} == snapshot
    else:
        pytest.fail("the export never got through")
    assert failures >= 1, f"no {operation} fault was ever hit"
    assert outcome.posts_bytes == expected.posts_bytes
    assert outcome.manifest is not None and outcome.manifest["media_count"] == 15


def test_disk_full_names_the_file(archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, _ = archive
    original = writing.JsonWriter.write_batch

    def full(self: writing.JsonWriter, batch: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/exports/x/posts.json")

    monkeypatch.setattr(writing.JsonWriter, "write_batch", full)
    outcome = export(engine, tmp_path, settings=SETTINGS)
    assert str(outcome.error) == "batch 1 (posts 1-10) failed: disk full: /exports/x/posts.json"
    monkeypatch.setattr(writing.JsonWriter, "write_batch", original)


def test_an_existing_export_directory_is_never_replaced(archive: tuple[Any, Path], tmp_path: Path) -> None:
    engine, _ = archive
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
        from skyarchive.cli import run_export

        from .harness import plugin_manager

        job.export_dir, job.status = target, "pending"
        with pytest.raises(SkyarchiveError, match="export directory already exists"):
            run_export(job, plugin_manager(SETTINGS))
        assert os.listdir(target) == [] and leftovers(tmp_path) == []
        os.unlink(target) if planted == "symlink" else target.rmdir()


def test_a_directory_appearing_at_publish_time_is_not_replaced(
    archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _ = archive
    first = export(engine, tmp_path, settings=SETTINGS)
    assert first.job is not None
    job = first.job
    job.export_dir, job.status = job.export_dir.with_name("2032-01-01_00-00-00"), "pending"
    original = staging.sync_tree

    def racing(root: Path) -> None:
        original(root)
        job.export_dir.mkdir()  # another process takes the name just before the rename

    monkeypatch.setattr(staging, "sync_tree", racing)
    from skyarchive.cli import run_export

    from .harness import plugin_manager

    with pytest.raises(SkyarchiveError, match="export directory already exists"):
        run_export(job, plugin_manager(SETTINGS))
    assert os.listdir(job.export_dir) == [] and leftovers(tmp_path) == []


def test_a_planted_staging_symlink_is_not_followed(archive: tuple[Any, Path], tmp_path: Path) -> None:
    engine, _ = archive
    first = export(engine, tmp_path, settings=SETTINGS)
    assert first.job is not None
    victim = tmp_path / "victim"
    victim.mkdir()
    job = first.job
    job.export_dir, job.status = job.export_dir.with_name("2031-01-01_00-00-00"), "pending"
    staging.staging_dir_for(job.export_dir).symlink_to(victim, target_is_directory=True)
    from skyarchive.cli import run_export

    from .harness import plugin_manager

    with pytest.raises(FileExistsError):
        run_export(job, plugin_manager(SETTINGS))
    assert os.listdir(victim) == [] and not job.export_dir.exists()


def test_stale_staging_of_dead_processes_is_removed_and_nothing_else(archive: tuple[Any, Path], tmp_path: Path) -> None:
    engine, _ = archive
    first = export(engine, tmp_path, settings=SETTINGS, folder="shared")
    assert first.result is not None
    folder = first.result.export_dir.parent
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = folder / f".2025-01-01_00-00-00.staging-{dead.pid}"
        (stale / "media").mkdir(parents=True)
        (stale / "posts.json").write_text("[\n", encoding="utf-8")
        live = folder / f".2025-01-01_00-00-01.staging-{alive.pid}"
        live.mkdir()
        odd = folder / ".notes.staging-1"
        odd.mkdir()
        (tmp_path / "keep").mkdir()
        (tmp_path / "keep" / "file").write_text("keep", encoding="utf-8")
        link = folder / f".2025-01-01_00-00-02.staging-{dead.pid}"
        link.symlink_to(tmp_path / "keep", target_is_directory=True)
        second = export(engine, tmp_path, settings=SETTINGS, folder="shared")
        assert second.error is None and second.result is not None
        assert second.result.export_dir.parent == folder
        assert not stale.exists()
        assert live.is_dir() and odd.is_dir() and link.is_symlink()
        assert (tmp_path / "keep" / "file").read_text(encoding="utf-8") == "keep"
        assert first.result.export_dir.is_dir()
    finally:
        alive.kill()
        alive.wait()


# -- real signals and a real full disk, in a subprocess -------------------------------------------


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big")
    engine = make_engine(root / "skyarchive.db")
    seed_archive(engine, posts_table, media_table, posts=60_000, media_every=0, media_dir=root / "media")
    engine.dispose()
    (root / "skyarchive.toml").write_text(
        '[plugins]\nenabled = ["export_batching"]\n[plugins.export_batching]\nthreshold = 0\nbatch_size = 20\n',
        encoding="utf-8",
    )
    return root


def start_export(root: Path, out: Path) -> subprocess.Popen[str]:
    from skyarchive.seed import DEFAULT_DID

    return subprocess.Popen(
        [sys.executable, "-m", "skyarchive", "export", "--did", DEFAULT_DID, "--format", "json", "--out", str(out)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_export_cleans_up(big_archive: Path, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "exports"
    process = start_export(big_archive, out)
    assert process.stderr is not None
    first = process.stderr.readline()
    assert first.startswith("export: 0/60000"), first
    time.sleep(0.3)
    staging_dirs = list(out.glob("*/.*.staging-*"))
    assert staging_dirs, "the export should be under way, in its staging directory"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "interrupted" in stderr
    assert leftovers(out) == [] and list(out.glob("*/*")) == []


def test_a_really_full_disk(big_archive: Path, tmp_path: Path) -> None:
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
        process = start_export(big_archive, mount)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 1
        error = stderr.strip().splitlines()[-1]
        assert "failed: disk full: " in error and str(mount) in error, error
        assert "batch " in error
        assert os.listdir(mount) == [] or all(not any(p.iterdir()) for p in mount.iterdir())
        assert leftovers(mount) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)
