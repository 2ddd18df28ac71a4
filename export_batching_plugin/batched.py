"""The batched export, start to end: the diagram of docs/how-it-works.md, in order (snapshot → source → at most
one spool → encoders on both cores → one ordered writer), as the plan (:mod:`.plan`) says. One lifecycle that
always unwinds: each resource registers its undo on one ``ExitStack`` where it is made, so a failure unwinds
them in reverse order (the child killed before its spool goes, the staging directory last); no undo raises, and
the first error is the one the user is told, with its phase (:class:`ExportFailed`).
"""

from __future__ import annotations

import errno
import logging
import os
import traceback
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import __version__, pgcopy
from .blocks import BatchFailed, Block, Copy, Span, Spool, chunks, planned, row_sizes
from .checksums import SUMS_NAME, file_digest, write_sums
from .config import Settings
from .host import MANIFEST_NAME, MEDIA_DIR_NAME, POSTS_FILE, ExportJob, ExportResult, SkyarchiveError, write_manifest
from .media import MediaCopier
from .pipeline import Child, Pipeline
from .plan import COPY, DIRECT, Plan, make_plan
from .progress import Channel, ProgressReporter
from .reading import NoRoom, Snapshot, count_selection, media_rows, open_stream, posts_query
from .selfcheck import Encoders, make_encoders
from .spooldir import private_directory
from .staging import Staging, check_folder_name, fsync_directory, sync_tree
from .worker import Framing, Writer, batch_encoder

log = logging.getLogger("export_batching_plugin")
EXPORTER = f"export_batching {__version__}"
#: Memory set aside to clean up after a MemoryError (released first).
RESERVE = 1 << 20


class ExportFailed(SkyarchiveError):
    """The export failed and left nothing (or says what it could not remove). Its facts are attributes: ``phase``
    (docs/failure-handling.md lists them), ``batch`` (a :class:`.blocks.Span`, or None), ``cause`` (also its
    ``__cause__``), ``leftover`` (a staging directory that could not be removed, or None); the message is one
    line made of them."""

    def __init__(
        self, phase: str, cause: BaseException, reason: str, *, batch: Span | None = None, leftover: str = ""
    ) -> None:
        self.phase, self.batch, self.cause, self.leftover = phase, batch, cause, leftover or None
        where = f"{phase} {batch}" if batch is not None else phase
        super().__init__(f"{where} failed: {reason}{leftover}")


