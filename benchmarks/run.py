"""Benchmark the exports: ``python -m benchmarks.run [--sizes 500,5000,50000,100000] [--million] ...``.

For each archive size (one seeded SQLite archive per size, reused from the work folder), each format
and each repeat, every contender runs once in its own fresh subprocess, in an order rotated per
repeat so that noise spreads evenly:

- ``host``: ``skyarchive export`` with an empty config file (the host's in-memory exporter);
- ``plugin``: ``skyarchive export`` with the export_batching plugin on for every export;
- ``sqlite-utils``: ``sqlite-utils query DB SQL`` (``--csv`` for CSV), stdout to a file, if installed;
- ``sqlite3``: ``sqlite3 -json DB SQL``, stdout to a file, JSON only (the floor), if installed.

Each is run under ``benchmarks/measure.py``, which reports its wall time and peak RSS. The host's
and the plugin's exports are checked: the manifest names the intended exporter, and the plugin's
posts file is byte-identical to the host's. Results go to ``<out>/benchmark-results.md``,
``<out>/benchmark-results.json`` and ``<out>/benchmark.png`` (if matplotlib is installed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .chart import render_chart
from .contenders import (
    CONFIG_TEXT,
    CONTENDERS,
    DEFAULT_DID,
    EXPECTED_EXPORTER,
    FORMATS,
    SKYARCHIVE_CONTENDERS,
    Tools,
    build_command,
    find_tools,
    seed_command,
    select_contenders,
    supports,
)
from .report import MB, Measurement, Meta, build_rows, render_markdown, rss_spreads, scaling_figures

DEFAULT_SIZES = (500, 5_000, 50_000, 100_000)
MILLION = 1_000_000
MEASURE = Path(__file__).with_name("measure.py")
RESULTS_MD, RESULTS_JSON, CHART_PNG = "benchmark-results.md", "benchmark-results.json", "benchmark.png"

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default log: say nothing."""


class BenchmarkError(Exception):
    """A run that failed or did not take the intended path: the results would be wrong."""


@dataclass(frozen=True)
class Options:
    """What to measure and where to put it."""

    sizes: tuple[int, ...] = DEFAULT_SIZES
    formats: tuple[str, ...] = FORMATS
    repeat: int = 1
    workdir: Path = Path(tempfile.gettempdir()) / "skyarchive-bench"
    out: Path = Path("docs")
    contenders: tuple[str, ...] = CONTENDERS
    did: str = DEFAULT_DID


