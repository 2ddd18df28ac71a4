"""Media that cost only what changed: clones where the filesystem shares blocks.

The plugin makes each media file itself (``media.copy_media_file``): it must keep skyarchive's rules exactly
(a differential test against the host's own ``copy_media_file``) and clone or copy with a fallback for every
refusal. The filesystem tests (XFS and btrfs on loop devices) need root and the tools; outside CI they are
skipped without them, under ``CI=true`` they fail.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import skyarchive.export
from hypothesis import given, settings
from hypothesis import strategies as st

from export_batching_plugin import media, reuse
from export_batching_plugin.reuse import clone_or_copy

from .conftest import ArchiveFolder
from .harness import archive_with_media, export, insert_rows, make_engine, media_row, post_row

LONG_AGO = 1_500_000_000  # 2017: the archive's files were written long before any export (2025 in the harness)


def require(*tools: str) -> None:
    """Root and ``tools``, or skip saying what is missing; under CI (``CI=true``) fail instead: CI must run these."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    why = "needs root" if os.geteuid() != 0 else f"needs {', '.join(missing)}" if missing else None
    if why is not None:
        reason = f"{why} (Debian: apt-get install xfsprogs btrfs-progs)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"under CI: {reason}")
        pytest.skip(reason)


@contextmanager
def mounted(mountpoint: Path, *args: str) -> Iterator[Path]:
    """``mount *args mountpoint``, unmounted on the way out (lazily if still busy)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *args, str(mountpoint)], check=True, capture_output=True)
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def verify(export_dir: Path) -> None:
    """``sha256sum -c`` passes in ``export_dir``."""
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=export_dir, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


# -- the plugin's own copy is skyarchive's, rule for rule ------------------------------------------------------

#: Media paths for rows, hostile ones among them (each row takes one, in any order, any number of times).
PATHS = [
    "a.jpg", "sub/b.jpg", "other/a.jpg", "A.jpg", "big.bin", "empty.jpg", "inlink.jpg", "planted.jpg",
    "back\\slash.jpg", "new\nline.jpg", "missing.jpg", "dangling.jpg", "sub", "a.jpg/x", "", ".", "sub/..",
    "../outside/secret.jpg", "/etc/hostname", "escape.jpg", "dirlink/secret.jpg",
]  # fmt: skip


@pytest.fixture(scope="module")
def media_pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A media_dir with a file, or a trap, for each of PATHS; its files last modified long ago."""
    root = tmp_path_factory.mktemp("pool")
    outside, media_dir = root / "outside", root / "media"
    for folder in (outside, media_dir / "sub", media_dir / "other"):
        folder.mkdir(parents=True)
    (outside / "secret.jpg").write_bytes(b"SECRET")
    rng = random.Random(7)
    for name in ("a.jpg", "sub/b.jpg", "other/a.jpg", "A.jpg", "planted.jpg", "back\\slash.jpg", "new\nline.jpg"):
        (media_dir / name).write_bytes(rng.randbytes(rng.randrange(1, 5000)))
    (media_dir / "big.bin").write_bytes(rng.randbytes(3 << 20))  # more than one block of every way of copying
    (media_dir / "empty.jpg").write_bytes(b"")
    (media_dir / "inlink.jpg").symlink_to("sub/b.jpg")
    (media_dir / "dangling.jpg").symlink_to("nothing.jpg")
    (media_dir / "escape.jpg").symlink_to(outside / "secret.jpg")
    (media_dir / "dirlink").symlink_to(outside, target_is_directory=True)
    for path in media_dir.rglob("*"):
        os.utime(path, (LONG_AGO, LONG_AGO), follow_symlinks=False)
    return media_dir


class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def copy_rows(
    copy: Callable[[Any, Path, Path], Any], rows: list[Any], media_dir: Path, dest: Path
) -> tuple[list[bool], list[str]]:
    """Each row copied into ``dest`` by ``copy``, in order: whether it made the file, and the warnings."""
    (dest / "planted.jpg").symlink_to("/nonexistent")  # a name already taken, by a dangling symlink
    handler = Warnings()
    logging.getLogger().addHandler(handler)
    try:
        made = [copy(row, media_dir.resolve(), dest) for row in rows]
    finally:
        logging.getLogger().removeHandler(handler)
    return [m if isinstance(m, bool) else m[0] for m in made], handler.lines


def contents(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes() if not p.is_symlink() else b"->", p.lstat().st_mode) for p in folder.iterdir()}


