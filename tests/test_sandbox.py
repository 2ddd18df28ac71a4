"""Never worse than skyarchive alone, in any sandbox (issue 20).

:mod:`tests.sandbox` runs a command inside a real seccomp filter that refuses chosen system calls; it is
checked first. Then: two exports of one DID started in the same second (the second stops before any work),
several claiming one name at once (exactly one gets it), and a failed export leaving no owner's folder it
made.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from skyarchive.cli import run_export
from skyarchive.config import AppConfig
from skyarchive.export import ExportJob, ExportRequest, export_dir_for
from skyarchive.seed import DEFAULT_DID
from sqlalchemy import create_engine, event

from export_batching_plugin import staging
from export_batching_plugin.batched import ExportFailed

from . import sandbox
from .conftest import plugin_toml
from .harness import (
    Recorder,
    export,
    insert_rows,
    make_engine,
    plugin_manager,
    post_row,
)

FOLDER = DEFAULT_DID.replace(":", "_")
#: The skyarchive CLI, with the plugin's INFO lines shown (skyarchive shows WARNING and above).
CLI = (
    "import logging, sys; logging.getLogger('export_batching_plugin').setLevel(logging.INFO);"
    " from skyarchive.cli import main; sys.exit(main(sys.argv[1:]))"
)
PROBE = r"""
import ctypes, errno, fcntl, json, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
os.mkdir("a")

def outcome(call, *args):
    try:
        if call(*args) not in (0, None):
            raise OSError(ctypes.get_errno(), "")
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "ok"

print(json.dumps({
    "flock": outcome(fcntl.flock, fd, fcntl.LOCK_EX),
    "syncfs": outcome(libc.syncfs, fd),
    "renameat2": outcome(libc.renameat2, -100, b"a", -100, b"b", 1),
    "fsync": outcome(os.fsync, fd),
}))
"""


def _sandbox_problem() -> str | None:
    try:
        sandbox.machine()
    except ValueError as exc:
        return str(exc)
    done = subprocess.run(
        sandbox.command({"flock": "EACCES"}, [sys.executable, "-c", "import os; os.setsid()"]),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return None if done.returncode == 0 else f"cannot install a seccomp filter here: {done.stderr.strip()}"


@pytest.fixture(scope="module")
def filters() -> None:
    """A seccomp filter can be installed here (Linux, x86_64 or aarch64); CI must have one."""
    reason = _sandbox_problem()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"seccomp filters are required under CI: {reason}")
        pytest.skip(reason)


# -- the sandbox itself ------------------------------------------------------------------------------


@pytest.mark.usefixtures("filters")
@pytest.mark.parametrize(
    "refused", [{"renameat2": "EPERM"}, {"syncfs": "ENOSYS", "flock": "EACCES"}, {"fsync": "EIO"}], ids=str
)
def test_a_refused_call_fails_with_its_errno_and_others_work(tmp_path: Path, refused: dict[str, str]) -> None:
    done = subprocess.run(
        sandbox.command(refused, ["sh", "-c", 'exec "$0" -c "$1"', sys.executable, PROBE]),  # in a grandchild
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results == {call: refused.get(call, "ok") for call in results}
    assert (tmp_path / "b").is_dir() != ("renameat2" in refused)


def test_the_filter_program() -> None:
    """Arch checked first (a foreign one killed), then each refused number, then allow."""
    code = sandbox.program({"syncfs": errno.ENOSYS}, "aarch64")
    assert code == [
        (0x20, 0, 0, 4), (0x15, 1, 0, 0xC00000B7), (0x06, 0, 0, 0x80000000),
        (0x20, 0, 0, 0), (0x15, 0, 1, 267), (0x06, 0, 0, 0x00050000 | errno.ENOSYS),
        (0x06, 0, 0, 0x7FFF0000),
    ]  # fmt: skip


# -- each refused call, skyarchive alone and with the plugin, through the CLI -------------------------


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded archive (120 posts, media on every 4th) with ``host.toml`` and ``plugin.toml`` (threshold 0,
    checksums: the sync paths)."""
    root = tmp_path_factory.mktemp("sandbox")
    env = {k: v for k, v in os.environ.items() if k != "SKYARCHIVE_CONFIG"}
    seed = [sys.executable, "-m", "skyarchive", "seed", "--posts", "120", "--media-every", "4"]
    done = subprocess.run(seed, cwd=root, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    (root / "host.toml").write_text("", encoding="utf-8")
    (root / "plugin.toml").write_text(plugin_toml(threshold=0, checksums=True), encoding="utf-8")
    return root


def start(root: Path, refused: dict[str, str], config: str, out: Path, *options: str) -> subprocess.Popen[str]:
    args = ["--config", config, "export", "--did", DEFAULT_DID, *options, "--out", str(out)]
    return subprocess.Popen(
        sandbox.command(refused, [sys.executable, "-c", CLI, *args]),
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.usefixtures("filters")
def test_a_failed_export_leaves_no_owner_folder_it_made(seeded: Path, tmp_path: Path) -> None:
    """A disk that fails to sync (fsync: EIO) fails the plugin's export (skyarchive alone never syncs): the
    owner's folder it made goes with it; one that was there before stays."""
    refused = {"fsync": "EIO", "fdatasync": "EIO"}
    before = tmp_path / "before" / FOLDER
    before.mkdir(parents=True)
    runs = [start(seeded, refused, "plugin.toml", tmp_path / name, "--format", "json") for name in ("fresh", "before")]
    for process in runs:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 1
        assert "failed: Input/output error" in err.strip().splitlines()[-1]
    assert list((tmp_path / "fresh").iterdir()) == []
    assert before.is_dir() and list(before.iterdir()) == []


# -- two exports of one DID in the same second ---------------------------------------------------------

SECOND = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


def job_at(engine: Any, out: Path, listener: Any = None) -> ExportJob:
    """An export job whose folder is named after :data:`SECOND`, as the CLI names it from its start."""
    listeners = [Recorder(), *([listener] if listener else [])]
    return ExportJob(
        request=ExportRequest.create(did="did:plc:owner", format="json"),
        config=AppConfig(media_dir=out / "no-media", exports_dir=out),
        engine=engine,
        export_dir=export_dir_for(out, "did:plc:owner", SECOND),
        started_at=SECOND,
        listeners=listeners,
    )


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Path]:
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n) for n in range(45)])
    engine.dispose()
    yield tmp_path / "a.db"