@dataclass(frozen=True)
class WrapperReport:
    """What ``measure.py`` reported for one command."""

    wall_s: float
    vmhwm_kb: int
    ru_maxrss_kb: int
    floor_kb: int
    exit_code: int

    @property
    def rss_mb(self) -> float:
        """The peak RSS of the command: max(polled VmHWM, its own ru_maxrss), in MB."""
        return max(self.vmhwm_kb, self.ru_maxrss_kb) * 1024 / MB


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"500,5000"`` -> ``(500, 5000)``, sorted and deduplicated; each size must be positive."""
    try:
        sizes = sorted({int(part.replace("_", "")) for part in _csv_list(text)})
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be integers: {text!r}") from None
    if not sizes or sizes[0] <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers: {text!r}")
    return tuple(sizes)


def parse_formats(text: str) -> tuple[str, ...]:
    """``"json,csv"`` -> ``("json", "csv")``."""
    formats = tuple(dict.fromkeys(_csv_list(text)))
    bad = [f for f in formats if f not in FORMATS]
    if not formats or bad:
        raise argparse.ArgumentTypeError(f"formats must be among {', '.join(FORMATS)}: {text!r}")
    return formats


def parse_contenders(text: str) -> tuple[str, ...]:
    """``"host,plugin"`` -> ``("host", "plugin")``."""
    names = tuple(dict.fromkeys(_csv_list(text)))
    bad = [n for n in names if n not in CONTENDERS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"contenders must be among {', '.join(CONTENDERS)}: {text!r}")
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.run``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES, help="archive sizes (posts)")
    parser.add_argument("--million", action="store_true", help="add a 1,000,000-post archive")
    parser.add_argument("--formats", type=parse_formats, default=FORMATS, help="json,csv")
    parser.add_argument("--repeat", type=_positive, default=1, help="runs of each contender (median shown)")
    parser.add_argument("--workdir", type=Path, default=Options.workdir, help="archives and scratch exports")
    parser.add_argument("--out", type=Path, default=Options.out, help="folder for the results (default: docs)")
    parser.add_argument(
        "--contenders", type=parse_contenders, default=CONTENDERS, help=f"subset of {','.join(CONTENDERS)}"
    )
    return parser


def parse_options(argv: Sequence[str]) -> Options:
    """``Options`` from the command line."""
    args = build_parser().parse_args(list(argv))
    sizes = tuple(sorted({*args.sizes, MILLION})) if args.million else args.sizes
    return Options(
        sizes=sizes,
        formats=args.formats,
        repeat=args.repeat,
        workdir=args.workdir,
        out=args.out,
        contenders=args.contenders,
    )


def child_env() -> dict[str, str]:
    """The environment of every command: ours, less a config file that --config would not override anyway."""
    env = dict(os.environ)
    env.pop("SKYARCHIVE_CONFIG", None)
    return env


def count_posts(db: Path, did: str) -> tuple[int, int] | None:
    """``(all posts, posts of did)`` in the archive, or None when it is missing or unreadable."""
    if not db.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            total = conn.execute("SELECT count(*) FROM posts").fetchone()[0]
            mine = conn.execute("SELECT count(*) FROM posts WHERE did = ?", (did,)).fetchone()[0]
    except sqlite3.Error:
        return None
    return int(total), int(mine)


def write_configs(config_dir: Path) -> None:
    """One config file per skyarchive contender: ``host.toml`` (empty) and ``plugin.toml``."""
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in SKYARCHIVE_CONTENDERS:
        (config_dir / f"{name}.toml").write_text(CONFIG_TEXT[name], encoding="utf-8")


def ensure_archive(size: int, *, workdir: Path, tools: Tools, did: str, log: Log = _quiet) -> Path:
    """The archive of ``size`` posts of ``did`` in ``workdir``: reused when its counts are right, else seeded."""
    db = workdir / f"archive-{size}.db"
    if count_posts(db, did) == (size, size):
        log(f"archive {db} ({size:,} posts): reused")
        return db
    partial = workdir / f"archive-{size}.partial.db"
    for stale in (db, partial):
        stale.unlink(missing_ok=True)
    log(f"archive {db} ({size:,} posts): seeding")
    started = time.perf_counter()
    command = seed_command(tools=tools, db=partial, config=workdir / "config" / "host.toml", posts=size, did=did)
    done = subprocess.run(command, cwd=workdir, env=child_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"seeding {size} posts failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    os.replace(partial, db)
    log(f"archive {db}: seeded in {time.perf_counter() - started:.1f} s")
    return db


def warm_cache(path: Path) -> None:
    """Read the whole file once, so that no contender pays for the first read from disk."""
    with path.open("rb") as stream:
        while stream.read(1 << 20):
            pass


def measure_command(
    command: Sequence[str], *, cwd: Path, stdout_path: Path, stderr_path: Path, report_path: Path
) -> tuple[WrapperReport, float]:
    """Run ``command`` under ``measure.py``; return its report and the wall time seen from here."""
    wrapper = [sys.executable, "-I", "-S", str(MEASURE), "--report", str(report_path), "--", *command]
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        started = time.perf_counter()
        subprocess.run(wrapper, cwd=cwd, env=child_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err, check=False)
        outer = time.perf_counter() - started
    try:
        data = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise BenchmarkError(f"no report from measure.py for {shlex.join(command)}: {_tail(stderr_path)}") from None
    return WrapperReport(**data), outer


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()[-chars:]
    except OSError:
        return ""


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_dir_from_stdout(stdout_text: str) -> Path:
    """The export directory: the last line that ``skyarchive export`` printed."""
    lines = stdout_text.strip().splitlines()
    if not lines:
        raise BenchmarkError("skyarchive export printed nothing on stdout")
    return Path(lines[-1].strip())


def check_exporter(manifest: dict[str, Any], contender: str) -> str:
    """The manifest's "exporter"; raises BenchmarkError unless it is the one ``contender`` means to run."""
    exporter = manifest.get("exporter")
    expected = EXPECTED_EXPORTER[contender]
    if not isinstance(exporter, str) or not exporter.startswith(expected):
        raise BenchmarkError(f"{contender}: the export was made by {exporter!r}, expected {expected}*")
    return exporter


