"""The chart (matplotlib is optional): median wall time and peak RSS against archive size, log-log, one line
per backend, contender and format; the media case (one size) is in the tables only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .contenders import POSTGRESQL, SQLITE
from .report import Row

COLOURS = {"host": "tab:red", "plugin": "tab:blue", "sqlite-utils": "tab:green", "sqlite3": "tab:gray"}
COLOURS |= {"psql-copy": "tab:purple", "psql-json": "tab:purple"}
LINESTYLES, MARKERS = {"json": "-", "csv": "--"}, {SQLITE: "o", POSTGRESQL: "s"}


def size_label(size: int) -> str:
    """A short tick label: ``500``, ``5k``, ``100k``, ``1M``."""
    for unit, suffix in ((1_000_000, "M"), (1_000, "k")):
        if size >= unit and size % (unit // 10) == 0:
            return f"{size / unit:g}{suffix}"
    return str(size)


def render_chart(rows: Sequence[Row], path: Path) -> str | None:
    """Write the PNG at ``path``; return why not (matplotlib missing, nothing measured) or None when written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed"
    lines: dict[tuple[str, str, str], list[tuple[int, float, float]]] = {}
    for row in (row for row in rows if not row.media):
        for contender, seconds in row.seconds.items():
            lines.setdefault((row.backend, contender, row.format), []).append(
                (row.size, seconds, row.megabytes[contender])
            )
    if not lines:
        return "nothing was measured"
    fig, (time_ax, rss_ax) = plt.subplots(1, 2, figsize=(13, 5.2))
    for (backend, contender, fmt), points in lines.items():
        style = {"color": COLOURS.get(contender), "linestyle": LINESTYLES[fmt], "marker": MARKERS[backend]}
        label = f"{contender} {fmt}" + (" (PG)" if backend == POSTGRESQL else "")
        time_ax.plot([p[0] for p in points], [p[1] for p in points], label=label, **style)
        rss_ax.plot([p[0] for p in points], [p[2] for p in points], label=label, **style)
    time_ax.set(xscale="log", yscale="log", xlabel="posts in the archive", ylabel="wall time (s)")
    time_ax.set_title("Export wall time")
    rss_ax.set(xscale="log", yscale="log", xlabel="posts in the archive", ylabel="peak RSS (MB, log scale)")
    rss_ax.set_title("Peak RSS of the export process (PG: client only)")
    sizes = sorted({p[0] for points in lines.values() for p in points})
    for ax in (time_ax, rss_ax):
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks(sizes, [size_label(s) for s in sizes])
        ax.minorticks_off()
    rss_ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
