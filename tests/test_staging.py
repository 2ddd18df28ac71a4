"""Staging ownership: a lock, not a PID. Only a dead export's staging is removed, and only what was removed is said.

Containers that share an exports volume see each other's files but not each
other's processes (PID namespaces); these tests run exports in their own PID
namespaces (``unshare``, as root; CI runs as root) to check that a live export
is never disturbed and that a killed one's leftovers are removed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from skyarchive.models import media_table, posts_table
from skyarchive.seed import DEFAULT_DID, seed_archive

from export_batching_plugin import staging

from .conftest import ArchiveFolder, plugin_toml
from .harness import add_slow_media_file, export, feed_fifo, insert_rows, make_engine, post_row

SETTINGS = {"threshold": 0, "batch_size": 10}
FOLDER = DEFAULT_DID.replace(":", "_")
LOCK_AND_WAIT = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"  # noqa: E501


def stale_name(second: int, token: str = "export") -> str:
    """A staging directory's name: this release's (``export``: the claim of its final name), or an earlier
    release's (16 hex digits, at random), which cleanup removes too."""
    return f".2025-01-01_00-00-{second:02d}.staging-{token}"


def test_only_unlocked_staging_directories_are_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n) for n in range(12)])
    first = export(engine, tmp_path, settings=SETTINGS, folder="shared")
    assert first.result is not None
    folder = first.result.export_dir.parent
    stale = folder / stale_name(0, "0" * 16)
    (stale / "media").mkdir(parents=True)
    (stale / "posts.json").write_text("[\n", encoding="utf-8")
    claim = folder / stale_name(5)  # this release's: the claim of a final name, stale
    claim.mkdir()
    (claim / "posts.json").write_text("[\n", encoding="utf-8")
    live = folder / stale_name(1)
    live.mkdir()
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "file").write_text("keep", encoding="utf-8")
    link = folder / stale_name(2, "2" * 16)
    link.symlink_to(tmp_path / "keep", target_is_directory=True)
    odd = [folder / ".notes.staging-1", folder / stale_name(3, "abc"), folder / stale_name(4, "g" * 16)]
    for path in odd:
        path.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_AND_WAIT, str(live)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with caplog.at_level(logging.WARNING, logger="export_batching_plugin"):
            second = export(engine, tmp_path, settings=SETTINGS, folder="shared")
        assert second.error is None and second.result is not None
        assert not stale.exists() and not claim.exists()
        assert live.is_dir() and link.is_symlink() and all(path.is_dir() for path in odd)
        assert (tmp_path / "keep" / "file").read_text(encoding="utf-8") == "keep"
        assert first.result.export_dir.is_dir()
        assert caplog.text.count("removed ") == 2 and f"removed {stale}," in caplog.text
    finally:
        holder.kill()
        holder.wait()
    engine.dispose()


def test_a_failed_removal_is_not_reported_as_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "did"
    stale = folder / stale_name(0, "0" * 16)
    (stale / "sub").mkdir(parents=True)

    def refuse(path: Any, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(staging.shutil, "rmtree", refuse)
    with caplog.at_level(logging.WARNING, logger="export_batching_plugin"):
        assert staging.remove_stale_staging(folder) == []
    assert stale.is_dir()
    assert f"could not remove {stale}" in caplog.text and "Permission denied" in caplog.text
    assert "export_batching: removed" not in caplog.text


# -- real mounts and PID namespaces (root) ---------------------------------------------------------


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, check=False)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "exports" / FOLDER
    folder.mkdir(parents=True)
    (folder / stale_name(0, "0" * 16) / "media").mkdir(parents=True)
    bound = _run("mount", "--bind", str(folder), str(folder))
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here ({bound.stderr.strip()}); the monkeypatched test covers the logic")
    try:
        remounted = _run("mount", "-o", "remount,bind,ro", str(folder))
        assert remounted.returncode == 0, remounted.stderr
        yield folder
    finally:
        _run("umount", str(folder))