def posts_output(contender: str, *, fmt: str, stdout_path: Path) -> tuple[Path, str | None]:
    """The posts file a run wrote, and for skyarchive contenders the checked exporter name."""
    if contender not in SKYARCHIVE_CONTENDERS:
        return stdout_path, None
    export_dir = export_dir_from_stdout(stdout_path.read_text(encoding="utf-8", errors="replace"))
    manifest = json.loads((export_dir / "manifest.json").read_text(encoding="utf-8"))
    return export_dir / f"posts.{fmt}", check_exporter(manifest, contender)


@dataclass(frozen=True)
class Case:
    """One archive, format and repeat: the fixed part of every contender's run."""

    size: int
    fmt: str
    repeat: int
    db: Path
    did: str
    tools: Tools
    workdir: Path


def run_one(contender: str, case: Case) -> Measurement:
    """Run one contender once in a fresh subprocess, check what it wrote, and measure it."""
    run_dir = case.workdir / "runs" / f"{case.size}-{case.fmt}-{contender}-r{case.repeat}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    command = build_command(
        contender, tools=case.tools, db=case.db, fmt=case.fmt, did=case.did,
        out_dir=run_dir / "exports", config_dir=case.workdir / "config",
    )  # fmt: skip
    stdout_path = run_dir / ("stdout.txt" if contender in SKYARCHIVE_CONTENDERS else f"posts.{case.fmt}")
    stderr_path = run_dir / "stderr.txt"
    report, outer = measure_command(
        command, cwd=run_dir, stdout_path=stdout_path, stderr_path=stderr_path, report_path=run_dir / "report.json"
    )
    if report.exit_code != 0:
        raise BenchmarkError(f"{contender} exited {report.exit_code}: {_tail(stderr_path)}")
    posts_path, exporter = posts_output(contender, fmt=case.fmt, stdout_path=stdout_path)
    if not posts_path.is_file() or posts_path.stat().st_size == 0:
        raise BenchmarkError(f"{contender} wrote no posts file at {posts_path}")
    measurement = Measurement(
        contender=contender, size=case.size, format=case.fmt, repeat=case.repeat,
        wall_s=report.wall_s, rss_mb=report.rss_mb, vmhwm_mb=report.vmhwm_kb / 1024,
        ru_maxrss_mb=report.ru_maxrss_kb / 1024, floor_mb=report.floor_kb / 1024, outer_wall_s=outer,
        output_bytes=posts_path.stat().st_size, sha256=sha256_file(posts_path), exporter=exporter,
    )  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)
    return measurement


def rotated(items: Sequence[str], by: int) -> list[str]:
    """``items`` rotated left by ``by``: each repeat starts with a different contender."""
    if not items:
        return []
    shift = by % len(items)
    return [*items[shift:], *items[:shift]]


def describe(m: Measurement) -> str:
    """One progress line."""
    return (
        f"  {m.size:>9,} {m.format:<4} r{m.repeat} {m.contender:<12} {m.wall_s:8.3f} s "
        f"{m.rss_mb:7.1f} MB {m.posts_per_s:>12,.0f} posts/s"
    )


