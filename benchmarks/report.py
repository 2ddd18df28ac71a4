"""From raw measurements to tables, derived figures and Markdown (pure functions, no I/O).

Every backend and case goes through the same machinery: the measurements fall into tables, one per
(backend, media case or not, layout, cache, disk, format); a table has a row per archive size, a pair of
columns (median s, median MB) per contender measured in it, a column per ratio of RATIOS that applies to it
and has values, and, where measured, the read transaction of the host and the plugin (median s), what the
archiver went through during their runs (the most errors, the longest wait over the repeats), and on a cold
cache how much of the archive was still cached before the runs (at most). Below each, where measured, a second
table has a line per size and contender: the whole export's memory (every process it starts, proportional set
sizes summed: median MB, and that minus the empty export's beside it), the most processes it ran at once, its
temporary disk space (median MB, and that over the selection's stored size: one SQLite copy of its rows) and
the time to its first progress line (median s).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .contenders import (
    BACKEND_TITLES,
    BACKENDS,
    BY_NAME,
    CACHES,
    COLD,
    DISKS,
    FORMATS,
    LAYOUTS,
    NORMAL,
    POSTGRESQL,
    SEEDED,
    SQLITE,
    WARM,
)

DASH = "—"
#: The reference sizes of the derived figures (time per post, RSS) when measured; else the smallest of 5,000 or more.
SCALING_REFERENCE, RSS_REFERENCE, REFERENCE_MIN = 50_000, 10_000, 5_000
#: Up to this size, the ratios to the floors are also given net of the empty export's time (start-up dominates).
NET_MAX_SIZE = 100_000
#: The empty export (its peak RSS is the process baseline), and how far above it the plugin may go (MB).
BASELINE, RSS_OVER_BASELINE_MB = "plugin-empty", 16.0
#: The plugin's whole export (every process, PSS summed) may go as far above the empty export's (MB); its temporary
#: space up to this multiple of the selection's stored size; its console must show a count this soon (s).
PSS_OVER_BASELINE_MB, TEMP_OVER_STORED, FIRST_PROGRESS_S = 16.0, 1.0, 2.0
#: Whose memory, temporary space and first progress the derived figures hold to those targets.
PLUGINS = ("plugin", "plugin-checksums")
#: Whose read transaction and archiver figures the tables show and the derived figures compare.
LOCKERS = ("host", "plugin")
WALL, READ_TXN = "wall", "read txn"
Table = tuple[str, bool, str, str, str, str]  # (backend, media case, layout, cache, disk, format)
Key = tuple[str, bool, str, str, str, str, int, str]  # Table + (size, contender)


@dataclass(frozen=True)
class Measurement:
    """One run of one contender on one archive (backend, size, media case, layout), cache, disk and format.

    ``resident_before``: the fraction of the SQLite file cached just before the run. ``lock_*``: SQLite's
    SHARED lock held by the export (see measure.py); ``read_txn_*``: its PostgreSQL transactions (see
    observe.PgTransactions). ``archiver_*``: the archiver's attempts that overlapped the run (observe.py).
    ``pss_peak_mb``: the whole export's memory (the command and every process it starts, proportional set sizes
    summed, at its largest); ``temp_peak_mb``: the temporary disk space the whole export held at its largest
    (unnamed files and those in ``export-batching-*`` directories); ``selection_mb``: the selection's stored size
    (one SQLite copy of its posts, see archives.py); ``first_progress_s``: from the start to the first progress
    line with a count above 0 (see measure.py for each, and for ``pss_read_peak_mb``, ``pss_reads``,
    ``processes_peak``, ``measure_cpu_s``).
    """

    contender: str
    backend: str
    size: int
    media: bool
    format: str
    repeat: int
    wall_s: float
    vmhwm_mb: float  # polled VmHWM
    ru_maxrss_mb: float  # wait4's ru_maxrss
    floor_mb: float
    outer_wall_s: float
    output_bytes: int
    sha256: str
    exporter: str | None = None  # skyarchive contenders: the manifest's, checked
    media_digest: str | None = None  # the media case: see run.folder_digest
    media_files: int | None = None
    layout: str = SEEDED
    cache: str = WARM
    disk: str = NORMAL
    resident_before: float | None = None
    temp_peak_mb: float | None = None
    pss_peak_mb: float | None = None
    pss_read_peak_mb: float | None = None
    pss_reads: int | None = None
    processes_peak: int | None = None
    selection_mb: float | None = None
    first_progress_s: float | None = None
    measure_cpu_s: float | None = None
    lock_s: float | None = None
    lock_longest_s: float | None = None
    lock_polls: int | None = None
    read_txn_s: float | None = None  # the longest transaction seen
    read_txn_total_s: float | None = None
    read_txn_polls: int | None = None
    archiver_attempts: int | None = None
    archiver_errors: int | None = None
    archiver_longest_wait_s: float | None = None

    @property
    def table(self) -> Table:
        """The table this run belongs to."""
        return self.backend, self.media, self.layout, self.cache, self.disk, self.format

    @property
    def rss_mb(self) -> float:
        """Peak RSS: the larger of the two readings."""
        return max(self.vmhwm_mb, self.ru_maxrss_mb)

    @property
    def posts_per_s(self) -> float:
        """Posts exported per second of wall time."""
        return self.size / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def read_txn(self) -> float | None:
        """The export's read transaction (s): SQLite's longest SHARED lock, or PostgreSQL's longest transaction."""
        return self.lock_longest_s if self.lock_longest_s is not None else self.read_txn_s


