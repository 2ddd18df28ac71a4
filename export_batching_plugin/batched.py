"""The batched export, start to end: the diagram of docs/how-it-works.md, in order."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from . import __version__, pgcopy
from .checksums import SUMS_NAME, StreamDigest, file_digest, write_sums
from .config import Settings
from .encoding import Encoders, make_encoders
from .host import (
    MANIFEST_NAME,
    MEDIA_DIR_NAME,
    POSTS_FILE,
    ExportJob,
    ExportResult,
    SkyarchiveError,
    UsageError,
    has_labels,
    write_manifest,
)
from .media import MediaCopier
from .progress import Channel, ProgressReporter
from .reading import (
    Batch,
    Snapshot,
    count_archive,
    count_selection,
    read_batches,
    read_copy_batches,
    read_media_rows,
)
from .staging import Staging, fsync_directory, sync_tree
from .writing import CsvWriter, PostsWriter, Sink, open_writer

log = logging.getLogger("export_batching_plugin")
EXPORTER = f"export_batching {__version__}"


class ExportFailed(SkyarchiveError):
    """The export failed and left nothing; the message names the phase (batch, file) and what went wrong."""


def check_folder_name(did: str) -> None:
    """Refuse a DID that, as skyarchive names the owner's folder, would lead out of the exports folder."""
    folder = did.replace(":", "_")
    if folder in ("", ".", "..") or "/" in folder or "\x00" in folder or (os.altsep and os.altsep in folder):
        raise UsageError(f"--did {did!r} cannot name a folder inside the exports folder; nothing was exported")


def export_batched(job: ExportJob, settings: Settings, channel: Channel) -> ExportResult | None:
    """Export ``job`` in batches, or return None to leave it to the host's exporter."""
    check_folder_name(job.request.did)
    return _Export(job, settings, channel).run()


