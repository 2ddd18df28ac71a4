"""Media that cost only what changed: clones where the filesystem shares blocks, links to the previous export.

The plugin makes each media file itself (``media.copy_media_file``): it must keep skyarchive's rules exactly
(a differential test against the host's own ``copy_media_file``), clone or copy with a fallback for every
refusal, and, with ``link_unchanged_media``, link only what is unchanged from an earlier export that is
complete, never touching it. The filesystem tests (XFS and btrfs on loop devices, tmpfs) need root and the
tools; outside CI they are skipped without them, under ``CI=true`` they fail.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import logging
import os
import random
import re
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
from export_batching_plugin.batched import ExportFailed
from export_batching_plugin.plan import COPY
from export_batching_plugin.reuse import Earlier, clone_or_copy

from . import harness
from . import test_failure_safety as failure_safety
from .conftest import ArchiveFolder
from .harness import Outcome, archive_with_media, export, insert_rows, make_engine, media_row, post_row

LINKS = {"threshold": 0, "link_unchanged_media": True, "checksums": True}
LONG_AGO = 1_500_000_000  # 2017: the archive's files were written long before any export (2025 in the harness)


def unavailable(reason: str) -> None:
    """Skip saying why; under CI (``CI=true``) fail instead: CI must run these tests."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"under CI: {reason}")
    pytest.skip(reason)


