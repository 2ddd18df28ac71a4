"""The measurement tools of benchmarks/: the slow-disk shim (slowdisk.py) and the archiver (archiver.py).

They prove that an export does not lock out an archiver while its output disk is slow, so each is checked
against what it claims to measure: the shim slows exactly the writes under its prefix, by the amount asked, on
every write path Python uses; the archiver's waits and errors are the ones a held SQLite lock causes. Lower
bounds on time are safe on a busy machine (a sleep is never shorter); the upper bounds are generous.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# benchmarks/ is not installed: its folder is appended to sys.path, after site-packages.
ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))
from benchmarks import archiver, slowdisk  # noqa: E402

pytestmark = pytest.mark.harness  # tests of benchmarks/: once, in their own environment

PER_CALL_MS = 20.0
WRITES = 20
#: 20 writes of 20 ms: at least 0.4 s under the prefix; well under FAST outside it.
SLOW_S = WRITES * PER_CALL_MS / 1000
FAST_S = 0.1

#: A child Python doing WRITES writes to argv[1] in the way argv[2] names; prints the seconds they took.
WRITER = r"""
import os, sys, time

path, mode = sys.argv[1], sys.argv[2]
count, size = int(sys.argv[3]), int(sys.argv[4])
data = b"x" * size
flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


def raw(op):
    fd = os.open(path, flags, 0o644)
    started = time.perf_counter()
    for i in range(count):
        op(fd, i)
    took = time.perf_counter() - started
    os.close(fd)
    return took


def files(buffering):
    started = time.perf_counter()
    with open(path, "wb", buffering=buffering) as stream:
        for _ in range(count):
            stream.write(data)
    return time.perf_counter() - started


def reuse():
    # A descriptor of a file under the prefix is closed; the next open (outside) gets the same number.
    slow = os.open(sys.argv[5], flags, 0o644)
    os.write(slow, b"s")
    os.close(slow)
    fd = os.open(path, flags, 0o644)
    assert fd == slow, (fd, slow)
    started = time.perf_counter()
    for _ in range(count):
        os.write(fd, data)
    took = time.perf_counter() - started
    os.close(fd)
    return took