class _Export:
    """One batched export: its state, so that any failure can say where it was and clean up what it made."""

    def __init__(self, job: ExportJob, settings: Settings, channel: Channel) -> None:
        self.job, self.settings, self.channel = job, settings, channel
        self.phase = "counting posts"
        self.snapshot: Snapshot | None = None
        self.staging: Staging | None = None
        self.progress: ProgressReporter | None = None
        self.writer: PostsWriter | None = None
        self.media: MediaCopier | None = None
        self.batches: Generator[Batch, None, None] | None = None
        self.digest: StreamDigest | None = None

    def run(self) -> ExportResult | None:
        try:
            if not self._write():
                return None
            self.phase = "publishing"
            assert self.staging is not None
            self.staging.publish()
        except BaseException as exc:
            if self.staging is None or not self.staging.published():
                failure = self._failed(exc)
                if failure is exc:
                    raise
                raise failure from exc
            log.warning("export_batching: %s is complete; %s came after it was in place", self.job.export_dir, exc)
        return self._published()

    def _write(self) -> bool:
        """Everything up to the publishing; False when the selection is left to the host."""
        job, request, settings = self.job, self.job.request, self.settings
        self.snapshot = Snapshot.open(job.engine)
        conn = self.snapshot.conn
        total = count_selection(conn, request)
        if total < settings.threshold and not settings.checksums:
            self.snapshot.end(complete=True)
            return False
        encoders = make_encoders()
        if encoders.fallback_reason is not None:
            log.warning(
                "export_batching: the installed skyarchive encodes posts differently from this plugin's fast"
                " encoders (%s); exporting with skyarchive's own per-post functions (slower, same bytes)",
                encoders.fallback_reason,
            )
        self.phase = "creating the staging directory"
        self.staging = staging = Staging.create(job.export_dir)
        self.progress = progress = ProgressReporter(self.channel, total, interval=settings.progress_interval).start()
        if request.media:
            self.phase = "reading the media rows"
            (staging.path / MEDIA_DIR_NAME).mkdir()
            self.media = MediaCopier(
                media_root=job.config.media_dir,
                dest=staging.path / MEDIA_DIR_NAME,
                spool_dir=staging.path.parent,
                checksums=settings.checksums,
            )
            self.media.spool(read_media_rows(conn, request))
            self.media.start()
        if settings.checksums:
            self.digest = StreamDigest()
        sink = self.digest.update if self.digest is not None else None
        self.batches, self.writer = self._posts(conn, total, encoders, staging.path / POSTS_FILE[request.format], sink)
        batches, writer = self.batches, self.writer
        number = 0
        while True:
            self.phase = self._reading(number + 1, progress.processed, total)
            batch = next(batches, None)
            if batch is None:
                break
            number = batch.number
            self.phase = f"writing {batch.describe()}"
            writer.write_batch(batch)
            progress.advance(len(batch.rows))
            if self.media is not None:
                self.phase = "copying media files"
                self.media.check()
        self.phase = f"finishing {writer.path.name}"
        writer.end()
        self.snapshot.end(complete=True)
        progress.finishing(self._status)
        writer.sync()
        if self.media is not None:
            self.phase = "copying media files"
            self.media.wait()
        self.phase = f"writing {MANIFEST_NAME}"
        write_manifest(
            staging.path,
            request=request,
            exported_at=job.started_at,
            post_count=progress.processed,
            media_count=self.media.copied if self.media else 0,
            media_skipped=self.media.skipped if self.media else 0,
            exporter=EXPORTER,
        )
        if self.digest is not None:
            self.phase = f"writing {SUMS_NAME}"
            media_sums = self.media.sums() if self.media is not None else iter(())
            write_sums(
                staging.path / SUMS_NAME,
                [
                    (self.digest.hexdigest(), writer.path.name),
                    (file_digest(staging.path / MANIFEST_NAME), MANIFEST_NAME),
                ],
                media_sums,
            )
        self.phase = "syncing to disk"
        sync_tree(staging.path)
        return True

    def _posts(
        self, conn: Connection, total: int, encoders: Encoders, path: Path, sink: Sink | None
    ) -> tuple[Generator[Batch, None, None], PostsWriter]:
        """The stream of the posts' batches, and the writer of the posts file."""
        request, settings = self.job.request, self.settings
        sizes = {"batch_size": settings.batch_size, "max_batch_bytes": settings.max_batch_bytes, "expected": total}
        if request.format == "csv" and encoders.fields is not None and pgcopy.usable(conn):
            stmt = pgcopy.copy_query(request, with_labels=has_labels(encoders.csv_header))
            encode = pgcopy.copy_lines_encoder(*encoders.fields)
            return read_copy_batches(conn, stmt, **sizes), CsvWriter(path, encoders.csv_header, encode, sink)
        in_date_order = conn.dialect.name == "sqlite" and 2 * total >= count_archive(conn)  # most of the archive
        return read_batches(conn, request, in_date_order=in_date_order, **sizes), open_writer(
            request.format, path, encoders, sink
        )

    def _reading(self, number: int, processed: int, total: int) -> str:
        if processed >= total:
            return f"reading the end of the selection (after post {processed} of {total})"
        last = min(processed + self.settings.batch_size, total)
        return f"reading batch {number} (posts {processed + 1}-{last})"

    def _status(self) -> str:
        """What the export is doing once every post is written (for the progress line)."""
        assert self.progress is not None
        posts = f"all {self.progress.processed:,} posts written"
        if self.phase == "copying media files" and self.media is not None:
            return f"{posts}; copying media files: {self.media.done:,} of {self.media.rows:,} done"
        return f"{posts}; {self.phase}"

    def _cleanup(self) -> OSError | None:
        """After a failure: stop everything, remove the staging directory; what stopped its removal, if anything."""
        if self.progress is not None:
            self.progress.stop()
        if self.batches is not None:
            self.batches.close()  # its cursor, before the snapshot ends
        if self.writer is not None:
            self.writer.abort()
        if self.digest is not None:
            self.digest.abort()
        if self.media is not None:
            self.media.abort()
        if self.snapshot is not None:
            self.snapshot.end(complete=False)
        return self.staging.remove() if self.staging is not None else None

    def _failed(self, exc: BaseException) -> BaseException:
        """The exception to raise for ``exc``, once everything is cleaned up."""
        left = self._cleanup()
        leftover = ""
        if left is not None and self.staging is not None:
            leftover = f"; the incomplete export could not be removed: {self.staging.path} ({left.strerror or left})"
        if not isinstance(exc, Exception):  # an interrupt: skyarchive reports it
            if leftover:
                log.warning("export_batching: interrupted%s", leftover)
            return exc
        return ExportFailed(f"{self.phase} failed: {self._describe(exc)}{leftover}")

    def _describe(self, exc: BaseException) -> str:
        """One line for any failure; an OSError names the file as the user will know it."""
        if isinstance(exc, OSError):
            where = f": {self._user_path(exc.filename)}" if exc.filename else ""
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return f"disk full{where}"
            return f"{exc.strerror or exc}{where}"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        driver_error = getattr(self.job.engine.dialect.dbapi, "Error", None)
        if isinstance(driver_error, type) and isinstance(exc, driver_error):  # as SQLAlchemy shows it
            return f"({type(exc).__module__}.{type(exc).__qualname__}) {first}"
        return first

    def _user_path(self, filename: Any) -> str:
        """``filename`` with the hidden staging directory shown as the export directory it was to become."""
        text = os.fsdecode(filename) if isinstance(filename, (str, bytes, os.PathLike)) else str(filename)
        if self.staging is not None and text.startswith(str(self.staging.path)):
            return str(self.staging.final) + text[len(str(self.staging.path)) :]
        return text

    def _published(self) -> ExportResult:
        """The export is in place: nothing after this turns it into a failure."""
        assert self.staging is not None and self.progress is not None
        try:
            fsync_directory(self.staging.final.parent)
        except BaseException as exc:  # an interrupt too: the export is complete, so it is a success
            log.warning("export_batching: %s is complete, but syncing its folder failed: %r", self.job.export_dir, exc)
        self.staging.release()
        self.progress.stop()
        media = self.media.copied if self.media is not None else 0
        return ExportResult(export_dir=self.job.export_dir, post_count=self.progress.processed, media_count=media)
