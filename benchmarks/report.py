"""From raw measurements to tables, derived figures and Markdown (pure functions, no I/O).

Every backend and case goes through the same machinery: the measurements fall into tables, one per
(backend, media case or not, format); a table has a row per archive size, a pair of columns (median s,
median MB) per contender measured in it, and a column per ratio of RATIOS that applies to it and has values.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .contenders import BACKEND_TITLES, BACKENDS, BY_NAME, FORMATS, POSTGRESQL, SQLITE

DASH = "—"
#: The reference sizes of the derived figures (time per post, RSS) when measured; else the smallest of 5,000 or more.
SCALING_REFERENCE, RSS_REFERENCE, REFERENCE_MIN = 50_000, 10_000, 5_000
Table = tuple[str, bool, str]  # (backend, media case, format)
Key = tuple[str, bool, str, int, str]  # (backend, media case, format, size, contender)


@dataclass(frozen=True)
class Measurement:
    """One run of one contender on one archive (backend, size, media case) and format."""

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

    @property
    def table(self) -> Table:
        """The table this run belongs to."""
        return self.backend, self.media, self.format

    @property
    def rss_mb(self) -> float:
        """Peak RSS: the larger of the two readings."""
        return max(self.vmhwm_mb, self.ru_maxrss_mb)

    @property
    def posts_per_s(self) -> float:
        """Posts exported per second of wall time."""
        return self.size / self.wall_s if self.wall_s > 0 else float("inf")


@dataclass(frozen=True)
class Ratio:
    """A column: the median time of ``num`` over that of ``den``, measured on ``den_backend`` or the table's."""

    num: str
    den: str
    backends: tuple[str, ...]
    formats: tuple[str, ...]
    target: float | None = None
    den_backend: str | None = None
    label: str = ""

    @property
    def name(self) -> str:
        """The column's name."""
        return self.label or f"{self.num}/{self.den}"


#: The comparisons of the report; the targets are for large archives (start-up dominates small ones).
RATIOS = (
    Ratio("plugin", "host", BACKENDS, FORMATS),
    Ratio("plugin", "sqlite3", (SQLITE,), ("json",), target=2.0),
    Ratio("plugin", "sqlite-utils", (SQLITE,), ("csv",), target=0.8),
    Ratio("plugin", "psql-json", (POSTGRESQL,), ("json",)),
    Ratio("plugin", "psql-copy", (POSTGRESQL,), ("csv",), target=2.0),
    Ratio("plugin", "plugin", (POSTGRESQL,), ("json",), target=1.1, den_backend=SQLITE, label="plugin PG/SQLite"),
    Ratio("plugin-checksums", "plugin", BACKENDS, FORMATS, target=1.05, label="checksums on/off"),
)


@dataclass(frozen=True)
class Row:
    """One table row: for one archive size, each contender's medians, the ratios and the output check."""

    backend: str
    media: bool
    format: str
    size: int
    seconds: dict[str, float]
    megabytes: dict[str, float]
    ratios: dict[str, float | None]
    identical: bool | None  # every skyarchive contender wrote the same bytes (None: fewer than two ran)
    media_files: int | None

    @property
    def table(self) -> Table:
        """The table this row belongs to."""
        return self.backend, self.media, self.format


@dataclass(frozen=True)
class Figure:
    """A derived figure of one table: a ratio, or a difference in MB; maybe against a target (≤)."""

    table: str
    what: str
    value: float
    unit: str = "x"
    target: float | None = None

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None without one)."""
        return None if self.target is None else self.value <= self.target

    def line(self) -> str:
        """A Markdown bullet."""
        value = f"{self.value:+.1f} MB" if self.unit == "MB" else f"{self.value:.2f}x"
        target = "" if self.target is None else f" (target ≤ {self.target:g}x: {'met' if self.met else '**missed**'})"
        return f"- {self.table}, {self.what}: {value}{target}"


def contender_order(name: str) -> int:
    """The position of ``name`` in CONTENDERS (unknown names last)."""
    return list(BY_NAME).index(name) if name in BY_NAME else len(BY_NAME)


def table_order(table: Table) -> tuple[int, bool, int]:
    """SQLite before PostgreSQL, plain before media, JSON before CSV."""
    backend, media, fmt = table
    return (BACKENDS.index(backend) if backend in BACKENDS else 9, media, FORMATS.index(fmt) if fmt in FORMATS else 9)


def table_title(table: Table) -> str:
    """``SQLite, JSON``; ``SQLite with media, CSV``; ``PostgreSQL`` (no format)."""
    backend, media, fmt = table
    return BACKEND_TITLES.get(backend, backend) + (" with media" if media else "") + (f", {fmt.upper()}" if fmt else "")


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing (or the denominator is not positive)."""
    return None if numerator is None or denominator is None or denominator <= 0 else numerator / denominator


def build_rows(measurements: Sequence[Measurement]) -> list[Row]:
    """One row per (table, size) measured, with the medians over the repeats: tables in table_order, sizes
    ascending, contenders in CONTENDERS order."""
    runs: dict[Key, list[Measurement]] = {}
    for m in sorted(measurements, key=lambda m: (table_order(m.table), m.size, contender_order(m.contender))):
        runs.setdefault((*m.table, m.size, m.contender), []).append(m)
    seconds = {key: statistics.median(m.wall_s for m in ms) for key, ms in runs.items()}
    rows: list[Row] = []
    for backend, media, fmt, size in dict.fromkeys(key[:4] for key in runs):
        here = {key[4]: ms for key, ms in runs.items() if key[:4] == (backend, media, fmt, size)}
        skyarchive = [m for ms in here.values() for m in ms if m.exporter]  # only skyarchive contenders have one
        outputs, writers = {(m.sha256, m.media_digest) for m in skyarchive}, {m.contender for m in skyarchive}
        rows.append(Row(
            backend, media, fmt, size, seconds={c: seconds[(backend, media, fmt, size, c)] for c in here},
            megabytes={c: statistics.median(m.rss_mb for m in ms) for c, ms in here.items()},
            ratios={r.name: ratio(seconds.get((backend, media, fmt, size, r.num)),
                                  seconds.get((r.den_backend or backend, media, fmt, size, r.den)))
                    for r in RATIOS if backend in r.backends and fmt in r.formats},
            identical=len(outputs) == 1 if len(writers) > 1 else None,
            media_files=max((m.media_files or 0 for m in skyarchive), default=0) or None,
        ))  # fmt: skip
    return rows