ops = {
    "write": lambda: raw(lambda fd, i: os.write(fd, data)),
    "writev": lambda: raw(lambda fd, i: os.writev(fd, [data[:1], data[1:]])),
    "pwrite": lambda: raw(lambda fd, i: os.pwrite(fd, data, i * size)),
    "pwritev": lambda: raw(lambda fd, i: os.pwritev(fd, [data[:1], data[1:]], i * size)),
    "fileio": lambda: files(0),
    "buffered": lambda: files(-1),
    "reuse": reuse,
}
print(ops[mode]())
"""
SCHEMA = (
    "CREATE TABLE posts (uri TEXT PRIMARY KEY, cid TEXT NOT NULL, did TEXT NOT NULL, text TEXT, "
    "created_at TEXT NOT NULL, indexed_at TEXT NOT NULL, has_media BOOLEAN NOT NULL DEFAULT 0, "
    "like_count INTEGER NOT NULL DEFAULT 0, repost_count INTEGER NOT NULL DEFAULT 0, "
    "reply_count INTEGER NOT NULL DEFAULT 0, quote_count INTEGER NOT NULL DEFAULT 0, "
    "is_reply BOOLEAN NOT NULL DEFAULT 0, reply_parent TEXT, embed_type TEXT, embed_data TEXT, labels TEXT, "
    "archived_at TEXT NOT NULL)"
)
SEEDED = 3
NEWEST_SEEDED = "2025-11-01T12:00:00.000Z"


# --- the slow disk -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shim() -> None:
    """Skip (with the reason) where the shim cannot be built or does not work: no gcc, not Linux."""
    reason = slowdisk.available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """The slow folder (a sibling ``slow-sibling`` whose name begins with it is not slow)."""
    for name in ("slow", "slow-sibling"):
        (tmp_path / name).mkdir()
    return tmp_path / "slow"


def timed_writes(
    target: Path,
    mode: str,
    prefix: Path,
    *,
    count: int = WRITES,
    size: int = 64,
    per_call_ms: float = PER_CALL_MS,
    per_mib_ms: float = 0.0,
) -> float:
    """Seconds a child Python under the throttle took for ``count`` writes of ``size`` bytes to ``target``."""
    env = {**os.environ, **slowdisk.throttle_env(prefix, per_call_ms=per_call_ms, per_mib_ms=per_mib_ms)}
    extra = [str(prefix / "reused")] if mode == "reuse" else []
    command = [sys.executable, "-I", "-S", "-c", WRITER, str(target), mode, str(count), str(size), *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and not done.stderr, done.stderr
    if mode != "reuse":
        assert target.stat().st_size == count * size  # the writes were forwarded, whole
    return float(done.stdout)


def test_available_where_gcc_is() -> None:
    if shutil.which("gcc") is None or not sys.platform.startswith("linux"):
        pytest.skip(f"no gcc on PATH, or not Linux: {slowdisk.available()}")
    assert slowdisk.available() is None  # not a skip: a shim that stopped working must fail here


def test_no_gcc_gives_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no gcc; and a fresh cache, so nothing built to reuse
    reason = slowdisk.available(tmp_path / "cache")
    assert reason is not None and "gcc" in reason
    with pytest.raises(slowdisk.SlowDiskError, match="gcc"):
        slowdisk.throttle_env(tmp_path, per_call_ms=1, cache=tmp_path / "cache")


def test_the_shim_is_built_once_per_source(shim: None, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    built = slowdisk.library(cache)
    assert built.parent == cache.resolve() and built.name == slowdisk.library_name()
    assert built.name.startswith("slowdisk-") and built.suffix == ".so"
    mtime = built.stat().st_mtime_ns
    assert slowdisk.library(cache) == built and built.stat().st_mtime_ns == mtime
    assert [path.name for path in cache.iterdir()] == [built.name]  # no scratch left behind


def test_throttle_env(shim: None, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real", target_is_directory=True)
    env = slowdisk.throttle_env(link, per_call_ms=1.5, per_mib_ms=20, environ={"LD_PRELOAD": "/x/other.so"})
    so = str(slowdisk.library())
    assert env == {
        "LD_PRELOAD": f"/x/other.so:{so}",
        "SLOWDISK_PREFIX": str((tmp_path / "real").resolve()),  # the kernel names files by their resolved path
        "SLOWDISK_PER_CALL_US": "1500",
        "SLOWDISK_PER_MIB_US": "20000",
    }
    again = slowdisk.throttle_env(link, per_call_ms=1, environ={"LD_PRELOAD": env["LD_PRELOAD"]})
    assert again["LD_PRELOAD"] == env["LD_PRELOAD"]  # nested: not preloaded twice
    assert slowdisk.throttle_env(link, per_call_ms=1, environ={})["LD_PRELOAD"] == so
    with pytest.raises(ValueError, match="per_call_ms"):
        slowdisk.throttle_env(link, per_call_ms=-1)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["write", "fileio", "writev", "pwrite", "pwritev"])
def test_writes_under_the_prefix_are_slowed(shim: None, prefix: Path, mode: str) -> None:
    took = timed_writes(prefix / "out.bin", mode, prefix)
    assert SLOW_S <= took < SLOW_S * 3, took


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["slow-sibling", "."])
@pytest.mark.parametrize("mode", ["write", "fileio", "writev", "pwrite", "pwritev"])
def test_writes_elsewhere_are_not(shim: None, prefix: Path, mode: str, folder: str) -> None:
    assert timed_writes(prefix.parent / folder / "out.bin", mode, prefix) < FAST_S


@pytest.mark.slow
def test_buffered_writes_are_slowed_per_system_call(shim: None, prefix: Path) -> None:
    # 20 writes of 64 bytes into a BufferedWriter reach the file as one write(2), at close.
    took = timed_writes(prefix / "out.bin", "buffered", prefix)
    assert PER_CALL_MS / 1000 <= took < SLOW_S / 2, took


@pytest.mark.slow
def test_a_reused_descriptor_is_judged_by_its_new_file(shim: None, prefix: Path) -> None:
    assert timed_writes(prefix.parent / "out.bin", "reuse", prefix) < FAST_S


@pytest.mark.slow
def test_per_mib_throttle(shim: None, prefix: Path) -> None:
    # 4 MiB at 100 ms per MiB, no per-call cost: about 0.4 s, for one write(2).
    took = timed_writes(prefix / "big.bin", "write", prefix, count=1, size=4 << 20, per_call_ms=0, per_mib_ms=100)
    assert 0.4 <= took < 0.8, took
    assert timed_writes(prefix / "small.bin", "write", prefix, per_call_ms=0, per_mib_ms=100) < FAST_S


@pytest.mark.slow
def test_cli_runs_the_command_under_the_throttle(shim: None, prefix: Path) -> None:
    command = [sys.executable, "-m", "benchmarks.slowdisk", "--prefix", str(prefix), "--per-call-ms", "50", "--"]
    child = [sys.executable, "-I", "-S", "-c", WRITER, str(prefix / "out.bin"), "write", "4", "8"]
    done = subprocess.run(command + child, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) >= 0.2
    exit_code = [sys.executable, "-c", "import sys; sys.exit(3)"]
    assert subprocess.run(command + exit_code, cwd=ROOT, timeout=120, check=False).returncode == 3


# --- the archiver ------------------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A SQLite archive in rollback-journal mode (the default) with the posts table and a few older posts."""
    path = tmp_path / "archive.db"
    with sqlite3.connect(path) as conn:
        conn.execute(SCHEMA)
        for n in range(SEEDED):
            stamp = f"2025-11-01T1{n}:00:00.000Z" if n < SEEDED - 1 else NEWEST_SEEDED
            conn.execute(
                "INSERT INTO posts (uri, cid, did, created_at, indexed_at, archived_at) VALUES (?, ?, ?, ?, ?, ?)",
                (f"at://{archiver.DEFAULT_DID}/app.bsky.feed.post/seed{n}", f"cid{n}", archiver.DEFAULT_DID)
                + (stamp,) * 3,
            )
    conn.close()
    return path


