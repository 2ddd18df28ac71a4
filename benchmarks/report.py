"""From raw measurements to table rows, derived figures and Markdown (pure functions, no I/O)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .contenders import HOST, PLUGIN, SQLITE3, SQLITE_UTILS

MB = 1024 * 1024
DASH = "—"
#: The reference sizes of the derived figures, when present among the sizes measured.
SCALING_REFERENCE = 50_000
RSS_REFERENCE = 10_000
RSS_REFERENCE_MIN = 5_000


@dataclass(frozen=True)
class Measurement:
    """One run of one contender on one archive size and format."""

    contender: str
    size: int
    format: str
    repeat: int
    wall_s: float
    rss_mb: float
    vmhwm_mb: float
    ru_maxrss_mb: float
    floor_mb: float
    outer_wall_s: float
    output_bytes: int
    sha256: str | None = None
    exporter: str | None = None

    @property
    def posts_per_s(self) -> float:
        """Posts exported per second of wall time."""
        return self.size / self.wall_s if self.wall_s > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with ``posts_per_s`` added."""
        return {**self.__dict__, "posts_per_s": self.posts_per_s}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Measurement:
        """The inverse of ``to_dict`` (extra keys are ignored)."""
        names = cls.__dataclass_fields__
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class Row:
    """One table row: the medians of the repeats for one size and format."""

    format: str
    size: int
    host_s: float | None
    host_mb: float | None
    plugin_s: float | None
    plugin_mb: float | None
    plugin_posts_per_s: float | None
    plugin_host_ratio: float | None
    sqlite_utils_s: float | None
    sqlite_utils_mb: float | None
    sqlite3_s: float | None
    sqlite3_mb: float | None
    plugin_sqlite3_ratio: float | None
    identical: bool | None


@dataclass(frozen=True)
class Scaling:
    """Time per post at ``largest`` over time per post at ``reference``, for one contender and format."""

    format: str
    contender: str
    reference: int
    largest: int
    ratio: float


@dataclass(frozen=True)
class RssSpread:
    """The plugin's peak RSS at ``largest`` minus at ``reference``, for one format."""

    format: str
    reference: int
    largest: int
    spread_mb: float


@dataclass(frozen=True)
class Meta:
    """How, where and when the benchmark ran."""

    command: str
    date: str
    python: str
    platform: str
    cpu_count: int | None
    host_version: str | None
    plugin_version: str | None
    sqlite3_version: str | None
    sqlite_utils_version: str | None
    sizes: list[int]
    formats: list[str]
    repeat: int
    contenders: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


Key = tuple[str, int, str]


def medians(measurements: Iterable[Measurement]) -> dict[Key, tuple[float, float]]:
    """``{(contender, size, format): (median wall s, median peak RSS MB)}`` over the repeats."""
    walls: dict[Key, list[float]] = {}
    rss: dict[Key, list[float]] = {}
    for m in measurements:
        key = (m.contender, m.size, m.format)
        walls.setdefault(key, []).append(m.wall_s)
        rss.setdefault(key, []).append(m.rss_mb)
    return {key: (statistics.median(walls[key]), statistics.median(rss[key])) for key in walls}


