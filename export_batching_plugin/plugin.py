"""The entry point (``skyarchive.plugins`` → ``export_batching``): thin glue.

skyarchive calls :func:`create_plugin` with the ``[plugins.export_batching]``
table and registers what it returns. The export hook's signature differs
between host releases (0.4 passes a progress reporter), so the factory
returns the hook object that fits the installed host.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import pluggy
from skyarchive.export import ExportJob, ExportResult

from .batched import export_batched
from .config import Settings, parse_settings

hookimpl = pluggy.HookimplMarker("skyarchive")


def host_passes_progress() -> bool:
    """True when the installed host's export hook has a ``progress`` argument (0.4 and later)."""
    from skyarchive import hookspecs

    return "progress" in inspect.signature(hookspecs.skyarchive_export).parameters


class ExportBatching:
    """The hooks for a host whose export hook takes only the job (0.3)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @hookimpl
    def skyarchive_export(self, job: ExportJob) -> ExportResult | None:
        """Export in batches, or decline (None) below the threshold."""
        return export_batched(job, self.settings, job.report_progress)  # type: ignore[attr-defined]


class ExportBatchingWithProgress(ExportBatching):
    """The hooks for a host that hands the exporter a progress reporter (0.4)."""

    @hookimpl
    def skyarchive_export(self, job: ExportJob, progress: Any) -> ExportResult | None:  # type: ignore[override]
        """Export in batches, or decline (None) below the threshold."""
        return export_batched(job, self.settings, progress.update)


def create_plugin(settings: Mapping[str, Any]) -> ExportBatching:
    """Validate the plugin's config table and return the hooks for the installed host."""
    parsed = parse_settings(settings)
    return ExportBatchingWithProgress(parsed) if host_passes_progress() else ExportBatching(parsed)
