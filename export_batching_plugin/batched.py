"""The batched export, start to end: the diagram of docs/how-it-works.md, in order.

One lifecycle that always unwinds. Each resource the export makes registers its undo on one
``ExitStack`` where it is made, in this order: the staging directory, the media copier, the posts
file's output (its writer thread), the read snapshot, the cursor, the progress reporter. A failure
therefore unwinds them in the reverse order by construction: progress stopped first (nothing is reported
once the export has failed), the cursor closed before the snapshot ends, the snapshot ended before the
writer and the media workers are waited for and before the staging directory is removed. No undo raises:
the first error is the one the user is told, with its phase (:class:`ExportFailed`).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from . import __version__, pgcopy
from .checksums import SUMS_NAME, file_digest, write_sums
from .config import Settings
from .encoding import Encoders
from .host import (
    MANIFEST_NAME,
    MEDIA_DIR_NAME,
    POSTS_FILE,
    ExportJob,
    ExportResult,
    SkyarchiveError,
    has_labels,
    write_manifest,
)
from .media import MediaCopier
from .offload import EncoderFailed, Offload
from .output import WriteBehindError
from .pgcopy import CopyLinesEncoder
from .progress import Channel, ProgressReporter
from .reading import Snapshot, count_archive, count_selection, read_batches, read_media_rows
from .rows import Batch, RowSpool
from .selfcheck import make_encoders
from .spoolfile import spool_directory
from .staging import Staging, check_folder_name, fsync_directory, sync_tree
from .writing import CsvWriter, PostsWriter, open_writer, posts_output

log = logging.getLogger("export_batching_plugin")
EXPORTER = f"export_batching {__version__}"
#: Selections this large are encoded by the encoder process, beside the reading (smaller ones take less time
#: to encode than the process to start).
OFFLOAD_POSTS = 10_000


@dataclass(frozen=True)
class Span:
    """A batch as an error names it: its number and its posts (1-based, inclusive)."""

    number: int
    first: int
    last: int

    @classmethod
    def of(cls, batch: Batch) -> Span:
        return cls(batch.number, batch.offset + 1, batch.offset + len(batch.rows))

    def __str__(self) -> str:
        return f"batch {self.number} (posts {self.first}-{self.last})"


class ExportFailed(SkyarchiveError):
    """The export failed and left nothing (or says what it could not remove).

    Its facts are attributes: ``phase`` (what the export was doing: ``"reading"`` or ``"writing"`` a
    ``batch``, or a phase of its own such as ``"copying media files"``), ``batch`` (a :class:`Span`, or
    None), ``cause`` (the exception that stopped it, also its ``__cause__``) and ``leftover`` (the
    staging directory that could not be removed, or None). The message is one line made of them.
    """

    def __init__(
        self, phase: str, cause: BaseException, reason: str, *, batch: Span | None = None, leftover: str = ""
    ) -> None:
        self.phase, self.batch, self.cause, self.leftover = phase, batch, cause, leftover or None
        where = f"{phase} {batch}" if batch is not None else phase
        super().__init__(f"{where} failed: {reason}{leftover}")


def export_batched(job: ExportJob, settings: Settings, channel: Channel) -> ExportResult | None:
    """Export ``job`` in batches, or return None to leave it to the host's exporter.

    A format the plugin does not know (a later skyarchive's) is left to the host, so that it never breaks
    an export.
    """
    if job.request.format not in POSTS_FILE:
        log.info("export_batching: format %r is not one this plugin writes; skyarchive exports it", job.request.format)
        return None
    check_folder_name(job.request.did)
    return _Export(job, settings, channel).run()


class _Export:
    """One batched export: where it is (``phase``, ``batch``), so that a failure can say so."""

    def __init__(self, job: ExportJob, settings: Settings, channel: Channel) -> None:
        self.job, self.settings, self.channel = job, settings, channel
        self.phase = "counting posts"
        self.batch: Span | None = None
        self.staging: Staging | None = None
        self.result: ExportResult | None = None  # once everything is written, before it is published
        self.read = 0  # posts read so far
        self.in_date_order = False
        self.selected = 0  # the selection's size, counted before the snapshot

    def run(self) -> ExportResult | None:
        """The export's result, or None when it is left to the host; ExportFailed (or an interrupt) if it failed."""
        if not self._wanted():
            return None
        encoders = self._encoders()
        try:
            with ExitStack() as stack:
                result = self._export(stack, encoders)
        except BaseException as exc:
            if self.staging is None or not self.staging.published():
                failure = self._failure(exc)
                if failure is exc:
                    raise
                raise failure from exc
            log.warning("export_batching: %s is complete; %s came after it was in place", self.job.export_dir, exc)
            return self.result
        return result

    def _wanted(self) -> bool:
        """Whether the plugin exports this selection (its size, counted once before anything is made); and, on
        SQLite, whether to walk the date index (see :func:`.reading.read_batches`): decided here, outside the
        read snapshot, which is then used for reading the rows alone."""
        with self.job.engine.connect() as conn:
            self.selected = count_selection(conn, self.job.request)
            if conn.dialect.name == "sqlite":
                self.in_date_order = 2 * self.selected >= count_archive(conn)  # most of the archive
        return self.settings.checksums or self.selected >= self.settings.threshold

    def _encoders(self) -> Encoders:
        encoders = make_encoders()
        if encoders.fallback_reason is not None:
            log.warning(
                "export_batching: the installed skyarchive encodes posts differently from this plugin's fast"
                " encoders (%s); exporting with skyarchive's own per-post functions (slower, same bytes)",
                encoders.fallback_reason,
            )
        return encoders

    def _export(self, stack: ExitStack, encoders: Encoders) -> ExportResult:
        """Everything, each resource's undo registered where it is made."""
        job, request, settings = self.job, self.job.request, self.settings
        self.phase = "creating the staging directory"
        self.staging = staging = stack.enter_context(Staging.create(job.export_dir))
        media = None
        if request.media:
            (staging.path / MEDIA_DIR_NAME).mkdir()
            media = stack.enter_context(
                MediaCopier(
                    media_root=job.config.media_dir,
                    dest=staging.path / MEDIA_DIR_NAME,
                    spool_dir=staging.path.parent,
                    checksums=settings.checksums,
                    link_unchanged=settings.link_unchanged_media,
                )
            )
        progress = ProgressReporter(self.channel, interval=settings.progress_interval)
        path = staging.path / POSTS_FILE[request.format]
        spool_dir = spool_directory(staging.final.parent)
        rows = stack.enter_context(RowSpool(spool_dir))
        offload = self._offload(stack, encoders, rows, path)
        copy_encoder = self._read(stack, encoders, media, rows, progress, offload)
        digest = self._write(stack, encoders, copy_encoder, rows, media, progress, offload, path, spool_dir)
        self._finish(digest, path, media, progress)
        self.result = ExportResult(
            export_dir=job.export_dir, post_count=progress.processed, media_count=media.copied if media else 0
        )
        self.phase = "publishing"
        staging.publish()
        self._published()
        progress.done("export complete")
        return self.result

    def _offload(self, stack: ExitStack, encoders: Encoders, rows: RowSpool, path: Path) -> Offload | None:
        """The encoder process (:mod:`.offload`), where it is worth it and can be started; else None."""
        request = self.job.request
        options = {"json": encoders.json_options, "jsonl": encoders.jsonl_options}.get(request.format)
        worth_it = self.settings.encoder_process and self.selected >= OFFLOAD_POSTS
        if options is None or encoders.fallback_reason is not None or not worth_it:
            return None
        offload = Offload.start(
            format=request.format, options=options, posts=path, checksums=self.settings.checksums, spool=rows.fd
        )
        if offload is None:
            return None
        stack.enter_context(offload)
        if not self._encoded(offload.wait_ready, lambda written: None):  # before the snapshot opens
            log.info("export_batching: the encoder process did not get ready; encoding the posts here")
            offload.close()
            path.unlink(missing_ok=True)  # if it had made it
            return None
        return offload

    def _read(
        self,
        stack: ExitStack,
        encoders: Encoders,
        media: MediaCopier | None,
        rows: RowSpool,
        progress: ProgressReporter,
        offload: Offload | None,
    ) -> CopyLinesEncoder | None:
        """Inside the read snapshot: count, list the media rows, read every post into the row spool; then end the
        snapshot. Nothing but reading happens inside it: it lasts as long as the rows take to read, at the
        database's speed (as skyarchive's own read does), however slow encoding or the output disk are. The
        encoder process, if any, encodes the spooled batches meanwhile. Returns the PostgreSQL COPY path's line
        encoder when that path reads the rows."""
        job, request = self.job, self.job.request
        self.phase = "counting posts"
        snapshot = stack.enter_context(Snapshot.open(job.engine, copy=True))
        conn = snapshot.conn
        if snapshot.copying:
            self.phase = "reading the selection"
            total = snapshot.copy_selection(request, in_date_order=self.in_date_order, media=media is not None)
            snapshot.end(complete=True)  # the archive is free from here: the rows are read from the copy
        else:
            total = count_selection(conn, request)
        if media is not None:
            self.phase = "reading the media rows"
            media.spool(read_media_rows(conn, request, from_copy=snapshot.copying))
            media.start()
        batches, copy_encoder = self._stream(conn, total, encoders, from_copy=snapshot.copying)
        stack.enter_context(closing(batches))  # its cursor, before the snapshot ends
        stack.enter_context(progress.start(total))  # stopped first: nothing is reported once the export failed
        progress.reading(lambda: f"reading posts: {self.read:,} of {total:,}")
        for batch in self._reading(batches, total):
            rows.put(batch)
            if offload is not None:
                offload.wake()
                self._encoded(offload.poll, progress.update)
            del batch  # not held while the next one is read
        batches.close()
        snapshot.close(complete=True)
        progress.reading(lambda: f"all {self.read:,} posts read; writing {POSTS_FILE[request.format]}")
        return copy_encoder

    def _write(
        self,
        stack: ExitStack,
        encoders: Encoders,
        copy_encoder: CopyLinesEncoder | None,
        rows: RowSpool,
        media: MediaCopier | None,
        progress: ProgressReporter,
        offload: Offload | None,
        path: Path,
        spool_dir: Path,
    ) -> str | None:
        """Outside the snapshot: the posts file, written and synced, by the encoder process or here; its sha256
        (with checksums), else None."""
        name = path.name
        if offload is not None:
            if self._encoded(offload.wait_ready, progress.update):
                self.phase, self.batch = f"finishing {name}", None
                digest: str | None = self._encoded(offload.finish, progress.update, tick=progress.beat)
                return digest
            log.info("export_batching: the encoder process did not start; encoding the posts here")
            offload.close()
            path.unlink(missing_ok=True)  # if it had made it
        checksums = self.settings.checksums
        output = stack.enter_context(
            posts_output(path, spool_dir=spool_dir, checksums=checksums, on_written=progress.update)
        )
        if copy_encoder is not None:
            writer: PostsWriter = CsvWriter(output, encoders.csv_header, copy_encoder)
        else:
            writer = open_writer(self.job.request.format, output, encoders)
        for batch in rows.batches():
            self.phase, self.batch = "writing", Span.of(batch)
            self._writing(writer.write_batch, batch)
            if media is not None:
                self.phase, self.batch = "copying media files", None
                media.check()
            del batch  # not held while the next one is read
        self.phase, self.batch = f"finishing {name}", None
        self._writing(writer.end)
        digest = self._writing(writer.finish, tick=progress.beat)
        return digest

    def _encoded(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``call(*args, **kwargs)`` on the encoder process; what stopped it is told as the batch it was writing."""
        try:
            return call(*args, **kwargs)
        except EncoderFailed as failed:
            if failed.batch is not None:
                self.phase, self.batch = "writing", Span(*failed.batch)
            raise failed.cause from None

    def _writing(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``write(*args, **kwargs)``; a failure of the writer thread is told as the batch it was writing."""
        try:
            return write(*args, **kwargs)
        except WriteBehindError as late:  # late.tag: the batch whose posts it was writing, or None
            if isinstance(late.tag, Batch):
                self.phase, self.batch = "writing", Span.of(late.tag)
            raise late.cause from None

    def _reading(self, batches: Iterator[Batch], total: int) -> Iterator[Batch]:
        """The batches, with the phase saying which one is being read (so that a failure names it)."""
        size, read, number = self.settings.batch_size, 0, 0
        self.read = 0
        while True:
            if read >= total:
                self.phase, self.batch = f"reading the end of the selection (after post {read} of {total})", None
            else:
                self.phase, self.batch = "reading", Span(number + 1, read + 1, min(read + size, total))
            batch = next(batches, None)
            if batch is None:
                return
            number, read = batch.number, read + len(batch.rows)
            self.read = read
            yield batch
            del batch  # not held while the next one is read

    def _stream(
        self, conn: Connection, total: int, encoders: Encoders, *, from_copy: bool
    ) -> tuple[Generator[Batch, None, None], CopyLinesEncoder | None]:
        """The stream of the posts' batches; and, on PostgreSQL's COPY path, its line encoder."""
        request, settings = self.job.request, self.settings
        sizes = {"batch_size": settings.batch_size, "max_batch_bytes": settings.max_batch_bytes, "expected": total}
        if request.format == "csv" and encoders.fields is not None and pgcopy.usable(conn):
            stmt = pgcopy.copy_query(request, with_labels=has_labels(encoders.csv_header))
            encode = pgcopy.copy_lines_encoder(*encoders.fields)
            return pgcopy.read_copy_batches(conn, stmt, **sizes), encode
        return read_batches(conn, request, in_date_order=self.in_date_order, from_copy=from_copy, **sizes), None

    def _finish(self, digest: str | None, path: Path, media: MediaCopier | None, progress: ProgressReporter) -> None:
        """Outside the snapshot, the posts file written: the media copied, the manifest, the sums, one sync."""
        assert self.staging is not None
        staging = self.staging
        progress.finishing(self._status(progress, media))
        if media is not None:
            self.phase = "copying media files"
            media.wait(tick=progress.beat)
        self.phase = f"writing {MANIFEST_NAME}"
        write_manifest(
            staging.path,
            request=self.job.request,
            exported_at=self.job.started_at,
            post_count=progress.processed,
            media_count=media.copied if media else 0,
            media_skipped=media.skipped if media else 0,
            exporter=EXPORTER,
        )
        if digest is not None:
            self.phase = f"writing {SUMS_NAME}"
            media_sums = media.sums() if media is not None else iter(())
            write_sums(
                staging.path / SUMS_NAME,
                [(digest, path.name), (file_digest(staging.path / MANIFEST_NAME), MANIFEST_NAME)],
                media_sums,
            )
        self.phase = "syncing to disk"
        sync_tree(staging.path)

    def _status(self, progress: ProgressReporter, media: MediaCopier | None) -> Any:
        """What the export is doing once every post is written (for the progress line)."""

        def status() -> str:
            if self.phase == "copying media files" and media is not None:
                return f"copying media files: {media.done:,} of {media.rows:,} done"
            return self.phase

        return status

    def _published(self) -> None:
        """The export is in place: nothing after this turns it into a failure."""
        assert self.staging is not None
        try:
            fsync_directory(self.staging.final.parent)
        except BaseException as exc:  # an interrupt too: the export is complete, so it is a success
            log.warning("export_batching: %s is complete, but syncing its folder failed: %r", self.job.export_dir, exc)

    # -- what the user is told ------------------------------------------------------------------------

    def _failure(self, exc: BaseException) -> BaseException:
        """The exception to raise for ``exc``; everything has been unwound by now."""
        leftover = ""
        left = self.staging.removal_error if self.staging is not None else None
        if left is not None and self.staging is not None:
            leftover = f"; the incomplete export could not be removed: {self.staging.path} ({left.strerror or left})"
        if not isinstance(exc, Exception):  # an interrupt: skyarchive reports it
            if leftover:
                log.warning("export_batching: interrupted%s", leftover)
            return exc
        return ExportFailed(self.phase, exc, self._describe(exc), batch=self.batch, leftover=leftover)

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
