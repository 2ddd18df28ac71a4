"""Never worse than skyarchive alone under the limits containers and service managers set: few descriptors
(``ulimit -n``), an address-space limit (``ulimit -v``), a file-size limit (``ulimit -f``), and a console that
stops reading (a full pipe, a terminal paused with Ctrl-S).

Each from the CLI, as a user meets it, skyarchive alone and with the plugin in the same environment: the plugin
exports wherever skyarchive exports, with the same bytes; where the limit is so tight that neither can, it
fails with one line and leaves nothing (no staging folder, no empty owner's folder, no spool, no process).
"""

from __future__ import annotations

import fcntl
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from skyarchive.seed import DEFAULT_DID

from .conftest import HOST_VERSION, plugin_toml
from .harness import export as export_here
from .harness import insert_rows, make_engine, post_row

sys.path.append(str(Path(__file__).resolve().parents[1]))  # benchmarks/, after site-packages (see test_shared)
from benchmarks import archiver

pytestmark = pytest.mark.slow  # real processes, real limits


def seed(root: Path, posts: int, *extra: str) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "skyarchive", "seed", "--posts", str(posts), "--media-every", "0", *extra],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (root / "host.toml").write_text("", encoding="utf-8")
    (root / "plugin.toml").write_text(plugin_toml(threshold=0), encoding="utf-8")
    (root / "checksums.toml").write_text(plugin_toml(threshold=0, checksums=True), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def posts_12k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12,000 posts (enough for the child process), no media."""
    return seed(tmp_path_factory.mktemp("limits"), 12_000)


@pytest.fixture(scope="module")
def posts_6k_media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6,000 posts, a media file every third."""
    root = tmp_path_factory.mktemp("limits-media")
    seed(root, 6000)
    done = subprocess.run(
        [sys.executable, "-m", "skyarchive", "--db", "sqlite:///media.db", "seed", "--posts", "6000",
         "--media-every", "3"],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root


def export(
    root: Path, config: str, out: Path, *options: str, limit: Limit | None = None, db: str = ""
) -> subprocess.CompletedProcess[str]:
    """``skyarchive export`` of the seeded owner with ``config``, under ``limit`` (set in the child). Under an
    address-space limit coverage does not follow it (its tracer runs out of memory too, and says so)."""
    args = ["--config", config, *(["--db", db] if db else []), "export", "--did", DEFAULT_DID, *options]
    traced = limit is None or limit.which != resource.RLIMIT_AS
    env = {k: v for k, v in os.environ.items() if k != "SKYARCHIVE_CONFIG" and (traced or "COVERAGE" not in k)}
    return subprocess.run(
        [sys.executable, "-m", "skyarchive", *args, "--out", str(out)], cwd=root, env=env, preexec_fn=limit,
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def outcome(done: subprocess.CompletedProcess[str], out: Path, *, plugin: bool = True) -> dict[str, bytes] | str:
    """The export's files (but the manifest and sums, which name their exporter), or its one-line error, having
    checked that the plugin's failure left nothing (skyarchive alone leaves the owner's folder it made)."""
    if done.returncode != 0:
        assert done.returncode == 1, (done.returncode, done.stderr)  # an error, not a crash (a signal)
        lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("export: ")]
        if not plugin:  # (skyarchive alone, out of memory, may say more: "Exception ignored in …")
            return lines[-1]
        assert lines[-1].startswith("skyarchive: error: "), done.stderr
        if plugin and out.exists():
            assert list(out.rglob("*")) == [], sorted(out.rglob("*"))
        return lines[-1]
    folder = Path(done.stdout.strip().splitlines()[-1])
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", "SHA256SUMS")
    }


def both(root: Path, tmp_path: Path, name: str, *options: str, limit: Limit, plugin: str = "plugin.toml",
         db: str = "") -> tuple[dict[str, bytes] | str, dict[str, bytes] | str]:  # fmt: skip
    """skyarchive alone, then with the plugin, under the same limit: their outcomes."""
    host = export(root, "host.toml", tmp_path / f"{name}-host", *options, limit=limit, db=db)
    mine = export(root, plugin, tmp_path / f"{name}-plugin", *options, limit=limit, db=db)
    return outcome(host, tmp_path / f"{name}-host", plugin=False), outcome(mine, tmp_path / f"{name}-plugin")


@dataclass(frozen=True)
class Limit:
    """A soft resource limit, set in the child (``preexec_fn``)."""

    which: int
    soft: int

    def __call__(self) -> None:
        resource.setrlimit(self.which, (self.soft, resource.getrlimit(self.which)[1]))


rlimit = Limit


def assert_never_worse(host: dict[str, bytes] | str, plugin: dict[str, bytes] | str) -> bool:
    """The plugin exported wherever skyarchive did, the same files; whether both exported."""
    if isinstance(host, dict):
        assert isinstance(plugin, dict), f"skyarchive exported; the plugin failed: {plugin}"
        assert plugin == host
        return True
    return False


@pytest.mark.parametrize(("fds", "format"), [(6, "json"), (7, "csv"), (9, "json"), (16, "csv")])
def test_few_descriptors(posts_12k: Path, tmp_path: Path, fds: int, format: str) -> None:
    """12,000 posts: from 6 descriptors (stdin, stdout, stderr, the archive, the posts file, and the staging
    folder's lock), without a spool and then a child where there are too few for them."""
    host, plugin = both(posts_12k, tmp_path, "n", "--format", format, limit=rlimit(resource.RLIMIT_NOFILE, fds))
    assert assert_never_worse(host, plugin) or "Too many open files" in str(plugin), plugin


@pytest.mark.parametrize("fds", [9, 12])
def test_few_descriptors_with_media_and_checksums(posts_6k_media: Path, tmp_path: Path, fds: int) -> None:
    """Media files (and their sums) need a few more: from 9 (skyarchive alone: 6)."""
    host, plugin = both(posts_6k_media, tmp_path, "m", "--format", "json", "--media", plugin="checksums.toml",
                        db="sqlite:///media.db", limit=rlimit(resource.RLIMIT_NOFILE, fds))  # fmt: skip
    assert assert_never_worse(host, plugin)


def test_too_few_descriptors_for_the_media_fail_cleanly(posts_6k_media: Path, tmp_path: Path) -> None:
    """At most 9 descriptors are needed (CHANGELOG, Fixed); one short of the fewest that do: one line naming what
    could not be opened, and nothing left."""
    said: dict[int, dict[str, bytes] | str] = {}

    def exports(fds: int) -> bool:
        done = export(posts_6k_media, "checksums.toml", tmp_path / f"out{fds}", "--format", "json", "--media",
                      db="sqlite:///media.db", limit=rlimit(resource.RLIMIT_NOFILE, fds))  # fmt: skip
        said[fds] = outcome(done, tmp_path / f"out{fds}")
        return isinstance(said[fds], dict)

    fewest = lowest(exports, 6, 9, 1)
    assert fewest is not None and fewest > 6, said  # (6: what skyarchive alone needs)
    assert isinstance(said[fewest - 1], str) and "Too many open files" in said[fewest - 1], said[fewest - 1]


def test_no_room_to_load_the_exporter_leaves_the_export_to_skyarchive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Under ``ulimit -v`` the first export may find no room to map orjson (``ImportError: … failed to map
    segment``), where skyarchive alone still exports: it is left to skyarchive, said once, never an error."""
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n) for n in range(30)])
    monkeypatch.setitem(sys.modules, "export_batching_plugin.batched", None)  # importing it raises ImportError
    done = export_here(engine, tmp_path / "out", settings={"threshold": 0})
    host = export_here(engine, tmp_path / "host", settings=None)
    assert done.error is None and done.manifest is not None and done.manifest["exporter"].startswith("skyarchive")
    assert done.posts_bytes == host.posts_bytes
    said = [r.getMessage() for r in caplog.records if r.name == "export_batching_plugin"]
    assert said == [said[0]] and "cannot load the batched exporter" in said[0], said


def lowest(works: Callable[[int], bool], low: int, high: int, step: int) -> int | None:
    """The lowest value on a grid from ``low`` to ``high`` for which ``works`` (which grows with it), or None."""
    for value in range(low, high + 1, step):
        if works(value):
            return value
    return None


def test_an_address_space_limit(posts_12k: Path, tmp_path: Path) -> None:
    """``ulimit -v``: at the lowest limit (on a grid) where skyarchive alone exports 6,000 posts, the plugin exports
    too; below it, where neither can, the plugin fails with one line and leaves nothing."""
    options = ("--format", "csv", "--until", "2025-10-24")  # about 6,000 of the 12,000 posts
    seen: dict[int, tuple[Any, Any]] = {}

    def host_exports(kb: int) -> bool:
        seen[kb] = both(posts_12k, tmp_path, f"v{kb}", *options, limit=rlimit(resource.RLIMIT_AS, kb << 10))
        return isinstance(seen[kb][0], dict)

    assert lowest(host_exports, 60_000, 260_000, 20_000) is not None, "skyarchive alone never exported: a bad grid"
    for host, plugin in seen.values():
        assert_never_worse(host, plugin)
    below = [plugin for host, plugin in seen.values() if isinstance(plugin, str)]
    assert all("MemoryError" in said or "memory" in said.lower() for said in below), below


def test_an_address_space_limit_is_never_a_crash(posts_12k: Path, tmp_path: Path) -> None:
    """Where memory runs out while posts are encoded, a clean MemoryError and nothing left: never a crash
    (orjson, which cannot fail an allocation and crashes the process instead, is not used under such a limit),
    on a fine grid across the limits where the export runs out."""
    format = "jsonl" if HOST_VERSION >= (0, 5) else "json"
    for kb in range(60_000, 90_001, 2_000):
        done = export(posts_12k, "plugin.toml", tmp_path / f"v{kb}", "--format", format, "--until", "2025-10-24",
                      limit=rlimit(resource.RLIMIT_AS, kb << 10))  # fmt: skip
        outcome(done, tmp_path / f"v{kb}")  # exported, or one line and nothing left; no signal


def test_a_file_size_limit(posts_12k: Path, tmp_path: Path) -> None:
    """``ulimit -f``, at the lowest limit (on a grid) where skyarchive alone exports to CSV (posts.csv and its
    sort's files fit): the plugin exports too, without a copy of the selection, which would not fit (it plans
    without one, rather than find out by trying)."""
    probe = export(posts_12k, "host.toml", tmp_path / "probe", "--format", "csv")
    size = (Path(probe.stdout.strip().splitlines()[-1]) / "posts.csv").stat().st_size

    def host_exports(percent: int) -> bool:
        limit = rlimit(resource.RLIMIT_FSIZE, size * percent // 100)
        return isinstance(outcome(export(posts_12k, "host.toml", tmp_path / f"h{percent}", "--format", "csv",
                                         limit=limit), tmp_path, plugin=False), dict)  # fmt: skip

    percent = lowest(host_exports, 100, 200, 5)
    assert percent is not None, "skyarchive alone never exported: a bad grid"
    host = export(posts_12k, "host.toml", tmp_path / "host", "--format", "csv")
    done = export(posts_12k, "plugin.toml", tmp_path / "plugin", "--format", "csv",
                  limit=rlimit(resource.RLIMIT_FSIZE, size * percent // 100))  # fmt: skip
    assert outcome(done, tmp_path / "plugin") == outcome(host, tmp_path / "host", plugin=False)
    assert "no room for a copy" not in done.stderr, done.stderr


def stalled_stderr() -> tuple[int, int]:
    """A pipe whose buffer is already full: the first write to it blocks until someone reads. (read, write)"""
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 4096)
    os.set_blocking(write, False)
    try:
        while True:
            os.write(write, b"." * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(write, True)
    return read, write


def drain(fd: int) -> None:
    while os.read(fd, 65536):
        pass


@pytest.fixture(scope="module")
def posts_30k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seed(tmp_path_factory.mktemp("console"), 30_000)


def archiver_beside(root: Path, tmp_path: Path, name: str, config: str) -> tuple[float, int]:
    """Export ``root``'s owner to JSON with ``config`` while an archiver inserts a post every 0.1 s, standard error
    a pipe nobody reads for 3 s from the start (a terminal paused with Ctrl-S); the archiver's longest wait and its
    errors meanwhile."""
    report = tmp_path / f"archiver-{name}.json"
    process = archiver.start_archiver(root / "skyarchive.db", report, did="did:plc:someoneelse", cleanup=True)
    read, write = stalled_stderr()
    env = {k: v for k, v in os.environ.items() if k != "SKYARCHIVE_CONFIG"}
    try:
        started = time.monotonic()
        export_process = subprocess.Popen(
            [sys.executable, "-m", "skyarchive", "--config", config, "export", "--did", DEFAULT_DID, "--format", "json",
             "--out", str(tmp_path / f"out-{name}")],
            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=write,
        )  # fmt: skip
        os.close(write)
        time.sleep(3)  # the console unread
        drained = threading.Thread(target=drain, args=(read,))
        drained.start()
        assert export_process.wait(timeout=120) == 0
        ended = time.monotonic()
        drained.join()
    finally:
        os.close(read)
        result = archiver.stop_archiver(process, report)
    during = [w for at, w in zip(result.attempted_at, result.waits, strict=True) if started <= at <= ended]
    return max(during), len([e for e in result.errors if started <= e.at <= ended])


def test_a_stalled_console_does_not_hold_the_archive(posts_30k: Path, tmp_path: Path) -> None:
    """An archiver beside an export whose console is stalled is locked out no longer, and fails no more, than with
    skyarchive alone."""
    host = archiver_beside(posts_30k, tmp_path, "host", "host.toml")
    plugin = archiver_beside(posts_30k, tmp_path, "plugin", "plugin.toml")
    assert plugin[1] <= host[1], (host, plugin)
    assert plugin[0] <= host[0] + 0.1, (host, plugin)
