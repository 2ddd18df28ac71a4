"""What a media export costs, first and again: copies, links to the previous export, clones.

``python -m benchmarks.media_reuse [--workdir DIR] [--posts N] [--files N] [--no-cow]``

An archive of ``--posts`` posts with ``--files`` media files of 50-600 KB of random bytes (as JPEGs are to a
filesystem: nothing to compress or share), written a day before the exports, is exported with ``--media`` by
``skyarchive`` in a subprocess, one export after another into one exports folder, each timed with its final
sync and measured with ``du`` (a file linked from an earlier export counted once), ``--repeat`` times each:

- ``host + sync``: skyarchive alone, then ``sync -f`` of the exports folder (the plugin syncs its export itself);
- ``plugin``: the plugin (``threshold = 0``), as it copies a first export, or any export without the setting;
- ``plugin, again, links``: with ``link_unchanged_media = true``, linking from the first plugin export;
- ``plugin, posts only``: the same export without ``--media``: what any export costs before its media files.

As root, with xfsprogs and btrfs-progs, the same on XFS (``mkfs.xfs -m reflink=1``) and btrfs made on loop
devices in the workdir, the archive's media folder on them too, with the data blocks each export added
(``statvfs``; on btrfs ``btrfs filesystem df``, which counts data apart from metadata). Warm page cache; host
and plugin runs interleaved, each first in turn, in one sitting. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

DID = "did:plc:mediabench"
DAY = 86_400


def make_archive(root: Path, *, posts: int, files: int) -> int:
    """``root/archive.db`` and ``root/media``, made with ``skyarchive init`` and plain SQL; the media's size."""
    rng = random.Random(2025)
    (root / "media" / "did").mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "skyarchive", "--db", f"sqlite:///{root / 'archive.db'}", "init"], check=True)
    written, total = time.time() - DAY, 0
    with closing(sqlite3.connect(root / "archive.db")) as db, db:
        db.executemany(
            "INSERT INTO posts (uri, cid, did, text, created_at, indexed_at, has_media, archived_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 1, ?)",
            [(f"at://{DID}/app.bsky.feed.post/{n:013d}", f"bafyrei{n:052d}", DID, f"post {n}",
              f"2025-01-{1 + n % 28:02d}T00:00:{n % 60:02d}.000Z", "2025-02-01T00:00:00.000Z",
              "2025-02-01T00:00:00.000Z") for n in range(posts)],
        )  # fmt: skip
        rows = []
        for n in range(files):
            size = rng.randrange(50_000, 600_000)
            path = root / "media" / "did" / f"bafkrei{n:08d}.jpg"
            path.write_bytes(rng.randbytes(size))
            os.utime(path, (written, written))
            rows.append((f"bafkrei{n:08d}", f"at://{DID}/app.bsky.feed.post/{n % posts:013d}", "image/jpeg",
                         f"did/{path.name}", size, "2025-01-01T00:00:00.000Z"))  # fmt: skip
            total += size
        db.executemany(
            "INSERT INTO media (hash, post_uri, mime_type, file_path, size_bytes, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
    return total


def disk_use(*folders: Path) -> int:
    """``du`` over ``folders`` together, in bytes."""
    out = subprocess.run(["du", "-s", "-c", "-B1", *map(str, folders)], capture_output=True, text=True, check=True)
    return int(out.stdout.splitlines()[-1].split()[0])


def data_used(mount: Path, fs: str) -> int:
    """Bytes of data blocks in use on the filesystem of ``mount``, everything written being on disk."""
    subprocess.run(["sync", "-f", str(mount)], check=True)
    if fs == "btrfs":
        usage = subprocess.run(["btrfs", "filesystem", "df", "-b", str(mount)], capture_output=True, text=True)
        line = next(line for line in usage.stdout.splitlines() if line.startswith("Data"))
        return int(line.rsplit("used=", 1)[1].split()[0])
    vfs = os.statvfs(mount)
    return (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize


def export(root: Path, exports: Path, settings: dict[str, object] | None, *, media: bool = True) -> tuple[float, Path]:
    """One ``skyarchive export --media`` (the plugin on with ``settings``, or off); its wall time with the sync
    that makes it durable, and its folder."""
    config = root / "bench.toml"
    table = "".join(f"{key} = {json.dumps(value)}\n" for key, value in (settings or {}).items())
    plugin = f'[plugins]\nenabled = ["export_batching"]\n[plugins.export_batching]\n{table}' if settings else ""
    config.write_text(f"media_dir = {json.dumps(str(root / 'media'))}\n{plugin}")
    command = [sys.executable, "-m", "skyarchive", "--config", str(config), "--db", f"sqlite:///{root / 'archive.db'}",
               "export", "--did", DID, "--format", "json", "--out", str(exports)] + ["--media"] * media  # fmt: skip
    subprocess.run(["sync", "-f", str(root)], check=True)
    time.sleep(1)  # a new second: a new export folder
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    if settings is None:
        subprocess.run(["sync", "-f", str(exports)], check=True)
    took = time.perf_counter() - started
    export_dir = Path(done.stdout.strip().splitlines()[-1])
    manifest = json.loads((export_dir / "manifest.json").read_text())
    if manifest["exporter"].startswith("export_batching") != (settings is not None):
        raise SystemExit(f"the wrong exporter ran: {manifest['exporter']}")
    return took, export_dir


def measure(root: Path, fs: str | None, repeat: int) -> Iterator[tuple[str, list[float], int, int | None]]:
    """Each kind of export, ``repeat`` times (host and plugin interleaved): its name, wall times, what ``du`` adds
    for it and, on ``fs``, the data blocks it adds (those of its last run)."""
    exports, plugin = root / "exports", dict[str, object](threshold=0)
    links: dict[str, object] = {**plugin, "link_unchanged_media": True}
    runs: dict[str, list[float]] = {}
    added: dict[str, tuple[int, int | None]] = {}
    kept: Path | None = None
    pair: list[tuple[str, dict[str, object] | None]] = [("host + sync", None), ("plugin", plugin)]
    plan = [run for n in range(repeat) for run in (pair if n % 2 == 0 else pair[::-1])]  # each goes first in turn
    for name, settings in plan + [("plugin, again, links", links), ("plugin, posts only", plugin)] * repeat:
        before = data_used(root, fs) if fs else None
        took, export_dir = export(root, exports, settings, media=name != "plugin, posts only")
        earlier = [kept] if kept is not None else []
        du = disk_use(*earlier, export_dir) - (disk_use(*earlier) if earlier else 0)
        runs.setdefault(name, []).append(took)
        added[name] = du, (data_used(root, fs) - before if fs and before is not None else None)
        if name == "plugin" and kept is None:
            kept = export_dir  # the one the links are made from
        else:
            shutil.rmtree(export_dir)
            subprocess.run(["sync", "-f", str(root)], check=True)  # its removal is not the next one's work
    for name, times in runs.items():
        yield name, times, *added[name]


@contextmanager
def loop_mounted(workdir: Path, fs: str) -> Iterator[Path]:
    """A fresh ``fs`` made on a sparse 4 GB image in ``workdir``, mounted on a loop device."""
    image, mount = workdir / f"{fs}.img", workdir / f"{fs}.mnt"
    image.unlink(missing_ok=True)
    subprocess.run(["truncate", "-s", "4G", str(image)], check=True)
    mkfs = ["mkfs.xfs", "-q", "-m", "reflink=1"] if fs == "xfs" else ["mkfs.btrfs", "-q"]
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    mount.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        image.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.media_reuse", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/skyarchive-media-bench"))
    parser.add_argument("--posts", type=int, default=2_000)
    parser.add_argument("--files", type=int, default=3_400)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each export (medians shown)")
    parser.add_argument("--no-cow", action="store_true", help="not on XFS and btrfs (they need root)")
    options = parser.parse_args(argv)
    workdir: Path = options.workdir
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    filesystems: list[str | None] = [None]
    if not options.no_cow and os.geteuid() == 0 and shutil.which("mkfs.xfs") and shutil.which("mkfs.btrfs"):
        filesystems += ["xfs", "btrfs"]
    print("| filesystem | export | wall time, median (runs) | disk use added (du) | data blocks added |")
    print("|---|---|---|---|---|")
    try:
        for fs in filesystems:
            with loop_mounted(workdir, fs) if fs else _here(workdir / "ext") as root:
                size = make_archive(root, posts=options.posts, files=options.files)
                kind = fs or subprocess.run(["findmnt", "-no", "FSTYPE", "-T", str(root)], capture_output=True,
                                            text=True, check=True).stdout.strip()  # fmt: skip
                for name, times, added, data in measure(root, fs, options.repeat):
                    runs = ", ".join(f"{t:.2f}" for t in times)
                    blocks = f"{data / 1e6:,.1f} MB ({data / size:.1%})" if data is not None else "—"
                    print(f"| {kind} | {name} | {statistics.median(times):.2f} s ({runs}) |"
                          f" {added / 1e6:,.1f} MB ({added / size:.1%}) | {blocks} |", flush=True)  # fmt: skip
        print(f"\n{options.posts:,} posts, {options.files:,} media files, {size / 1e6:,.0f} MB", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


@contextmanager
def _here(folder: Path) -> Iterator[Path]:
    folder.mkdir()
    yield folder


if __name__ == "__main__":
    raise SystemExit(main())
