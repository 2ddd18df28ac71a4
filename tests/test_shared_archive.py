"""The archive is shared while it is exported: the plugin never holds it longer than skyarchive alone does,
whatever the speed of the disk it writes to.

- SQLite (rollback journal, where a reader's transaction blocks every writer's commit, and where the plugin
  copies the selection inside its snapshot and lets go; and WAL): a real
  archiver process inserts a post every 0.1 s (Python's sqlite3, its default 5 s busy timeout) while the
  archive is exported from the CLI, on a normal and on a slow output disk (every write(2) of the export
  folder delayed by 50 ms, benchmarks/slowdisk.py). Through the plugin it gets no more "database is
  locked" errors, and never waits longer, than while skyarchive alone exports.
- PostgreSQL hot standby (a primary and a streaming standby started here, ``max_standby_streaming_delay``
  3 s): exported from the standby on a slow disk while the primary deletes 1,000 posts and vacuums; the
  plugin completes where skyarchive alone completes, with the same bytes.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import plugin_toml
from .postgres import _unavailable
from .standby import PrimaryAndStandby, primary_and_standby  # noqa: F401 - a fixture

# benchmarks/ is not installed: its folder is appended to sys.path, after site-packages, so the plugin
# imported here and in the exports' processes is still the installed one.
sys.path.append(str(Path(__file__).resolve().parents[1]))
from benchmarks import archiver, slowdisk

pytestmark = pytest.mark.slow  # real processes, real time
OWNER = "did:plc:q6gjnaw2blty4crticxkmujt"  # skyarchive seed's default DID
OTHER = "did:plc:someoneelse"
SLOW_MS = 50.0
CONFIGS = {"host": "", "plugin": plugin_toml(threshold=0)}


def environment(out: Path | None) -> dict[str, str]:
    """Our environment, less SKYARCHIVE_CONFIG; with the export folder ``out`` on a slow disk if given."""
    env = {k: v for k, v in os.environ.items() if k != "SKYARCHIVE_CONFIG"}
    if out is not None:
        reason = slowdisk.available()
        if reason is not None:
            _unavailable(f"no slow disk to test with: {reason}")
        env |= slowdisk.throttle_env(out, per_call_ms=SLOW_MS)
    return env


def skyarchive(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "skyarchive", *args]
    done = subprocess.run(command, cwd=root, env=env or environment(None), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def export_dir(done: subprocess.CompletedProcess[str]) -> Path:
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sqlite_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with skyarchive.db: 60,000 posts of the owner (skyarchive's seed), and the two configs."""
    root = tmp_path_factory.mktemp("shared")
    skyarchive(root, "seed", "--posts", "60000", "--media-every", "0")
    for name, text in CONFIGS.items():
        (root / f"{name}.toml").write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize("disk", ["normal", "slow"])
@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_an_archiver_is_never_locked_out_longer_than_with_skyarchive_alone(
    sqlite_archive: Path, tmp_path: Path, journal: str, disk: str
) -> None:
    db = sqlite_archive / "skyarchive.db"
    seen: dict[str, archiver.ArchiverReport] = {}
    window: dict[str, tuple[float, float]] = {}
    for name in ("host", "plugin"):
        out = tmp_path / f"out-{name}"
        report = tmp_path / f"archiver-{name}.json"
        process = archiver.start_archiver(db, report, did=OTHER, journal_mode=journal, cleanup=True)
        with contextlib.suppress(OSError):  # as root: what it waits is the lock, not a core the other env holds
            os.setpriority(os.PRIO_PROCESS, process.pid, -10)
        try:
            time.sleep(0.3)
            started = time.monotonic()
            skyarchive(sqlite_archive, "--config", f"{name}.toml", "export", "--did", OWNER, "--format", "json",
                       "--out", str(out), env=environment(out if disk == "slow" else None))  # fmt: skip
            window[name] = (started, time.monotonic())
            time.sleep(0.3)
        finally:
            seen[name] = archiver.stop_archiver(process, report)
    waits = {}
    for name, report in seen.items():
        start, end = window[name]
        during = [w for at, w in zip(report.attempted_at, report.waits, strict=True) if start <= at <= end]
        assert len(during) >= 3, f"the archiver hardly ran during the {name}'s export: {report}"
        waits[name] = max(during)
    errors = {name: [e for e in report.errors if window[name][0] <= e.at <= window[name][1] + 6] for name, report in
              seen.items()}  # fmt: skip
    assert len(errors["plugin"]) <= len(errors["host"]), errors
    # 50 ms: the archiver's own timing. In WAL mode nothing the export does locks the archiver out; what it may
    # wait more is for a core, while both encode beside whatever else the machine runs (a second tox env in CI).
    assert waits["plugin"] <= waits["host"] + (0.05 if journal == "delete" else 0.3), waits
    if journal == "delete":  # the reader's lock really blocks the writer: the host's read (about 0.25 s of 60k
        assert waits["host"] >= 0.1, waits  # posts here) shows in the waits of an archiver trying every 0.1 s


# -- PostgreSQL: a hot standby whose primary vacuums ------------------------------------------------


@pytest.mark.postgresql
def test_an_export_from_a_hot_standby_completes_where_skyarchive_alone_completes(
    primary_and_standby: PrimaryAndStandby,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    pair = primary_and_standby
    skyarchive(tmp_path, "--db", pair.primary_url, "init")
    skyarchive(tmp_path, "--db", pair.primary_url, "seed", "--posts", "40000", "--media-every", "0")
    skyarchive(tmp_path, "--db", pair.primary_url, "seed", "--posts", "3000", "--did", OTHER, "--media-every", "0")
    pair.wait_for_replay()
    for name, text in CONFIGS.items():
        (tmp_path / f"{name}.toml").write_text(text, encoding="utf-8")
    bytes_of: dict[str, bytes] = {}
    for name in ("host", "plugin"):
        out = tmp_path / f"out-{name}"

        def vacuum_on_the_primary(batch: int = len(bytes_of)) -> None:
            time.sleep(0.5)  # the export is reading by now
            pair.sql("primary", f"DELETE FROM posts WHERE uri IN (SELECT uri FROM posts WHERE did = '{OTHER}'"
                                f" ORDER BY uri LIMIT 1000 OFFSET {batch * 1000})")  # fmt: skip
            pair.sql("primary", "VACUUM posts")

        primary = threading.Thread(target=vacuum_on_the_primary)
        primary.start()
        done = skyarchive(tmp_path, "--config", f"{name}.toml", "--db", pair.standby_url, "export", "--did", OWNER,
                          "--format", "json", "--out", str(out), env=environment(out))  # fmt: skip
        primary.join()
        bytes_of[name] = (export_dir(done) / "posts.json").read_bytes()
        pair.wait_for_replay()
    assert bytes_of["plugin"] == bytes_of["host"]