def identical_outputs(measurements: Iterable[Measurement], *, size: int, fmt: str) -> bool | None:
    """Whether every plugin posts file of ``size``/``fmt`` has the same sha256 as every host one (None: no pair)."""
    hashes: dict[str, set[str | None]] = {HOST: set(), PLUGIN: set()}
    for m in measurements:
        if m.size == size and m.format == fmt and m.contender in hashes:
            hashes[m.contender].add(m.sha256)
    if not hashes[HOST] or not hashes[PLUGIN]:
        return None
    union = hashes[HOST] | hashes[PLUGIN]
    return len(union) == 1 and None not in union


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def build_rows(measurements: Sequence[Measurement]) -> list[Row]:
    """One row per (format, size) measured, formats in first-seen order, sizes ascending."""
    table = medians(measurements)
    formats = list(dict.fromkeys(m.format for m in measurements))
    rows: list[Row] = []
    for fmt in formats:
        for size in sorted({m.size for m in measurements if m.format == fmt}):

            def get(contender: str, index: int, size: int = size, fmt: str = fmt) -> float | None:
                value = table.get((contender, size, fmt))
                return None if value is None else value[index]

            plugin_s = get(PLUGIN, 0)
            rows.append(
                Row(
                    format=fmt,
                    size=size,
                    host_s=get(HOST, 0),
                    host_mb=get(HOST, 1),
                    plugin_s=plugin_s,
                    plugin_mb=get(PLUGIN, 1),
                    plugin_posts_per_s=_ratio(size, plugin_s),
                    plugin_host_ratio=_ratio(plugin_s, get(HOST, 0)),
                    sqlite_utils_s=get(SQLITE_UTILS, 0),
                    sqlite_utils_mb=get(SQLITE_UTILS, 1),
                    sqlite3_s=get(SQLITE3, 0),
                    sqlite3_mb=get(SQLITE3, 1),
                    plugin_sqlite3_ratio=_ratio(plugin_s, get(SQLITE3, 0)),
                    identical=identical_outputs(measurements, size=size, fmt=fmt),
                )
            )
    return rows


def scaling_reference(sizes: Iterable[int]) -> tuple[int, int] | None:
    """``(reference, largest)``: 50k if measured (and not the largest), else the second-largest size."""
    ordered = sorted(set(sizes))
    if len(ordered) < 2:
        return None
    largest = ordered[-1]
    reference = SCALING_REFERENCE if SCALING_REFERENCE in ordered[:-1] else ordered[-2]
    return reference, largest


def rss_reference(sizes: Iterable[int]) -> tuple[int, int] | None:
    """``(reference, largest)``: 10k if measured, else the smallest size of at least 5k; None if that is the largest."""
    ordered = sorted(set(sizes))
    if not ordered:
        return None
    candidates = [RSS_REFERENCE] if RSS_REFERENCE in ordered else [s for s in ordered if s >= RSS_REFERENCE_MIN]
    if not candidates or candidates[0] >= ordered[-1]:
        return None
    return candidates[0], ordered[-1]


def scaling_figures(rows: Sequence[Row]) -> list[Scaling]:
    """Time per post at the largest size over time per post at the reference size, for host and plugin."""
    figures: list[Scaling] = []
    for fmt in dict.fromkeys(row.format for row in rows):
        by_size = {row.size: row for row in rows if row.format == fmt}
        pair = scaling_reference(by_size)
        if pair is None:
            continue
        ref, largest = pair
        for contender, attr in ((HOST, "host_s"), (PLUGIN, "plugin_s")):
            t_ref, t_big = getattr(by_size[ref], attr), getattr(by_size[largest], attr)
            ratio = _ratio(None if t_big is None else t_big / largest, None if t_ref is None else t_ref / ref)
            if ratio is not None:
                figures.append(Scaling(format=fmt, contender=contender, reference=ref, largest=largest, ratio=ratio))
    return figures


def rss_spreads(rows: Sequence[Row]) -> list[RssSpread]:
    """The plugin's peak RSS at the largest size minus at the RSS reference size, per format."""
    spreads: list[RssSpread] = []
    for fmt in dict.fromkeys(row.format for row in rows):
        by_size = {row.size: row for row in rows if row.format == fmt}
        pair = rss_reference(by_size)
        if pair is None:
            continue
        ref, largest = pair
        low, high = by_size[ref].plugin_mb, by_size[largest].plugin_mb
        if low is not None and high is not None:
            spreads.append(RssSpread(format=fmt, reference=ref, largest=largest, spread_mb=high - low))
    return spreads


