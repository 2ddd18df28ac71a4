"""Hook specifications of skyarchive 0.3 (project name ``skyarchive``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .export import ExportJob, ExportResult

hookspec = pluggy.HookspecMarker("skyarchive")
hookimpl = pluggy.HookimplMarker("skyarchive")


@hookspec(firstresult=True)
def skyarchive_export(job: ExportJob) -> ExportResult | None:
    """Write ``job.export_dir`` for ``job.request``; return None to leave the export to the host.

    Progress goes through ``job.report_progress(processed, total)``.
    """