@dataclass(frozen=True)
class Ratio:
    """A column: the median of ``metric`` (wall time, or read transaction) of ``num`` over that of ``den``,
    measured on ``den_backend`` or the table's, in ``den_format`` or the table's. ``net``: also given net of
    the empty export's time."""

    num: str
    den: str
    backends: tuple[str, ...]
    formats: tuple[str, ...]
    target: float | None = None
    den_backend: str | None = None
    den_format: str | None = None
    label: str = ""
    metric: str = WALL
    net: bool = False

    @property
    def name(self) -> str:
        """The column's name."""
        return self.label or f"{self.num}/{self.den}"


#: The comparisons of the report; the targets are for the largest archive (start-up dominates small ones).
RATIOS = (
    Ratio("plugin", "host", BACKENDS, FORMATS),
    Ratio("plugin", "sqlite3", (SQLITE,), ("json",), target=1.0, net=True),
    Ratio("plugin", "sqlite-utils", (SQLITE,), ("csv",), target=0.7, net=True),
    Ratio("plugin", "psql-json", (POSTGRESQL,), ("json",)),
    Ratio("plugin", "psql-copy", (POSTGRESQL,), ("csv",), target=1.2, net=True),
    Ratio("plugin", "plugin", (POSTGRESQL,), ("json",), target=1.0, den_backend=SQLITE, label="plugin PG/SQLite"),
    Ratio("plugin", "plugin", BACKENDS, ("jsonl",), target=1.0, den_format="json", label="plugin JSONL/JSON"),
    Ratio("plugin-checksums", "plugin", BACKENDS, FORMATS, target=1.05, label="checksums on/off"),
    Ratio("plugin", "host", BACKENDS, FORMATS, target=1.0, metric=READ_TXN, label="read txn plugin/host"),
)