@settings(max_examples=60, deadline=None)
@given(picks=st.lists(st.integers(0, len(PATHS) - 1), max_size=30))
def test_the_plugins_copy_is_skyarchives(media_pool: Path, picks: list[int]) -> None:
    """Any rows, in any order: the same files made (bytes and modes), the same skips, the same warnings, word for
    word, as skyarchive's ``copy_media_file``."""
    rows = [SimpleNamespace(hash=f"h{n}", file_path=PATHS[pick]) for n, pick in enumerate(picks)]
    with tempfile.TemporaryDirectory() as scratch:
        host_dest, plugin_dest = Path(scratch, "host"), Path(scratch, "plugin")
        for folder in (host_dest, plugin_dest):
            folder.mkdir(parents=True)
        expected = copy_rows(skyarchive.export.copy_media_file, rows, media_pool, host_dest)
        got = copy_rows(media.copy_media_file, rows, media_pool, plugin_dest)
        assert got == expected
        assert contents(plugin_dest) == contents(host_dest)
        assert b"SECRET" not in b"".join(c for c, _ in contents(plugin_dest).values())


def test_the_plugins_copy_is_skyarchives_in_the_manifest(media_pool: Path, tmp_path: Path) -> None:
    """Through the whole export: the same files and the same counts in the manifest as skyarchive's exporter."""
    posts = [post_row(n) for n in range(len(PATHS))]
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, posts, [media_row(f"h{n:02d}", posts[n], path) for n, path in enumerate(PATHS)])
    run = {"media": True, "media_dir": media_pool}
    host = export(engine, tmp_path / "host", settings=None, **run)
    plugin = export(engine, tmp_path / "plugin", settings={"threshold": 0}, **run)
    assert host.result is not None and plugin.result is not None and plugin.manifest is not None
    assert contents(plugin.result.export_dir / "media") == contents(host.result.export_dir / "media")
    assert {k: plugin.manifest[k] for k in ("media_count", "media_skipped")} == {"media_count": 9, "media_skipped": 12}
    assert host.manifest is not None and host.manifest["media_skipped"] == 12
    engine.dispose()


# -- clones, and every way a clone or a copy is refused ---------------------------------------------------------


def refuse(code: int, *, after: int = 0) -> Callable[..., Any]:
    """A stand-in for ``os.copy_file_range`` that copies ``after`` calls' worth, then fails with ``code``."""
    real, calls = os.copy_file_range, []

    def copy_file_range(src: int, dst: int, count: int, *args: Any) -> int:
        calls.append(count)
        if len(calls) > after:
            raise OSError(code, os.strerror(code))
        return real(src, dst, count, *args)

    return copy_file_range


def half_clone(code: int) -> Callable[..., Any]:
    """A stand-in for ``fcntl.ioctl`` whose clone fails after leaving something in the file."""

    def ioctl(fd: int, request: int, arg: Any = 0, *args: Any) -> Any:
        os.pwrite(fd, b"half a clone", 8 << 20)  # past the source's end; an ioctl leaves the file's offset as it is
        raise OSError(code, os.strerror(code))

    return ioctl


REFUSED = [errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM, errno.EINVAL, errno.ENOSYS, errno.ENOTTY, errno.EBADF]


@pytest.mark.parametrize("code", REFUSED, ids=errno.errorcode.get)
@pytest.mark.parametrize("after", [0, 1], ids=["at-once", "half-way"])
def test_a_refused_clone_or_copy_falls_back_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, after: int
) -> None:
    """A clone refused (also after writing), then copy_file_range refused at once or half-way: a plain copy of
    what is left, the same bytes."""
    source = tmp_path / "source"
    source.write_bytes(random.Random(code).randbytes(3 << 20 | 12345))
    monkeypatch.setattr(reuse.fcntl, "ioctl", half_clone(code))
    monkeypatch.setattr(reuse.os, "copy_file_range", refuse(code, after=after))
    with open(source, "rb") as src, open(tmp_path / "copy", "xb") as dst:
        clone_or_copy(src.fileno(), dst.fileno())
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()