def test_a_read_only_exports_folder(archive_folder: ArchiveFolder, read_only_folder: Path) -> None:
    archive_folder.seed(30)
    archive_folder.enable_plugin(threshold=0)
    result = archive_folder.cli(
        "export", "--did", DEFAULT_DID, "--format", "json", "--out", str(read_only_folder.parent)
    )
    assert result.code == 1
    stale = read_only_folder / stale_name(0, "0" * 16)
    warnings = [line for line in result.err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and f"could not remove {stale}, left by" in warnings[0], warnings
    assert "Read-only file system" in warnings[0] and "removed" not in warnings[0].replace("could not remove", "")
    last = result.err.strip().splitlines()[-1]
    assert last.startswith("skyarchive: error: creating the staging directory failed: Read-only file system"), last
    assert stale.is_dir()


def _unshare_works() -> str | None:
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = _run("unshare", "--pid", "--fork", "--mount-proc", "true")
    return None if probe.returncode == 0 else f"unshare --pid fails here ({probe.stderr.strip()}); needs root"


@pytest.fixture(scope="module")
def namespaces() -> None:
    reason = _unshare_works()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PID namespaces are required under CI: {reason}")
        pytest.skip(reason)


@pytest.fixture
def slow_and_small_archives(tmp_path: Path) -> Iterator[Path]:
    """``slow.db``: 50 posts, one media file that is a FIFO (slow storage: the export waits on it until
    :func:`feed_fifo` writes to it); ``small.db``: 50 posts of the same owner. And the config, plugin on."""
    root = tmp_path / "archives"
    (root / "media").mkdir(parents=True)
    for name in ("slow", "small"):
        engine = make_engine(root / f"{name}.db")
        seed_archive(engine, posts_table, media_table, posts=50, media_every=0, media_dir=root / "media")
        if name == "slow":
            add_slow_media_file(engine, root / "media")
        engine.dispose()
    (root / "skyarchive.toml").write_text(plugin_toml(threshold=0), encoding="utf-8")
    yield root
    feed_fifo(root / "media" / "slow.jpg", timeout=0)  # unblock an export a failed test left waiting


def wait_until_unlocked(path: Path, timeout: float = 10) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{path} is still locked")
                time.sleep(0.02)
    finally:
        os.close(fd)


def export_command(root: Path, db: str, out: Path, *, namespace: bool) -> list[str]:
    command = [
        sys.executable, "-m", "skyarchive", "--db", f"sqlite:///{root / db}", "export", "--did", DEFAULT_DID,
        "--format", "json", "--out", str(out), *(["--media"] if db == "slow.db" else []),
    ]  # fmt: skip
    return ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *command] if namespace else command


def wait_for_staging(folder: Path, timeout: float = 30) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(folder.glob(".*.staging-*")) if folder.is_dir() else []
        if found:
            return found
        time.sleep(0.02)
    pytest.fail(f"no staging directory appeared in {folder}")