@dataclass(frozen=True)
class Row:
    """One table row: for one archive size, each contender's medians, the ratios and the output check."""

    backend: str
    media: bool
    layout: str
    cache: str
    disk: str
    format: str
    size: int
    seconds: dict[str, float]
    megabytes: dict[str, float]
    ratios: dict[str, float | None]
    identical: bool | None  # every skyarchive contender wrote the same bytes (None: fewer than two ran)
    media_files: int | None
    read_txn: dict[str, float]  # median s, where measured
    archiver_errors: dict[str, int]  # the most of any repeat
    archiver_wait: dict[str, float]  # the longest of any repeat (s)
    resident_min: float | None  # over the row's runs (SQLite)
    resident_max: float | None
    pss_mb: dict[str, float] = field(default_factory=dict)  # median, the whole export
    pss_over_empty_mb: dict[str, float] = field(default_factory=dict)  # pss_mb minus plugin-empty's beside it
    processes: dict[str, int] = field(default_factory=dict)  # the most at once, any repeat
    temp_mb: dict[str, float] = field(default_factory=dict)  # median
    temp_over_stored: dict[str, float] = field(default_factory=dict)  # temp_mb / selection_mb
    selection_mb: float | None = None
    first_progress_s: dict[str, float] = field(default_factory=dict)  # median

    @property
    def table(self) -> Table:
        """The table this row belongs to."""
        return self.backend, self.media, self.layout, self.cache, self.disk, self.format


def _value(value: float) -> str:
    return f"{value:g}"


#: How a Figure's value and target read, by unit.
UNITS: dict[str, tuple[Callable[[float], str], Callable[[float], str]]] = {
    "x": (lambda v: f"{v:.2f}x", lambda t: f"{t:g}x"),
    "MB": (lambda v: f"{v:+.1f} MB", lambda t: f"{t:g} MB"),
    "s": (lambda v: f"{v:.3f} s", lambda t: f"{t:.3f} s"),
    "": (_value, _value),
}


@dataclass(frozen=True)
class Figure:
    """A derived figure of one table: a ratio, a difference in MB, seconds or a count; maybe against a target
    (≤), which may be another measured value (``target_label``: whose)."""

    table: str
    what: str
    value: float
    unit: str = "x"
    target: float | None = None
    target_label: str = ""

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None without one)."""
        return None if self.target is None else self.value <= self.target

    def line(self) -> str:
        """A Markdown bullet."""
        value, target = UNITS[self.unit]
        shown = value(self.value)
        if self.target is not None and not self.met and shown == value(self.target):  # missed by less than shown
            shown = f"{self.value:.4f}{shown.lstrip('+-.0123456789')}"
        goal = "" if self.target is None else f" (target ≤ {self.target_label}{target(self.target)}: "
        goal += "" if self.target is None else ("met)" if self.met else "**missed**)")
        return f"- {self.table}, {self.what}: {shown}{goal}"


def contender_order(name: str) -> int:
    """The position of ``name`` in CONTENDERS (unknown names last)."""
    return list(BY_NAME).index(name) if name in BY_NAME else len(BY_NAME)


def _index(values: Sequence[str], value: str) -> int:
    return values.index(value) if value in values else len(values)


def table_order(table: Table) -> tuple[int, bool, int, int, int, int]:
    """SQLite before PostgreSQL, plain before media, seeded before oldest-first, warm before cold, the normal disk
    before the slow one, JSON before CSV."""
    backend, media, layout, cache, disk, fmt = table
    return (_index(BACKENDS, backend), media, _index(LAYOUTS, layout), _index(CACHES, cache), _index(DISKS, disk),
            _index(FORMATS, fmt))  # fmt: skip


def table_title(table: Table) -> str:
    """``SQLite, JSON (seeded, warm cache, normal disk)``; ``SQLite with media, CSV (…)``."""
    backend, media, layout, cache, disk, fmt = table
    title = BACKEND_TITLES.get(backend, backend) + (" with media" if media else "") + (f", {fmt.upper()}" * bool(fmt))
    return f"{title} ({layout}, {cache} cache, {disk} disk)"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing (or the denominator is not positive)."""
    return None if numerator is None or denominator is None or denominator <= 0 else numerator / denominator


def _known(values: Iterable[float | int | None]) -> list[float | int]:
    return [v for v in values if v is not None]