def require(*tools: str) -> None:
    """Root and ``tools``, or :func:`unavailable`."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        why = "needs root" if os.geteuid() != 0 else f"needs {', '.join(missing)}"
        unavailable(f"{why} (Debian: apt-get install xfsprogs btrfs-progs)")


@contextmanager
def mounted(mountpoint: Path, *args: str) -> Iterator[Path]:
    """``mount *args mountpoint`` (:func:`unavailable` if the system will not: no loop devices in a container),
    unmounted on the way out (lazily if still busy)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *args, str(mountpoint)], capture_output=True, text=True)
    if done.returncode:
        unavailable(f"mount {' '.join(args)} failed: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], check=False, capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def snapshot(root: Path, *, nlink: bool = False) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root`` as a reader sees it: type and mode, owner, size, mtime, inode and contents, and
    with ``nlink`` the link count.

    Not st_ctime: a link to a file (and its removal) changes it, as it changes st_nlink. Not st_atime: a read
    may set it (the export reads the manifest and SHA256SUMS).
    """
    found: dict[str, tuple[Any, ...]] = {}
    for path in sorted(root.rglob("*")):
        s = os.lstat(path)
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        found[str(path.relative_to(root))] = (s.st_mode, s.st_uid, s.st_gid, s.st_size, s.st_mtime_ns, s.st_ino,
                                              content, s.st_nlink if nlink else None)  # fmt: skip
    return found


def verify(export_dir: Path) -> None:
    """``sha256sum -c`` passes in ``export_dir``."""
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=export_dir, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def media_lines(export_dir: Path) -> list[bytes]:
    return [line for line in (export_dir / "SHA256SUMS").read_bytes().splitlines() if b" media/" in line]


def inodes(export_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in (export_dir / "media").iterdir()}


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".staging-" in p.name]


# -- the plugin's own copy is skyarchive's, rule for rule ------------------------------------------------------

#: Media paths for rows, hostile ones among them (each row takes one, in any order, any number of times).
PATHS = [
    "a.jpg", "sub/b.jpg", "other/a.jpg", "A.jpg", "big.bin", "empty.jpg", "inlink.jpg", "planted.jpg",
    "back\\slash.jpg", "new\nline.jpg", "missing.jpg", "dangling.jpg", "sub", "a.jpg/x", "", ".", "sub/..",
    "../outside/secret.jpg", "/etc/hostname", "escape.jpg", "dirlink/secret.jpg",
]  # fmt: skip
#: A symlink to itself: skyarchive fails on it (how depends on Python's pathlib), and the plugin the same way.
LOOP = "loop.jpg"


#: The files an earlier export copied (all of them unchanged since).
EARLIER = ("a.jpg", "big.bin", "new\nline.jpg", "empty.jpg", "inlink.jpg")


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
    (media_dir / LOOP).symlink_to(LOOP)
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
) -> tuple[list[object], list[str]]:
    """Each row copied into ``dest`` by ``copy``, in order: whether it made the file (or the error it raised), and
    the warnings."""
    (dest / "planted.jpg").symlink_to("/nonexistent")  # a name already taken, by a dangling symlink
    handler = Warnings()
    logging.getLogger().addHandler(handler)
    made: list[object] = []
    try:
        for row in rows:
            try:
                done = copy(row, media_dir.resolve(), dest)
            except Exception as exc:
                done = f"{type(exc).__name__}: {exc}"
            made.append(done if isinstance(done, (bool, str)) else done[0])
    finally:
        logging.getLogger().removeHandler(handler)
    return made, handler.lines


def contents(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes() if not p.is_symlink() else b"->", p.lstat().st_mode) for p in folder.iterdir()}


@settings(max_examples=60, deadline=None)
@given(picks=st.lists(st.sampled_from([*PATHS, LOOP]), max_size=30), link=st.booleans())
def test_the_plugins_copy_is_skyarchives(media_pool: Path, picks: list[str], link: bool) -> None:
    """Any rows, in any order: the same files made (bytes and modes), the same skips, the same warnings, word for
    word, as skyarchive's ``copy_media_file``; also when unchanged files are linked from an earlier export."""
    rows = [SimpleNamespace(hash=f"h{n}", file_path=path) for n, path in enumerate(picks)]
    with tempfile.TemporaryDirectory() as scratch:
        did = Path(scratch, "did")
        host_dest, plugin_dest = Path(scratch, "host"), did / ".now.staging-0" / "media"
        earlier_media = did / "2025-06-01_00-00-00" / "media"
        for folder in (host_dest, plugin_dest, earlier_media):
            folder.mkdir(parents=True)
        earlier_media.parent.joinpath("manifest.json").write_text('{"exported_at": "2025-06-01T00:00:00.000Z"}')
        for name in EARLIER:  # as an earlier export made them
            skyarchive.export.copy_media_file(SimpleNamespace(hash="x", file_path=name), media_pool, earlier_media)
        earlier = Earlier.find(plugin_dest, checksums=False) if link else None
        assert (earlier is not None) == link

        expected = copy_rows(skyarchive.export.copy_media_file, rows, media_pool, host_dest)
        got = copy_rows(lambda row, root, dest: media.copy_media_file(row, root, dest, earlier), rows, media_pool,
                        plugin_dest)  # fmt: skip
        assert got == expected
        assert contents(plugin_dest) == contents(host_dest)
        linked = {p.name for p in plugin_dest.iterdir() if p.is_file() and p.stat().st_nlink > 1}
        made = [row.file_path for row, copied in zip(rows, got[0], strict=True) if copied is True]
        assert linked == ({os.path.basename(path) for path in made if path in EARLIER} if link else set())
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


# -- links to the previous export ---------------------------------------------------------------------------


@pytest.fixture
def media_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Path]]:
    """45 posts, 24 media files of 200 KB (names sha256sum must escape among them), written long ago. Each export
    of the test begins a second after the one before (harness.export)."""
    monkeypatch.setattr(harness, "_counter", itertools.count())
    posts = [post_row(n, created_at=f"2025-01-01T00:00:{59 - n:02d}.000Z") for n in range(45)]
    names = [f"m{n:02d}.jpg" for n in range(22)] + ["back\\slash.jpg", "new\nline.jpg"]
    files = {name: (n, random.Random(n).randbytes(200_000)) for n, name in enumerate(names)}
    engine, media_dir = archive_with_media(tmp_path, posts, files)
    for path in media_dir.iterdir():
        os.utime(path, (LONG_AGO, LONG_AGO))
    yield engine, media_dir
    engine.dispose()


def export_into(folder: Path, engine: Any, media_dir: Path, **settings: Any) -> Outcome:
    """One export with --media into the exports folder ``folder`` (all of them into the same DID folder)."""
    return export(engine, folder.parent, settings={**LINKS, **settings}, media=True, media_dir=media_dir,
                  folder=folder.name)  # fmt: skip


def disk_use(*folders: Path) -> int:
    """``du`` over ``folders`` together, in bytes: a file linked into several is counted once."""
    out = subprocess.run(["du", "-s", "-c", "-B1", *map(str, folders)], capture_output=True, text=True, check=True)
    return int(out.stdout.splitlines()[-1].split()[0])