def statements(db: Path) -> tuple[Any, list[str]]:
    """An engine on ``db`` and the statements it runs."""
    engine = create_engine(f"sqlite:///{db}")
    ran: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cursor, sql, *args: ran.append(sql))
    return engine, ran


SETTINGS = {"threshold": 0, "batch_size": 10}


def test_the_second_export_of_one_second_stops_before_any_work(archive: Path, tmp_path: Path) -> None:
    """The second export starts while the first is under way (from its progress listener): it reads no post,
    spools nothing, says why; the first completes with skyarchive's bytes."""
    host = export(make_engine(archive), tmp_path / "host", settings=None)
    out = tmp_path / "exports"
    second_engine, ran = statements(archive)
    second = job_at(second_engine, out)
    failures: list[BaseException] = []

    def start_the_second(processed: int, total: int) -> None:
        if second.status == "pending":
            try:
                run_export(second, plugin_manager(SETTINGS))
            except Exception as exc:
                failures.append(exc)

    first = job_at(make_engine(archive), out, start_the_second)
    result = run_export(first, plugin_manager(SETTINGS))
    (failure,) = failures
    assert isinstance(failure, ExportFailed) and isinstance(failure.cause, staging.ExportClash)
    assert failure.cause.final == first.export_dir and not failure.cause.exists
    assert str(failure) == (
        "creating the staging directory failed: another export of this DID started in the same second and is"
        f" writing {first.export_dir}; run this one again"
    )
    assert second.status == "failed" and second.processed == 0 and second.total is None
    assert ran and all("count(" in sql.lower() for sql in ran), ran  # it counted the selection; read nothing
    assert result.export_dir == first.export_dir
    assert (first.export_dir / "posts.json").read_bytes() == host.posts_bytes
    assert [p.name for p in (out / "did_plc_owner").iterdir()] == [first.export_dir.name]


