"""The batched export, start to end (see docs/how-it-works.md)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from skyarchive.errors import SkyarchiveError
from skyarchive.export import MEDIA_DIR_NAME, POSTS_FILE, ExportJob, ExportResult, describe_os_error, write_manifest

from . import __version__
from .config import Settings
from .media import MediaCopier
from .progress import Channel, ProgressReporter
from .reading import Batch, count_selection, read_batches, read_snapshot
from .staging import staged
from .writing import open_writer

EXPORTER = f"export_batching {__version__}"


class BatchFailed(SkyarchiveError):
    """A batch could not be read, encoded or written; the message names the batch."""


def describe_error(exc: BaseException) -> str:
    """One line for any failure; an OSError says plainly when the disk is full, and where."""
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM takes the same clean path as Ctrl-C (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _next_batch(last: int, processed: int, settings: Settings, total: int) -> str:
    """The batch that was being read when reading failed: its number and the posts it was to hold."""
    first = processed + 1
    return f"batch {last + 1} (posts {first}-{min(first + settings.batch_size - 1, max(total, first))})"


def export_batched(job: ExportJob, settings: Settings, channel: Channel) -> ExportResult | None:
    """Export ``job`` in batches, or return None to leave it to the host's exporter."""
    request = job.request
    with sigterm_as_interrupt(), read_snapshot(job.engine) as conn:
        total = count_selection(conn, request)
        if total < settings.threshold:
            return None
        with (
            staged(job.export_dir) as staging,
            ProgressReporter(channel, total, interval=settings.progress_interval) as progress,
        ):
            media = None
            if request.media:
                (staging / MEDIA_DIR_NAME).mkdir()
                media = MediaCopier(conn, request, media_root=job.config.media_dir, dest=staging / MEDIA_DIR_NAME)
            writer = open_writer(request.format, staging / POSTS_FILE[request.format])
            batches = read_batches(
                conn, request, batch_size=settings.batch_size, max_batch_bytes=settings.max_batch_bytes, expected=total
            )
            current: Batch | None = None  # the batch being written; None while the next one is read
            last = 0  # the number of the last batch written
            target = writer.path  # the file being written, for errors that do not say
            try:
                for current in batches:
                    writer.write_batch(current)
                    if media is not None:
                        target = staging / MEDIA_DIR_NAME
                        media.copy_for(current.rows)
                        target = writer.path
                    progress.advance(len(current.rows))
                    last, current = current.number, None
                writer.finish()
                if media is not None:
                    media.finish()
            except BaseException as exc:
                writer.abort()
                batches.close()
                if media is not None:
                    media.close()
                if not isinstance(exc, Exception):
                    raise
                if isinstance(exc, OSError) and exc.filename is None:
                    exc.filename = str(target)  # a buffered write does not say which file it was writing
                where = (
                    current.describe()
                    if current is not None
                    else _next_batch(last, progress.processed, settings, total)
                )
                raise BatchFailed(f"{where} failed: {describe_error(exc)}") from exc
            writer.close()
            if media is not None:
                media.close()
            copied = media.copied if media is not None else 0
            write_manifest(
                staging,
                request=request,
                exported_at=job.started_at,
                post_count=progress.processed,
                media_count=copied,
                media_skipped=media.skipped if media is not None else 0,
                exporter=EXPORTER,
            )
            progress.finish()
    return ExportResult(export_dir=job.export_dir, post_count=progress.processed, media_count=copied)