def test_a_repeat_export_links_every_unchanged_file(media_archive: tuple[Any, Path], tmp_path: Path) -> None:
    """The second export of an unchanged archive: every media file a link to the first's, its SHA256SUMS lines
    the first's, both verify, the same files, and it adds at most 1% of the first's disk use; the first export is
    untouched (but for its files' link counts and ctimes)."""
    engine, media_dir = media_archive
    exports = tmp_path / "exports"
    first = export_into(exports, engine, media_dir)
    assert first.result is not None, first.error
    before = snapshot(first.result.export_dir)
    second = export_into(exports, engine, media_dir)
    assert second.result is not None, second.error
    assert snapshot(first.result.export_dir) == before
    one, two = first.result.export_dir, second.result.export_dir
    assert inodes(two) == inodes(one) and len(inodes(one)) == 24
    assert media_lines(two) == media_lines(one) and len(media_lines(one)) == 24
    assert [line[67:] for line in media_lines(two) if line.startswith(b"\\")] == [
        b"media/back\\\\slash.jpg",
        b"media/new\\nline.jpg",
    ]  # escaped as sha256sum escapes them, and found again
    assert subprocess.run(["diff", "-r", str(one / "media"), str(two / "media")]).returncode == 0
    assert (two / "posts.json").read_bytes() == (one / "posts.json").read_bytes()
    assert second.manifest is not None and first.manifest is not None
    assert {k: v for k, v in second.manifest.items() if k != "exported_at"} == {
        k: v for k, v in first.manifest.items() if k != "exported_at"
    }
    verify(one)
    verify(two)
    assert disk_use(one, two) - disk_use(one) <= 0.01 * disk_use(one)


def test_a_changed_file_is_copied_and_the_earlier_export_keeps_the_old(
    media_archive: tuple[Any, Path], tmp_path: Path
) -> None:
    """A source rewritten in place (same size, new bytes, new mtime): the next export has the new bytes in a file
    of its own, the earlier keeps the old; both verify. Unchanged files are still linked."""
    engine, media_dir = media_archive
    exports = tmp_path / "exports"
    first = export_into(exports, engine, media_dir)
    assert first.result is not None
    old = (media_dir / "m05.jpg").read_bytes()
    (media_dir / "m05.jpg").write_bytes(b"new!" * 50_000)  # same size, modified now (after 2025)
    second = export_into(exports, engine, media_dir)
    assert second.result is not None, second.error
    one, two = first.result.export_dir, second.result.export_dir
    assert (two / "media" / "m05.jpg").read_bytes() == b"new!" * 50_000
    assert (one / "media" / "m05.jpg").read_bytes() == old
    assert {n for n, i in inodes(two).items() if i != inodes(one)[n]} == {"m05.jpg"}
    verify(one)
    verify(two)


def test_with_checksums_off_links_need_no_sums(media_archive: tuple[Any, Path], tmp_path: Path) -> None:
    engine, media_dir = media_archive
    exports = tmp_path / "exports"
    first = export_into(exports, engine, media_dir, checksums=False)
    second = export_into(exports, engine, media_dir, checksums=False)
    assert first.result is not None and second.result is not None
    assert inodes(second.result.export_dir) == inodes(first.result.export_dir)
    assert not (second.result.export_dir / "SHA256SUMS").exists()


def lock_staging(did_folder: Path, complete: Path) -> Callable[[], None]:
    """A newer export still being written: a locked staging directory holding all of ``complete``."""
    staging = did_folder / ".2099-01-01_00-00-00.staging-0123456789abcdef"
    shutil.copytree(complete, staging)
    manifest = staging / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"exported_at": "2025', '"exported_at": "2099'))
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return lambda: os.close(fd)


NEVER_LINKED = {
    "being written (a locked staging directory)": lock_staging,
    "no manifest.json yet (skyarchive's own exporter writing it)": lambda did, complete: shutil.copytree(
        complete, did / "2099-01-01_00-00-00", ignore=shutil.ignore_patterns("manifest.json")
    ),
}