def fmt_num(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or a dash when missing."""
    return DASH if value is None else format(value, spec)


def fmt_flag(value: bool | None) -> str:
    """yes / no / a dash."""
    return DASH if value is None else ("yes" if value else "no")


def fmt_size(size: int) -> str:
    """Thousands separated: ``100,000``."""
    return f"{size:,}"


TABLE_HEADER = (
    "| posts | host s | host MB | plugin s | plugin MB | plugin posts/s | plugin/host time "
    "| sqlite-utils s | sqlite3 -json s | plugin/sqlite3 | identical |"
)
TABLE_RULE = "|" + "---:|" * 10 + ":---:|"


def render_row(row: Row) -> str:
    """One Markdown table line."""
    cells = [
        fmt_size(row.size),
        fmt_num(row.host_s, ".3f"),
        fmt_num(row.host_mb, ".1f"),
        fmt_num(row.plugin_s, ".3f"),
        fmt_num(row.plugin_mb, ".1f"),
        fmt_num(row.plugin_posts_per_s, ",.0f"),
        fmt_num(row.plugin_host_ratio, ".2f"),
        fmt_num(row.sqlite_utils_s, ".3f"),
        fmt_num(row.sqlite3_s, ".3f"),
        fmt_num(row.plugin_sqlite3_ratio, ".2f"),
        fmt_flag(row.identical),
    ]
    return "| " + " | ".join(cells) + " |"


def render_table(rows: Sequence[Row], fmt: str) -> list[str]:
    """The Markdown lines of one format's table."""
    return [f"### {fmt.upper()}", "", TABLE_HEADER, TABLE_RULE, *(render_row(r) for r in rows if r.format == fmt)]


def render_meta(meta: Meta, *, floor_mb: float | None) -> list[str]:
    """The bullet list that says how the numbers were taken."""
    lines = [
        f"- Command: `{meta.command}`",
        f"- Date: {meta.date}",
        f"- Python: {meta.python} on {meta.platform}, {meta.cpu_count or '?'} CPU(s)",
        f"- skyarchive (host): {meta.host_version or 'unknown'}; export-batching-plugin: "
        f"{meta.plugin_version or 'unknown'}",
        f"- sqlite3 CLI: {meta.sqlite3_version or 'not found'}; "
        f"sqlite-utils: {meta.sqlite_utils_version or 'not found'}",
        f"- Sizes: {', '.join(fmt_size(s) for s in meta.sizes)}; formats: {', '.join(meta.formats)}; "
        f"repeats: {meta.repeat} (median shown)",
        f"- Contenders: {', '.join(meta.contenders)}",
    ]
    lines += [f"- Skipped: {name} ({reason})" for name, reason in meta.skipped.items()]
    if floor_mb is not None:
        lines.append(
            f"- Peak RSS is max(polled VmHWM, wait4 ru_maxrss) of the export process alone; ru_maxrss cannot go "
            f"below the measuring wrapper's own {floor_mb:.1f} MB, so a figure near that is an upper bound."
        )
    return lines


def render_derived(scaling: Sequence[Scaling], spreads: Sequence[RssSpread]) -> list[str]:
    """The bullet list of derived figures (empty when too few sizes were measured)."""
    lines = [
        f"- {s.format.upper()} {s.contender}: time per post at {fmt_size(s.largest)} vs at {fmt_size(s.reference)}: "
        f"{s.ratio:.2f}x"
        for s in scaling
    ]
    lines += [
        f"- {s.format.upper()} plugin peak RSS, {fmt_size(s.largest)} minus {fmt_size(s.reference)} posts: "
        f"{s.spread_mb:+.1f} MB"
        for s in spreads
    ]
    if not scaling:
        lines.append("- Time per post: n/a (needs two sizes)")
    if not spreads:
        lines.append(
            f"- Plugin peak RSS spread: n/a (needs a size of at least {fmt_size(RSS_REFERENCE_MIN)} below the largest)"
        )
    return lines


def render_markdown(meta: Meta, measurements: Sequence[Measurement]) -> str:
    """The whole ``benchmark-results.md``."""
    rows = build_rows(measurements)
    floors = [m.floor_mb for m in measurements]
    lines = ["## Benchmark results", "", *render_meta(meta, floor_mb=max(floors) if floors else None), ""]
    for fmt in dict.fromkeys(row.format for row in rows):
        lines += [*render_table(rows, fmt), ""]
    lines += [
        "Seconds are the median wall time of the export process, MB its median peak RSS; posts/s = posts / plugin s;",
        "identical = the plugin's posts file has the same sha256 as the host's.",
        "",
        "### Derived figures",
        "",
        *render_derived(scaling_figures(rows), rss_spreads(rows)),
        "",
    ]
    return "\n".join(lines)
