"""Benchmark the exports: ``python -m benchmarks.run [--backends sqlite,postgresql] [--million] [--repeat 3] ...``.

One loop: for each archive (backend, size and layout; the media case), page-cache state, format and repeat, each
contender taking part runs once on each of its disks (the slow one with ``--slow-disk``) in a fresh subprocess
under ``measure.py``, in an order rotated per repeat. Around each run the harness makes the cache state (a cold
run drops the SQLite archive from the page cache first), runs the archiver beside skyarchive (``--archiver``,
SQLite) and polls PostgreSQL's transactions (observe.py). Each skyarchive run is checked: its manifest names the
intended exporter, and its posts file (and media files) equal those of the first skyarchive run of the same
archive and format, whatever the cache and the disk (but plugin-empty's, which exports nothing). Writes
``<out>/benchmark-results.{md,json}``, ``benchmark.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import py_compile
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from export_batching_plugin.checksums import file_digest

from . import contenders as c
from . import slowdisk
from .archiver import ArchiverFailed, ArchiverReport, start_archiver, stop_archiver
from .archives import DEFAULT_PG, BenchmarkError, Log, child_env, ensure_archive, files_in, probe_postgresql
from .chart import render_chart
from .observe import PgTransactions, archiver_window, evict, read_through, resident_fraction, sqlite_files
from .report import Measurement, render_markdown, summarise

MEASURE = Path(__file__).with_name("measure.py")
RESULTS_MD, RESULTS_JSON, CHART_PNG = "benchmark-results.md", "benchmark-results.json", "benchmark.png"
#: A cold run needs at most this fraction of the SQLite file cached after the eviction (the archiver, running
#: beside it, may have read a few pages back); a warm run at least this much, else the file is read again.
COLD_MAX, WARM_MIN = 0.25, 0.99
T = TypeVar("T")


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
    layouts: tuple[str, ...] = (c.SEEDED,)
    caches: tuple[str, ...] = (c.WARM,)
    slow_disk: float = 0.0  # ms per write call; 0: no slow disk
    slow_disk_cases: tuple[str, ...] = ()  # where the slow disk runs (see case_filter); empty: everywhere
    archiver: bool = False

    def cases(self, backends: Sequence[str]) -> list[c.Case]:
        """The archives to measure on ``backends``: the sizes of each in each layout, then (SQLite) the media case."""
        cases: list[c.Case] = []
        layouts = [layout for layout in c.LAYOUTS if layout in self.layouts]
        for backend in (b for b in c.BACKENDS if b in backends):
            sizes = {*(self.sizes or c.DEFAULT_SIZES[backend]), *([c.MILLION] if self.million else [])}
            cases += [c.Case(backend, size, layout=layout) for size in sorted(sizes) for layout in layouts]
            if backend == c.SQLITE and self.media_posts:
                cases.append(c.Case(c.SQLITE, self.media_posts, media=True))
        return cases

    def caches_of(self, case: c.Case) -> list[str]:
        """The page-cache states ``case`` runs in: PostgreSQL's warm only (see observe.py)."""
        return [cache for cache in c.CACHES if cache in self.caches and (cache == c.WARM or case.backend == c.SQLITE)]

    def disks_of(self, case: c.Case, cache: str) -> list[str]:
        """The disks ``case`` is exported to in ``cache``: the normal one, and with ``--slow-disk`` the slow one (where
        ``--slow-disk-cases`` says)."""
        return [c.NORMAL, *[c.SLOW] * (self.slow_disk > 0 and matches(self.slow_disk_cases, case, cache))]

    def plan(self, case: c.Case, cache: str, fmt: str, runners: Sequence[str]) -> list[tuple[str, str]]:
        """The runs of one repeat on ``case`` in ``cache`` and ``fmt``: ``(contender, disk)``, in CONTENDERS order."""
        disks = self.disks_of(case, cache)
        return [(name, disk) for name in runners if c.BY_NAME[name].takes_part(case, fmt)
                for disk in c.BY_NAME[name].disks if disk in disks]  # fmt: skip