@pytest.mark.parametrize("case", list(NEVER_LINKED))
def test_an_incomplete_newer_export_is_never_linked_from(
    media_archive: tuple[Any, Path], tmp_path: Path, case: str
) -> None:
    """A newer export that is not complete is passed over: the files are linked from the newest complete one."""
    engine, media_dir = media_archive
    exports = tmp_path / "exports"
    first = export_into(exports, engine, media_dir)
    assert first.result is not None
    did_folder = first.result.export_dir.parent
    undo = NEVER_LINKED[case](did_folder, first.result.export_dir)
    try:
        second = export_into(exports, engine, media_dir)
    finally:
        if callable(undo):
            undo()
    assert second.result is not None, second.error
    assert inodes(second.result.export_dir) == inodes(first.result.export_dir)
    verify(second.result.export_dir)


def test_a_file_without_a_sums_line_is_copied(media_archive: tuple[Any, Path], tmp_path: Path) -> None:
    """With checksums, a file the earlier SHA256SUMS does not list is copied (and hashed); without any SHA256SUMS
    there, every file is."""
    engine, media_dir = media_archive
    exports = tmp_path / "exports"
    first = export_into(exports, engine, media_dir)
    assert first.result is not None
    one = first.result.export_dir
    sums = one / "SHA256SUMS"
    sums.write_bytes(b"".join(line + b"\n" for line in sums.read_bytes().splitlines() if b"m07.jpg" not in line))
    second = export_into(exports, engine, media_dir)
    assert second.result is not None
    two = second.result.export_dir
    assert {n for n, i in inodes(two).items() if i != inodes(one)[n]} == {"m07.jpg"}
    verify(two)
    os.unlink(two / "SHA256SUMS")  # the newest export now has none
    third = export_into(exports, engine, media_dir)
    assert third.result is not None
    assert set(inodes(third.result.export_dir).values()).isdisjoint(inodes(two).values())
    verify(third.result.export_dir)


def test_an_earlier_file_that_would_differ_from_a_copy_is_not_linked(
    media_archive: tuple[Any, Path], tmp_path: Path
) -> None:
    """A file a link would make differ from a copy (made read-only since, or of another size) is copied: the new
    export is what a copy would be; the earlier one is not touched."""
    engine, media_dir = media_archive
    exports = tmp_path / "exports"
    first = export_into(exports, engine, media_dir, checksums=False)
    assert first.result is not None
    one = first.result.export_dir
    (one / "media" / "m01.jpg").chmod(0o444)
    with open(one / "media" / "m02.jpg", "ab") as grown:
        grown.write(b"!")
    before = snapshot(one)
    second = export_into(exports, engine, media_dir, checksums=False)
    assert second.result is not None
    two = second.result.export_dir
    assert {n for n, i in inodes(two).items() if i != inodes(one)[n]} == {"m01.jpg", "m02.jpg"}
    assert (two / "media" / "m01.jpg").stat().st_mode & 0o777 == (two / "media" / "m00.jpg").stat().st_mode & 0o777
    assert (two / "media" / "m02.jpg").read_bytes() == (media_dir / "m02.jpg").read_bytes()
    assert snapshot(one) == before


