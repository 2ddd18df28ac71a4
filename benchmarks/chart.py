"""The chart: wall time (log-log) and peak RSS against archive size; matplotlib is optional."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .contenders import CONTENDERS
from .report import Measurement, medians

COLOURS = {"host": "tab:red", "plugin": "tab:blue", "sqlite-utils": "tab:green", "sqlite3": "tab:gray"}
LINESTYLES = {"json": "-", "csv": "--"}


def series(measurements: Sequence[Measurement]) -> dict[tuple[str, str], list[tuple[int, float, float]]]:
    """``{(contender, format): [(size, median wall s, median peak RSS MB), ...]}``, sizes ascending."""
    points: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for (contender, size, fmt), (wall, rss) in sorted(medians(measurements).items()):
        points.setdefault((contender, fmt), []).append((size, wall, rss))
    order = {name: index for index, name in enumerate(CONTENDERS)}
    return dict(sorted(points.items(), key=lambda item: (order.get(item[0][0], len(order)), item[0][1])))


def size_label(size: int) -> str:
    """A short tick label: ``500``, ``5k``, ``100k``, ``1M``."""
    for unit, suffix in ((1_000_000, "M"), (1_000, "k")):
        if size >= unit and size % (unit // 10) == 0:
            return f"{size / unit:g}{suffix}"
    return str(size)


def render_chart(measurements: Sequence[Measurement], path: Path) -> str | None:
    """Write the PNG at ``path``; return why not (matplotlib missing, nothing measured) or None when written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed"
    lines = series(measurements)
    if not lines:
        return "nothing was measured"
    fig, (time_ax, rss_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    for (contender, fmt), points in lines.items():
        sizes = [p[0] for p in points]
        style = {"color": COLOURS.get(contender), "linestyle": LINESTYLES.get(fmt, ":"), "marker": "o"}
        time_ax.plot(sizes, [p[1] for p in points], label=f"{contender} {fmt}", **style)
        rss_ax.plot(sizes, [p[2] for p in points], label=f"{contender} {fmt}", **style)
    time_ax.set(xscale="log", yscale="log", xlabel="posts in the archive", ylabel="wall time (s)")
    time_ax.set_title("Export wall time")
    rss_ax.set(xscale="log", yscale="log", xlabel="posts in the archive", ylabel="peak RSS (MB, log scale)")
    rss_ax.set_ylim(bottom=0)
    rss_ax.set_title("Peak RSS of the export process")
    sizes_measured = sorted({p[0] for points in lines.values() for p in points})
    for ax in (time_ax, rss_ax):
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks(sizes_measured, [size_label(s) for s in sizes_measured])
        ax.minorticks_off()
    rss_ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
