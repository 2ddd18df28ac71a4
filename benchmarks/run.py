"""Benchmark the exports: ``python -m benchmarks.run [--backends sqlite,postgresql] [--million] [--repeat 3] ...``.

One loop: for each archive (backend and size; the media case), format and repeat, each contender taking part
runs once in a fresh subprocess under ``measure.py``, in an order rotated per repeat. Each skyarchive run is
checked: its manifest names the intended exporter, and its posts file (and media files) equal those of the
first skyarchive run of the same archive and format. Writes ``<out>/benchmark-results.{md,json}``, ``benchmark.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from export_batching_plugin.checksums import file_digest

from . import contenders as c
from .archives import DEFAULT_PG, BenchmarkError, Log, child_env, ensure_archive, files_in, probe_postgresql
from .chart import render_chart
from .report import Measurement, render_markdown, summarise

MEASURE = Path(__file__).with_name("measure.py")
RESULTS_MD, RESULTS_JSON, CHART_PNG = "benchmark-results.md", "benchmark-results.json", "benchmark.png"


@dataclass(frozen=True)
class Options:
    """What to measure and where to put it."""

    backends: tuple[str, ...] = c.BACKENDS
    sizes: tuple[int, ...] | None = None  # None: each backend's DEFAULT_SIZES
    million: bool = False
    formats: tuple[str, ...] = c.FORMATS
    contenders: tuple[str, ...] = tuple(c.BY_NAME)
    repeat: int = 1
    media_posts: int = c.DEFAULT_MEDIA_POSTS
    pg: str = DEFAULT_PG
    workdir: Path = Path(tempfile.gettempdir()) / "skyarchive-bench"
    out: Path = Path("docs")
    did: str = c.DEFAULT_DID

    def cases(self, backends: Sequence[str]) -> list[c.Case]:
        """The archives to measure on ``backends``: the sizes of each, then (SQLite) the media case."""
        cases: list[c.Case] = []
        for backend in (b for b in c.BACKENDS if b in backends):
            sizes = {*(self.sizes or c.DEFAULT_SIZES[backend]), *([c.MILLION] if self.million else [])}
            cases += [c.Case(backend, size) for size in sorted(sizes)]
            if backend == c.SQLITE and self.media_posts:
                cases.append(c.Case(c.SQLITE, self.media_posts, media=True))
        return cases


def names(text: str) -> tuple[str, ...]:
    """``"a, b,a"`` -> ``("a", "b")``."""
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def sizes(text: str) -> tuple[int, ...]:
    """``"5_000,500"`` -> ``(500, 5000)``."""
    return tuple(sorted({int(name) for name in names(text)}))


def parse_options(argv: Sequence[str]) -> Options:
    """``Options`` from the command line of ``python -m benchmarks.run``."""
    default_sizes = "; ".join(f"{b} {','.join(map(str, s))}" for b, s in c.DEFAULT_SIZES.items())
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--backends", type=names, default=Options.backends, help="sqlite,postgresql (default: both)")
    add("--sizes", type=sizes, help=f"archive sizes (posts) on every backend (default: {default_sizes})")
    add("--million", action="store_true", help="add a 1,000,000-post archive on every backend")
    add("--formats", type=names, default=Options.formats, help="json,csv (default: both)")
    add("--contenders", type=names, default=Options.contenders, help=f"some of {','.join(c.BY_NAME)} (default: all)")
    add("--repeat", type=int, default=Options.repeat, help="runs of each contender (median shown)")
    add("--media-posts", type=int, default=Options.media_posts, help="posts of the SQLite media case (0: none)")
    add("--pg", default=Options.pg, help=f"the PostgreSQL server: a libpq URL, no database (default: {DEFAULT_PG})")
    add("--workdir", type=Path, default=Options.workdir, help="archives and scratch exports")
    add("--out", type=Path, default=Options.out, help="folder for the results (default: docs)")
    options = Options(**vars(parser.parse_args(list(argv))))
    for option, allowed in (("backends", c.BACKENDS), ("formats", c.FORMATS), ("contenders", c.BY_NAME)):
        if not getattr(options, option) or not set(getattr(options, option)) <= set(allowed):
            parser.error(f"--{option}: choose among {','.join(allowed)}")
    if options.repeat < 1 or options.media_posts < 0 or min(options.sizes or [1]) < 1:
        parser.error("--repeat must be 1 or more, --media-posts 0 or more, and --sizes positive")
    return options


def select_contenders(requested: Sequence[str], backends: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """``({name: executable}, {name: why skipped})`` of the requested contenders that run on ``backends``."""
    found = {n: c.find_tool(c.BY_NAME[n].tool) for n in requested if set(c.BY_NAME[n].backends) & set(backends)}
    skipped = {n: f"{c.BY_NAME[n].tool} executable not found" for n, exe in found.items() if exe is None}
    return {n: exe for n, exe in found.items() if exe is not None}, skipped


def measure_command(
    command: Sequence[str], *, cwd: Path, stdout_path: Path, stderr_path: Path, report_path: Path
) -> tuple[dict[str, Any], float]:
    """Run ``command`` under ``measure.py``; return its report (see there) and the wall time seen from here."""
    wrapper = [sys.executable, "-I", "-S", str(MEASURE), "--report", str(report_path), "--", *command]
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        started = time.perf_counter()
        subprocess.run(wrapper, cwd=cwd, env=child_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err, check=False)
        outer = time.perf_counter() - started
    try:
        return json.loads(report_path.read_text(encoding="utf-8")), outer
    except (OSError, ValueError):
        raise BenchmarkError(f"no report from measure.py for {shlex.join(command)}: {tail(stderr_path)}") from None


def tail(path: Path, chars: int = 2000) -> str:
    """The end of a (log) file."""
    return path.read_text(encoding="utf-8", errors="replace").strip()[-chars:] if path.is_file() else ""


def folder_digest(folder: Path) -> tuple[str, int]:
    """``(sha256 over the sorted (relative name, sha256 of the file) pairs, number of files)`` of a folder."""
    files = files_in(folder)
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_digest(path)}\n".encode())
    return digest.hexdigest(), len(files)


def check_exporter(manifest: dict[str, Any], contender: c.Contender) -> str:
    """The manifest's "exporter"; raises BenchmarkError unless it is the one ``contender`` means to run."""
    exporter, expected = manifest.get("exporter"), contender.exporter or ""
    if not isinstance(exporter, str) or not exporter.startswith(expected):
        raise BenchmarkError(f"{contender.name}: the export was made by {exporter!r}, expected {expected}*")
    return exporter


