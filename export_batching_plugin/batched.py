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
from .reading import count_selection, read_batches, read_snapshot
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
            number, span, target = 1, settings.batch_size, writer.path
            try:
                for batch in batches:
                    number, span, target = batch.number, len(batch.rows), writer.path
                    writer.write_batch(batch)
                    if media is not None:
                        target = staging / MEDIA_DIR_NAME
                        media.copy_for(batch.rows)
                    progress.advance(span)
                    number, span, target = number + 1, settings.batch_size, writer.path
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
                first = progress.processed + 1
                where = f"batch {number} (posts {first}-{min(first + span - 1, max(total, first))})"
                raise BatchFailed(f"{where} failed: {describe_error(exc)}") from exc
            writer.close()
            if media is not None:
                media.close()
            write_manifest(
                staging,
                request=request,
                exported_at=job.started_at,
                post_count=progress.processed,
                media_count=media.copied if media else 0,
                media_skipped=media.skipped if media else 0,
                exporter=EXPORTER,
            )
            progress.finish()
    return ExportResult(
        export_dir=job.export_dir, post_count=progress.processed, media_count=media.copied if media else 0
    )
