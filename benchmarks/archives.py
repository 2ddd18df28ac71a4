"""The archives: ``<workdir>/archive-<size>[-media1].db``, seeded by ``skyarchive seed`` (deterministic), and
its PostgreSQL twin ``skyarchive_bench_<size>[_media1]``, made by ``skyarchive init`` and filled from the SQLite
file by ``COPY … FROM STDIN`` in rowid order (psycopg 3), far faster than seeding row by row.

The ``oldest-first`` layout, ``<workdir>/archive-<size>-oldest.db`` (PostgreSQL: ``skyarchive_bench_<size>_oldest``,
copied from it as above): the posts of the seeded archive of that size, but every 4th row by rowid that has no
embed given an image embed (``embed_type = 'images'``, an ``embed_data`` as Bluesky's, alt text of realistic
length; no media rows), inserted oldest first (``ORDER BY created_at ASC, uri DESC``) as an archiver appends
them: ``skyarchive init`` of a scratch file, then sqlite3 attaches the seeded file and runs OLDEST_FIRST_SQL,
then ``ANALYZE``, and the file is renamed into place. Each archive is reused while its counts (posts, posts of
the DID, media rows = files in its media folder) are right.

The selection's stored size, which the exports' temporary space is measured against: the size of one SQLite copy
of the exported posts (``CREATE TABLE posts AS SELECT * FROM src.posts WHERE did = ?`` into a scratch file,
``page_count * page_size``), taken from the SQLite file the archive's rows come from (a PostgreSQL twin has the
same rows) and kept beside it in ``<archive>.selection.json`` while the file and the DID are the same.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shlex
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .contenders import MEDIA_EVERY, OLDEST_FIRST, POSTGRESQL, SQLITE, Archive, Case

Log = Callable[[str], None]
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432"
TABLES = ("posts", "media")  # in foreign-key order
COUNTS = "SELECT count(*), sum(CASE WHEN did = {} THEN 1 ELSE 0 END), (SELECT count(*) FROM media) FROM posts"
#: The oldest-first layout: every IMAGE_EVERY-th row (by the seeded file's rowid) without an embed gets images.
IMAGE_EVERY = 4
#: Its image embeds' alt texts and sizes (an alt text is 0 to 2,000 characters on Bluesky; these run 60-420).
ALT_TEXTS = (
    ("A cup of coffee on a wooden table next to an open notebook, morning light from the window.", 1000, 750),
    (
        "Screenshot of a terminal window. The command 'skyarchive export --format json' is running and a progress "
        "line reads: exported 41,250 of 118,400 posts. Below it, a second window shows the archive folder with "
        "several dated export directories.",
        1200,
        675,
    ),
    (
        "Cherry blossoms along the river in Tokyo, people walking under the trees; a small boat passes under a "
        "stone bridge.",
        750,
        1000,
    ),
    (
        "Chart: posts per month from 2023 to 2025, rising from about 200 to 1,400, with a dip in August 2024 "
        "marked \u201choliday\u201d.",
        800,
        800,
    ),
    (
        "Hand-drawn diagram on a whiteboard: three boxes labelled 'reader', 'encoder' and 'writer' joined by "
        "arrows; under the writer box someone wrote 'spool (unnamed file)' and circled it twice. In the corner, "
        "a sticky note says: do not hold the read lock while the disk is slow! Next to it, a list of numbers: "
        "5 s busy timeout, 0.1 s per insert, 1,000 posts per batch. The photo is slightly blurred at the "
        "edges and the glare from the ceiling lights hides part of the top arrow.",
        2000,
        1500,
    ),
    ("My cat asleep on the keyboard \U0001f63a, paws over the space bar, the screen full of letters.", 640, 960),
)


SELECTION_MADE = "CREATE TABLE posts AS SELECT * FROM src.posts WHERE did = ? into a scratch SQLite file"


def oldest_first_sql(columns: Sequence[str]) -> str:
    """The INSERT that fills an oldest-first archive from the seeded one (attached as ``src``) with ``columns``."""
    image = f"p.rowid % {IMAGE_EVERY} = 0 AND p.embed_type IS NULL"
    url = "'https://cdn.bsky.app/img/feed_{}/plain/' || p.did || '/bafkrei' || substr(p.cid, 8) || '@jpeg'"
    embed = (
        "json_object('images', json_array(json_object('alt', a.alt, 'aspectRatio', json_object('height', a.height, "
        f"'width', a.width), 'fullsize', {url.format('fullsize')}, 'thumb', {url.format('thumbnail')})))"
    )
    values = {
        "embed_type": f"CASE WHEN {image} THEN 'images' ELSE p.embed_type END",
        "embed_data": f"CASE WHEN {image} THEN {embed} ELSE p.embed_data END",
        "has_media": f"CASE WHEN {image} THEN 1 ELSE p.has_media END",
    }
    alts = ", ".join(f"({n}, {sql_text(alt)}, {width}, {height})" for n, (alt, width, height) in enumerate(ALT_TEXTS))
    return (
        f"WITH alts(n, alt, width, height) AS (VALUES {alts}) INSERT INTO posts ({', '.join(columns)}) "
        f"SELECT {', '.join(values.get(c, f'p.{c}') for c in columns)} FROM src.posts p "
        f"JOIN alts a ON a.n = p.rowid / {IMAGE_EVERY} % {len(ALT_TEXTS)} ORDER BY p.created_at ASC, p.uri DESC"
    )


LAYOUT_MADE = (
    f"skyarchive init, then sqlite3: ATTACH the seeded file, INSERT INTO posts SELECT … (every {IMAGE_EVERY}th row "
    "by rowid without an embed given an image embed) ORDER BY created_at ASC, uri DESC, then ANALYZE"
)


def posts_columns(db: Path) -> list[str]:
    """The columns of the posts table of the SQLite archive ``db``, in schema order."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        columns = [str(row[1]) for row in conn.execute("PRAGMA table_info(posts)")]
    conn.close()
    return columns