def test_copy_file_range_that_stops_short_is_finished_by_a_plain_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy_file_range reporting the end too early (as on some kernels for /proc or FUSE files): the rest is read."""
    source = tmp_path / "source"
    source.write_bytes(random.Random(1).randbytes(3 << 20))
    real, calls = os.copy_file_range, []

    def short(src: int, dst: int, count: int, *args: Any) -> int:
        calls.append(count)
        return real(src, dst, count, *args) if len(calls) == 1 else 0

    monkeypatch.setattr(reuse.fcntl, "ioctl", half_clone(errno.EOPNOTSUPP))
    monkeypatch.setattr(reuse.os, "copy_file_range", short)
    with open(source, "rb") as src, open(tmp_path / "copy", "xb") as dst:
        clone_or_copy(src.fileno(), dst.fileno())
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()


def test_an_export_where_clones_and_copy_file_range_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sandbox that refuses both (seccomp: EPERM): the export is made, the files equal skyarchive's."""
    posts = [post_row(n) for n in range(20)]
    files = {f"m{n}.jpg": (n, random.Random(n).randbytes(70_000 * n)) for n in range(20)}
    engine, media_dir = archive_with_media(tmp_path, posts, files)
    monkeypatch.setattr(reuse.fcntl, "ioctl", half_clone(errno.EPERM))
    monkeypatch.setattr(reuse.os, "copy_file_range", refuse(errno.EPERM))
    outcome = export(engine, tmp_path / "out", settings={"threshold": 0, "checksums": True}, media=True,
                     media_dir=media_dir)  # fmt: skip
    assert outcome.result is not None, outcome.error
    assert {p.name: p.read_bytes() for p in (outcome.result.export_dir / "media").iterdir()} == {
        name: content for name, (_, content) in files.items()
    }
    verify(outcome.result.export_dir)
    engine.dispose()


def realistic_archive(db: Path, media_dir: Path, *, posts: int, files: int) -> int:
    """An archive of ``posts`` posts with ``files`` media files of 50-600 KB of random bytes (as JPEGs are to a
    filesystem: nothing to compress or share); returns their total size."""
    rng = random.Random(2025)
    rows = [post_row(n, has_media=True, created_at=f"2025-01-{1 + n % 28:02d}T00:00:00.000Z") for n in range(posts)]
    media_rows, total = [], 0
    (media_dir / "did").mkdir(parents=True)
    for n in range(files):
        size = rng.randrange(50_000, 600_000)
        (media_dir / "did" / f"bafkrei{n:08d}.jpg").write_bytes(rng.randbytes(size))
        media_rows.append(media_row(f"bafkrei{n:08d}", rows[n % posts], f"did/bafkrei{n:08d}.jpg", size))
        total += size
    engine = make_engine(db)
    insert_rows(engine, rows, media_rows)
    engine.dispose()
    return total


def data_used(fs: str, mount: Path) -> int:
    """Bytes of data blocks in use on ``mount``, once everything written is on disk."""
    os.sync()
    if fs == "btrfs":  # statfs there also moves with metadata chunks; its data space is counted on its own
        usage = subprocess.run(["btrfs", "filesystem", "df", "-b", str(mount)], capture_output=True, text=True)
        line = next(line for line in usage.stdout.splitlines() if line.startswith("Data"))
        return int(line.rsplit("used=", 1)[1].split()[0])
    vfs = os.statvfs(mount)
    return (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize


@pytest.mark.slow
@pytest.mark.parametrize("fs", ["xfs", "btrfs"])
def test_media_are_cloned_on_a_copy_on_write_filesystem(archive_folder: ArchiveFolder, fs: str) -> None:
    """2,000 posts and 3,400 media files of 50-600 KB (1.1 GB) exported with --media through the CLI on XFS
    (reflink) or btrfs made on a loop device: the export adds at most 5% of the media's size in data blocks,
    and its files equal the originals."""
    require("losetup", "mkfs.xfs" if fs == "xfs" else "mkfs.btrfs")
    image = archive_folder.root / f"{fs}.img"
    subprocess.run(["truncate", "-s", "3G", str(image)], check=True)
    mkfs = ["mkfs.xfs", "-q", "-m", "reflink=1"] if fs == "xfs" else ["mkfs.btrfs", "-q"]
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    with mounted(archive_folder.root / "mnt", "-o", "loop", str(image)) as mount:
        total = realistic_archive(archive_folder.db, mount / "media", posts=2_000, files=3_400)
        archive_folder.write_config(f"""
            media_dir = "{mount / "media"}"
            exports_dir = "{mount / "exports"}"
            [plugins]
            enabled = ["export_batching"]
            [plugins.export_batching]
            threshold = 0
        """)
        before = data_used(fs, mount)
        result = archive_folder.cli("export", "--did", "did:plc:owner", "--format", "json", "--media")
        assert result.code == 0, result.err
        added = data_used(fs, mount) - before
        print(f"{fs}: {total / 1e6:.0f} MB of media exported, {added / 1e6:.1f} MB of data blocks added")
        assert added <= 0.05 * total
        copies = result.export_dir / "media"
        assert sorted(os.listdir(copies)) == sorted(os.listdir(mount / "media" / "did"))
        for copy in copies.iterdir():
            assert copy.read_bytes() == (mount / "media" / "did" / copy.name).read_bytes(), copy.name
