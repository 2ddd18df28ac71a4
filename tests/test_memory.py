"""Memory does not grow with the archive: peak RSS in a subprocess, and tracemalloc at 10k vs 100k posts."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import simplejson
from skyarchive.models import media_table, posts_table
from skyarchive.seed import seed_archive

from .harness import export, insert_rows, make_engine, media_row, post_row

pytestmark = pytest.mark.slow  # 100k-post archives, subprocesses measured

SMALL, LARGE = "did:plc:smallarchive", "did:plc:largearchive"

# VmHWM: the peak RSS of this process's own address space. (ru_maxrss is not it:
# Linux carries the parent's high-water mark across fork and exec.)
PEAK_RSS = textwrap.dedent(
    """
    import sys
    from skyarchive.cli import main
    code = main(sys.argv[1:])
    with open("/proc/self/status") as status:
        peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(code, peak_kb // 1024, file=sys.stderr)
    """
)


linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")


@pytest.fixture(scope="module")
def archives_10k_100k(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Any]]:
    root = tmp_path_factory.mktemp("memory")
    engine = make_engine(root / "archive.db")
    for did, posts in ((SMALL, 10_000), (LARGE, 100_000)):
        seed_archive(engine, posts_table, media_table, posts=posts, did=did, media_every=0, media_dir=root / "media")
    yield root, engine
    engine.dispose()


def peak_rss_mb(root: Path, config: str, fmt: str) -> int:
    (root / f"{config}.toml").write_text(
        '[plugins]\nenabled = ["export_batching"]\n' if config == "plugin" else "", encoding="utf-8"
    )
    args = ["--config", f"{config}.toml", "--db", f"sqlite:///{root / 'archive.db'}", "export", "--did", LARGE]
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *args, "--format", fmt, "--out", str(root / f"out-{config}-{fmt}")],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    code, rss = done.stderr.strip().splitlines()[-1].split()
    assert code == "0", done.stderr
    return int(rss)


@linux_only
@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_peak_rss_of_100k_posts_is_far_below_the_hosts(archives_10k_100k: tuple[Path, Any], fmt: str) -> None:
    root, _ = archives_10k_100k
    plugin = peak_rss_mb(root, "plugin", fmt)
    host = peak_rss_mb(root, "host", fmt)
    print(f"peak RSS, 100k posts, {fmt}: plugin {plugin} MB, host {host} MB")
    assert plugin < 120, f"plugin peak RSS {plugin} MB"
    assert plugin * 3 < host, f"plugin {plugin} MB is not well under the host's {host} MB"
    posts = "posts.json" if fmt == "json" else "posts.csv"
    (plugin_file,) = (root / f"out-plugin-{fmt}").glob(f"*/*/{posts}")
    (host_file,) = (root / f"out-host-{fmt}").glob(f"*/*/{posts}")
    assert plugin_file.read_bytes() == host_file.read_bytes()


def traced_peak(engine: Any, out: Path, did: str, *, media_dir: Path | None = None, **settings: Any) -> int:
    tracemalloc.start()
    try:
        outcome = export(
            engine, out, settings={"threshold": 0, **settings}, did=did, read_posts=False,
            media=media_dir is not None, media_dir=media_dir,
        )  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert outcome.error is None, outcome.error
    return peak


def test_python_memory_is_the_same_at_10k_and_100k_posts(archives_10k_100k: tuple[Path, Any], tmp_path: Path) -> None:
    _, engine = archives_10k_100k
    small = traced_peak(engine, tmp_path / "small", SMALL)
    large = traced_peak(engine, tmp_path / "large", LARGE)
    print(f"tracemalloc peak: 10k posts {small / 2**20:.1f} MiB, 100k posts {large / 2**20:.1f} MiB")
    assert large < small * 1.3 + 2**20


def test_two_megabyte_posts_stay_within_the_byte_budget(tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "huge.db")
    blob = simplejson.dumps({"external": {"description": "é" * (2 << 20)}}, ensure_ascii=False)
    insert_rows(engine, [post_row(n, embed_type="external", embed_data=blob) for n in range(40)])
    bounded = traced_peak(engine, tmp_path / "bounded", "did:plc:owner")
    unbounded = traced_peak(engine, tmp_path / "unbounded", "did:plc:owner", max_batch_bytes=2**40)
    engine.dispose()
    mib = 2**20
    print(f"tracemalloc peak, 40 posts of 2 MiB: 16 MiB budget {bounded / mib:.0f} MiB, none {unbounded / mib:.0f} MiB")
    assert bounded < 128 * 2**20
    assert unbounded > 2 * bounded, "the budget should be what keeps memory down"


def test_python_memory_does_not_grow_with_the_media_rows(tmp_path: Path) -> None:
    """The selection's media rows are spooled to disk and handed to the copiers from there: ten times the
    rows, the same peak.

    Every row takes the whole path (listed, spooled, dispatched, given to skyarchive's copy_media_file,
    counted) but copies nothing (its file is missing: fast, and no copy's read buffer in the peak), and
    the warnings are not logged (pytest would keep every record). Each size is exported twice
    and the lower peak kept: a one-time growth of a process-wide table (Python's dict of interned strings,
    3.7 MiB, measured, which pathlib in copy_media_file adds to) lands in one run of the two at most.
    """
    peaks = {}
    for count in (1_000, 10_000):
        root = tmp_path / f"media-{count}"
        (root / "media").mkdir(parents=True)
        posts = [post_row(n, has_media=True) for n in range(10)]
        engine = make_engine(root / "a.db")
        rows = [media_row(f"h{n}", posts[n % 10], f"{n:05d}-{'m' * 60}.jpg") for n in range(count)]
        insert_rows(engine, posts, rows)
        logging.disable(logging.WARNING)
        try:
            peaks[count] = min(
                traced_peak(engine, root / "out", "did:plc:owner", media_dir=root / "media") for _ in range(2)
            )
        finally:
            logging.disable(logging.NOTSET)
        engine.dispose()
        manifests = list((root / "out").glob("*/*/*/manifest.json"))
        assert len(manifests) == 2
        assert all(simplejson.loads(m.read_text(encoding="utf-8"))["media_skipped"] == count for m in manifests)
    mib = 2**20
    print(f"tracemalloc peak: 1,000 media rows {peaks[1_000] / mib:.1f} MiB, 10,000 {peaks[10_000] / mib:.1f} MiB")
    assert peaks[10_000] < peaks[1_000] * 1.3 + mib