def sql_text(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


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
    name += "-oldest" if case.layout == OLDEST_FIRST else ""
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
            rows = src.execute(f"SELECT * FROM {table} ORDER BY rowid")
            columns = ", ".join(d[0] for d in rows.description)
            with conn.cursor().copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:  # SQLite's 0 and 1 are valid boolean input
                    copy.write_row(row)
        conn.execute("ANALYZE")


def make_oldest_first(source: Archive, archive: Archive, *, python: str) -> None:
    """Make the oldest-first SQLite archive from the seeded one (see the module's docstring)."""
    db, partial = Path(archive.location), Path(archive.location).with_suffix(".partial.db")
    for stale in (db, partial):
        stale.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as scratch:  # for the media and exports folders that init makes
        skyarchive_cli(python, "--db", f"sqlite:///{partial}", "init", cwd=Path(scratch))
    conn = sqlite3.connect(partial, isolation_level=None)
    try:
        conn.execute("ATTACH DATABASE ? AS src", (str(source.location),))
        conn.execute("BEGIN")
        conn.execute(oldest_first_sql(posts_columns(Path(source.location))))
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE src")
        conn.execute("ANALYZE")
    finally:
        conn.close()
    os.replace(partial, db)


def stored_selection(db: Path, did: str) -> int:
    """Bytes of one SQLite copy of the posts of ``did`` in the SQLite file ``db`` (see the module's docstring)."""
    scratch = db.with_suffix(".selection.partial.db")
    scratch.unlink(missing_ok=True)
    conn = sqlite3.connect(scratch, isolation_level=None, uri=True)
    try:
        conn.execute("ATTACH DATABASE ? AS src", (f"file:{db}?mode=ro",))
        conn.execute("CREATE TABLE posts AS SELECT * FROM src.posts WHERE did = ?", (did,))
        pages, page_size = (
            int(conn.execute(f"PRAGMA main.{what}").fetchone()[0]) for what in ("page_count", "page_size")
        )
    finally:
        conn.close()
        scratch.unlink(missing_ok=True)
    return pages * page_size


def selection_cache(db: Path) -> Path:
    """Where the stored size of ``db``'s selection is kept."""
    return db.with_suffix(".selection.json")


def cached_selection(db: Path, did: str, *, log: Log) -> tuple[int, float | None]:
    """``(stored size of the selection of did in db, seconds taken to measure it or None if it was cached)``."""
    st = db.stat()
    key = {"did": did, "st_dev": st.st_dev, "st_ino": st.st_ino}
    try:
        kept = json.loads(selection_cache(db).read_text(encoding="utf-8"))
        if {k: kept.get(k) for k in key} == key and isinstance(kept.get("bytes"), int):
            return kept["bytes"], None
    except (OSError, ValueError, AttributeError):
        pass
    log(f"{db}: measuring the selection's stored size")
    started = time.perf_counter()
    size = stored_selection(db, did)
    took = round(time.perf_counter() - started, 2)
    selection_cache(db).write_text(json.dumps({**key, "bytes": size}) + "\n", encoding="utf-8")
    return size, took


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
    seeded = locate(Case(SQLITE, case.size, case.media), workdir, pg)
    source, archive = locate(Case(SQLITE, case.size, case.media, case.layout), workdir, pg), locate(case, workdir, pg)
    seed = f"seed --posts {case.size} --did {did} --seed 0 --media-every {MEDIA_EVERY * case.media}".split()
    made: dict[str, Any] = {**asdict(case), "rows": f"skyarchive {shlex.join(seed)}", "sqlite": seeded.location}
    made["seed_s"] = None if is_complete(seeded, did) else timed(
        log, f"{seeded.location}: seeding", seed_sqlite, seeded, seed, python=python
    )  # fmt: skip
    if source != seeded:
        made |= {"layout_sqlite": source.location, "layout_made": LAYOUT_MADE}
        made["layout_sql"] = oldest_first_sql(posts_columns(Path(seeded.location)))
        made["layout_s"] = None if is_complete(source, did) else timed(
            log, f"{source.location}: making the {case.layout} layout", make_oldest_first, seeded, source, python=python
        )  # fmt: skip
    if archive != source:
        made |= {"postgresql": archive.location, "copy": f"skyarchive init, then COPY {', '.join(TABLES)} FROM STDIN"}
        made["copy_s"] = None if is_complete(archive, did) else timed(
            log, f"{archive.location}: copying the rows", copy_into_postgresql, source, archive, pg=pg, python=python
        )  # fmt: skip
    reused = made["seed_s"] is None and made.get("layout_s") is None and made.get("copy_s") is None
    if made["seed_s"] is not None or made.get("layout_s") is not None:
        selection_cache(Path(source.location)).unlink(missing_ok=True)  # a new file, perhaps on the old inode
    made["selection_bytes"], made["selection_s"] = cached_selection(Path(source.location), did, log=log)
    made["selection"] = SELECTION_MADE
    log(f"{archive.location}: {'reused' if reused else 'ready'} ({case.size:,} posts)")
    return dataclasses.replace(archive, selection_bytes=made["selection_bytes"]), made