def names(text: str) -> tuple[str, ...]:
    """``"a, b,a"`` -> ``("a", "b")``."""
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def sizes(text: str) -> tuple[int, ...]:
    """``"5_000,500"`` -> ``(500, 5000)``."""
    return tuple(sorted({int(name) for name in names(text)}))


#: The values a case filter may name, by dimension (sizes are the numbers).
FACETS = (c.BACKENDS, c.LAYOUTS, c.CACHES)


def case_filter(text: str) -> tuple[str, ...]:
    """``"sqlite, 100_000,warm"`` -> ``("sqlite", "100000", "warm")``: backends, sizes, layouts and cache states."""
    return tuple(v if any(v in facet for facet in FACETS) else str(int(v)) for v in names(text))


def matches(named: Sequence[str], case: c.Case, cache: str) -> bool:
    """Whether ``case`` in ``cache`` is one ``named`` (a case_filter) picks: in each dimension it names, one of the
    values it names; a dimension it does not name picks every value."""
    facets = [(set(facet), value) for facet, value in zip(FACETS, (case.backend, case.layout, cache), strict=True)]
    facets.append(({v for v in named if v.isdigit()}, str(case.size)))
    return all(value in named or not (domain & set(named)) for domain, value in facets if domain)


def milliseconds(text: str) -> float:
    """A finite number of milliseconds, 0 or more."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


def parse_options(argv: Sequence[str]) -> Options:
    """``Options`` from the command line of ``python -m benchmarks.run``."""
    default_sizes = "; ".join(f"{b} {','.join(map(str, s))}" for b, s in c.DEFAULT_SIZES.items())
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--backends", type=names, default=Options.backends, help="sqlite,postgresql (default: both)")
    add("--sizes", type=sizes, help=f"archive sizes (posts) on every backend (default: {default_sizes})")
    add("--million", action="store_true", help="add a 1,000,000-post archive on every backend")
    add("--formats", type=names, default=Options.formats, help="json,csv,jsonl (default: all)")
    add("--contenders", type=names, default=Options.contenders, help=f"some of {','.join(c.BY_NAME)} (default: all)")
    add("--repeat", type=int, default=Options.repeat, help="runs of each contender (median shown)")
    add("--media-posts", type=int, default=Options.media_posts, help="posts of the SQLite media case (0: none)")
    add("--layouts", type=names, default=Options.layouts,
        help="seeded,oldest-first: as seeded (newest post first), and/or the same posts (every 4th without an "
             "embed given images) inserted oldest first, as an archiver appends them (default: seeded)")  # fmt: skip
    add("--cache", dest="caches", type=names, default=Options.caches, metavar="CACHE",
        help="warm,cold: the archive in the page cache, or dropped from it right before each run (SQLite only; "
             "default: warm)")  # fmt: skip
    add("--slow-disk", type=milliseconds, default=Options.slow_disk, metavar="MS",
        help="also run host, plugin and plugin-checksums with their export folder on a disk slowed by MS ms per "
             "write call (slowdisk.py; the peers write to stdout, which it cannot slow; default 0: off)")  # fmt: skip
    add("--slow-disk-cases", type=case_filter, default=(), metavar="WHERE",
        help="where the slow disk runs: backends, sizes, layouts and cache states, e.g. sqlite,100000 (a dimension "
             "not named: all of it; default: everywhere)")  # fmt: skip
    add("--archiver", action="store_true",
        help="during every skyarchive run on SQLite, run benchmarks/archiver.py beside it (a post every 0.1 s, "
             f"as {c.ARCHIVER_DID}) and count its errors and waits")  # fmt: skip
    add("--pg", default=Options.pg, help=f"the PostgreSQL server: a libpq URL, no database (default: {DEFAULT_PG})")
    add("--workdir", type=Path, default=Options.workdir, help="archives and scratch exports")
    add("--out", type=Path, default=Options.out, help="folder for the results (default: docs)")
    options = Options(**vars(parser.parse_args(list(argv))))
    lists = (("backends", c.BACKENDS), ("formats", c.FORMATS), ("contenders", c.BY_NAME), ("layouts", c.LAYOUTS),
             ("caches", c.CACHES))  # fmt: skip
    for option, allowed in lists:
        if not getattr(options, option) or not set(getattr(options, option)) <= set(allowed):
            parser.error(f"--{option.replace('caches', 'cache')}: choose among {','.join(allowed)}")
    if options.repeat < 1 or options.media_posts < 0 or min(options.sizes or [1]) < 1:
        parser.error("--repeat must be 1 or more, --media-posts 0 or more, and --sizes positive")
    return options


def select_contenders(requested: Sequence[str], backends: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """``({name: executable}, {name: why skipped})`` of the requested contenders that run on ``backends``."""
    found = {n: c.find_tool(c.BY_NAME[n].tool) for n in requested if set(c.BY_NAME[n].backends) & set(backends)}
    skipped = {n: f"{c.BY_NAME[n].tool} executable not found" for n, exe in found.items() if exe is None}
    return {n: exe for n, exe in found.items() if exe is not None}, skipped


def compiled_measure(cache: Path | None = None) -> Path:
    """measure.py as bytecode, compiled once per version of its source into ``cache`` (default
    ``$TMPDIR/export-batching-measure``).

    Run compiled, it spawns the command from a smaller process: compiling a script peaks above what running it
    holds, and that peak would be the floor of every command's ru_maxrss (9.3 MB instead of 8.5 MB here).
    """
    source = MEASURE.read_bytes()
    folder = cache or Path(tempfile.gettempdir()) / "export-batching-measure"
    target = folder / f"measure-{sys.implementation.cache_tag}-{hashlib.sha256(source).hexdigest()[:16]}.pyc"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        py_compile.compile(str(MEASURE), cfile=str(partial), doraise=True)
        os.replace(partial, target)
    return target


def measure_command(
    command: Sequence[str], *, cwd: Path, stdout_path: Path, stderr_path: Path, report_path: Path,
    env: dict[str, str] | None = None, sqlite_lock: Path | None = None,
) -> tuple[dict[str, Any], float]:  # fmt: skip
    """Run ``command`` under ``measure.py`` (in ``env``, default child_env(); watching ``sqlite_lock``'s SHARED lock);
    return its report (see there) and the wall time seen from here."""
    lock = ["--sqlite-lock", str(sqlite_lock)] if sqlite_lock is not None else []
    wrapper = [sys.executable, "-I", "-S", str(compiled_measure()), "--report", str(report_path), *lock, "--", *command]
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        started = time.perf_counter()
        subprocess.run(wrapper, cwd=cwd, env=child_env() if env is None else env, stdin=subprocess.DEVNULL, stdout=out,
                       stderr=err, check=False)  # fmt: skip
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


def prepare_cache(archive: c.Archive, cache: str) -> float | None:
    """Make the SQLite archive's page-cache state ``cache``; return the fraction of its file then cached (None: not
    known). Cold: drop the archive's files (and media files) from the page cache; raises BenchmarkError if the
    file stays cached. Warm: read it again if some of it has left the cache (an earlier cold run's doing)."""
    db = Path(archive.location)
    if cache == c.COLD:
        evict([*sqlite_files(db), *files_in(archive.media_dir)])
        resident = resident_fraction(db)
        if resident is not None and resident > COLD_MAX:
            raise BenchmarkError(
                f"{db}: {resident:.0%} of it is still in the page cache after it was dropped (a filesystem that "
                f"keeps its pages, such as tmpfs?): no cold run is possible in this --workdir"
            )
        return resident
    resident = resident_fraction(db)
    if resident is not None and resident < WARM_MIN:
        warm_cache(archive)
        resident = resident_fraction(db)
    return resident


def watch_archiver(process: Any, path: Path, started: float, ended: float) -> dict[str, Any]:
    """Stop the archiver and return the measurement's archiver fields for the window ``started``-``ended``
    (monotonic); raises BenchmarkError if its rows were not all removed (the archive must stay complete)."""
    result: ArchiverReport = stop_archiver(process, path)
    if result.deleted != result.inserted:
        raise BenchmarkError(f"the archiver removed {result.deleted} of the {result.inserted} posts it added as "
                             f"{result.did}: the archive is no longer as it was made")  # fmt: skip
    window = archiver_window(result, started, ended)
    return {"archiver_attempts": window.attempts, "archiver_errors": window.errors,
            "archiver_longest_wait_s": window.longest_wait_s}  # fmt: skip


def run_one(
    contender: c.Contender, exe: str, archive: c.Archive, fmt: str, repeat: int, options: Options,
    reference: Measurement | None, condition: c.Condition,
) -> Measurement:  # fmt: skip
    """Run one contender once in a fresh subprocess in ``condition`` (cache, disk), with the archiver beside it if
    asked, check what it wrote (against ``reference``), measure it."""
    case, skyarchive, sqlite = archive.case, contender.is_skyarchive, archive.case.backend == c.SQLITE
    tag = f"{case.backend}-{case.size}{'-media' * case.media}-{case.layout}-{condition.cache}-{condition.disk}-{fmt}"
    run_dir = options.workdir / "runs" / f"{tag}-{contender.name}-r{repeat}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    job = c.Job(archive=archive, fmt=fmt, did=options.did, out_dir=run_dir / "exports", config=run_dir / "config.toml")
    if skyarchive:
        job.config.write_text(c.config_text(contender, archive.media_dir), encoding="utf-8")
    env = child_env()
    if condition.disk == c.SLOW:
        job.out_dir.mkdir()
        env |= slowdisk.throttle_env(job.out_dir, per_call_ms=options.slow_disk)
    stdout_path, stderr_path = run_dir / ("stdout.txt" if skyarchive else f"posts.{fmt}"), run_dir / "stderr.txt"
    archiver_path, archiver, watched = run_dir / "archiver.json", None, dict[str, Any]()
    try:
        if options.archiver and sqlite and skyarchive:
            archiver = start_archiver(Path(archive.location), archiver_path, did=c.ARCHIVER_DID, cleanup=True)
        resident = prepare_cache(archive, condition.cache) if sqlite else None
        with PgTransactions(archive.location) if not sqlite else nullcontext() as pg:
            report, outer = measure_command(contender.command(exe, job), cwd=run_dir, stdout_path=stdout_path,
                                            stderr_path=stderr_path, report_path=run_dir / "report.json", env=env,
                                            sqlite_lock=Path(archive.location) if sqlite else None)  # fmt: skip
        if pg is not None:
            longest, total = pg.result()
            watched |= {"read_txn_s": longest, "read_txn_total_s": total, "read_txn_polls": pg.polls}
        if archiver is not None:
            process, archiver = archiver, None
            watched |= watch_archiver(process, archiver_path, report["started_monotonic"], report["ended_monotonic"])
    except ArchiverFailed as exc:
        raise BenchmarkError(f"the archiver beside {contender.name} in {run_dir}: {exc}") from None
    finally:
        if archiver is not None:  # the run failed: stop the archiver all the same (it removes its posts)
            with suppress(ArchiverFailed, OSError, ValueError):
                stop_archiver(archiver, archiver_path)
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
        if media is not None and not media[1] and contender.same_output:
            raise BenchmarkError(f"{contender.name} copied no media files in {run_dir}")
    if not posts.is_file() or (posts.stat().st_size == 0 and contender.same_output):
        raise BenchmarkError(f"{contender.name} wrote no posts file at {posts}")
    m = Measurement(
        contender=contender.name, backend=case.backend, size=case.size, media=case.media, format=fmt, repeat=repeat,
        wall_s=report["wall_s"], vmhwm_mb=report["vmhwm_kb"] / 1024, ru_maxrss_mb=report["ru_maxrss_kb"] / 1024,
        floor_mb=report["floor_kb"] / 1024, outer_wall_s=outer, output_bytes=posts.stat().st_size,
        sha256=file_digest(posts), exporter=exporter, media_digest=media[0] if media else None,
        media_files=media[1] if media else None, layout=case.layout, cache=condition.cache, disk=condition.disk,
        resident_before=resident, lock_s=report["lock_s"], lock_longest_s=report["lock_longest_s"],
        lock_polls=report["lock_polls"], **watched, **tree_fields(report, archive.selection_bytes),
    )  # fmt: skip
    if reference is not None and skyarchive and contender.same_output:
        check_same(reference, m, f"(kept in {run_dir})")
    shutil.rmtree(run_dir, ignore_errors=True)
    return m


def tree_fields(report: dict[str, Any], selection_bytes: int | None) -> dict[str, Any]:
    """The Measurement fields of the whole export from measure.py's ``report``: its memory (every process it
    starts, proportional set sizes summed), its temporary space (and the selection's stored size, bytes, to
    compare it with), its first progress line, and what the polling cost."""
    pss = report.get("pss_peak_kb")
    return {
        "pss_peak_mb": None if pss is None else pss / 1024, "pss_reads": report.get("pss_reads"),
        "pss_read_peak_mb": None if report.get("pss_read_peak_kb") is None else report["pss_read_peak_kb"] / 1024,
        "processes_peak": report.get("processes_peak"), "temp_peak_mb": report["temp_peak_kb"] / 1024,
        "selection_mb": None if selection_bytes is None else selection_bytes / (1 << 20),
        "first_progress_s": report.get("first_progress_s"), "measure_cpu_s": report.get("measure_cpu_s"),
    }  # fmt: skip


def rotated(items: Sequence[T], by: int) -> list[T]:
    """``items`` rotated left by ``by``: each repeat starts with a different contender."""
    shift = by % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def warm_cache(archive: c.Archive) -> None:
    """Read a SQLite file and the media files once (on PostgreSQL the counts that checked the archive read it)."""
    paths = sqlite_files(Path(archive.location)) if archive.case.backend == c.SQLITE else []
    read_through([*paths, *files_in(archive.media_dir)])


def run_benchmarks(
    options: Options, cases: Sequence[c.Case], runners: dict[str, str], *, log: Log,
    measurements: list[Measurement], archives: list[dict[str, Any]],
) -> None:  # fmt: skip
    """The loop over archives, cache states, formats, repeats and (contender, disk); adds to ``measurements`` and
    (how each archive was made) ``archives`` as it goes."""
    for case in cases:
        archive, made = ensure_archive(case, workdir=options.workdir, did=options.did, python=sys.executable,
                                       pg=options.pg, log=log)  # fmt: skip
        archives.append(made)
        references: dict[str, Measurement] = {}  # per format: the first skyarchive run's output, which all must equal
        for cache in options.caches_of(case):
            if cache == c.WARM:
                warm_cache(archive)
            for fmt in options.formats:
                taking_part = options.plan(case, cache, fmt, list(runners))
                for repeat in range(1, options.repeat + 1):
                    for name, disk in rotated(taking_part, repeat - 1):
                        contender = c.BY_NAME[name]
                        m = run_one(contender, runners[name], archive, fmt, repeat, options, references.get(fmt),
                                    c.Condition(cache, disk))  # fmt: skip
                        if m.exporter and contender.same_output:
                            references.setdefault(fmt, m)
                        measurements.append(m)
                        log(describe(m))


def describe(m: Measurement) -> str:
    """The log line of one run."""
    where = f"{m.backend:<10} {m.size:>9,}{'+media' * m.media:<6} {m.layout:<12} {m.cache:<4} {m.disk:<6} {m.format:<4}"
    line = f"  {where} r{m.repeat} {m.contender:<16} {m.wall_s:8.3f} s {m.rss_mb:7.1f} MB"
    line += "" if m.read_txn is None else f", read txn {m.read_txn:.3f} s"
    line += "" if m.pss_peak_mb is None else f", whole export {m.pss_peak_mb:.1f} MB PSS"
    line += f" ({m.processes_peak} processes)" if (m.processes_peak or 0) > 1 else ""
    line += f", temp {m.temp_peak_mb:.2f} MB" if m.temp_peak_mb else ""
    line += "" if m.first_progress_s is None else f", first progress {m.first_progress_s:.2f} s"
    line += "" if m.resident_before is None else f", cached {m.resident_before:.0%}"
    if m.archiver_attempts is not None:
        line += f", archiver: {m.archiver_errors} of {m.archiver_attempts} failed"
        line += f", longest wait {m.archiver_longest_wait_s:.3f} s"
    return line


def notes(options: Options, backends: Sequence[str]) -> list[str]:
    """What the Markdown says about the conditions of this run."""
    said = []
    if c.COLD in options.caches and c.SQLITE in backends:
        said.append(
            "Cold cache: right before each cold run the SQLite archive's files (and media files) were written out and "
            "dropped from the OS page cache (fsync, posix_fadvise DONTNEED), checked with mincore; the interpreter's "
            "and the packages' own files stay cached."
        )
    if c.OLDEST_FIRST in options.layouts:
        said.append(
            "Layouts: the oldest-first SQLite archives were made with ANALYZE (sqlite_stat1); the seeded ones have "
            "none (skyarchive seed does not run it), which may change SQLite's query plans between the layouts (every "
            "PostgreSQL twin is analyzed)."
        )
    said.append(
        "Read transactions were watched for every contender alike (SQLite: measure.py reads /proc/locks every 5 ms; "
        "PostgreSQL: the harness polls pg_stat_activity every 10 ms), so the polling costs every run the same."
    )
    if options.slow_disk:
        at = f" (on {', '.join(options.slow_disk_cases)} only)" if options.slow_disk_cases else ""
        said.append(
            f"Slow disk: host, plugin and plugin-checksums also ran{at} with their export folder on a disk slowed by "
            f"{options.slow_disk:g} ms per write call (benchmarks/slowdisk.py, LD_PRELOAD); the peers (sqlite3, "
            "sqlite-utils, psql) write through C stdio to their stdout, which the shim cannot slow, so they ran on the "
            "normal disk only (and plugin-empty, the baseline, too)."
        )
    if options.archiver and c.SQLITE in backends:
        said.append(
            "Archiver: during every skyarchive run on SQLite, benchmarks/archiver.py inserted a post as "
            f"{c.ARCHIVER_DID} every 0.1 s, each in its own transaction (sqlite3's 5 s busy timeout, the archive's "
            "rollback journal), and deleted them afterwards; its figures count its attempts that overlapped the "
            "export. The peers (and PostgreSQL) ran without it."
        )
    return said


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
    skipped |= skipped_contenders
    if c.COLD in options.caches and c.POSTGRESQL in backends:
        skipped["cold cache on PostgreSQL"] = "not supported: the server's shared_buffers would stay warm"
    if options.slow_disk and (why := slowdisk.available()) is not None:
        skipped["slow disk"], options = why, dataclasses.replace(options, slow_disk=0.0)
    for name, reason in skipped.items():
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
        "contenders": list(runners), "layouts": [x for x in c.LAYOUTS if x in options.layouts],
        "caches": [x for x in c.CACHES if x in options.caches],
        "disks": [c.NORMAL, *[c.SLOW] * bool(options.slow_disk)],
        "slow_disk_ms": options.slow_disk or None, "slow_disk_cases": list(options.slow_disk_cases) or None,
        "archiver": {"did": c.ARCHIVER_DID, "every_s": 0.1, "busy_timeout_s": 5.0} if options.archiver else None,
        "notes": notes(options, backends), "skipped": skipped, "archives": archives, "failed": failed,
    }  # fmt: skip
    for path in write_results(meta, measurements, options.workdir / "failed-run" if failed else options.out, log=log):
        log(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
