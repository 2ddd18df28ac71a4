"""The archives: ``<workdir>/archive-<size>[-media1].db``, seeded by ``skyarchive seed`` (deterministic), and
its PostgreSQL twin ``skyarchive_bench_<size>[_media1]``, made by ``skyarchive init`` and filled from the SQLite
file by ``COPY … FROM STDIN`` (psycopg 3), far faster than seeding row by row. Each is reused while its counts
(posts, posts of the DID, media rows = files in its media folder) are right.
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .contenders import MEDIA_EVERY, POSTGRESQL, SQLITE, Archive, Case

Log = Callable[[str], None]
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432"
TABLES = ("posts", "media")  # in foreign-key order
COUNTS = "SELECT count(*), sum(CASE WHEN did = {} THEN 1 ELSE 0 END), (SELECT count(*) FROM media) FROM posts"


class BenchmarkError(Exception):
    """A run that failed or did not take the intended path: the results would be wrong."""


def child_env() -> dict[str, str]:
    """The environment of every command: ours, less SKYARCHIVE_CONFIG (each command is given its config, or none)."""
    return {key: value for key, value in os.environ.items() if key != "SKYARCHIVE_CONFIG"}


def psycopg() -> Any:
    """psycopg 3, imported by name: only PostgreSQL needs it (not the tests under skyarchive 0.3, nor mypy)."""
    return importlib.import_module("psycopg")


def probe_postgresql(pg: str) -> str:
    """The version of the server at ``pg``; raises BenchmarkError saying why it cannot be used."""
    try:
        with psycopg().connect(f"{pg}/postgres", connect_timeout=5) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])
    except ImportError as exc:
        raise BenchmarkError(f"psycopg 3 is not installed ({exc})") from None
    except Exception as exc:  # psycopg.Error, which this module cannot name without importing psycopg
        raise BenchmarkError(f"cannot connect to {pg}: {(str(exc).strip().splitlines() or ['?'])[0]}") from None


def locate(case: Case, workdir: Path, pg: str) -> Archive:
    """Where the archive of ``case`` lives (whether or not it exists yet)."""
    name = f"archive-{case.size}" + (f"-media{MEDIA_EVERY}" if case.media else "")
    media_dir = workdir / f"{name}.media"
    if case.backend == POSTGRESQL:
        uri = f"{pg}/skyarchive_bench_" + name.removeprefix("archive-").replace("-", "_")
        return Archive(case, "postgresql+psycopg://" + uri.split("://", 1)[1], uri, media_dir)
    return Archive(case, f"sqlite:///{workdir / name}.db", f"{workdir / name}.db", media_dir)


def files_in(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted."""
    return sorted(path for path in folder.rglob("*") if path.is_file())


def is_complete(archive: Archive, did: str) -> bool:
    """Whether the archive holds ``size`` posts, all of ``did``, and one media row per file in its media folder."""
    files = len(files_in(archive.media_dir))
    try:
        if archive.case.backend == POSTGRESQL:
            with psycopg().connect(archive.location, connect_timeout=5) as conn:
                found = tuple(conn.execute(COUNTS.format("%s"), (did,)).fetchone())
        elif Path(archive.location).is_file():
            with sqlite3.connect(f"file:{archive.location}?mode=ro", uri=True) as db:
                found = tuple(db.execute(COUNTS.format("?"), (did,)).fetchone())
        else:
            return False
    except Exception:  # sqlite3.Error, psycopg.Error: no such database or table
        return False
    return found == (archive.case.size, archive.case.size, files)


def skyarchive_cli(python: str, *args: str, cwd: Path) -> None:
    """Run ``skyarchive ARGS``; raises BenchmarkError when it fails."""
    command = [python, "-m", "skyarchive", *args]
    done = subprocess.run(command, cwd=cwd, env=child_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"skyarchive {shlex.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def seed_sqlite(archive: Archive, seed: list[str], *, python: str) -> None:
    """Seed the SQLite archive into a scratch file, then move it into place."""
    db, partial = Path(archive.location), Path(archive.location).with_suffix(".partial.db")
    for stale in (db, partial):
        stale.unlink(missing_ok=True)
    config = db.with_suffix(".toml")
    config.write_text(f"media_dir = {json.dumps(str(archive.media_dir))}\n", encoding="utf-8")
    skyarchive_cli(python, "--config", str(config), "--db", f"sqlite:///{partial}", *seed, cwd=db.parent)
    os.replace(partial, db)


def copy_into_postgresql(source: Archive, archive: Archive, *, pg: str, python: str) -> None:
    """(Re)create the PostgreSQL database, its schema with ``skyarchive init``, and copy in the rows of ``source``."""
    database = archive.location.rsplit("/", 1)[1]
    with psycopg().connect(f"{pg}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{database}"')
    with tempfile.TemporaryDirectory() as scratch:  # for the media and exports folders that init makes
        skyarchive_cli(python, "--db", archive.url, "init", cwd=Path(scratch))
    with (
        sqlite3.connect(f"file:{source.location}?mode=ro", uri=True) as src,
        psycopg().connect(archive.location) as conn,
    ):
        for table in TABLES:
            rows = src.execute(f"SELECT * FROM {table}")
            columns = ", ".join(d[0] for d in rows.description)
            with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:  # SQLite's 0 and 1 are valid boolean input
                    copy.write_row(row)
        conn.execute("ANALYZE")


def timed(log: Log, what: str, make: Callable[..., None], *args: Any, **kwargs: Any) -> float:
    """Say ``what``, run ``make(*args, **kwargs)``, and return how long it took (s)."""
    log(what)
    started = time.perf_counter()
    make(*args, **kwargs)
    return round(time.perf_counter() - started, 2)


def ensure_archive(
    case: Case, *, workdir: Path, did: str, python: str, pg: str, log: Log
) -> tuple[Archive, dict[str, Any]]:
    """The archive of ``case``, made unless reused, and how its rows were made (``*_s``: seconds; None: reused)."""
    workdir.mkdir(parents=True, exist_ok=True)
    source, archive = locate(Case(SQLITE, case.size, case.media), workdir, pg), locate(case, workdir, pg)
    seed = f"seed --posts {case.size} --did {did} --seed 0 --media-every {MEDIA_EVERY * case.media}".split()
    made: dict[str, Any] = {**asdict(case), "rows": f"skyarchive {shlex.join(seed)}", "sqlite": source.location}
    made["seed_s"] = None if is_complete(source, did) else timed(
        log, f"{source.location}: seeding", seed_sqlite, source, seed, python=python
    )  # fmt: skip
    if archive != source:
        made |= {"postgresql": archive.location, "copy": f"skyarchive init, then COPY {', '.join(TABLES)} FROM STDIN"}
        made["copy_s"] = None if is_complete(archive, did) else timed(
            log, f"{archive.location}: copying the rows", copy_into_postgresql, source, archive, pg=pg, python=python
        )  # fmt: skip
    reused = made["seed_s"] is None and made.get("copy_s") is None
    log(f"{archive.location}: {'reused' if reused else 'ready'} ({case.size:,} posts)")
    return archive, made