def test_an_existing_export_directory_stops_the_export_before_any_work(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "exports"
    engine, ran = statements(archive)
    job = job_at(engine, out)
    job.export_dir.mkdir(parents=True)
    (job.export_dir / "keep").write_text("keep", encoding="utf-8")
    with pytest.raises(ExportFailed) as info:
        run_export(job, plugin_manager(SETTINGS))
    assert isinstance(info.value.cause, staging.ExportClash) and info.value.cause.exists
    assert "export directory already exists" in str(info.value) and "same second" in str(info.value)
    assert all("count(" in sql.lower() for sql in ran), ran
    assert sorted(p.name for p in job.export_dir.parent.iterdir()) == [job.export_dir.name]
    assert [p.name for p in job.export_dir.iterdir()] == ["keep"]


def test_a_claim_left_by_a_killed_export_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its export was killed after the cleanup had looked (so the claim itself finds it stale)."""
    final = tmp_path / "did" / "2025-06-01_12-00-00"
    claim = final.with_name(f".{final.name}.staging-export")
    (claim / "media").mkdir(parents=True)
    monkeypatch.setattr(staging, "remove_stale_staging", lambda folder: [])
    with caplog.at_level(logging.WARNING, logger="export_batching_plugin"):
        made = staging.Staging.create(final)
    assert made.path == claim and list(claim.iterdir()) == []
    assert caplog.text.count(f"removed {claim}, left by an export that did not finish") == 1
    made.release()


CLAIM = r"""
import sys, time
from pathlib import Path
from export_batching_plugin import staging
final, go, done = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
try:
    made = staging.Staging.create(final)
except staging.ExportClash:
    print("clash", flush=True)
else:
    print("claimed", flush=True)
    while not done.exists():
        time.sleep(0.01)
"""


@pytest.mark.slow
@pytest.mark.parametrize("stale", [False, True], ids=["free", "stale claim there"])
def test_of_exports_claiming_one_name_at_once_exactly_one_gets_it(tmp_path: Path, stale: bool) -> None:
    final = tmp_path / "exports" / "did_plc_owner" / "2025-06-01_12-00-00"
    claim = final.with_name(f".{final.name}.staging-export")
    if stale:  # a killed export's: removed by one of them, whose claim it then is
        (claim / "media").mkdir(parents=True)
    go, done = tmp_path / "go", tmp_path / "done"
    command = [sys.executable, "-c", CLAIM, str(final), str(go), str(done)]
    racers = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(6)]
    try:
        assert [process.stdout.readline().strip() for process in racers if process.stdout] == ["ready"] * 6
        go.touch()
        said = sorted(process.stdout.readline().strip() for process in racers if process.stdout)
    finally:
        done.touch()
        for process in racers:
            process.wait(timeout=30)
    assert said == ["claimed"] + ["clash"] * 5
    assert not (claim / "media").exists(), "the stale claim was removed"
    assert not final.exists()


# -- leftovers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [OSError(errno.EIO, "Input/output error"), KeyboardInterrupt()], ids=repr)
@pytest.mark.parametrize("there", [False, True], ids=["owner's folder made", "owner's folder there before"])
def test_a_failed_export_removes_only_the_owner_folder_it_made(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException, there: bool
) -> None:
    out = tmp_path / "exports"
    folder = out / "did_plc_owner"
    if there:
        folder.mkdir(parents=True)

    def fail(self: staging.Staging) -> None:
        raise failure

    monkeypatch.setattr(staging.Staging, "publish", fail)
    job = job_at(make_engine(archive), out)
    with pytest.raises(type(failure) if isinstance(failure, KeyboardInterrupt) else ExportFailed):
        run_export(job, plugin_manager(SETTINGS))
    assert folder.is_dir() == there and (not there or list(folder.iterdir()) == [])
    assert out.is_dir(), "the exports folder is not the export's to remove"


def test_an_owner_folder_another_export_writes_into_is_kept(tmp_path: Path) -> None:
    """Made by this export, but another export of the same owner works in it: not empty, not removed."""
    final = tmp_path / "did" / "2025-06-01_12-00-00"
    mine = staging.Staging.create(final)
    assert mine.made_folder
    other = staging.Staging.create(final.with_name("2025-06-01_12-00-01"))
    assert not other.made_folder
    with mine:
        pass  # failed: not published
    assert other.path.is_dir() and final.parent.is_dir()
    with other:
        pass
    assert final.parent.is_dir(), "the folder it did not make is left, even empty"