def build_rows(measurements: Sequence[Measurement]) -> list[Row]:
    """One row per (table, size) measured, with the medians over the repeats: tables in table_order, sizes
    ascending, contenders in CONTENDERS order."""
    runs: dict[Key, list[Measurement]] = {}
    for m in sorted(measurements, key=lambda m: (table_order(m.table), m.size, contender_order(m.contender))):
        runs.setdefault((*m.table, m.size, m.contender), []).append(m)
    medians: dict[str, dict[Key, float]] = {
        WALL: {key: statistics.median(m.wall_s for m in ms) for key, ms in runs.items()},
        READ_TXN: {key: statistics.median(v) for key, ms in runs.items() if (v := _known(m.read_txn for m in ms))},
    }
    rows: list[Row] = []
    for place in dict.fromkeys(key[:7] for key in runs):
        backend, media, layout, cache, disk, fmt, size = place
        here = {key[7]: ms for key, ms in runs.items() if key[:7] == place}
        compared = [m for ms in here.values() for m in ms if m.exporter and same_output(m.contender)]
        outputs, writers = {(m.sha256, m.media_digest) for m in compared}, {m.contender for m in compared}
        resident = _known(m.resident_before for ms in here.values() for m in ms)
        errors = {c: _most(m.archiver_errors for m in ms) for c, ms in here.items()}
        waits = {c: _most(m.archiver_longest_wait_s for m in ms) for c, ms in here.items()}
        rows.append(Row(
            backend, media, layout, cache, disk, fmt, size, seconds={c: medians[WALL][_key(place, c)] for c in here},
            megabytes={c: statistics.median(m.rss_mb for m in ms) for c, ms in here.items()},
            ratios={r.name: ratio(medians[r.metric].get(_key(place, r.num)),
                                  medians[r.metric].get(_key(place, r.den, r.den_backend, r.den_format)))
                    for r in RATIOS if backend in r.backends and fmt in r.formats},
            identical=len(outputs) == 1 if len(writers) > 1 else None,
            media_files=max((m.media_files or 0 for ms in here.values() for m in ms if m.exporter), default=0) or None,
            read_txn={c: medians[READ_TXN][_key(place, c)] for c in here if _key(place, c) in medians[READ_TXN]},
            archiver_errors={c: int(v) for c, v in errors.items() if v is not None},
            archiver_wait={c: float(v) for c, v in waits.items() if v is not None},
            resident_min=min(resident) if resident else None, resident_max=max(resident) if resident else None,
            **whole_export(here),
        ))  # fmt: skip
    rows_at = {(row.table, row.size): row for row in rows}
    for n, row in enumerate(rows):
        base = baseline(rows_at, row, "pss_mb")
        if base is not None:
            rows[n] = replace(row, pss_over_empty_mb={c: v - base for c, v in row.pss_mb.items() if c != BASELINE})
    return rows


def whole_export(here: dict[str, list[Measurement]]) -> dict[str, Any]:
    """The Row fields of the whole export, from the runs of each contender at one place (table and size)."""

    def medians(attribute: str) -> dict[str, float]:
        return {c: statistics.median(v) for c, ms in here.items() if (v := _known(getattr(m, attribute) for m in ms))}

    temp = medians("temp_peak_mb")
    stored = _most(m.selection_mb for ms in here.values() for m in ms)
    return {
        "pss_mb": medians("pss_peak_mb"), "temp_mb": temp, "first_progress_s": medians("first_progress_s"),
        "processes": {c: int(v) for c, ms in here.items() if (v := _most(m.processes_peak for m in ms)) is not None},
        "selection_mb": stored,
        "temp_over_stored": {c: v / stored for c, v in temp.items()} if stored else {},
    }  # fmt: skip


def _key(
    place: tuple[str, bool, str, str, str, str, int], contender: str, backend: str | None = None, fmt: str | None = None
) -> Key:
    """The key of ``contender`` at ``place`` (a table and a size), or at the same place on ``backend``, in ``fmt``."""
    return (backend or place[0], *place[1:5], fmt or place[5], place[6], contender)


def _most(values: Iterable[float | int | None]) -> float | int | None:
    """The largest of the known values (None if none is)."""
    known = _known(values)
    return max(known) if known else None


