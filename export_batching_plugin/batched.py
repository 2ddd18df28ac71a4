"""The batched export, start to end (see docs/how-it-works.md)."""

from __future__ import annotations

from skyarchive.errors import SkyarchiveError
from skyarchive.export import POSTS_FILE, ExportJob, ExportResult, describe_os_error, write_manifest

from . import __version__
from .config import Settings
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


def export_batched(job: ExportJob, settings: Settings, channel: Channel) -> ExportResult | None:
    """Export ``job`` in batches, or return None to leave it to the host's exporter."""
    request = job.request
    if request.media:
        return None  # media copying in the batched path is not built yet
    with read_snapshot(job.engine) as conn:
        total = count_selection(conn, request)
        if total < settings.threshold:
            return None
        with (
            staged(job.export_dir) as staging,
            ProgressReporter(channel, total, interval=settings.progress_interval) as progress,
        ):
            writer = open_writer(request.format, staging / POSTS_FILE[request.format])
            batches = read_batches(
                conn, request, batch_size=settings.batch_size, max_batch_bytes=settings.max_batch_bytes, expected=total
            )
            number, span = 1, settings.batch_size
            try:
                for batch in batches:
                    number, span = batch.number, len(batch.rows)
                    writer.write_batch(batch.rows)
                    progress.advance(span)
                    number, span = number + 1, settings.batch_size
                writer.finish()
            except Exception as exc:
                first = progress.processed + 1
                where = f"batch {number} (posts {first}-{min(first + span - 1, max(total, first))})"
                raise BatchFailed(f"{where} failed: {describe_error(exc)}") from exc
            finally:
                writer.close()
            write_manifest(
                staging,
                request=request,
                exported_at=job.started_at,
                post_count=progress.processed,
                media_count=0,
                media_skipped=0,
                exporter=EXPORTER,
            )
            progress.finish()
    return ExportResult(export_dir=job.export_dir, post_count=progress.processed, media_count=0)
