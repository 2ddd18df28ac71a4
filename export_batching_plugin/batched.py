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
from .output import Output, WriteBehindError, spool_directory
from .progress import Channel, ProgressReporter
from .reading import Batch, Snapshot, count_archive, count_selection, read_batches, read_media_rows
from .selfcheck import make_encoders
from .staging import Staging, check_folder_name, fsync_directory, sync_tree
from .writing import CsvWriter, PostsWriter, open_writer, posts_output

log = logging.getLogger("export_batching_plugin")
EXPORTER = f"export_batching {__version__}"


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
        """Whether the plugin exports this selection (its size, counted once before anything is made)."""
        if self.settings.checksums:
            return True
        with self.job.engine.connect() as conn:
            return count_selection(conn, self.job.request) >= self.settings.threshold

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
                )
            )
        progress = ProgressReporter(self.channel, interval=settings.progress_interval)
        path = staging.path / POSTS_FILE[request.format]
        spool_dir = spool_directory(staging.final.parent)
        output = stack.enter_context(
            posts_output(path, spool_dir=spool_dir, checksums=settings.checksums, on_written=progress.update)
        )
        writer = self._read(stack, encoders, media, output, progress)
        self._finish(writer, media, progress)
        self.result = ExportResult(
            export_dir=job.export_dir, post_count=progress.processed, media_count=media.copied if media else 0
        )
        self.phase = "publishing"
        staging.publish()
        self._published()
        progress.done("export complete")
        return self.result

    def _read(
        self,
        stack: ExitStack,
        encoders: Encoders,
        media: MediaCopier | None,
        output: Output,
        progress: ProgressReporter,
    ) -> PostsWriter:
        """Inside the read snapshot: count, list the media rows, read and encode every post; end the snapshot.

        The encoded posts are written behind (:mod:`.output`): the snapshot ends when the last row is read,
        whatever the speed of the disk the posts file goes to.
        """
        job, request = self.job, self.job.request
        self.phase = "counting posts"
        snapshot = stack.enter_context(Snapshot.open(job.engine))
        conn = snapshot.conn
        total = count_selection(conn, request)
        if media is not None:
            self.phase = "reading the media rows"
            media.spool(read_media_rows(conn, request))
            media.start()
        batches, writer = self._posts(conn, total, encoders, output)
        stack.enter_context(closing(batches))  # its cursor, before the snapshot ends
        stack.enter_context(progress.start(total))  # stopped first: nothing is reported once the export failed
        for batch in self._reading(batches, total):
            self.phase, self.batch = "writing", Span.of(batch)
            self._writing(writer.write_batch, batch)
            if media is not None:
                self.phase, self.batch = "copying media files", None
                media.check()
        self.phase, self.batch = f"finishing {writer.path.name}", None
        self._writing(writer.end)
        batches.close()
        snapshot.end(complete=True)
        return writer

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
        while True:
            if read >= total:
                self.phase, self.batch = f"reading the end of the selection (after post {read} of {total})", None
            else:
                self.phase, self.batch = "reading", Span(number + 1, read + 1, min(read + size, total))
            batch = next(batches, None)
            if batch is None:
                return
            number, read = batch.number, read + len(batch.rows)
            yield batch

    def _posts(
        self, conn: Connection, total: int, encoders: Encoders, output: Output
    ) -> tuple[Generator[Batch, None, None], PostsWriter]:
        """The stream of the posts' batches, and the writer of the posts file."""
        request, settings = self.job.request, self.settings
        sizes = {"batch_size": settings.batch_size, "max_batch_bytes": settings.max_batch_bytes, "expected": total}
        if request.format == "csv" and encoders.fields is not None and pgcopy.usable(conn):
            stmt = pgcopy.copy_query(request, with_labels=has_labels(encoders.csv_header))
            encode = pgcopy.copy_lines_encoder(*encoders.fields)
            return pgcopy.read_copy_batches(conn, stmt, **sizes), CsvWriter(output, encoders.csv_header, encode)
        in_date_order = conn.dialect.name == "sqlite" and 2 * total >= count_archive(conn)  # most of the archive
        return read_batches(conn, request, in_date_order=in_date_order, **sizes), open_writer(
            request.format, output, encoders
        )

    def _finish(self, writer: PostsWriter, media: MediaCopier | None, progress: ProgressReporter) -> None:
        """Outside the snapshot: the posts file written and synced, the media copied, the manifest, the sums,
        one sync."""
        assert self.staging is not None
        staging = self.staging
        digest = self._writing(writer.finish, tick=progress.beat)
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
                [(digest, writer.path.name), (file_digest(staging.path / MANIFEST_NAME), MANIFEST_NAME)],
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
