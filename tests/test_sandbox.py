"""Never worse than skyarchive alone, in any sandbox (issue 20).

Seccomp profiles, gVisor and other sandboxes refuse system calls that skyarchive alone never makes:
``renameat2`` (EPERM), ``syncfs`` (EPERM, ENOSYS), ``flock`` (EPERM, EACCES). Each test here runs
skyarchive 0.5 alone and with the plugin, through the CLI, inside a real seccomp filter
(:mod:`tests.sandbox`) that refuses the call: both export, the same bytes, nothing is left behind, and the
plugin says once what it gave up. Then: two exports of one DID started in the same second (the second
stops before any work), several claiming one name at once (exactly one gets it), and a failed export
leaving no owner's folder it made.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from skyarchive.cli import run_export
from skyarchive.config import AppConfig
from skyarchive.export import ExportJob, ExportRequest, export_dir_for
from skyarchive.models import media_table, posts_table
from skyarchive.seed import DEFAULT_DID, seed_archive
from sqlalchemy import create_engine, event

from export_batching_plugin import staging
from export_batching_plugin.batched import ExportFailed

from . import sandbox
from .conftest import plugin_toml
from .harness import (
    Recorder,
    add_slow_media_file,
    export,
    feed_fifo,
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


def files(folder: Path) -> dict[str, bytes]:
    """The export's files that both exporters write alike (the manifest names its exporter)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", "SHA256SUMS")
    }


#: refused call -> what the plugin says about it, once, and at which level.
SAID = {
    "renameat2": ("INFO", "renameat2 is refused here"),
    "syncfs": ("INFO", "syncfs is refused here"),
    "flock": ("WARNING", "no file locks in"),
    "fsync": ("WARNING", "fsync of a directory is refused here"),
}


@pytest.mark.slow
@pytest.mark.usefixtures("filters")
@pytest.mark.parametrize(
    ("call", "code"),
    [
        ("renameat2", "EPERM"),
        ("syncfs", "EPERM"),
        ("syncfs", "ENOSYS"),
        ("flock", "EPERM"),
        ("flock", "EACCES"),
        ("fsync", "EPERM"),
    ],
)
def test_a_refused_call_is_never_a_failed_export(seeded: Path, tmp_path: Path, call: str, code: str) -> None:
    refused = {call: code}
    left = tmp_path / "plugin-json" / FOLDER / ".2025-01-01_00-00-00.staging-0123456789abcdef"
    (left / "media").mkdir(parents=True)  # a killed export's: removed only where locks are taken
    runs = {
        (who, fmt): start(seeded, refused, f"{who}.toml", tmp_path / f"{who}-{fmt}", *options)
        for fmt, options in (("json", ("--format", "json", "--media")), ("csv", ("--format", "csv")))
        for who in ("host", "plugin")
    }
    done = {key: (process, *process.communicate(timeout=120)) for key, process in runs.items()}
    for (who, fmt), (process, out, err) in done.items():
        assert process.returncode == 0, f"{who} {fmt}: {err}"
        exported = Path(out.strip().splitlines()[-1])
        assert exported.parent == tmp_path / f"{who}-{fmt}" / FOLDER
        assert not exported.stat().st_mode & stat.S_ISVTX
    for fmt in ("json", "csv"):
        host, plugin = (Path(done[who, fmt][1].strip().splitlines()[-1]) for who in ("host", "plugin"))
        assert files(plugin) == files(host) and files(host)
        check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=plugin, check=False)
        assert check.returncode == 0
        said = [line for line in done["plugin", fmt][2].splitlines() if SAID[call][1] in line]
        if call == "syncfs" and fmt == "csv":  # without media, the few files are synced one by one anyway
            assert said == []
            continue
        level = SAID[call][0]
        assert len(said) == 1 and said[0].startswith(f"skyarchive: {level}: export_batching: "), said
        assert f"{os.strerror(getattr(errno, code))})" in said[0]
    entries = sorted(p.name for p in (tmp_path / "plugin-json" / FOLDER).iterdir())
    if call == "flock":  # nobody can tell a live staging directory from a dead one without a lock: left
        assert entries[0] == left.name and len(entries) == 2
    else:
        assert len(entries) == 1 and not left.exists()
    assert [p for p in tmp_path.rglob("*") if ".staging" in p.name] == ([left] if call == "flock" else [])


