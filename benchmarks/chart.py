"""The chart (matplotlib is optional): median wall time and memory against archive size, log-log, one line
per backend, contender and format, for the runs on the seeded archives with a warm cache and the normal disk
(the title says so); the media case (one size) and the other layouts, caches and disks are in the tables only.
The memory is the whole export's (every process it starts, proportional set sizes summed) where every point
has it, else (older measurements) the export process's peak RSS; the axis says which.

Every line can be told apart: its colour is its contender's, its marker its backend's, its line style its
format's; the legend below the plots lists each of the three.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .contenders import BACKEND_TITLES, NORMAL, POSTGRESQL, SEEDED, SQLITE, WARM
from .report import Row, contender_order

COLOURS = {
    "host": "tab:red", "plugin": "tab:blue", "plugin-checksums": "tab:cyan", "plugin-empty": "tab:olive",
    "sqlite-utils": "tab:green", "sqlite3": "tab:gray", "psql-copy": "tab:purple", "psql-json": "tab:brown",
}  # fmt: skip
#: For contenders added later (variants): colours no one above has.
SPARE_COLOURS = ("tab:orange", "tab:pink", "black", "gold", "navy", "lime")
LINESTYLES, MARKERS = {"json": "-", "csv": "--", "jsonl": ":"}, {SQLITE: "o", POSTGRESQL: "s"}
SPARE_LINESTYLES, SPARE_MARKERS = (":", "-."), ("^", "D", "v")
CHARTED = (SEEDED, WARM, NORMAL)  # (layout, cache, disk)


def size_label(size: int) -> str:
    """A short tick label: ``500``, ``5k``, ``100k``, ``1M``."""
    for unit, suffix in ((1_000_000, "M"), (1_000, "k")):
        if size >= unit and size % (unit // 10) == 0:
            return f"{size / unit:g}{suffix}"
    return str(size)


def styles(keys: Sequence[str], known: dict[str, str], spare: Sequence[str]) -> dict[str, str]:
    """A style for each of ``keys``: its own in ``known``, else the next spare one (no two keys share one)."""
    free = [s for s in spare if s not in known.values()]
    return {key: known[key] if key in known else free[n % len(free)] for n, key in enumerate(keys)}


def render_chart(rows: Sequence[Row], path: Path) -> str | None:
    """Write the PNG at ``path``; return why not (matplotlib missing, nothing measured) or None when written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        return "matplotlib is not installed"
    lines: dict[tuple[str, str, str], list[tuple[int, float, float]]] = {}
    charted = [row for row in rows if not row.media and (row.layout, row.cache, row.disk) == CHARTED]
    whole = bool(charted) and all(contender in row.pss_mb for row in charted for contender in row.seconds)
    for row in charted:
        for contender, seconds in row.seconds.items():
            memory = row.pss_mb[contender] if whole else row.megabytes[contender]
            lines.setdefault((row.backend, contender, row.format), []).append((row.size, seconds, memory))
    if not lines:
        return "nothing was measured on the seeded archives with a warm cache and the normal disk"
    contenders = sorted({key[1] for key in lines}, key=contender_order)
    backends = sorted({key[0] for key in lines}, key=lambda b: (b != SQLITE, b))
    formats = sorted({key[2] for key in lines}, key=lambda f: (list(LINESTYLES).index(f) if f in LINESTYLES else 9, f))
    colour = styles(contenders, COLOURS, SPARE_COLOURS)
    marker, linestyle = styles(backends, MARKERS, SPARE_MARKERS), styles(formats, LINESTYLES, SPARE_LINESTYLES)
    fig, (time_ax, rss_ax) = plt.subplots(1, 2, figsize=(13, 6.2))
    for (backend, contender, fmt), points in sorted(lines.items(), key=lambda item: contender_order(item[0][1])):
        style: dict[str, Any] = {"color": colour[contender], "linestyle": linestyle[fmt], "marker": marker[backend]}
        time_ax.plot([p[0] for p in points], [p[1] for p in points], **style)
        rss_ax.plot([p[0] for p in points], [p[2] for p in points], **style)
    time_ax.set(xscale="log", yscale="log", xlabel="posts in the archive", ylabel="wall time (s)")
    time_ax.set_title("Export wall time")
    if whole:
        rss_ax.set(xscale="log", yscale="log", xlabel="posts in the archive", ylabel="peak PSS (MB, log scale)")
        rss_ax.set_title("Memory of the whole export: every process, PSS summed\n(PostgreSQL: the client's only)")
    else:
        rss_ax.set(xscale="log", yscale="log", xlabel="posts in the archive", ylabel="peak RSS (MB, log scale)")
        rss_ax.set_title("Peak RSS of the export process (PostgreSQL: client only)")
    sizes = sorted({p[0] for points in lines.values() for p in points})
    for ax in (time_ax, rss_ax):
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks(sizes, [size_label(s) for s in sizes])
        ax.minorticks_off()
    handles = [Line2D([], [], color=colour[c], linewidth=3, label=c) for c in contenders]
    handles += [Line2D([], [], color="black", linestyle="", marker=marker[b], label=BACKEND_TITLES.get(b, b))
                for b in backends]  # fmt: skip
    handles += [Line2D([], [], color="black", linestyle=linestyle[f], label=f.upper()) for f in formats]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize="small",
               title="colour: contender; marker: backend; line: format")  # fmt: skip
    fig.suptitle("Seeded archives, warm page cache, normal disk (medians; other runs: see the tables)")
    fig.tight_layout(rect=(0, 0.06 + 0.035 * (len(handles) // 7), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
