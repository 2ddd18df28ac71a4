"""Hook specifications of skyarchive 0.5 (project name ``skyarchive``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .export import ExportJob, ExportResult, Progress

hookspec = pluggy.HookspecMarker("skyarchive")
hookimpl = pluggy.HookimplMarker("skyarchive")


@hookspec(firstresult=True)
def skyarchive_export(job: ExportJob, progress: Progress) -> ExportResult | None:
    """Write ``job.export_dir`` for ``job.request``; return None to leave the export to the host.

    Progress goes through ``progress.update(processed, total)`` (0.3: ``job.report_progress``);
    while no post count moves, ``progress.status(text)`` says in one line what the export is
    doing, e.g. ``"copying media files: 3,412 of 10,210"`` (new in 0.5).
    """
