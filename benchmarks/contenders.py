"""The contenders and the exact command each one runs (pure functions, no I/O)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: skyarchive.seed.DEFAULT_DID (kept here so that this module needs no host to import).
DEFAULT_DID = "did:plc:q6gjnaw2blty4crticxkmujt"
FORMATS = ("json", "csv")
HOST, PLUGIN, SQLITE_UTILS, SQLITE3 = "host", "plugin", "sqlite-utils", "sqlite3"
CONTENDERS = (HOST, PLUGIN, SQLITE_UTILS, SQLITE3)
SKYARCHIVE_CONTENDERS = (HOST, PLUGIN)
#: What the manifest's "exporter" key starts with when the intended path ran.
EXPECTED_EXPORTER = {HOST: "skyarchive", PLUGIN: "export_batching"}
#: The config file of each skyarchive contender: the host alone, or the plugin for every export.
CONFIG_TEXT = {
    HOST: "",
    PLUGIN: '[plugins]\nenabled = ["export_batching"]\n[plugins.export_batching]\nthreshold = 0\n',
}


@dataclass(frozen=True)
class Tools:
    """The executables the contenders run; None where a peer is not installed."""

    python: str
    sqlite_utils: str | None
    sqlite3: str | None


def find_tools(*, python: str = sys.executable) -> Tools:
    """Locate the peers: ``sqlite-utils`` next to ``python`` (an unactivated venv) or on PATH, ``sqlite3`` on PATH."""
    beside = Path(python).parent / "sqlite-utils"
    sqlite_utils = str(beside) if beside.is_file() else shutil.which("sqlite-utils")
    return Tools(python=python, sqlite_utils=sqlite_utils, sqlite3=shutil.which("sqlite3"))


def supports(contender: str, fmt: str) -> bool:
    """Whether ``contender`` takes part for ``fmt``: the sqlite3 CLI is measured for JSON only (the floor)."""
    return contender != SQLITE3 or fmt == "json"


def missing_tool(contender: str, tools: Tools) -> str | None:
    """Why ``contender`` cannot run with ``tools``, or None when it can."""
    if contender == SQLITE_UTILS and tools.sqlite_utils is None:
        return "sqlite-utils executable not found"
    if contender == SQLITE3 and tools.sqlite3 is None:
        return "sqlite3 executable not found"
    return None


def select_contenders(requested: Sequence[str], tools: Tools) -> tuple[list[str], dict[str, str]]:
    """Split ``requested`` into those that can run and ``{name: reason}`` for those skipped."""
    unknown = [name for name in requested if name not in CONTENDERS]
    if unknown:
        raise ValueError(f"unknown contender(s): {', '.join(unknown)} (choose from {', '.join(CONTENDERS)})")
    kept: list[str] = []
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(requested):
        reason = missing_tool(name, tools)
        if reason is None:
            kept.append(name)
        else:
            skipped[name] = reason
    return kept, skipped


def sql_literal(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def select_sql(did: str) -> str:
    """The query the peers run: the same rows, in the same order, as the exporters select."""
    return f"SELECT * FROM posts WHERE did = {sql_literal(did)} ORDER BY created_at DESC, uri ASC"


def build_command(
    contender: str, *, tools: Tools, db: Path, fmt: str, did: str, out_dir: Path, config_dir: Path
) -> list[str]:
    """The argv of one export. skyarchive contenders write under ``out_dir``; the peers write to stdout."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if contender in SKYARCHIVE_CONTENDERS:
        config = config_dir / f"{contender}.toml"
        return [
            tools.python, "-m", "skyarchive", "--config", str(config), "--db", f"sqlite:///{db}",
            "export", "--did", did, "--format", fmt, "--out", str(out_dir),
        ]  # fmt: skip
    if contender == SQLITE_UTILS and tools.sqlite_utils is not None:
        return [tools.sqlite_utils, "query", str(db), select_sql(did), *(["--csv"] if fmt == "csv" else [])]
    if contender == SQLITE3 and tools.sqlite3 is not None and fmt == "json":
        return [tools.sqlite3, "-json", str(db), select_sql(did)]
    raise ValueError(f"contender {contender!r} cannot export {fmt} with {tools}")


def seed_command(*, tools: Tools, db: Path, config: Path, posts: int, did: str) -> list[str]:
    """The argv that seeds an archive of ``posts`` posts without media files."""
    return [
        tools.python, "-m", "skyarchive", "--config", str(config), "--db", f"sqlite:///{db}",
        "seed", "--posts", str(posts), "--did", did, "--media-every", "0",
    ]  # fmt: skip