def reference(sizes: Iterable[int], preferred: int) -> tuple[int, int] | None:
    """``(reference, largest)``: ``preferred`` if measured, else the smallest size of at least 5,000; None if no
    such size is below the largest."""
    ordered = sorted(set(sizes))
    below = [s for s in ordered[:-1] if s == preferred] or [s for s in ordered[:-1] if s >= REFERENCE_MIN]
    return (below[0], ordered[-1]) if below else None


def derived_figures(rows: Sequence[Row]) -> list[Figure]:
    """Per table: each targeted ratio at the largest size; time per post, and the plugin's RSS, against size."""
    figures: list[Figure] = []
    for table in dict.fromkeys(row.table for row in rows):
        title, by_size = table_title(table), {row.size: row for row in rows if row.table == table}
        largest = by_size[max(by_size)]
        for r in RATIOS:
            value = largest.ratios.get(r.name)
            if r.target is not None and value is not None:
                figures.append(Figure(title, f"{r.name} at {largest.size:,} posts", value, target=r.target))
        ref, big = reference(by_size, SCALING_REFERENCE) or (0, 0)
        for c in ("host", "plugin") if ref else ():
            if c in by_size[ref].seconds and c in by_size[big].seconds:
                value = by_size[big].seconds[c] / big / (by_size[ref].seconds[c] / ref)
                figures.append(Figure(title, f"{c} time per post at {big:,} vs at {ref:,} posts", value))
        ref, big = reference(by_size, RSS_REFERENCE) or (0, 0)
        if ref and "plugin" in by_size[ref].megabytes and "plugin" in by_size[big].megabytes:
            spread = by_size[big].megabytes["plugin"] - by_size[ref].megabytes["plugin"]
            figures.append(Figure(title, f"plugin peak RSS at {big:,} minus at {ref:,} posts", spread, unit="MB"))
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
    header = ["posts", *(f"{c} {unit}" for c in contenders for unit in ("s", "MB")), *["plugin posts/s"] * plugin]
    header += [r.name + ("" if r.target is None else f" (≤ {r.target:g})") for r in ratios]
    header += [*["media files"] * media, "identical"]
    lines = [f"### {table_title(table)}", "", f"| {' | '.join(header)} |", "|" + "---:|" * (len(header) - 1) + ":---:|"]
    for row in mine:
        cells = [
            f"{row.size:,}",
            *(cell(d.get(c), s) for c in contenders for d, s in ((row.seconds, ".3f"), (row.megabytes, ".1f"))),
        ]
        cells += [cell(ratio(row.size, row.seconds.get("plugin")), ",.0f")] * plugin
        cells += [cell(row.ratios.get(r.name), ".2f") for r in ratios] + [cell(row.media_files, ",d")] * media
        lines.append(f"| {' | '.join(cells)} | {DASH if row.identical is None else 'yes' if row.identical else 'no'} |")
    return lines


def render_meta(meta: dict[str, Any], *, floor_mb: float | None) -> list[str]:
    """The bullet list that says how the numbers were taken (``meta``: as run.main makes it)."""
    lines = [
        f"- Command: `{meta['command']}`",
        f"- Date: {meta['date']}; Python {meta['python']} on {meta['platform']}, {meta['cpu_count'] or '?'} CPU(s)",
        "- Versions: " + "; ".join(f"{name} {version or 'not found'}" for name, version in meta["versions"].items()),
        f"- Formats: {', '.join(meta['formats'])}; repeats: {meta['repeat']} (median shown); "
        f"contenders: {', '.join(meta['contenders'])}",
        *(f"- Skipped: {name} ({reason})" for name, reason in meta["skipped"].items()),
        *([f"- **Failed, results incomplete**: {meta['failed']}"] if meta.get("failed") else []),
        "- Archives (seconds to make them, or reused from an earlier run):",
    ]
    for a in meta["archives"]:
        line = f"  - {table_title((a['backend'], a['media'], ''))}, {a['size']:,} posts: `{a['rows']}`"
        line += f" into `{a['sqlite']}`"
        line += "" if a["seed_s"] is None else f" ({a['seed_s']} s)"
        line += f", then {a['copy']} into `{a['postgresql']}`" if "copy" in a else ""
        lines.append(line + ("" if a.get("copy_s") is None else f" ({a['copy_s']} s)"))
    if floor_mb is not None:
        lines.append(
            f"- Peak RSS is max(polled VmHWM, wait4 ru_maxrss) of the export process alone; ru_maxrss cannot go "
            f"below the measuring wrapper's own {floor_mb:.1f} MB, so a figure near that is an upper bound."
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
        "identical = every skyarchive contender wrote the same posts file (sha256) and media files.",
        "",
        "### Derived figures (from the same run)",
        "",
        *([f.line() for f in summary.figures] or ["- none: too few sizes or contenders were measured"]),
        "",
    ]
    return "\n".join(lines)