@pytest.mark.slow
@pytest.mark.usefixtures("namespaces")
@pytest.mark.parametrize("which", ["the running one", "the newcomer"])
def test_exports_from_two_pid_namespaces_into_one_folder_both_complete(
    slow_and_small_archives: Path, tmp_path: Path, which: str
) -> None:
    """A running export's staging directory survives an export started in another PID namespace."""
    out = tmp_path / "exports"
    running = subprocess.Popen(
        export_command(slow_and_small_archives, "slow.db", out, namespace=which == "the running one"),
        cwd=slow_and_small_archives, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        (live,) = wait_for_staging(out / FOLDER)
        time.sleep(1.1)  # export directories are named by the second
        newcomer = subprocess.run(
            export_command(slow_and_small_archives, "small.db", out, namespace=which == "the newcomer"),
            cwd=slow_and_small_archives, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert newcomer.returncode == 0, newcomer.stderr
        assert running.poll() is None, "the running export should still be waiting on its slow media file"
        assert live.is_dir(), "the newcomer removed a running export's staging directory"
        assert "removed" not in newcomer.stderr
        feed_fifo(slow_and_small_archives / "media" / "slow.jpg")
        stdout, stderr = running.communicate(timeout=120)
    finally:
        running.kill()
        running.wait()
    assert running.returncode == 0, stderr
    exports = sorted(p for p in (out / FOLDER).iterdir() if not p.name.startswith("."))
    assert len(exports) == 2 and [p for p in (out / FOLDER).iterdir() if p.name.startswith(".")] == []
    assert Path(stdout.strip().splitlines()[-1]) in exports
    assert (Path(stdout.strip().splitlines()[-1]) / "media" / "slow.jpg").read_bytes() == b"jpeg"


@pytest.mark.slow
@pytest.mark.usefixtures("namespaces")
def test_a_killed_pid_1_export_leaves_staging_that_the_next_export_removes(
    slow_and_small_archives: Path, tmp_path: Path
) -> None:
    """An export that ran as PID 1 of its namespace and was killed: "PID 1 is alive" must not keep its leftovers."""
    out = tmp_path / "exports"
    killed = subprocess.Popen(
        export_command(slow_and_small_archives, "slow.db", out, namespace=True), cwd=slow_and_small_archives
    )
    (left,) = wait_for_staging(out / FOLDER)
    time.sleep(0.5)  # well into the export: waiting on the slow media file
    killed.kill()  # SIGKILL to unshare; --kill-child takes the export (PID 1 inside) with it
    killed.wait()
    assert left.is_dir(), "a killed export cannot clean up after itself"
    wait_until_unlocked(left)  # the killed process is gone once its lock is
    time.sleep(1.1)
    following = subprocess.run(
        export_command(slow_and_small_archives, "small.db", out, namespace=False),
        cwd=slow_and_small_archives, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert following.returncode == 0, following.stderr
    assert not left.exists()
    assert f"removed {left}, left by an export that did not finish" in following.stderr


@pytest.mark.parametrize("did", ["../../outside", "did:plc:a/../../b", "..", "did:web:x/y"])
@pytest.mark.parametrize("threshold", [0, 1000])
def test_a_did_that_would_leave_the_exports_folder_is_refused(
    archive_folder: ArchiveFolder, did: str, threshold: int
) -> None:
    archive_folder.seed(20)
    archive_folder.enable_plugin(threshold=threshold)
    out = archive_folder.root / "a" / "b" / "exports"
    out.mkdir(parents=True)
    before = sorted(archive_folder.root.rglob("*"))
    result = archive_folder.cli("export", "--did", did, "--format", "json", "--out", str(out))
    assert result.code == 2
    assert result.error_line == (
        f"skyarchive: error: --did {did!r} cannot name a folder inside the exports folder; nothing was exported"
    )
    assert sorted(archive_folder.root.rglob("*")) == before


# -- races, each forced where it can happen -----------------------------------------------------------


def no_locks(fd: int, operation: int) -> None:
    """``flock`` on a filesystem without locks (an NFS mount without lockd, say)."""
    raise OSError(errno.ENOLCK, "No locks available")


def test_cleanup_on_a_filesystem_without_locks_leaves_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No locks on this filesystem (ENOLCK, say an NFS mount without lockd): cleanup leaves everything alone."""
    stale = tmp_path / stale_name(0, "0" * 16)
    stale.mkdir()

    monkeypatch.setattr(staging.fcntl, "flock", no_locks)
    assert staging.remove_stale_staging(tmp_path) == [] and stale.is_dir()


def test_an_exports_folder_without_locks_still_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No locks there (ENOLCK): the export goes ahead, as with skyarchive alone, and says what it cannot do."""
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n) for n in range(25)])
    host = export(engine, tmp_path, settings=None)
    folder = tmp_path / "shared" / "did_plc_owner"
    folder.mkdir(parents=True)
    left = folder / stale_name(0, "0" * 16)
    left.mkdir()

    monkeypatch.setattr(staging.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="export_batching_plugin"):
        plugin = export(engine, tmp_path, settings=SETTINGS, folder="shared")
    assert plugin.error is None and plugin.result is not None
    assert plugin.posts_bytes == host.posts_bytes and plugin.posts_bytes is not None
    assert caplog.text.count("no file locks in") == 1 and f"removed {left}" not in caplog.text
    assert left.is_dir(), "a staging folder nobody can lock may be a running export's"
    assert sorted(p.name for p in folder.iterdir()) == sorted([left.name, plugin.result.export_dir.name])
    assert not plugin.result.export_dir.stat().st_mode & stat.S_ISVTX, "the unlocked export's mark is cleared"
    engine.dispose()


def test_a_lock_that_fails_for_another_reason_fails_the_export_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n) for n in range(25)])

    def broken(fd: int, operation: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(staging.fcntl, "flock", broken)
    outcome = export(engine, tmp_path, settings=SETTINGS, folder="shared")
    assert outcome.error is not None and "Input/output error" in str(outcome.error)
    assert list((tmp_path / "shared").rglob("*")) == [], "not even the owner's folder it made"
    engine.dispose()


@pytest.mark.parametrize("race", ["removed", "replaced"])
def test_a_directory_removed_or_replaced_while_it_is_locked_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, race: str
) -> None:
    stale = tmp_path / stale_name(0, "0" * 16)
    stale.mkdir()
    real_flock = staging.fcntl.flock

    def flock_then_race(fd: int, operation: int) -> None:
        real_flock(fd, operation)
        os.rename(stale, tmp_path / "moved")
        if race == "replaced":
            stale.mkdir()

    monkeypatch.setattr(staging.fcntl, "flock", flock_then_race)
    assert staging.remove_stale_staging(tmp_path) == []
    assert (tmp_path / "moved").is_dir() and stale.is_dir() == (race == "replaced")