@pytest.mark.slow
@pytest.mark.usefixtures("filters")
def test_an_export_that_cannot_lock_is_not_taken_for_stale(tmp_path: Path) -> None:
    """Two containers share the exports volume; one refuses ``flock``. Its export, waiting on a slow media
    file, holds no lock: an export from the other one (which can lock) must not take its staging directory
    for stale. Both complete."""
    for name in ("slow", "small"):
        engine = make_engine(tmp_path / f"{name}.db")
        seed_archive(engine, posts_table, media_table, posts=30, media_every=0, media_dir=tmp_path / "media")
        if name == "slow":
            fifo = add_slow_media_file(engine, tmp_path / "media")
        engine.dispose()
    (tmp_path / "skyarchive.toml").write_text(plugin_toml(threshold=0), encoding="utf-8")
    out, folder = tmp_path / "exports", tmp_path / "exports" / FOLDER

    def command(db: str) -> list[str]:
        args = ["--db", f"sqlite:///{tmp_path / db}", "export", "--did", DEFAULT_DID, "--format", "json"]
        return [sys.executable, "-m", "skyarchive", *args, "--media", "--out", str(out)]

    unlocked = subprocess.Popen(
        sandbox.command({"flock": "EPERM"}, command("slow.db")),
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (live := list(folder.glob(".*.staging-*")) if folder.is_dir() else []):
            assert time.monotonic() < deadline and unlocked.poll() is None, "no staging directory appeared"
            time.sleep(0.02)
        time.sleep(1.1)  # export directories are named by the second
        newcomer = subprocess.run(command("small.db"), cwd=tmp_path, capture_output=True, text=True, check=False)
        assert newcomer.returncode == 0, newcomer.stderr
        assert live[0].is_dir() and "removed" not in newcomer.stderr, "it took a running export's staging for stale"
        feed_fifo(fifo)
        _, err = unlocked.communicate(timeout=60)
    finally:
        unlocked.kill()
        unlocked.wait()
    assert unlocked.returncode == 0, err
    assert len(list(folder.iterdir())) == 2 and not any(p.name.startswith(".") for p in folder.iterdir())


@pytest.mark.slow
@pytest.mark.usefixtures("filters")
def test_a_failed_export_leaves_no_owner_folder_it_made(seeded: Path, tmp_path: Path) -> None:
    """A disk that fails to sync (syncfs, which an export with media files uses: EIO) fails the plugin's export
    (skyarchive alone never syncs): the owner's folder it made goes with it; one that was there before stays."""
    refused = {"syncfs": "EIO"}
    before = tmp_path / "before" / FOLDER
    before.mkdir(parents=True)
    args = ("--format", "json", "--media")
    runs = [start(seeded, refused, "plugin.toml", tmp_path / name, *args) for name in ("fresh", "before")]
    for process in runs:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 1
        assert "failed: Input/output error" in err.strip().splitlines()[-1]
    assert list((tmp_path / "fresh").iterdir()) == []
    assert before.is_dir() and list(before.iterdir()) == []


# -- refusals in-process: a directory's fsync ---------------------------------------------------------


def test_a_refused_directory_sync_is_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``fsync`` of a directory refused (some FUSE and network filesystems: EINVAL; a sandbox), with syncfs
    refused too, so that every file and folder is synced one by one: the export completes, the same bytes,
    one INFO line for syncfs and one WARNING for the folders."""
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n) for n in range(30)])
    host = export(engine, tmp_path / "host", settings=None)
    real_fsync = os.fsync
    synced: list[int] = []

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        synced.append(fd)
        real_fsync(fd)

    def syncfs(fd: int) -> int:
        import ctypes

        ctypes.set_errno(errno.EPERM)
        return -1

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(staging, "_syncfs", syncfs)
    monkeypatch.setattr(staging, "FEW_FILES", 0)  # as with media files: a syncfs first
    with caplog.at_level(logging.INFO, logger="export_batching_plugin"):
        plugin = export(engine, tmp_path / "plugin", settings={"threshold": 0, "checksums": True})
    assert plugin.error is None and plugin.posts_bytes == host.posts_bytes
    said = [(r.levelname, r.getMessage()) for r in caplog.records if "refused" in r.getMessage()]
    assert [level for level, _ in said] == ["INFO", "WARNING"], said
    assert "syncfs is refused here" in said[0][1] and "fsync of a directory is refused here" in said[1][1]
    assert len(synced) >= 3, "posts file, manifest and SHA256SUMS synced one by one"
    engine.dispose()


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
    assert ran and all(planning(sql) for sql in ran), ran  # it counted the selection, planned; read nothing
    assert result.export_dir == first.export_dir
    assert (first.export_dir / "posts.json").read_bytes() == host.posts_bytes
    assert [p.name for p in (out / "did_plc_owner").iterdir()] == [first.export_dir.name]


def planning(sql: str) -> bool:
    """Whether ``sql`` is one of the statements the export plans with (counts, the archive's size), no reading."""
    return "count(" in sql.lower() or sql.startswith(("PRAGMA main.page_count", "PRAGMA main.page_size"))


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
    assert all(planning(sql) for sql in ran), ran
    assert sorted(p.name for p in job.export_dir.parent.iterdir()) == [job.export_dir.name]
    assert [p.name for p in job.export_dir.iterdir()] == ["keep"]


def stale_claim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A final name and its claim, left by an export killed after the cleanup had looked (so the next claim
    itself finds it stale)."""
    final = tmp_path / "did" / "2025-06-01_12-00-00"
    claim = final.with_name(f".{final.name}.staging-export")
    (claim / "media").mkdir(parents=True)
    monkeypatch.setattr(staging, "remove_stale_staging", lambda folder: [])
    return final, claim


def test_a_claim_left_by_a_killed_export_is_taken_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    final, claim = stale_claim(tmp_path, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="export_batching_plugin"):
        made = staging.Staging.create(final)
    assert made.path == claim and list(claim.iterdir()) == []
    assert caplog.text.count(f"removed {claim}, left by an export that did not finish") == 1
    made.release()


def test_a_claim_made_without_a_lock_is_never_taken(tmp_path: Path) -> None:
    """Marked by an export that could not lock it (a sandbox refusing flock): nobody can tell whether it runs."""
    final = tmp_path / "did" / "2025-06-01_12-00-00"
    claim = final.with_name(f".{final.name}.staging-export")
    final.parent.mkdir()
    claim.mkdir(0o777 | stat.S_ISVTX)
    (claim / "posts.json").write_text("[\n", encoding="utf-8")
    assert staging.remove_stale_staging(final.parent) == []
    with pytest.raises(staging.ExportClash):
        staging.Staging.create(final)
    assert [p.name for p in claim.iterdir()] == ["posts.json"] and not final.exists()


def no_locks(fd: int, operation: int) -> None:
    """``flock`` as a sandbox refuses it."""
    raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))


def test_without_locks_any_claim_there_is_a_clash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No locks: a claim already there may be a running export's; nobody can tell, so it is left alone."""
    final = tmp_path / "did" / "2025-06-01_12-00-00"
    claim = final.with_name(f".{final.name}.staging-export")
    claim.mkdir(parents=True)
    monkeypatch.setattr(staging.fcntl, "flock", no_locks)
    with pytest.raises(staging.ExportClash) as info:
        staging.Staging.create(final)
    assert not info.value.exists and claim.is_dir()


def test_a_stale_claim_that_cannot_be_removed_is_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    final, claim = stale_claim(tmp_path, monkeypatch)
    monkeypatch.setattr(staging, "remove_tree", lambda path: PermissionError(errno.EACCES, "denied", str(path)))
    with pytest.raises(PermissionError), caplog.at_level(logging.WARNING, logger="export_batching_plugin"):
        staging.Staging.create(final)
    assert f"could not remove {claim}" in caplog.text and (claim / "media").is_dir()


def test_a_fresh_claim_that_cannot_be_locked_is_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner's folder could be locked (shared), the claim cannot (exclusively): an error, nothing left."""
    real_flock = staging.fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if operation & staging.fcntl.LOCK_EX:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_flock(fd, operation)

    monkeypatch.setattr(staging.fcntl, "flock", flock)
    with pytest.raises(OSError, match="Input/output error"):
        staging.Staging.create(tmp_path / "did" / "2025-06-01_12-00-00")
    assert list(tmp_path.iterdir()) == []


def test_a_claim_lost_to_every_race_is_a_clash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Taken for stale and removed each time it is made: after a few tries, another export is there."""

    def lost(path: Path) -> int | None:
        path.rmdir()
        raise FileNotFoundError(errno.ENOENT, "removed", str(path))

    monkeypatch.setattr(staging, "_lock", lost)
    with pytest.raises(staging.ExportClash):
        staging.Staging.create(tmp_path / "did" / "2025-06-01_12-00-00")
    assert list(tmp_path.iterdir()) == []


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
