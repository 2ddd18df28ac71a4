"""The entry point (``skyarchive.plugins`` → ``export_batching``): thin glue.

skyarchive calls :func:`create_plugin` with the ``[plugins.export_batching]`` table and registers what it
returns: the hooks that fit the installed host (0.4 and later hand the hook a progress reporter, 0.3 does not),
once the table is valid, the release is one the plugin is proven on (:func:`supported_releases`, from the
package metadata) and every name it takes from the host has the shape it expects (:mod:`.host`); else hooks
that step aside (skyarchive's own exporter runs, and each export says why in one warning line).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import pluggy

from .config import Settings, parse_settings

hookimpl = pluggy.HookimplMarker("skyarchive")
log = logging.getLogger("export_batching_plugin")

DISTRIBUTION = "export-batching-plugin"


def supported_releases() -> tuple[tuple[int, int], tuple[int, int], str] | None:
    """The skyarchive releases this plugin is proven on (tox tests each), as pyproject.toml declares them
    (its one place): ``(lowest, first not supported, "skyarchive>=0.3,<0.6")``, or None if not declared."""
    try:
        requirements = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return None
    for requirement in requirements:
        if re.match(r"skyarchive\b", requirement) and ";" not in requirement:
            low = re.search(r">=\s*(\d+)\.(\d+)", requirement)
            high = re.search(r"<\s*(\d+)\.(\d+)", requirement)
            if low and high:
                lowest, above = (int(low[1]), int(low[2])), (int(high[1]), int(high[2]))
                return lowest, above, f"skyarchive>={low[1]}.{low[2]},<{high[1]}.{high[2]}"
    return None


def installed_host_version() -> str | None:
    """The installed skyarchive's version, from its package metadata."""
    try:
        return metadata.version("skyarchive")
    except metadata.PackageNotFoundError:
        return None


def host_problem() -> str | None:
    """Why the plugin must not export with the installed skyarchive, or None when it may."""
    version = installed_host_version()
    supported = supported_releases()
    if supported is None:
        return f"the {DISTRIBUTION} package metadata does not say which skyarchive releases it supports"
    lowest, above, text = supported
    match = re.match(r"(\d+)\.(\d+)", version or "")
    release = (int(match[1]), int(match[2])) if match else None
    if release is None or not lowest <= release < above:
        return f"skyarchive {version} is not a release this plugin is proven on ({text})"
    try:
        from . import host
    except ImportError as exc:
        return f"skyarchive {version} lacks a name this plugin uses ({exc})"
    problems = host.contract_problems()
    if problems:
        return f"skyarchive {version} differs from what this plugin relies on: {', '.join(problems)}"
    return None


_STEP_ASIDE = (
    "export_batching: %s; %s skyarchive's own exporter. Install an export-batching-plugin release made for"
    " this skyarchive, or a skyarchive it supports, to export in batches again."
)


class StepAside:
    """The hooks on a host the plugin is not proven on: decline every export, saying why.

    The hook names no arguments: pluggy rejects a hookimpl that names an argument the host's hookspec
    lacks, and the host then refuses to start. So whatever a later release passes to its export hook,
    this one registers, and the export goes to skyarchive's own exporter.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason

    @hookimpl
    def skyarchive_export(self) -> None:
        """Decline (None): skyarchive's own exporter runs."""
        log.warning(_STEP_ASIDE, self.reason, "this export uses")


class StandAside:
    """On a host without the ``skyarchive_export`` hook this plugin knows: no hooks at all.

    A hookimpl of a hook the host does not specify fails pluggy's ``check_pending``; an object
    with none cannot. The warning comes once, when skyarchive loads the plugin.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        log.warning(_STEP_ASIDE, reason, "exports use")


def host_has_export_hook() -> bool:
    """Whether the installed skyarchive specifies the ``skyarchive_export`` hook (any arguments)."""
    try:
        from skyarchive import hookspecs
    except ImportError:
        return False
    return callable(getattr(hookspecs, "skyarchive_export", None))


class ExportBatching:
    """The hooks for a host whose export hook takes only the job (0.3)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @hookimpl
    def skyarchive_export(self, job: Any) -> Any:
        """Export in batches, or decline (None) below the threshold."""
        return self._export(job, job.report_progress, None)

    def _export(self, job: Any, update: Any, status: Any) -> Any:
        """The batched export; None (said) where its code cannot be loaded (no room to map orjson: ``ulimit -v``)."""
        try:
            from .batched import export_batched
            from .progress import Channel
        except (ImportError, MemoryError) as exc:
            log.warning("export_batching: cannot load the batched exporter (%s); skyarchive exports", exc)
            return None
        return export_batched(job, self.settings, Channel(update, status if callable(status) else None))


class ExportBatchingWithProgress(ExportBatching):
    """The hooks for a host that hands the exporter a progress reporter (0.4; with ``status``, 0.5)."""

    @hookimpl
    def skyarchive_export(self, job: Any, progress: Any) -> Any:  # type: ignore[override]
        """Export in batches, or decline (None) below the threshold."""
        return self._export(job, progress.update, getattr(progress, "status", None))  # 0.5: status beside the bar


def create_plugin(settings: Mapping[str, Any]) -> ExportBatching | StepAside | StandAside:
    """Validate the plugin's config table and return the hooks for the installed host."""
    parsed = parse_settings(settings)
    problem = host_problem()
    if problem is not None:
        return StepAside(problem) if host_has_export_hook() else StandAside(problem)
    from .host import hook_arguments

    return ExportBatchingWithProgress(parsed) if "progress" in hook_arguments() else ExportBatching(parsed)