def export_batched(job: ExportJob, settings: Settings, channel: Channel) -> ExportResult | None:
    """Export ``job`` in batches, or return None to leave it to the host's exporter.

    A format the plugin does not know (a later skyarchive's) is left to the host, so that it never breaks an
    export.
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
        self.selected = 0  # the selection's size, counted before the snapshot
        self.total = 0  # the selection's size, as the snapshot counts it
        self.short: tuple[int, int] | None = None  # (read, counted) when the selection ended short
        self._reserve: bytearray | None = None

    def run(self) -> ExportResult | None:
        """The export's result, or None when it is left to the host; ExportFailed (or an interrupt) if it failed."""
        planned_export = self._plan()
        if planned_export is None:
            return None
        plan, encoders = planned_export
        self._reserve = bytearray(RESERVE)
        try:
            with ExitStack() as stack:
                try:
                    result = self._export(stack, plan, encoders)
                except MemoryError as exc:  # room to unwind: the reserve, and what the failed frames held
                    self._reserve = None
                    traceback.clear_frames(exc.__traceback__)
                    raise
        except BaseException as exc:
            self._reserve = None
            if self.staging is None or not self.staging.published():
                failure = self._failure(exc)
                if failure is exc:
                    raise
                raise failure from failure.cause if isinstance(failure, ExportFailed) else exc
            log.warning("export_batching: %s is complete; %s came after it was in place", self.job.export_dir, exc)
            return self.result
        self._reserve = None
        return result

    def _plan(self) -> tuple[Plan, Encoders] | None:
        """Whether the plugin exports this selection (its size, counted once before anything is made), and if so
        how (:mod:`.plan`): decided here, outside the read snapshot, which is then used for reading alone."""
        with self.job.engine.connect() as conn:
            self.selected = count_selection(conn, self.job.request)
            settings = self.settings
            mine = settings.checksums or (settings.link_unchanged_media and self.job.request.media)
            if not mine and self.selected < settings.threshold:  # (only the plugin sums and links)
                return None
            encoders = make_encoders()
            if encoders.fallback_reason is not None:
                log.warning(
                    "export_batching: the installed skyarchive encodes posts differently from this plugin's fast"
                    " encoders (%s); exporting with skyarchive's own per-post functions (slower, same bytes)",
                    encoders.fallback_reason,
                )
            plan = make_plan(
                conn, selected=self.selected, format=self.job.request.format, media=self.job.request.media,
                settings=self.settings, fast_encoders=encoders.recipe is not None, beside=self.job.export_dir.parent,
            )  # fmt: skip
        return plan, encoders

    def _export(self, stack: ExitStack, plan: Plan, encoders: Encoders) -> ExportResult:
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
        reporter = ProgressReporter(self.channel, interval=settings.progress_interval, threads=plan.threads)
        progress = stack.enter_context(reporter)
        progress.start(self.selected)
        name = POSTS_FILE[request.format]
        path = staging.path / name
        self.phase = f"creating {name}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        writing = stack.enter_context(ExitStack())  # the posts file, the spool, the child: closed once it is written
        writing.callback(os.close, fd)
        writer = Writer(fd, path=str(path), checksums=settings.checksums,
                        on_written=lambda batch, posts: progress.update(posts))  # fmt: skip
        with writing:  # the spool and the child gone before the sync (nothing of theirs is synced), fewer files open
            pipeline = self._pipeline(writing, plan, encoders, writer, progress)
            self._read(pipeline, media, progress)
            self.phase, self.batch = "writing", None
            progress.status(f"writing {name}")
            pipeline.drain(planned(self.total, settings.batch_size) if isinstance(pipeline.source, Copy) else ())
            self.phase = f"finishing {name}"
            digest = pipeline.finish(tick=progress.beat)
        self._finish(digest, path, media, progress, pipeline.posts)
        self.result = ExportResult(
            export_dir=job.export_dir, post_count=pipeline.posts, media_count=media.copied if media else 0
        )
        self.phase = "publishing"
        staging.publish()
        self._published()
        progress.done("export complete")
        return self.result

    def _pipeline(
        self, stack: ExitStack, plan: Plan, encoders: Encoders, writer: Writer, progress: ProgressReporter
    ) -> Pipeline:
        """The spool (where the plan has one), the child process (where it has one and it starts), the encoders."""
        request, settings = self.job.request, self.settings
        self.plan = plan
        source: Copy | Spool | None = None
        if plan.source != DIRECT:
            self.phase = "creating the spool"
            try:
                where = stack.enter_context(private_directory(plan.spool_dir or Path("/")))
                source = (
                    Copy(str(where / "copy.db")) if plan.source == COPY else Spool(str(where / "rows"), append=True)
                )
            except OSError as exc:  # descriptors, room, permissions: no spool
                log.info("export_batching: no spool (%s); reading while writing", exc.strerror or exc)
                self.plan = plan = replace(plan, source=DIRECT, child=False)
            else:
                stack.callback(source.close)
        recipe = None
        if encoders.recipe is not None:
            recipe = replace(encoders.recipe, format=request.format, fast=plan.fast, copy_lines=plan.copy_lines)
            encode = batch_encoder(recipe, SkyarchiveError)
        else:
            encode = encoders.by_format[request.format]
        self.with_labels = encoders.with_labels
        child = None
        if plan.child and source is not None and recipe is not None:
            self.phase = "starting the encoder process"
            config = Pipeline.child_config(recipe, source=source, writer=writer, budget=settings.max_batch_bytes)
            child = Child.start(config, pass_fds=(writer.fd,), post_error=SkyarchiveError)
            if child is not None:
                stack.enter_context(child)
        framing = Framing(request.format, encode, head=encoders.head(request.format))
        return Pipeline(framing, source=source, writer=writer, child=child, budget=settings.max_batch_bytes,
                        on_written=progress.update)  # fmt: skip

    def _read(self, pipeline: Pipeline, media: MediaCopier | None, progress: ProgressReporter) -> None:
        """The read snapshot: the selection copied (SQLite), spooled, or (no spool) encoded as it is read; then
        ended. Nothing else happens inside it: no console output, no waiting on the disk (but without a spool)."""
        job, request = self.job, self.job.request
        source = pipeline.source
        if isinstance(source, Copy):
            self.phase = "copying the selection"
            progress.status("copying the selection")
            try:
                with progress.quiet(), Snapshot.open(job.engine, copy_to=source.path, room=self.plan.room) as snapshot:
                    self.total = snapshot.copy_selection(request, media=media is not None)
            except NoRoom as exc:
                self._no_room(pipeline, exc)
            else:
                self.phase = "sorting the selection"
                progress.status("sorting the selection")
                source.sort()
                if media is not None:
                    self.phase = "reading the media rows"
                    media.spool(source.media_rows())
                    media.start(threads=self.plan.threads)
                progress.total = self.total
                return
        with progress.quiet(), Snapshot.open(job.engine) as snapshot:
            self.phase = "counting posts"
            self.total = progress.total = count_selection(snapshot.conn, request)
            if media is not None:
                self.phase = "reading the media rows"
                media.spool(media_rows(snapshot.conn, request))
            self._stream(snapshot, pipeline)
            snapshot.end(complete=True)
        progress.total = self.total
        if self.short is not None:
            log.warning("export_batching: the selection ended after %d of %d counted posts", *self.short)
        if media is not None:
            media.start(threads=self.plan.threads)

    def _no_room(self, pipeline: Pipeline, exc: NoRoom) -> None:
        """The copy outgrew its room: no spool (the copy is dropped), said once, once the snapshot has ended."""
        where = self.plan.spool_dir
        pipeline.without_spool()
        log.warning(
            "export_batching: no room for a copy of the selection in %s (%s; TMPDIR sets where): reading the"
            " archive while the posts are written, as skyarchive does",
            where, exc,
        )  # fmt: skip
        self.plan = replace(self.plan, source=DIRECT, child=False, in_date_order=True)  # no sort spilling there

    def _stream(self, snapshot: Snapshot, pipeline: Pipeline) -> None:
        """The selection's rows, one streamed statement, into the spool or (no spool) through the encoders."""
        request, settings, conn = self.job.request, self.settings, snapshot.conn
        if self.plan.copy_lines:
            stream: Any = pgcopy.CopyRows(conn, pgcopy.copy_query(request, with_labels=self.with_labels))
            sizes_of: Any = lambda rows: list(map(len, rows))  # noqa: E731 - COPY's rows are bytes
        else:
            query = posts_query(request, in_date_order=self.plan.in_date_order)
            stream, sizes_of = open_stream(conn, query, batch_size=settings.batch_size), row_sizes
        spool = pipeline.source if isinstance(pipeline.source, Spool) else None
        try:
            for block in planned(self.total, settings.batch_size):
                self.phase, self.batch = "reading", block.span
                offset, read = spool.size if spool else 0, 0
                for chunk in chunks(
                    stream.fetchmany, rows=block.count, budget=settings.max_batch_bytes, sizes_of=sizes_of
                ):
                    if spool is not None:
                        spool.append(chunk)
                    else:
                        pipeline.write_chunk(block, chunk, opening=block.first + read == 0)
                    read += len(chunk[0])
                if spool is not None and read:
                    pipeline.put(Block(block.number, block.first, read, offset, spool.size - offset))
                if read < block.count:
                    self.short = (block.first + read, self.total)
                    self.total = block.first + read
                    break
        finally:
            stream.close()  # the cursor must not outlive the snapshot

    def _finish(
        self, digest: str | None, path: Path, media: MediaCopier | None, progress: ProgressReporter, posts: int
    ) -> None:
        """Outside the snapshot, the posts file written: the media copied, the manifest, the sums, one sync."""
        assert self.staging is not None
        staging = self.staging
        progress.status(self._status(media))
        if media is not None:
            self.phase = "copying media files"
            media.wait(tick=progress.beat)
        self.phase = f"writing {MANIFEST_NAME}"
        write_manifest(
            staging.path, request=self.job.request, exported_at=self.job.started_at, post_count=posts,
            media_count=media.copied if media else 0, media_skipped=media.skipped if media else 0, exporter=EXPORTER,
        )  # fmt: skip
        if digest is not None:
            self.phase = f"writing {SUMS_NAME}"
            sums = [(digest, path.name), (file_digest(staging.path / MANIFEST_NAME), MANIFEST_NAME)]
            write_sums(staging.path / SUMS_NAME, sums, media.sums() if media is not None else iter(()))
        self.phase = "syncing to disk"
        sync_tree(staging.path)

    def _status(self, media: MediaCopier | None) -> Any:
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
        """The exception to raise for ``exc``; everything has been unwound by now. The one place where a failed
        batch (:class:`.blocks.BatchFailed`, from any thread or process) becomes the export's failure."""
        leftover = ""
        left = self.staging.removal_error if self.staging is not None else None
        if left is not None and self.staging is not None:
            leftover = f"; the incomplete export could not be removed: {self.staging.path} ({left.strerror or left})"
        if not isinstance(exc, Exception):  # an interrupt: skyarchive reports it
            if leftover:
                log.warning("export_batching: interrupted%s", leftover)
            return exc
        phase, batch, cause = self.phase, self.batch, exc
        if isinstance(exc, BatchFailed):
            if exc.span is not None:
                phase, batch = "writing", exc.span
            cause = exc.cause  # type: ignore[assignment]  # an Exception: an interrupt is not carried
        return ExportFailed(phase, cause, self._describe(cause), batch=batch, leftover=leftover)

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
