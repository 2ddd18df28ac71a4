"""Exports: the request, the per-post encodings, media copying, the manifest,
and the host's own in-memory exporter.

Plugins may reuse the public helpers here (``selection_criteria``,
``POST_ORDER``, ``post_record``, ``JSON_OPTIONS``, ``JSONL_OPTIONS``,
``CSV_HEADER``, ``csv_row``, ``copy_media_file``, ``write_manifest``); their
behaviour is part of the host's export contract.
"""

from __future__ import annotations

import csv
import errno
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

import simplejson
from sqlalchemy import inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from . import __version__
from .config import AppConfig
from .errors import SkyarchiveError, UsageError
from .models import Media, Post

log = logging.getLogger("skyarchive.export")

FORMATS = ("json", "csv", "jsonl")
POSTS_FILE = {"json": "posts.json", "csv": "posts.csv", "jsonl": "posts.jsonl"}
MEDIA_DIR_NAME = "media"
MANIFEST_NAME = "manifest.json"

#: simplejson options of posts.json and manifest.json.
JSON_OPTIONS: dict[str, Any] = {"indent": 2, "ensure_ascii": False}

#: simplejson options of one posts.jsonl line: the posts.json record, compact, then "\n".
JSONL_OPTIONS: dict[str, Any] = {"ensure_ascii": False, "separators": (",", ":")}

CSV_HEADER: tuple[str, ...] = (
    "URI", "CID", "DID", "Text", "CreatedAt", "LikeCount", "RepostCount", "ReplyCount",
    "QuoteCount", "IsReply", "ReplyParent", "HasMedia", "MediaFiles", "EmbedType", "IndexedAt", "Labels",
)  # fmt: skip

#: Posts are exported newest first; ties on created_at by uri.
POST_ORDER = (Post.created_at.desc(), Post.uri.asc())

#: How often (in seconds) the host's exporter says how far it is while copying media files.
MEDIA_STATUS_INTERVAL = 0.5

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _utc_stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_bound(value: str, *, option: str, end: bool) -> str:
    """Normalise a --since/--until value to the stored timestamp format.

    A bare date ``YYYY-MM-DD`` means the start of that day, or as an end its
    last millisecond; an RFC 3339 timestamp with an offset is taken as is.
    """
    text = value.strip()
    try:
        if _DATE.match(text):
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
            return _utc_stamp(day + timedelta(days=1, milliseconds=-1) if end else day)
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
    except (ValueError, IndexError):
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in text.upper():
        raise UsageError(f"{option}: invalid date {value!r} (expected YYYY-MM-DD or an RFC 3339 timestamp)")
    return _utc_stamp(moment)


@dataclass(frozen=True)
class ExportRequest:
    """What to export: one owner's posts, optionally within a date range."""

    did: str
    format: str
    since: str | None = None
    until: str | None = None
    media: bool = False

    @classmethod
    def create(
        cls, *, did: str, format: str, since: str | None = None, until: str | None = None, media: bool = False
    ) -> ExportRequest:
        """Validate user input; raises UsageError with a one-line message."""
        if not did.strip():
            raise UsageError("--did: must not be empty")
        if format not in FORMATS:
            raise UsageError(f"--format: unknown format {format!r} (expected json, csv or jsonl)")
        lo = parse_bound(since, option="--since", end=False) if since else None
        hi = parse_bound(until, option="--until", end=True) if until else None
        if lo and hi and hi < lo:
            raise UsageError(f"--until {until} is before --since {since}")
        return cls(did=did.strip(), format=format, since=lo, until=hi, media=media)


def selection_criteria(request: ExportRequest) -> list[Any]:
    """WHERE clauses selecting the request's posts (inclusive date range)."""
    criteria: list[Any] = [Post.did == request.did]
    if request.since is not None:
        criteria.append(Post.created_at >= request.since)
    if request.until is not None:
        criteria.append(Post.created_at <= request.until)
    return criteria


def _loads(value: str, column: str, uri: str) -> Any:
    try:
        return simplejson.loads(value)
    except ValueError as exc:
        raise SkyarchiveError(f"post {uri}: {column} is not valid JSON ({exc})") from None


def post_record(post: Any) -> dict[str, Any]:
    """The posts.json object of one post (an ORM ``Post`` or a row with the same columns)."""
    record: dict[str, Any] = {
        "uri": post.uri,
        "cid": post.cid,
        "did": post.did,
        "text": post.text,
        "created_at": post.created_at,
        "indexed_at": post.indexed_at,
        "has_media": bool(post.has_media),
        "like_count": post.like_count,
        "repost_count": post.repost_count,
        "reply_count": post.reply_count,
        "quote_count": post.quote_count,
        "is_reply": bool(post.is_reply),
    }
    if post.reply_parent is not None:
        record["reply_parent"] = post.reply_parent
    if post.embed_type is not None:
        record["embed_type"] = post.embed_type
    if post.embed_data is not None:
        record["embed_data"] = _loads(post.embed_data, "embed_data", post.uri)
    if post.labels is not None:
        record["labels"] = _loads(post.labels, "labels", post.uri)
    record["archived_at"] = post.archived_at
    return record


