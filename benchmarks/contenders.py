"""The backends, the cases, the run conditions and the contenders, as data; the exact command each contender runs
(no I/O).

A case is an archive: a backend, a size, the media case or not, and a layout (``seeded``: as ``skyarchive seed``
writes it, newest post first; ``oldest-first``: the same posts, every 4th without an embed given an image embed
(21.5% of them at 100,000 posts), inserted oldest first as an archiver appends them). Each run of a case also has
a condition: the OS page cache of the archive ``warm`` or ``cold`` (evicted right before the run; SQLite only),
and the export folder on a ``normal`` or a ``slow`` disk (the slowdisk shim; only the contenders whose ``disks``
include it).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: skyarchive.seed.DEFAULT_DID (kept here so that this module needs no host to import).
DEFAULT_DID = "did:plc:q6gjnaw2blty4crticxkmujt"
FORMATS = ("json", "csv", "jsonl")
SQLITE, POSTGRESQL = "sqlite", "postgresql"
BACKENDS = (SQLITE, POSTGRESQL)
BACKEND_TITLES = {SQLITE: "SQLite", POSTGRESQL: "PostgreSQL"}
#: The sizes of each backend when --sizes is not given (--million adds 1,000,000 to each).
DEFAULT_SIZES = {SQLITE: (500, 5_000, 50_000, 100_000), POSTGRESQL: (100_000,)}
MILLION = 1_000_000
#: The media case: every post has images (``seed --media-every 1``) and the exports copy them (``--media``).
MEDIA_EVERY = 1
DEFAULT_MEDIA_POSTS = 6_000
#: The archive layouts (see archives.py for how each is made); the media case is always seeded.
SEEDED, OLDEST_FIRST = "seeded", "oldest-first"
LAYOUTS = (SEEDED, OLDEST_FIRST)
#: The page cache of the archive before a run, and the disk the export folder is on.
WARM, COLD = "warm", "cold"
CACHES = (WARM, COLD)
NORMAL, SLOW = "normal", "slow"
DISKS = (NORMAL, SLOW)
#: The DID the archiver (benchmarks/archiver.py) posts as during the runs: not the exported one, so that the
#: export's selection does not change.
ARCHIVER_DID = "did:plc:benchmarkarchiver"
#: ``--since`` of plugin-empty: after every post, so that the selection is empty.
EMPTY_SINCE = "2100-01-01"


@dataclass(frozen=True)
class Case:
    """One archive: a backend, a size, whether its posts have media files that the exports copy, its layout."""

    backend: str
    size: int
    media: bool = False
    layout: str = SEEDED


@dataclass(frozen=True)
class Condition:
    """How one run finds the machine: the archive's page cache (``warm``/``cold``), the export's disk."""

    cache: str = WARM
    disk: str = NORMAL


@dataclass(frozen=True)
class Archive:
    """A seeded archive: the URL skyarchive opens, what the peers open (a file or a libpq URI), its media folder;
    the selection's stored size in bytes (see archives.py) once measured."""

    case: Case
    url: str
    location: str
    media_dir: Path
    selection_bytes: int | None = None


@dataclass(frozen=True)
class Job:
    """One export: the archive, the format, the DID; where skyarchive writes the export and finds its config."""

    archive: Archive
    fmt: str
    did: str
    out_dir: Path
    config: Path

    @property
    def sql(self) -> str:
        """The peers' query."""
        return select_sql(self.did)


Command = Callable[[str, Job], list[str]]


@dataclass(frozen=True)
class Contender:
    """One way of exporting; ``command(tool as found, job)`` is its argv.

    One with a ``config`` is skyarchive, run with that text after ``media_dir`` in its config file: it
    copies media in the media case, and its manifest's exporter must start with ``exporter``. Any other
    writes the posts to its stdout. ``disks``: the disks its export folder is put on (``slow`` only with
    ``--slow-disk``; the peers write to their stdout, which the slowdisk shim cannot slow: see slowdisk.py).
    ``same_output``: its posts file must equal that of every other skyarchive run of the same archive and
    format (False: it exports another selection, and may write an empty file).
    """

    name: str
    backends: tuple[str, ...]
    formats: tuple[str, ...]
    command: Command
    tool: str = "python"  # the executable, found by find_tool
    config: str | None = None
    exporter: str | None = None
    disks: tuple[str, ...] = (NORMAL,)
    same_output: bool = True

    @property
    def is_skyarchive(self) -> bool:
        """Whether it is skyarchive itself (the host alone or with the plugin), run with a config file."""
        return self.config is not None

    def takes_part(self, case: Case, fmt: str) -> bool:
        """Whether it runs on ``case`` in ``fmt`` (only skyarchive copies media)."""
        return case.backend in self.backends and fmt in self.formats and (self.is_skyarchive or not case.media)