@pytest.mark.parametrize("race", ["removed before our lock", "locked by the cleanup as we lock"])
def test_a_claim_taken_away_before_it_was_locked_is_made_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, race: str
) -> None:
    """Between mkdir and lock the cleanup of another export (of another second) may take a fresh claim for stale,
    lock it and remove it: not a clash; make it again."""
    real_lock = staging._lock
    taken: list[Path] = []

    def lock(path: Path) -> int | None:
        if taken:
            return real_lock(path)
        taken.append(path)
        if race == "removed before our lock":
            path.rmdir()
            return real_lock(path)
        cleanup = real_lock(path)  # the other export's lock
        try:
            return real_lock(path)  # ours: held
        finally:
            path.rmdir()
            os.close(cleanup or -1)

    monkeypatch.setattr(staging, "_lock", lock)
    made = staging.Staging.create(tmp_path / "did" / "2025-01-01_00-00-00")
    assert taken == [made.path] and made.path.name == ".2025-01-01_00-00-00.staging-export" and made.path.is_dir()
    assert sorted(p.name for p in made.path.parent.iterdir()) == [made.path.name]
    made.release()


def test_cleanup_of_a_folder_that_is_gone_or_emptied_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert staging.remove_stale_staging(tmp_path / "missing") == []
    stale = tmp_path / stale_name(0, "0" * 16)
    stale.mkdir()
    (stale / "posts.json").write_text("[\n", encoding="utf-8")
    real_rmtree = staging.shutil.rmtree

    def another_got_there_first(path: Any, *args: Any, **kwargs: Any) -> None:
        real_rmtree(path)
        raise FileNotFoundError(2, "No such file or directory", str(path))

    monkeypatch.setattr(staging.shutil, "rmtree", another_got_there_first)
    assert staging.remove_stale_staging(tmp_path) == [stale] and not stale.exists()


def test_an_empty_stale_claim_goes_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing was lost (its export was killed before it wrote anything, or it is a claim another export has
    only just made, which then makes it again): removed, not reported as a dead export's."""
    empty = tmp_path / stale_name(0)
    empty.mkdir()
    with caplog.at_level(logging.WARNING, logger="export_batching_plugin"):
        assert staging.remove_stale_staging(tmp_path) == [empty] and not empty.exists()
    assert caplog.text == ""


def test_a_failed_sync_is_an_error_naming_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    def eio(fd: int) -> int:
        ctypes.set_errno(5)
        return -1

    for number in range(staging.FEW_FILES + 1):  # enough files for a syncfs
        (tmp_path / f"{number}.jpg").write_bytes(b"x")
    monkeypatch.setattr(staging, "_syncfs", eio)
    with pytest.raises(OSError, match="Input/output error") as info:
        staging.sync_tree(tmp_path)
    assert info.value.filename == str(tmp_path)


@pytest.mark.parametrize("media", [0, staging.FEW_FILES])
def test_a_few_files_are_synced_one_by_one_and_many_with_one_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, media: int
) -> None:
    """syncfs flushes whatever else is written on the filesystem, and other writers (an archiver's commits) wait
    meanwhile: an export without media (three files) syncs its own files; with media files, one syncfs."""
    (tmp_path / "media").mkdir()
    names = ["posts.json", "manifest.json", "SHA256SUMS", *(f"media/{n}.jpg" for n in range(media))]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    real_fsync, real_syncfs = os.fsync, staging._syncfs
    assert real_syncfs is not None
    synced: list[str] = []
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    monkeypatch.setattr(staging, "_syncfs", lambda fd: (synced.append("syncfs"), real_syncfs(fd))[1])
    staging.sync_tree(tmp_path)
    if media:
        assert synced == ["syncfs"]
    else:
        assert sorted(synced) == sorted(str(tmp_path / name) for name in ("", "media", *names))


def test_without_syncfs_every_file_and_folder_is_synced_and_a_folder_that_cannot_be_listed_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "media").mkdir()
    for name in ("posts.json", "media/a.jpg"):
        (tmp_path / name).write_bytes(b"x")
    real_fsync = os.fsync
    synced: list[str] = []

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(staging, "_syncfs", None)
    monkeypatch.setattr(os, "fsync", fsync)
    staging.sync_tree(tmp_path)
    assert sorted(synced) == sorted(str(tmp_path / name) for name in ("", "media", "posts.json", "media/a.jpg"))
    with pytest.raises(FileNotFoundError):
        staging.sync_tree(tmp_path / "gone")


def test_a_directory_sync_that_fails_for_another_reason_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(OSError, match="Input/output error"):
        staging.fsync_directory(tmp_path)


def test_without_renameat2_an_existing_target_is_still_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kernels or filesystems without RENAME_NOREPLACE (EINVAL, ENOSYS): check, then rename."""
    import ctypes

    def unsupported(*args: Any) -> int:
        ctypes.set_errno(22)
        return -1

    monkeypatch.setattr(staging, "_renameat2", unsupported)
    (tmp_path / "a").mkdir()
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        staging.rename_noreplace(tmp_path / "a", tmp_path / "taken")
    staging.rename_noreplace(tmp_path / "a", tmp_path / "free")
    assert (tmp_path / "free").is_dir() and not (tmp_path / "a").exists()