def _hash_of(url: Any) -> str | None:
    if not isinstance(url, str) or not url:
        return None
    return url.rsplit("/", 1)[-1].split("@", 1)[0] or None


def _image_hashes(images: Any) -> list[str | None]:
    if not isinstance(images, list):
        return []
    return [_hash_of(image.get("fullsize")) for image in images if isinstance(image, dict)]


def media_hashes(embed: Any) -> list[str]:
    """Media hashes named by an embed: images' and media.images' fullsize, external.thumb."""
    if not isinstance(embed, dict):
        return []
    found = _image_hashes(embed.get("images"))
    media = embed.get("media")
    if isinstance(media, dict):
        found += _image_hashes(media.get("images"))
    external = embed.get("external")
    if isinstance(external, dict):
        found.append(_hash_of(external.get("thumb")))
    return [h for h in found if h]


def _flag(value: Any) -> str:
    return "true" if value else "false"


def label_values(labels: Any) -> list[str]:
    """The ``val`` of each label object, in order."""
    if not isinstance(labels, list):
        return []
    return [str(label["val"]) for label in labels if isinstance(label, dict) and label.get("val") is not None]


def csv_row(post: Any) -> list[Any]:
    """The posts.csv row of one post, in CSV_HEADER order."""
    embed = _loads(post.embed_data, "embed_data", post.uri) if post.embed_data is not None else None
    labels = _loads(post.labels, "labels", post.uri) if post.labels is not None else None
    return [
        post.uri,
        post.cid,
        post.did,
        post.text,
        post.created_at,
        post.like_count,
        post.repost_count,
        post.reply_count,
        post.quote_count,
        _flag(post.is_reply),
        post.reply_parent,
        _flag(post.has_media),
        ";".join(media_hashes(embed)),
        post.embed_type,
        post.indexed_at,
        ";".join(label_values(labels)),
    ]


def open_csv(path: Path) -> tuple[IO[str], Any]:
    """Create posts.csv (exclusively): UTF-8 with BOM, excel dialect, header written."""
    stream = open(path, "x", encoding="utf-8", newline="")  # noqa: SIM115 - returned to the caller
    stream.write("\ufeff")
    writer = csv.writer(stream)
    writer.writerow(CSV_HEADER)
    return stream, writer


# -- media -----------------------------------------------------------------