@pytest.fixture
def report(tmp_path: Path) -> Path:
    return tmp_path / "archiver.json"


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Archivers a test started: killed if the test failed before it stopped them."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()


def count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        result = int(conn.execute("SELECT count(*) FROM posts").fetchone()[0])
    conn.close()
    return result


def hold_read_transaction(db: Path, seconds: float) -> tuple[float, float]:
    """Keep a read transaction open on ``db`` for ``seconds``; the monotonic times it began and ended."""
    reader = sqlite3.connect(db, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM posts").fetchone()
        began = time.monotonic()
        time.sleep(seconds)
        reader.execute("COMMIT")
        return began, time.monotonic()
    finally:
        reader.close()


def test_options_round_trip(tmp_path: Path) -> None:
    options = archiver.Options(tmp_path / "a.db", tmp_path / "r.json", 0.25, 2.0, 3.5, "did:x", "wal", True)
    assert archiver.parse_args(options.argv()) == options
    defaults = archiver.parse_args(["--db", "a.db", "--out", "r.json"])
    assert (defaults.every, defaults.timeout, defaults.duration, defaults.journal_mode) == (0.1, 5.0, None, "keep")
    assert defaults.did == archiver.DEFAULT_DID and not defaults.cleanup


def test_timestamps_are_skyarchive_s() -> None:
    from datetime import datetime, timedelta, timezone

    moment = datetime(2025, 11, 1, 13, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert archiver.rfc3339(moment) == "2025-11-01T12:00:00.123Z"


def test_an_unusable_archive_fails_before_ready(tmp_path: Path, report: Path) -> None:
    with pytest.raises(archiver.ArchiverFailed, match="no such database file"):
        archiver.start_archiver(tmp_path / "missing.db", report)
    assert not (tmp_path / "missing.db").exists()  # not created
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(archiver.ArchiverFailed, match="no such table: posts"):
        archiver.start_archiver(empty, report)
    assert not report.exists()


@pytest.mark.slow
def test_without_a_reader_nothing_waits(db: Path, report: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    processes.append(archiver.start_archiver(db, report, every=0.05))
    assert count(db) > SEEDED  # ready: the first insert is in
    time.sleep(0.5)
    result = archiver.stop_archiver(processes[0], report)
    assert result.attempts >= 5 and result.inserted == result.attempts == len(result.waits)
    assert result.errors == () and result.longest_wait < 0.5
    assert result.journal_mode == "delete" and result.deleted == 0 and result.did == archiver.DEFAULT_DID
    assert result.start_monotonic <= result.attempted_at[0] and result.attempted_at[-1] <= result.end_monotonic
    assert result.total_s == pytest.approx(result.end_monotonic - result.start_monotonic)
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT uri, did, created_at FROM posts WHERE uri LIKE '%/archiver-%'").fetchall()
    conn.close()
    assert len(rows) == result.inserted == count(db) - SEEDED
    assert all(did == archiver.DEFAULT_DID and created > NEWEST_SEEDED for _, did, created in rows)
    assert all(len(created) == 24 and created.endswith("Z") for _, _, created in rows)


@pytest.mark.slow
def test_ready_means_the_first_insert_is_in(db: Path, report: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    reader = threading.Thread(target=hold_read_transaction, args=(db, 1.0))
    reader.start()
    time.sleep(0.1)
    started = time.monotonic()
    processes.append(archiver.start_archiver(db, report))
    assert time.monotonic() - started >= 0.7  # its first insert waited for the reader
    assert count(db) > SEEDED
    reader.join()
    result = archiver.stop_archiver(processes[0], report)
    assert result.waits[0] >= 0.7 and result.errors == ()


@pytest.mark.slow
def test_a_held_reader_makes_it_wait(db: Path, report: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    processes.append(archiver.start_archiver(db, report))
    began, ended = hold_read_transaction(db, 1.5)
    time.sleep(0.3)
    result = archiver.stop_archiver(processes[0], report)
    assert result.errors == ()
    assert result.longest_wait >= 1.0, result.waits
    longest = result.waits.index(result.longest_wait)
    start = result.attempted_at[longest]  # the clocks are shared: the wait lies inside the read transaction
    assert began - 0.05 <= start <= ended and start + result.longest_wait >= ended - 0.05
    assert result.inserted == result.attempts == count(db) - SEEDED


@pytest.mark.slow
def test_a_reader_past_the_busy_timeout_locks_it_out(
    db: Path, report: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    processes.append(archiver.start_archiver(db, report, every=0.5))
    began, ended = hold_read_transaction(db, 6.0)
    with sqlite3.connect(db, timeout=1.0) as writer:  # the refused attempt kept no lock
        writer.execute("UPDATE posts SET like_count = 1 WHERE uri LIKE '%seed0'")
    writer.close()
    time.sleep(1.2)
    result = archiver.stop_archiver(processes[0], report)
    assert result.errors, result.waits
    assert all("database is locked" in error.message for error in result.errors)
    first = result.errors[0]
    assert began - 0.05 <= first.at <= ended and result.waits[first.attempt] >= 4.9
    assert result.attempted_at[first.attempt] == first.at
    assert first.attempt < result.attempts - 1  # and it went on inserting after
    assert result.inserted == result.attempts - len(result.errors) == count(db) - SEEDED


@pytest.mark.slow
def test_in_wal_mode_a_reader_does_not_block_it(
    db: Path, report: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    processes.append(archiver.start_archiver(db, report, journal_mode="wal"))
    hold_read_transaction(db, 1.5)
    result = archiver.stop_archiver(processes[0], report)
    assert result.journal_mode == "wal" and result.errors == ()
    assert result.attempts >= 10 and result.longest_wait < 0.5, result.waits


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_it_with_a_report(
    db: Path, report: Path, processes: list[subprocess.Popen[bytes]], signum: int
) -> None:
    processes.append(process := archiver.start_archiver(db, report, every=30.0))
    time.sleep(0.3)
    sent = time.monotonic()
    process.send_signal(signum)
    assert process.wait(timeout=10) == 0
    assert time.monotonic() - sent < 1.0  # the wait for the next attempt ends at once
    result = archiver.read_report(report)
    assert result.attempts == result.inserted == 1 and result.end_monotonic >= sent
    assert process.stderr is not None and process.stderr.read() == b""


@pytest.mark.slow
def test_a_signal_during_a_wait_finishes_the_attempt(
    db: Path, report: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    processes.append(process := archiver.start_archiver(db, report))
    stopper = threading.Timer(0.7, process.send_signal, (signal.SIGTERM,))
    stopper.start()
    hold_read_transaction(db, 2.0)
    stopper.join()
    result = archiver.stop_archiver(process, report)
    assert result.errors == () and result.longest_wait >= 1.0
    assert result.inserted == result.attempts == count(db) - SEEDED


@pytest.mark.slow
def test_duration_and_cleanup(db: Path, report: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    processes.append(process := archiver.start_archiver(db, report, every=0.05, duration=0.6, cleanup=True))
    assert process.wait(timeout=10) == 0  # by itself
    result = archiver.stop_archiver(process, report)
    # What the duration means, however slow this machine's commits are today: an attempt starts every 0.05 s at
    # most (late ones not made up), none after 0.6 s, and the run ends right after the last one.
    starts = result.attempted_at
    assert result.attempts >= 2 and result.total_s >= 0.6
    assert all(later - earlier >= 0.049 for earlier, later in itertools.pairwise(starts))
    end = result.start_monotonic + 0.6
    assert starts[-1] <= end + 0.01 and end < starts[-1] + result.waits[-1] + 0.06
    assert result.end_monotonic - (starts[-1] + result.waits[-1]) < 0.5
    assert result.deleted == result.inserted == result.attempts and count(db) == SEEDED