def sql_literal(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


ORDER = "ORDER BY created_at DESC, uri ASC"
JSON_AGG = f"SELECT json_agg(p {ORDER}) FROM posts p WHERE did = {{}}"


def select_sql(did: str) -> str:
    """The query the peers run: the same rows, in the same order, as the exporters select."""
    return f"SELECT * FROM posts WHERE did = {sql_literal(did)} {ORDER}"


def plugin_config(**settings: object) -> str:
    """The config that turns the plugin on with ``settings`` as its ``[plugins.export_batching]`` table."""
    table = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    return f'[plugins]\nenabled = ["export_batching"]\n[plugins.export_batching]\n{table}'


def config_text(contender: Contender, media_dir: Path) -> str:
    """The whole config file of a skyarchive contender: the archive's media folder, then its own part."""
    return f"media_dir = {json.dumps(str(media_dir))}\n{contender.config or ''}"


def skyarchive(python: str, job: Job) -> list[str]:
    """``skyarchive export`` into ``job.out_dir`` (with ``--media`` on the media case)."""
    media = ["--media"] if job.archive.case.media else []
    return [
        python, "-m", "skyarchive", "--config", str(job.config), "--db", job.archive.url, "export",
        "--did", job.did, "--format", job.fmt, "--out", str(job.out_dir), *media,
    ]  # fmt: skip


def skyarchive_empty(python: str, job: Job) -> list[str]:
    """``skyarchive export`` of an empty selection (``--since EMPTY_SINCE``): start-up and the process baseline."""
    return [*skyarchive(python, job), "--since", EMPTY_SINCE]


def psql(exe: str, job: Job, *args: str) -> list[str]:
    """``psql`` on the archive, stopping at the first error, with ``args``."""
    return [exe, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", job.archive.location, *args]


#: sqlite-utils query's option for each format (JSON: its default, an array).
PEER_FORMAT = {"json": (), "csv": ("--csv",), "jsonl": ("--nl",)}

CONTENDERS = (
    # skyarchive alone (the host's in-memory exporter), then with the plugin on for every size.
    Contender("host", BACKENDS, FORMATS, skyarchive, config="", exporter="skyarchive", disks=DISKS),
    Contender("plugin", BACKENDS, FORMATS, skyarchive, config=plugin_config(threshold=0), exporter="export_batching",
              disks=DISKS),
    # A variant is one more entry (and a Ratio in report.RATIOS to compare it):
    Contender("plugin-checksums", BACKENDS, FORMATS, skyarchive,
              config=plugin_config(threshold=0, checksums=True), exporter="export_batching", disks=DISKS),
    # The plugin exporting nothing: its peak RSS is the process baseline, its time the start-up cost.
    Contender("plugin-empty", BACKENDS, FORMATS, skyarchive_empty, config=plugin_config(threshold=0),
              exporter="export_batching", same_output=False),
    # The peers and floors: the same rows in the same order, to stdout.
    Contender("sqlite-utils", (SQLITE,), FORMATS, tool="sqlite-utils",
              command=lambda exe, job: [exe, "query", job.archive.location, job.sql, *PEER_FORMAT[job.fmt]]),
    Contender("sqlite3", (SQLITE,), ("json",), tool="sqlite3",
              command=lambda exe, job: [exe, "-json", job.archive.location, job.sql]),
    Contender("psql-copy", (POSTGRESQL,), ("csv",), tool="psql",
              command=lambda exe, job: psql(exe, job, "-c", f"\\copy ({job.sql}) TO STDOUT WITH CSV HEADER")),
    Contender("psql-json", (POSTGRESQL,), ("json",), tool="psql",
              command=lambda exe, job: psql(exe, job, "-A", "-t", "-c", JSON_AGG.format(sql_literal(job.did)))),
)  # fmt: skip
BY_NAME = {c.name: c for c in CONTENDERS}


def find_tool(tool: str) -> str | None:
    """This Python itself, or the executable next to it (an unactivated venv), or on PATH; None if absent."""
    if tool == "python":
        return sys.executable
    beside = Path(sys.executable).parent / tool
    return str(beside) if beside.is_file() else shutil.which(tool)