def same_output(contender: str) -> bool:
    """Whether ``contender``'s output must equal the other skyarchive contenders' (unknown names: yes)."""
    return BY_NAME[contender].same_output if contender in BY_NAME else True


def reference(sizes: Iterable[int], preferred: int) -> tuple[int, int] | None:
    """``(reference, largest)``: ``preferred`` if measured, else the smallest size of at least 5,000; None if no
    such size is below the largest."""
    ordered = sorted(set(sizes))
    below = [s for s in ordered[:-1] if s == preferred] or [s for s in ordered[:-1] if s >= REFERENCE_MIN]
    return (below[0], ordered[-1]) if below else None


def baseline(rows_at: dict[tuple[Table, int], Row], row: Row, what: str) -> float | None:
    """The empty export's median ``what`` ("seconds" or "megabytes") beside ``row``: in its table, else (it runs on
    the normal disk only) in the same table on the normal disk."""
    normal: Table = (row.backend, row.media, row.layout, row.cache, NORMAL, row.format)
    for table in (row.table, normal):
        twin = rows_at.get((table, row.size))
        if twin is not None and BASELINE in getattr(twin, what):
            return float(getattr(twin, what)[BASELINE])
    return None


def derived_figures(rows: Sequence[Row]) -> list[Figure]:
    """Per table: each targeted ratio at the largest size; up to NET_MAX_SIZE, the ratios to the floors raw and net
    of the empty export's time; the plugin's peak RSS over the empty export's at every size (≤ 16 MB); the
    archiver's errors and longest wait with the plugin against those with the host, at the largest size; time
    per post, and the plugin's RSS, against size."""
    figures: list[Figure] = []
    rows_at = {(row.table, row.size): row for row in rows}
    for table in dict.fromkeys(row.table for row in rows):
        title, by_size = table_title(table), {row.size: row for row in rows if row.table == table}
        largest = by_size[max(by_size)]
        for r in RATIOS:
            value = largest.ratios.get(r.name)
            if r.target is not None and value is not None:
                figures.append(Figure(title, f"{r.name} at {largest.size:,} posts", value, target=r.target))
        for r in (r for r in RATIOS if r.net):
            for size in (size for size in sorted(by_size) if size <= NET_MAX_SIZE):
                row, target = by_size[size], r.target if size == largest.size else None
                raw, empty = row.ratios.get(r.name), baseline(rows_at, row, "seconds")
                if raw is not None and size != largest.size:
                    figures.append(Figure(title, f"{r.name} at {size:,} posts", raw))
                net = None if raw is None or empty is None else ratio(row.seconds[r.num] - empty, row.seconds[r.den])
                if net is not None:
                    figures.append(Figure(title, f"{r.name} net of {BASELINE}'s time at {size:,} posts", net,
                                          target=target))  # fmt: skip
        for size, row in sorted(by_size.items()):
            base = baseline(rows_at, row, "megabytes")
            for name in (n for n in PLUGINS if n in row.megabytes and base is not None):
                over = row.megabytes[name] - (base or 0.0)
                figures.append(Figure(title, f"{name} peak RSS minus {BASELINE}'s at {size:,} posts", over, unit="MB",
                                      target=RSS_OVER_BASELINE_MB))  # fmt: skip
            figures += whole_export_figures(title, row)
        host, plugin = LOCKERS
        archiver: tuple[tuple[str, dict[str, Any], str], ...] = (
            ("errors", largest.archiver_errors, ""), ("longest wait", largest.archiver_wait, "s")
        )  # fmt: skip
        for what, values, unit in archiver:
            if host in values and plugin in values:
                what = f"archiver {what} during the plugin's export at {largest.size:,} posts"
                figures.append(
                    Figure(title, what, values[plugin], unit, target=values[host], target_label="the host's ")
                )
        ref, big = reference(by_size, SCALING_REFERENCE) or (0, 0)
        for c in ("host", "plugin") if ref else ():
            if c in by_size[ref].seconds and c in by_size[big].seconds:
                value = by_size[big].seconds[c] / big / (by_size[ref].seconds[c] / ref)
                figures.append(Figure(title, f"{c} time per post at {big:,} vs at {ref:,} posts", value))
        ref, big = reference(by_size, RSS_REFERENCE) or (0, 0)
        if ref and "plugin" in by_size[ref].megabytes and "plugin" in by_size[big].megabytes:
            spread = by_size[big].megabytes["plugin"] - by_size[ref].megabytes["plugin"]
            figures.append(Figure(title, f"plugin peak RSS at {big:,} minus at {ref:,} posts", spread, unit="MB"))
        if ref and "plugin" in by_size[ref].pss_mb and "plugin" in by_size[big].pss_mb:
            spread = by_size[big].pss_mb["plugin"] - by_size[ref].pss_mb["plugin"]
            what = f"plugin whole-export memory (PSS) at {big:,} minus at {ref:,} posts"
            figures.append(Figure(title, what, spread, unit="MB"))
    return figures