def test_only_a_complete_export_read_without_following_links_is_linked_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Newer folders that are not complete exports, or that lead elsewhere through a symlink, are passed over
    (and a manifest that is a FIFO is not waited on); a DID folder that cannot be read means no links."""
    did = tmp_path / "did"
    dest = did / ".2026-01-01_00-00-00.staging-0123456789abcdef" / "media"
    dest.mkdir(parents=True)
    complete = did / "2025-01-01_00-00-00"
    (complete / "media").mkdir(parents=True)
    (complete / "manifest.json").write_text('{"exported_at": "2025-01-01T00:00:00.000Z"}')
    manifests = {"not JSON": "{", "no exported_at": "{}", "a bad date": '{"exported_at": "yesterday"}'}
    for n, text in enumerate(manifests.values()):
        (did / f"2099-0{n + 1}-01_00-00-00" / "media").mkdir(parents=True)
        (did / f"2099-0{n + 1}-01_00-00-00" / "manifest.json").write_text(text)
    newer = '{"exported_at": "2099-12-31T00:00:00.000Z"}'
    (did / "media is a file").mkdir()
    (did / "media is a file" / "media").write_bytes(b"")
    (did / "media is a link").mkdir()
    (did / "media is a link" / "media").symlink_to(complete / "media")
    (did / "media is a file" / "manifest.json").write_text(newer)
    (did / "media is a link" / "manifest.json").write_text(newer)
    (did / "manifest is a FIFO" / "media").mkdir(parents=True)
    os.mkfifo(did / "manifest is a FIFO" / "manifest.json")
    (did / "a link to an export").symlink_to(complete)
    earlier = Earlier.find(dest, checksums=False)
    assert earlier is not None and earlier.media == complete / "media"
    assert Earlier.find(dest, checksums=True) is None, "no SHA256SUMS there"

    def unreadable(path: Any) -> Any:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(reuse.os, "scandir", unreadable)
    assert Earlier.find(dest, checksums=False) is None


def test_a_file_replaced_while_it_is_linked_is_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The earlier file replaced by another between its check and the link: the link is undone (and the file
    is then copied)."""
    did = tmp_path / "did"
    dest = did / ".2026-01-01_00-00-00.staging-0123456789abcdef" / "media"
    dest.mkdir(parents=True)
    (did / "2025-01-01_00-00-00" / "media").mkdir(parents=True)
    (did / "2025-01-01_00-00-00" / "manifest.json").write_text('{"exported_at": "2025-01-01T00:00:00.000Z"}')
    (did / "2025-01-01_00-00-00" / "media" / "a.jpg").write_bytes(b"old")
    (tmp_path / "a.jpg").write_bytes(b"new")
    os.utime(tmp_path / "a.jpg", (LONG_AGO, LONG_AGO))
    earlier = Earlier.find(dest, checksums=False)
    assert earlier is not None
    real_link = os.link
    monkeypatch.setattr(reuse.os, "link", lambda src, dst, **kw: real_link(tmp_path / "a.jpg", dst, **kw))
    assert earlier.link("a.jpg", os.stat(tmp_path / "a.jpg"), dest / "a.jpg") is None
    assert not (dest / "a.jpg").exists()


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EMLINK, errno.EPERM])
def test_a_refused_link_is_a_copy(
    media_archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """A link refused (another filesystem, too many links, protected_hardlinks): that file is copied."""
    engine, media_dir = media_archive
    exports = tmp_path / "exports"
    first = export_into(exports, engine, media_dir)
    assert first.result is not None

    def link(*args: Any, **kwargs: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(reuse.os, "link", link)
    second = export_into(exports, engine, media_dir)
    assert second.result is not None, second.error
    assert set(inodes(second.result.export_dir).values()).isdisjoint(inodes(first.result.export_dir).values())
    assert media_lines(second.result.export_dir) == media_lines(first.result.export_dir)
    verify(second.result.export_dir)


@pytest.mark.slow
def test_an_earlier_export_on_another_filesystem_is_copied_from(
    media_archive: tuple[Any, Path], tmp_path: Path
) -> None:
    """The earlier export on a tmpfs mounted in the DID folder: nothing can be linked across; every file is copied."""
    require("mount")
    engine, media_dir = media_archive
    exports = tmp_path / "exports"
    first = export_into(exports, engine, media_dir)
    assert first.result is not None
    moved = first.result.export_dir.with_name("2025-01-01_00-00-00")
    with mounted(moved, "-t", "tmpfs", "-o", "size=64m", "tmpfs"):
        shutil.copytree(first.result.export_dir, moved, dirs_exist_ok=True)
        shutil.rmtree(first.result.export_dir)
        before = snapshot(moved, nlink=True)
        second = export_into(exports, engine, media_dir)
        assert second.result is not None, second.error
        assert all(p.stat().st_nlink == 1 for p in (second.result.export_dir / "media").iterdir())
        assert media_lines(second.result.export_dir) == media_lines(moved)
        verify(second.result.export_dir)
        assert snapshot(moved, nlink=True) == before


# -- failure: nothing left, the earlier export untouched -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [False, True], ids=["single", "persistent"])
@pytest.mark.parametrize(
    "operation", [*(op for op, spec in failure_safety.OPERATIONS.items() if COPY in spec[5]), "clone or copy"]
)
def test_every_failure_with_links_leaves_nothing_and_the_earlier_export_as_it_was(
    media_archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, operation: str, persistent: bool
) -> None:
    """The fault sweep of test_failure_safety.py (the k-th operation of each kind fails, once or from then on, for
    k = 1, 2, ... until the export gets through), on a repeat export that links most files and copies the rest:
    each failure says what failed, leaves nothing, and leaves the earlier export as it was, link counts included."""
    engine, media_dir = media_archive
    exports = tmp_path / "exports"
    first = export_into(exports, engine, media_dir)
    assert first.result is not None
    for n in range(0, 22, 4):  # changed since: copied (cloned), the others linked
        path = media_dir / f"m{n:02d}.jpg"
        path.write_bytes(path.read_bytes()[::-1])
    before = snapshot(first.result.export_dir, nlink=True)
    copying = (media, "clone_or_copy", failure_safety.enospc, failure_safety.same,
               r"copying media files failed: disk full: injected", {COPY})  # fmt: skip
    owner, name, error, wrap, says, _ = failure_safety.OPERATIONS.get(operation, copying)
    original, failures = getattr(owner, name), 0
    for k in range(1, 200):
        monkeypatch.setattr(owner, name, wrap(original, failure_safety.Fault(k, persistent, error)))
        outcome = export_into(exports, engine, media_dir, batch_size=10)
        monkeypatch.setattr(owner, name, original)
        if outcome.error is None:
            break
        failures += 1
        assert isinstance(outcome.error, ExportFailed) and re.fullmatch(says, str(outcome.error)), str(outcome.error)
        assert leftovers(exports) == []
        assert snapshot(first.result.export_dir, nlink=True) == before
    else:
        pytest.fail("the export never got through")
    assert failures >= 1, f"no {operation} fault was ever hit"
    assert outcome.result is not None
    one, two = first.result.export_dir, outcome.result.export_dir
    assert {n for n, i in inodes(two).items() if i != inodes(one)[n]} == {f"m{n:02d}.jpg" for n in range(0, 22, 4)}
    verify(two)


def test_a_failure_after_some_links_leaves_nothing_and_the_earlier_export_as_it_was(
    media_archive: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full on the third copy, links already made: no staging directory left, and the earlier export as it
    was, link counts included (the failed export's links are gone)."""
    engine, media_dir = media_archive
    exports = tmp_path / "exports"
    first = export_into(exports, engine, media_dir)
    assert first.result is not None
    for n in range(12, 22, 2):  # changed since: copied
        path = media_dir / f"m{n:02d}.jpg"
        path.write_bytes(path.read_bytes()[::-1])
    before = snapshot(first.result.export_dir, nlink=True)
    real_copy, real_link, copies, links = reuse.clone_or_copy, os.link, [], []

    def full(src: int, dst: int) -> None:
        copies.append(dst)
        if len(copies) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(src, dst)

    def link(*args: Any, **kwargs: Any) -> None:
        real_link(*args, **kwargs)
        links.append(args)

    monkeypatch.setattr(media, "clone_or_copy", full)
    monkeypatch.setattr(reuse.os, "link", link)
    failed = export_into(exports, engine, media_dir)
    assert isinstance(failed.error, ExportFailed) and failed.error.phase == "copying media files"
    assert "disk full" in str(failed.error)
    assert links, "some files should have been linked before the failure"
    assert leftovers(exports) == []
    assert [p.name for p in first.result.export_dir.parent.iterdir()] == [first.result.export_dir.name]
    assert snapshot(first.result.export_dir, nlink=True) == before


@pytest.mark.slow
def test_a_full_disk_while_linking_and_copying_leaves_the_earlier_export_as_it_was(
    media_archive: tuple[Any, Path], tmp_path: Path
) -> None:
    """A real full disk (a 6 MiB tmpfs holding the exports): the first export fits, the second (half of it links)
    does not; it fails saying so, leaves nothing, and the first is as it was, link counts included."""
    require("mount")
    engine, media_dir = media_archive
    with mounted(tmp_path / "exports", "-t", "tmpfs", "-o", "size=6m", "tmpfs") as exports:
        first = export_into(exports, engine, media_dir)
        assert first.result is not None, first.error
        for n in range(0, 22, 2):
            path = media_dir / f"m{n:02d}.jpg"
            path.write_bytes(path.read_bytes()[::-1])
        before = snapshot(first.result.export_dir, nlink=True)
        failed = export_into(exports, engine, media_dir)
        assert isinstance(failed.error, ExportFailed), failed.error
        assert "disk full" in str(failed.error), str(failed.error)
        assert leftovers(exports) == []
        assert snapshot(first.result.export_dir, nlink=True) == before
        verify(first.result.export_dir)
