"""Driving exports in-process: the host's own path and the plugin's, through the host's ``run_export``."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pluggy
import skyarchive
import skyarchive.export
from skyarchive import hookspecs
from skyarchive.cli import run_export
from skyarchive.config import AppConfig
from skyarchive.export import ExportJob, ExportRequest, ExportResult, export_dir_for
from skyarchive.models import Base, media_table, posts_table
from sqlalchemy import create_engine, insert
from sqlalchemy.engine import Engine

from export_batching_plugin.host import POSTS_FILE
from export_batching_plugin.plugin import create_plugin

#: skyarchive 0.5 hands the export a status channel (``progress.status``).
HOST_HAS_STATUS = tuple(int(p) for p in skyarchive.__version__.split(".")[:2]) >= (0, 5)
#: The formats the installed host writes (0.5 adds JSON Lines); every differential test runs each.
FORMATS: list[str] = list(skyarchive.export.FORMATS)


def status_line(what: str, posts: int) -> str:
    """A status line of the plugin's, as skyarchive's console prints it when it is not a terminal: through the
    status channel (0.5), or logged (before), once ``posts`` posts are written."""
    if HOST_HAS_STATUS:
        return f"export: {what}"
    return f"skyarchive: WARNING: export_batching: all {posts:,} posts written; {what}"


_counter = itertools.count()


def make_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    return engine


def post_row(n: int, did: str = "did:plc:owner", **values: Any) -> dict[str, Any]:
    """A complete posts row; ``values`` override the plain defaults."""
    row: dict[str, Any] = {
        "uri": f"at://{did}/app.bsky.feed.post/{n:013d}",
        "cid": f"bafyrei{n:052d}",
        "did": did,
        "text": f"post {n}",
        "created_at": f"2025-01-01T00:00:{n % 60:02d}.000Z",
        "indexed_at": "2025-01-01T00:01:00.000Z",
        "has_media": False,
        "like_count": 0,
        "repost_count": 0,
        "reply_count": 0,
        "quote_count": 0,
        "is_reply": False,
        "reply_parent": None,
        "embed_type": None,
        "embed_data": None,
        "labels": None,
        "archived_at": "2025-01-02T00:00:00.000Z",
    }
    row.update(values)
    return row


def insert_rows(engine: Engine, posts: Iterable[Mapping[str, Any]], media: Iterable[Mapping[str, Any]] = ()) -> None:
    posts, media = list(posts), list(media)
    with engine.begin() as conn:
        if posts:
            conn.execute(insert(posts_table), posts)
        if media:
            conn.execute(insert(media_table), media)


def media_row(hash: str, post: Mapping[str, Any], file_path: str, size: int = 3) -> dict[str, Any]:
    """A media row of ``post`` (a posts row, as :func:`post_row` makes it) for ``file_path`` under media_dir."""
    return {
        "hash": hash,
        "post_uri": post["uri"],
        "mime_type": "image/jpeg",
        "file_path": file_path,
        "size_bytes": size,
        "created_at": post["created_at"],
    }


def archive_with_media(
    root: Path, posts: list[dict[str, Any]], files: Mapping[str, tuple[int, bytes | None]]
) -> tuple[Engine, Path]:
    """An archive in ``root`` with ``posts`` and a media row per file, and its media_dir (``root/media``).

    ``files``: file path -> (index of its post in ``posts``, content, or None for a file that is missing).
    """
    media_dir = root / "media"
    media_dir.mkdir()
    media = []
    for n, (name, (post, content)) in enumerate(files.items()):
        if content is not None:
            (media_dir / name).write_bytes(content)
        media.append(media_row(f"h{n}", posts[post], name, len(content or b"")))
    engine = make_engine(root / "a.db")
    insert_rows(engine, posts, media)
    return engine, media_dir


def add_slow_media_file(engine: Engine, media_dir: Path) -> Path:
    """A media row ``slow.jpg`` for the first post (by uri), its file a FIFO: storage that answers only
    once :func:`feed_fifo` writes to it. Returns the FIFO's path."""
    media_dir.mkdir(parents=True, exist_ok=True)
    fifo = media_dir / "slow.jpg"
    os.mkfifo(fifo)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO media (hash, post_uri, mime_type, file_path, size_bytes, created_at)"
            " SELECT 'slow', uri, 'image/jpeg', 'slow.jpg', 4, created_at FROM posts ORDER BY uri LIMIT 1"
        )
    return fifo


def feed_fifo(fifo: Path, data: bytes = b"jpeg", *, timeout: float = 30) -> bool:
    """Write ``data`` to ``fifo`` once a reader has it open, never blocking while none has; whether one
    came within ``timeout`` seconds. A reader that went away meanwhile (its export stopped) is not minded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader (yet)
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
            continue
        try:
            os.write(fd, data)
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)
        return True


@dataclass
class Outcome:
    """What one export left: its result or error, the posts file's bytes, the progress events."""

    result: ExportResult | None
    error: BaseException | None
    posts_bytes: bytes | None
    manifest: dict[str, Any] | None
    events: list[tuple[int, int]] = field(default_factory=list)
    job: ExportJob | None = None
    #: What the export said it was doing through ``progress.status`` (skyarchive 0.5; empty before).
    statuses: list[str] = field(default_factory=list)