def run_benchmarks(
    options: Options, *, tools: Tools, contenders: Sequence[str], log: Log = _quiet
) -> list[Measurement]:
    """Measure every contender on every size, format and repeat; return the raw measurements."""
    options.workdir.mkdir(parents=True, exist_ok=True)
    write_configs(options.workdir / "config")
    measurements: list[Measurement] = []
    for size in options.sizes:
        db = ensure_archive(size, workdir=options.workdir, tools=tools, did=options.did, log=log)
        warm_cache(db)
        for fmt in options.formats:
            runnable = [c for c in contenders if supports(c, fmt)]
            for repeat in range(1, options.repeat + 1):
                case = Case(size=size, fmt=fmt, repeat=repeat, db=db, did=options.did, tools=tools,
                            workdir=options.workdir)  # fmt: skip
                for contender in rotated(runnable, repeat - 1):
                    measurement = run_one(contender, case)
                    measurements.append(measurement)
                    log(describe(measurement))
    return measurements


def _tool_version(command: Sequence[str], *, last_word: bool) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = done.stdout.split()
    if done.returncode != 0 or not words:
        return None
    return words[-1] if last_word else words[0]


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect_meta(
    options: Options, *, argv: Sequence[str], tools: Tools, contenders: Sequence[str], skipped: dict[str, str]
) -> Meta:
    """The run's description: command line, date, interpreter, CPU count, versions."""
    return Meta(
        command=shlex.join(["python", "-m", "benchmarks.run", *argv]),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        python=platform.python_version(),
        platform=platform.platform(),
        cpu_count=os.cpu_count(),
        host_version=_package_version("skyarchive"),
        plugin_version=_package_version("export-batching-plugin"),
        sqlite3_version=_tool_version([tools.sqlite3, "--version"], last_word=False) if tools.sqlite3 else None,
        sqlite_utils_version=(
            _tool_version([tools.sqlite_utils, "--version"], last_word=True) if tools.sqlite_utils else None
        ),
        sizes=list(options.sizes),
        formats=list(options.formats),
        repeat=options.repeat,
        contenders=list(contenders),
        skipped=dict(skipped),
    )


def results_document(meta: Meta, measurements: Sequence[Measurement]) -> dict[str, Any]:
    """Everything in ``benchmark-results.json``: the raw measurements of every repeat, the rows, the figures."""
    rows = build_rows(measurements)
    return {
        "meta": asdict(meta),
        "measurements": [m.to_dict() for m in measurements],
        "rows": [asdict(row) for row in rows],
        "derived": {
            "scaling": [asdict(s) for s in scaling_figures(rows)],
            "rss_spread": [asdict(s) for s in rss_spreads(rows)],
        },
    }


def write_results(meta: Meta, measurements: Sequence[Measurement], out: Path, *, log: Log = _quiet) -> list[Path]:
    """Write the Markdown, the JSON and (with matplotlib) the chart into ``out``; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    md_path, json_path, png_path = out / RESULTS_MD, out / RESULTS_JSON, out / CHART_PNG
    md_path.write_text(render_markdown(meta, measurements), encoding="utf-8")
    json_path.write_text(json.dumps(results_document(meta, measurements), indent=2) + "\n", encoding="utf-8")
    written = [md_path, json_path]
    why_not = render_chart(measurements, png_path)
    if why_not is None:
        written.append(png_path)
    else:
        log(f"chart skipped: {why_not}")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    options = parse_options(args)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    tools = find_tools()
    contenders, skipped = select_contenders(options.contenders, tools)
    for name, reason in skipped.items():
        log(f"skipping {name}: {reason}")
    meta = collect_meta(options, argv=args, tools=tools, contenders=contenders, skipped=skipped)
    try:
        measurements = run_benchmarks(options, tools=tools, contenders=contenders, log=log)
    except BenchmarkError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    for path in write_results(meta, measurements, options.out, log=log):
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