def copy_media_file(media: Any, media_root: Path, dest_dir: Path) -> bool:
    """Copy one media row's file to ``dest_dir/<basename>``; False, with a warning, if skipped.

    ``media_root`` must be resolved. A path that is absolute or leads outside
    it (``..``, a symlink) is never read; a missing file or a name already
    copied is skipped. Errors while writing the copy propagate.
    """
    rel = media.file_path or ""
    name = os.path.basename(rel)
    if not rel or os.path.isabs(rel) or name in ("", ".", ".."):
        log.warning("media %s: refused path %r (not inside media_dir)", media.hash, rel)
        return False
    source = (media_root / rel).resolve()
    if source != media_root and media_root not in source.parents:
        log.warning("media %s: refused path %r (leads outside media_dir)", media.hash, rel)
        return False
    try:
        src = open(source, "rb")  # noqa: SIM115 - closed below
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        log.warning("media %s: cannot read %s (%s)", media.hash, source, exc.strerror or exc)
        return False
    with src:
        try:
            fd = os.open(dest_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            log.warning("media %s: skipped, %s/%s was already copied for another row", media.hash, MEDIA_DIR_NAME, name)
            return False
        with os.fdopen(fd, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return True


# -- manifest ----------------------------------------------------------------


def write_manifest(
    export_dir: Path,
    *,
    request: ExportRequest,
    exported_at: datetime,
    post_count: int,
    media_count: int,
    media_skipped: int,
    exporter: str,
) -> None:
    """Write manifest.json (exclusively) into export_dir."""
    files = [POSTS_FILE[request.format]] + ([MEDIA_DIR_NAME + "/"] if request.media else [])
    manifest = {
        "format": request.format,
        "exported_at": _utc_stamp(exported_at),
        "did": request.did,
        "post_count": post_count,
        "media_count": media_count,
        "media_skipped": media_skipped,
        "date_range": {"since": request.since, "until": request.until},
        "host_version": __version__,
        "exporter": exporter,
        "files": files,
    }
    with open(export_dir / MANIFEST_NAME, "x", encoding="utf-8") as stream:
        stream.write(simplejson.dumps(manifest, **JSON_OPTIONS) + "\n")


# -- jobs ------------------------------------------------------------------

#: A progress listener: called with ``(processed, total)``; one that also has a
#: ``status(text)`` method is told what the export is doing (0.5).
ProgressListener = Callable[[int, int], None]


@dataclass(frozen=True)
class ExportResult:
    export_dir: Path
    post_count: int
    media_count: int


@dataclass
class ExportJob:
    """One export: what to export, where to, and its state.

    Exporters report progress through the :class:`Progress` handed to them
    with the job; the host shows it. ``status`` is the job's state
    (pending, running, done, failed); ``activity`` the last text given to
    :meth:`Progress.status`.
    """

    request: ExportRequest
    config: AppConfig
    engine: Engine
    export_dir: Path
    started_at: datetime
    listeners: Sequence[ProgressListener] = ()
    status: str = "pending"
    processed: int = 0
    total: int | None = None
    activity: str | None = None
    error: str | None = None
    host_version: str = field(default=__version__)

    def mark_failed(self, message: str) -> None:
        self.status, self.error = "failed", message


class Progress:
    """The progress channel of one export (0.5): ``update(processed, total)`` and ``status(text)``."""

    def __init__(self, job: ExportJob) -> None:
        self.job = job

    def update(self, processed: int, total: int) -> None:
        """Record that ``processed`` of ``total`` posts are exported."""
        self.job.processed, self.job.total = processed, total
        for listener in self.job.listeners:
            listener(processed, total)

    def status(self, text: str) -> None:
        """Say in one line what the export is doing while no post count moves.

        For example ``"copying media files: 3,412 of 10,210"``. The text is
        kept as ``job.activity`` and handed to each listener that has a
        ``status`` method; plain ``(processed, total)`` listeners are skipped.
        """
        self.job.activity = text
        for listener in self.job.listeners:
            tell = getattr(listener, "status", None)
            if callable(tell):
                tell(text)


def export_dir_for(exports_dir: Path, did: str, moment: datetime) -> Path:
    """``<exports>/<did with ':' as '_'>/<YYYY-MM-DD_HH-MM-SS>`` (UTC)."""
    return exports_dir / did.replace(":", "_") / moment.astimezone(timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")


def _write_posts(path: Path, format: str, posts: Sequence[Post]) -> None:
    """Write posts.json, posts.csv or posts.jsonl (exclusively) from the loaded posts."""
    if format == "json":
        records = [post_record(post) for post in posts]
        with open(path, "x", encoding="utf-8") as stream:
            stream.write(simplejson.dumps(records, **JSON_OPTIONS) + "\n")
    elif format == "jsonl":
        records = [post_record(post) for post in posts]
        with open(path, "x", encoding="utf-8") as stream:
            stream.writelines(simplejson.dumps(record, **JSONL_OPTIONS) + "\n" for record in records)
    else:
        csv_stream, writer = open_csv(path)
        with csv_stream:
            writer.writerows(csv_row(post) for post in posts)


def _copy_media(rows: Sequence[Media], media_root: Path, dest: Path, progress: Progress) -> tuple[int, int]:
    """Copy the rows' files into ``dest``; returns (copied, skipped).

    Says how far it is through ``progress.status`` when it starts and then at
    most every MEDIA_STATUS_INTERVAL seconds.
    """
    copied = skipped = 0
    total = len(rows)
    last: float | None = None
    for done, row in enumerate(rows):
        now = time.monotonic()
        if last is None or now - last >= MEDIA_STATUS_INTERVAL:
            last = now
            progress.status(f"copying media files: {done:,} of {total:,}")
        if copy_media_file(row, media_root, dest):
            copied += 1
        else:
            skipped += 1
    return copied, skipped


def export_in_memory(job: ExportJob, progress: Progress) -> ExportResult:
    """The host's exporter: load the whole selection, then write it."""
    request = job.request
    criteria = selection_criteria(request)
    with Session(job.engine) as session:
        posts = session.scalars(select(Post).where(*criteria).order_by(*POST_ORDER)).all()
        media = (
            session.scalars(
                select(Media).join(Post, Media.post_uri == Post.uri).where(*criteria).order_by(*POST_ORDER, Media.hash)
            ).all()
            if request.media
            else []
        )
        session.expunge_all()
    total = len(posts)
    progress.update(0, total)
    export_dir = job.export_dir
    export_dir.parent.mkdir(parents=True, exist_ok=True)
    export_dir.mkdir()
    try:
        _write_posts(export_dir / POSTS_FILE[request.format], request.format, posts)
        progress.update(total, total)
        copied = skipped = 0
        if request.media:
            dest = export_dir / MEDIA_DIR_NAME
            dest.mkdir()
            copied, skipped = _copy_media(media, job.config.media_dir.resolve(), dest, progress)
        write_manifest(
            export_dir,
            request=request,
            exported_at=job.started_at,
            post_count=total,
            media_count=copied,
            media_skipped=skipped,
            exporter=f"skyarchive {__version__}",
        )
    except BaseException:
        shutil.rmtree(export_dir, ignore_errors=True)
        raise
    return ExportResult(export_dir=export_dir, post_count=total, media_count=copied)


def describe_os_error(exc: OSError) -> str:
    """One line for an OSError, saying plainly when the disk is full."""
    where = f": {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full{where}"
    return f"{exc.strerror or exc}{where}"


def ensure_archive(engine: Engine) -> None:
    """Fail clearly when the database holds no archive."""
    if not inspect(engine).has_table("posts"):
        raise UsageError(
            f"no archive at {engine.url.render_as_string(hide_password=True)}; run 'skyarchive init' first"
        )