@dataclass
class Recorder:
    """A progress listener as skyarchive's console is one: ``(processed, total)``, and ``status(text)`` (0.5)."""

    events: list[tuple[int, int]] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)

    def __call__(self, processed: int, total: int) -> None:
        self.events.append((processed, total))

    def status(self, text: str) -> None:
        self.statuses.append(text)


def status_lines(outcome: Outcome, records: Iterable[logging.LogRecord]) -> list[str]:
    """What the plugin said the export was doing: through ``progress.status`` on skyarchive 0.5 (where it must
    log none of it), through logging before."""
    logged = [r.getMessage().removeprefix("export_batching: ") for r in records if r.name == "export_batching_plugin"]
    if HOST_HAS_STATUS:
        assert not [line for line in logged if line.startswith("all ")], "0.5 has a status channel: no log lines"
        return outcome.statuses
    return [re.sub(r"^all [\d,]+ posts written; ", "", line) for line in logged if line.startswith("all ")]


def plugin_manager(settings: Mapping[str, Any] | None) -> pluggy.PluginManager:
    """The host's plugin manager, with the plugin registered when ``settings`` is not None."""
    pm = pluggy.PluginManager("skyarchive")
    pm.add_hookspecs(hookspecs)
    if settings is not None:
        pm.register(create_plugin(dict(settings)), name="export_batching")
    return pm


def export(
    engine: Engine,
    out: Path,
    *,
    settings: Mapping[str, Any] | None,
    did: str = "did:plc:owner",
    format: str = "json",
    since: str | None = None,
    until: str | None = None,
    media: bool = False,
    media_dir: Path | None = None,
    read_posts: bool = True,
    folder: str | None = None,
    listener: Callable[[int, int], None] | None = None,
) -> Outcome:
    """Run one export through the host's ``run_export``; ``settings=None`` is the host alone.

    ``read_posts=False`` leaves the posts file unread (for memory measurements).
    Each export goes to a folder of its own under ``out`` unless ``folder`` names one.
    """
    import simplejson

    request = ExportRequest.create(did=did, format=format, since=since, until=until, media=media)
    config = AppConfig(media_dir=media_dir or out / "no-media", exports_dir=out)
    started = datetime(2025, 6, 1, 12, 0, next(_counter) % 60, tzinfo=timezone.utc)
    export_dir = export_dir_for(out / (folder or f"run{next(_counter)}"), did, started)
    existed = export_dir.exists()
    recorder = Recorder()
    job = ExportJob(
        request=request,
        config=config,
        engine=engine,
        export_dir=export_dir,
        started_at=started,
        listeners=[recorder, *([listener] if listener else [])],
    )
    try:
        result = run_export(job, plugin_manager(settings))
    except Exception as exc:
        assert existed or not export_dir.exists(), "a failed export must leave no directory"
        return Outcome(None, exc, None, None, recorder.events, job, recorder.statuses)
    posts_file = export_dir / POSTS_FILE[format]
    posts = posts_file.read_bytes() if read_posts else None
    manifest = simplejson.loads((export_dir / "manifest.json").read_text(encoding="utf-8"))
    return Outcome(result, None, posts, manifest, recorder.events, job, recorder.statuses)


def open_fds() -> set[str]:
    """This process's open files, as ``fd -> target`` (the listing's own fd, gone once listed, left out).

    Compared as ``open_fds() <= before``: nothing the export opened stays open (files that earlier tests left
    to the garbage collector may close meanwhile)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except FileNotFoundError:
            continue
    return found


def fail_writing(monkeypatch: Any, *, batch: int, error: BaseException) -> None:
    """Make the export's own writing of posts file batch ``batch`` fail with ``error`` (its file named)."""
    from export_batching_plugin import worker

    original = worker.Writer.write

    def write(self: Any, pieces: Any, *, batch: Any = None, posts: int = 0) -> None:
        if batch is not None and batch.number == wanted:
            if isinstance(error, OSError) and error.filename is None:
                error.filename = self.path
            raise error
        original(self, pieces, batch=batch, posts=posts)

    wanted = batch
    monkeypatch.setattr(worker.Writer, "write", write)


def force_plan(monkeypatch: Any, *, source: str, child: bool) -> list[Any]:
    """Make every export follow ``source`` (``copy``, ``spool`` or ``direct``), with or without a child process,
    whatever its plan would have chosen (the rest of the plan as chosen); the plans the exports made."""
    import dataclasses

    from export_batching_plugin import batched

    original = batched.make_plan
    made: list[Any] = []

    def make(conn: Any, **kwargs: Any) -> Any:
        chosen = original(conn, **kwargs)
        forced = dataclasses.replace(chosen, source=source, child=child, room=1 << 40 if source != "direct" else 0)
        made.append(forced)
        return forced

    monkeypatch.setattr(batched, "make_plan", make)
    return made


def no_spool_left() -> bool:
    """Whether no spool directory of an export is left in TMPDIR."""
    import tempfile

    return not list(Path(tempfile.gettempdir()).glob("export-batching-*"))