def check_same(reference: Measurement, m: Measurement, where: str = "") -> None:
    """Raise BenchmarkError unless ``m`` wrote the same posts file and media files as ``reference``."""
    pairs = (("posts file", m.sha256, reference.sha256), ("media files", m.media_digest, reference.media_digest))
    for what, ours, theirs in pairs:
        if ours != theirs:
            raise BenchmarkError(
                f"{m.contender} ({m.backend}, {m.size:,} posts, {m.format}): {what} sha256 {ours} differs from "
                f"{reference.contender}'s {theirs} {where}".rstrip()
            )


def run_one(
    contender: c.Contender, exe: str, archive: c.Archive, fmt: str, repeat: int, options: Options,
    reference: Measurement | None,
) -> Measurement:  # fmt: skip
    """Run one contender once in a fresh subprocess, check what it wrote (against ``reference``), measure it."""
    case, skyarchive = archive.case, contender.is_skyarchive
    tag = f"{case.backend}-{case.size}{'-media' * case.media}-{fmt}-{contender.name}-r{repeat}"
    run_dir = options.workdir / "runs" / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    job = c.Job(archive=archive, fmt=fmt, did=options.did, out_dir=run_dir / "exports", config=run_dir / "config.toml")
    if skyarchive:
        job.config.write_text(c.config_text(contender, archive.media_dir), encoding="utf-8")
    stdout_path, stderr_path = run_dir / ("stdout.txt" if skyarchive else f"posts.{fmt}"), run_dir / "stderr.txt"
    report, outer = measure_command(contender.command(exe, job), cwd=run_dir, stdout_path=stdout_path,
                                    stderr_path=stderr_path, report_path=run_dir / "report.json")  # fmt: skip
    if report["exit_code"] != 0:
        raise BenchmarkError(f"{contender.name} exited {report['exit_code']} in {run_dir}: {tail(stderr_path)}")
    posts, exporter, media = stdout_path, None, None
    if skyarchive:  # the export folder is the last line printed
        export_dir = Path((stdout_path.read_text(encoding="utf-8", errors="replace").strip().splitlines() or ["."])[-1])
        try:
            manifest = json.loads((export_dir / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise BenchmarkError(f"{contender.name} wrote no readable manifest.json in {export_dir}") from None
        exporter = check_exporter(manifest, contender)
        posts, media = export_dir / f"posts.{fmt}", folder_digest(export_dir / "media") if case.media else None
        if media is not None and not media[1]:
            raise BenchmarkError(f"{contender.name} copied no media files in {run_dir}")
    if not posts.is_file() or posts.stat().st_size == 0:
        raise BenchmarkError(f"{contender.name} wrote no posts file at {posts}")
    m = Measurement(
        contender=contender.name, backend=case.backend, size=case.size, media=case.media, format=fmt, repeat=repeat,
        wall_s=report["wall_s"], vmhwm_mb=report["vmhwm_kb"] / 1024, ru_maxrss_mb=report["ru_maxrss_kb"] / 1024,
        floor_mb=report["floor_kb"] / 1024, outer_wall_s=outer, output_bytes=posts.stat().st_size,
        sha256=file_digest(posts), exporter=exporter, media_digest=media[0] if media else None,
        media_files=media[1] if media else None,
    )  # fmt: skip
    if reference is not None and skyarchive:
        check_same(reference, m, f"(kept in {run_dir})")
    shutil.rmtree(run_dir, ignore_errors=True)
    return m


def rotated(items: Sequence[str], by: int) -> list[str]:
    """``items`` rotated left by ``by``: each repeat starts with a different contender."""
    shift = by % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def warm_cache(archive: c.Archive) -> None:
    """Read a SQLite file and the media files once (on PostgreSQL the counts that checked the archive read it)."""
    paths = [Path(archive.location)] if archive.case.backend == c.SQLITE else []
    for path in [*paths, *files_in(archive.media_dir)]:
        with path.open("rb") as stream:
            while stream.read(1 << 20):
                pass


def run_benchmarks(
    options: Options, cases: Sequence[c.Case], runners: dict[str, str], *, log: Log,
    measurements: list[Measurement], archives: list[dict[str, Any]],
) -> None:  # fmt: skip
    """The loop over archives, formats, repeats and contenders; adds to ``measurements`` and (how each archive was
    made) ``archives`` as it goes."""
    for case in cases:
        archive, made = ensure_archive(case, workdir=options.workdir, did=options.did, python=sys.executable,
                                       pg=options.pg, log=log)  # fmt: skip
        archives.append(made)
        warm_cache(archive)
        for fmt in options.formats:
            taking_part = [name for name in runners if c.BY_NAME[name].takes_part(case, fmt)]
            reference: Measurement | None = None  # the first skyarchive run's output, which all others must equal
            for repeat in range(1, options.repeat + 1):
                for name in rotated(taking_part, repeat - 1):
                    m = run_one(c.BY_NAME[name], runners[name], archive, fmt, repeat, options, reference)
                    reference = reference or (m if m.exporter else None)
                    measurements.append(m)
                    log(f"  {m.backend:<10} {m.size:>9,}{'+media' * m.media:<6} {m.format:<4} r{repeat} {name:<12} "
                        f"{m.wall_s:8.3f} s {m.rss_mb:7.1f} MB {m.posts_per_s:>12,.0f} posts/s")  # fmt: skip


def versions(runners: dict[str, str], pg_version: str | None) -> dict[str, str | None]:
    """The versions of the host, the plugin, each tool run, and the PostgreSQL server and driver if used."""
    installed = {(dist.metadata["Name"] or "").lower(): dist.version for dist in metadata.distributions()}
    found = {name: installed.get(name) for name in ("skyarchive", "export-batching-plugin")}
    for tool, exe in {c.BY_NAME[name].tool: exe for name, exe in runners.items()}.items():
        if tool != "python":
            done = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
            version = re.search(r"\d+(?:\.\d+)+", done.stdout)
            found[tool] = version.group() if version else None
    return found | ({"PostgreSQL server": pg_version, "psycopg": installed.get("psycopg")} if pg_version else {})


def write_results(meta: dict[str, Any], measurements: Sequence[Measurement], out: Path, *, log: Log) -> list[Path]:
    """Write the Markdown, the JSON (every repeat) and, with matplotlib, the chart into ``out``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(measurements)
    document = {
        "meta": meta,
        "measurements": [{**asdict(m), "rss_mb": m.rss_mb, "posts_per_s": m.posts_per_s} for m in measurements],
        "rows": [asdict(row) for row in summary.rows],
        "derived": [{**asdict(f), "met": f.met} for f in summary.figures],
    }
    (out / RESULTS_MD).write_text(render_markdown(meta, summary), encoding="utf-8")
    (out / RESULTS_JSON).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    why_not = render_chart(summary.rows, out / CHART_PNG)
    if why_not is not None:
        log(f"chart skipped: {why_not}")
    return [out / RESULTS_MD, out / RESULTS_JSON, *([out / CHART_PNG] if why_not is None else [])]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    options = parse_options(args)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    backends, skipped, pg_version = list(options.backends), {}, None
    if c.POSTGRESQL in backends:
        try:
            pg_version = probe_postgresql(options.pg)
        except BenchmarkError as exc:
            backends.remove(c.POSTGRESQL)
            skipped[c.POSTGRESQL] = str(exc)
    runners, skipped_contenders = select_contenders(options.contenders, backends)
    for name, reason in (skipped := skipped | skipped_contenders).items():
        log(f"skipping {name}: {reason}")
    cases = options.cases(backends)
    if not cases or not runners:
        log("nothing to measure")
        return 1
    measurements: list[Measurement] = []
    archives: list[dict[str, Any]] = []
    failed: str | None = None
    try:
        run_benchmarks(options, cases, runners, log=log, measurements=measurements, archives=archives)
    except BenchmarkError as exc:
        failed = str(exc)
        log(f"benchmark failed: {failed}")
    meta = {
        "command": shlex.join(["python", "-m", "benchmarks.run", *args]), "date": date,
        "python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "versions": versions(runners, pg_version), "formats": list(options.formats), "repeat": options.repeat,
        "contenders": list(runners), "skipped": skipped, "archives": archives, "failed": failed,
    }  # fmt: skip
    for path in write_results(meta, measurements, options.workdir / "failed-run" if failed else options.out, log=log):
        log(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