def whole_export_figures(title: str, row: Row) -> list[Figure]:
    """The plugin's whole export at one size, against its targets: its memory (every process, PSS summed) over
    the empty export's beside it, its temporary space over the selection's stored size and over skyarchive
    alone's (its sort's, where it has one), its first progress."""
    figures, at = [], f"at {row.size:,} posts"
    for name in PLUGINS:
        if name in row.pss_over_empty_mb:
            what = f"{name} whole-export memory (PSS) minus {BASELINE}'s {at}"
            figures.append(Figure(title, what, row.pss_over_empty_mb[name], unit="MB", target=PSS_OVER_BASELINE_MB))
        if name in row.temp_over_stored:
            what = f"{name} temporary space over the selection's stored size {at}"
            figures.append(Figure(title, what, row.temp_over_stored[name], target=TEMP_OVER_STORED))
        over_host = ratio(row.temp_mb.get(name), row.temp_mb.get("host"))
        if over_host is not None:  # skyarchive alone's own sort (SQLite's temporary files); none on PostgreSQL
            what = f"{name} temporary space over skyarchive alone's {at}"
            figures.append(Figure(title, what, over_host, target=1.0))
        if name in row.first_progress_s:
            what = f"{name} first progress line (a count above 0) {at}"
            figures.append(Figure(title, what, row.first_progress_s[name], unit="s", target=FIRST_PROGRESS_S))
    return figures


def cell(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or a dash when missing."""
    return DASH if value is None else format(value, spec)


def render_table(rows: Sequence[Row], table: Table) -> list[str]:
    """The Markdown lines of one table: only the columns that have something to show."""
    mine = [row for row in rows if row.table == table]
    contenders = sorted({c for row in mine for c in row.seconds}, key=contender_order)
    ratios = [r for r in RATIOS if any(row.ratios.get(r.name) is not None for row in mine)]
    media, plugin = any(row.media_files for row in mine), "plugin" in contenders

    def columns(attribute: str) -> list[str]:
        return [c for c in LOCKERS if any(c in getattr(row, attribute) for row in mine)]

    txn, errors, waits = columns("read_txn"), columns("archiver_errors"), columns("archiver_wait")
    cached = table[3] == COLD and any(row.resident_max is not None for row in mine)
    header = ["posts", *(f"{c} {unit}" for c in contenders for unit in ("s", "MB")), *["plugin posts/s"] * plugin]
    header += [r.name + ("" if r.target is None else f" (≤ {r.target:g})") for r in ratios]
    header += [f"{c} read txn s" for c in txn] + [f"{c} archiver errors" for c in errors]
    header += [f"{c} archiver wait s" for c in waits]
    header += [*["cached before %"] * cached, *["media files"] * media, "identical"]
    lines = [f"### {table_title(table)}", "", f"| {' | '.join(header)} |", "|" + "---:|" * (len(header) - 1) + ":---:|"]
    for row in mine:
        cells = [
            f"{row.size:,}",
            *(cell(d.get(c), s) for c in contenders for d, s in ((row.seconds, ".3f"), (row.megabytes, ".1f"))),
        ]
        cells += [cell(ratio(row.size, row.seconds.get("plugin")), ",.0f")] * plugin
        cells += [cell(row.ratios.get(r.name), ".2f") for r in ratios]
        cells += [cell(row.read_txn.get(c), ".3f") for c in txn]
        cells += [cell(row.archiver_errors.get(c), "d") for c in errors]
        cells += [cell(row.archiver_wait.get(c), ".3f") for c in waits]
        cells += [cell(None if row.resident_max is None else 100 * row.resident_max, ".1f")] * cached
        cells += [cell(row.media_files, ",d")] * media
        lines.append(f"| {' | '.join(cells)} | {DASH if row.identical is None else 'yes' if row.identical else 'no'} |")
    return lines + render_whole_export(mine, contenders)


def render_whole_export(rows: Sequence[Row], contenders: Sequence[str]) -> list[str]:
    """The lines of the second table beside a table's ``rows``: per size and contender, the whole export's memory
    and temporary space, and its first progress line (none if nothing of it was measured)."""
    lines = [
        "",
        "| posts | contender | whole export MB (PSS) | minus plugin-empty's MB | processes | temp MB | "
        "selection stored MB | temp / stored | first progress s |",
        "|---:|:---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for c in (c for c in contenders if c in row.pss_mb or c in row.temp_mb):
            over = row.pss_over_empty_mb.get(c)
            lines.append(
                f"| {row.size:,} | {c} | {cell(row.pss_mb.get(c), '.1f')} | {cell(over, '+.1f')} | "
                f"{cell(row.processes.get(c), 'd')} | {cell(row.temp_mb.get(c), '.2f')} | "
                f"{cell(row.selection_mb, '.2f')} | {cell(row.temp_over_stored.get(c), '.2f')} | "
                f"{cell(row.first_progress_s.get(c), '.2f')} |"
            )
    return lines if len(lines) > 3 else []


def render_archive(a: dict[str, Any]) -> str:
    """One bullet (without its indent) saying how an archive was made (``a``: as archives.ensure_archive says)."""
    line = str(BACKEND_TITLES.get(a["backend"], a["backend"])) + (" with media" if a["media"] else "")
    line += f", {a.get('layout', SEEDED)}, {a['size']:,} posts: `{a['rows']}` into `{a['sqlite']}`"
    line += "" if a["seed_s"] is None else f" ({a['seed_s']} s)"
    if "layout_sqlite" in a:
        line += f", then {a['layout_made']} into `{a['layout_sqlite']}`"
        line += "" if a.get("layout_s") is None else f" ({a['layout_s']} s)"
    line += f", then {a['copy']} into `{a['postgresql']}`" if "copy" in a else ""
    line += "" if a.get("copy_s") is None else f" ({a['copy_s']} s)"
    if a.get("selection_bytes") is not None:
        line += f"; the selection stored in {a['selection_bytes'] / (1 << 20):,.2f} MB (one SQLite copy of its posts)"
    return line


def render_meta(meta: dict[str, Any], *, floor_mb: float | None) -> list[str]:
    """The bullet list that says how the numbers were taken (``meta``: as run.main makes it)."""
    lines = [
        f"- Command: `{meta['command']}`",
        f"- Date: {meta['date']}; Python {meta['python']} on {meta['platform']}, {meta['cpu_count'] or '?'} CPU(s)",
        "- Versions: " + "; ".join(f"{name} {version or 'not found'}" for name, version in meta["versions"].items()),
        f"- Formats: {', '.join(meta['formats'])}; repeats: {meta['repeat']} (median shown); "
        f"contenders: {', '.join(meta['contenders'])}",
        f"- Layouts: {', '.join(meta.get('layouts', [SEEDED]))}; page cache: {', '.join(meta.get('caches', [WARM]))}; "
        f"disks: {', '.join(meta.get('disks', [NORMAL]))}; archiver: {'yes' if meta.get('archiver') else 'no'}",
        *(f"- {note}" for note in meta.get("notes", [])),
        *(f"- Skipped: {name} ({reason})" for name, reason in meta["skipped"].items()),
        *([f"- **Failed, results incomplete**: {meta['failed']}"] if meta.get("failed") else []),
        "- Archives (seconds to make them, or reused from an earlier run):",
        *(f"  - {render_archive(a)}" for a in meta["archives"]),
    ]
    if floor_mb is not None:
        lines.append(
            f"- Peak RSS is max(polled VmHWM, wait4 ru_maxrss) of the export process alone; ru_maxrss cannot go "
            f"below the measuring wrapper's own {floor_mb:.1f} MB, so a figure near that is an upper bound."
        )
    lines.append(
        "- The whole export's memory is that of every process it starts, proportional set sizes summed (Pss of "
        "/proc/<pid>/smaps_rollup of the command and its descendants, found by their parent pids), at its "
        "largest over polls every 20 ms; smaps_rollup walks the page tables (about 1.4 ms for 60 MB), so it is "
        "read when a process starts or ends and otherwise for at most 2% of the time, each process's PSS carried "
        "between readings by what its RSS counters gained or lost (exact for private memory). Its temporary "
        "space is the disk space (st_blocks) of the regular files the processes have open that are unnamed or "
        "inside an export-batching-* directory, each file once."
    )
    return lines


@dataclass(frozen=True)
class Summary:
    """What one run's measurements come to: the rows, the derived figures, the measuring wrapper's RSS floor."""

    rows: list[Row]
    figures: list[Figure]
    floor_mb: float | None


def summarise(measurements: Sequence[Measurement]) -> Summary:
    """The rows and figures of ``measurements``, computed once for the Markdown, the JSON and the chart."""
    rows = build_rows(measurements)
    return Summary(rows, derived_figures(rows), max((m.floor_mb for m in measurements), default=None))


def render_markdown(meta: dict[str, Any], summary: Summary) -> str:
    """The whole ``benchmark-results.md``."""
    rows = summary.rows
    lines = ["## Benchmark results", "", *render_meta(meta, floor_mb=summary.floor_mb), ""]
    for table in dict.fromkeys(row.table for row in rows):
        lines += [*render_table(rows, table), ""]
    lines += [
        "Seconds are the median wall time of the export process, MB its median peak RSS (on PostgreSQL, the",
        "client's alone: the server's work is in the seconds, not in the MB); posts/s = posts / plugin s;",
        "read txn = the export's read transaction, median s (SQLite: the longest stretch its SHARED lock was held,",
        "from /proc/locks every 5 ms; PostgreSQL: its longest transaction in pg_stat_activity, every 10 ms);",
        "archiver errors and wait = the most failed inserts and the longest insert of the archiver during one",
        "run (any repeat); cached before % = how much of the SQLite file was in the page cache just before a",
        "cold run, at most;",
        "identical = every skyarchive contender wrote the same posts file (sha256) and media files (plugin-empty",
        "exports nothing and is not compared). In the second table: whole export MB = the memory of the export",
        "and every process it starts (proportional set sizes summed), at its largest, median; minus plugin-empty's",
        "= that minus the same command's exporting an empty selection (the process baseline), beside it;",
        "processes = the most it ran at once; temp MB = the disk space of the unnamed files and of the files in",
        "export-batching-* directories that it held open at once, at most, median (SQLite's own sort files count",
        "too); selection stored MB = one SQLite copy of the selected posts (CREATE TABLE AS SELECT, page_count x",
        "page_size); first progress s = from the start to the first `export: N/T posts` line with N > 0 on",
        "standard error (skyarchive prints at most one line per 5 s there, and always the one at 100%), median.",
        "",
        "### Derived figures (from the same run)",
        "",
        *([f.line() for f in summary.figures] or ["- none: too few sizes or contenders were measured"]),
        "",
    ]
    return "\n".join(lines)
