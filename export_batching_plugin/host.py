"""Every name the plugin takes from skyarchive comes in here, and only here, grouped as **documented** (the
export contract: the hook, its arguments and result, the helpers ``skyarchive.export``'s docstring lists) or
**undocumented** (used all the same, and checked). docs/host-contract.md lists every name and
tests/test_host_contract.py checks each against every release. Imported only once :mod:`.plugin` has found a
supported release; :func:`contract_problems` then decides whether the plugin steps aside.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# -- documented: the hook, its job and result, the helpers of the export contract ----------------
from skyarchive import export, hookspecs
from skyarchive.errors import SkyarchiveError, UsageError
from skyarchive.export import (  # noqa: F401 - imported to fail early if missing; encoding uses per_post()
    CSV_HEADER,
    JSON_OPTIONS,
    POST_ORDER,
    ExportJob,
    ExportRequest,
    ExportResult,
    csv_row,
    post_record,
    selection_criteria,
    write_manifest,
)

# -- undocumented: the tables (their schema is the documented one), the per-field helpers -------
from skyarchive.models import media_table, posts_table

from .blocks import POST_COLUMNS

MEDIA_COLUMNS = (
    "hash", "post_uri", "mime_type", "file_path", "size_bytes", "width", "height", "alt_text", "created_at",
)  # fmt: skip
#: The export folder's layout, as the host reference fixes it.
POSTS_FILE = {"json": "posts.json", "csv": "posts.csv", "jsonl": "posts.jsonl"}
MEDIA_DIR_NAME = "media"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class PerPost:
    """The host's per-post encoding, as its module holds it at one moment."""

    post_record: Callable[[Any], dict[str, Any]]
    csv_row: Callable[[Any], list[Any]]
    json_options: Mapping[str, Any]
    #: The simplejson options of one posts.jsonl line (skyarchive 0.5), or None on a host without JSON Lines.
    jsonl_options: Mapping[str, Any] | None
    csv_header: tuple[str, ...]


def has_labels(csv_header: Sequence[str]) -> bool:
    """Whether posts.csv has the ``Labels`` column (skyarchive 0.4; 0.3 has 15 columns without it)."""
    return tuple(csv_header[-1:]) == ("Labels",)


def per_post() -> PerPost:
    """The host's per-post encoding, looked up now: once per export, so that the fast encoders are
    checked against, and fall back to, exactly the functions the host's own exporter would call."""
    return PerPost(
        post_record=export.post_record,
        csv_row=export.csv_row,
        json_options=export.JSON_OPTIONS,
        jsonl_options=getattr(export, "JSONL_OPTIONS", None),
        csv_header=tuple(export.CSV_HEADER),
    )


def hook_arguments() -> tuple[str, ...]:
    """The argument names of the installed host's export hook."""
    return tuple(inspect.signature(hookspecs.skyarchive_export).parameters)


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()


def _has_progress_channel() -> bool:
    if hook_arguments() == ("job",):
        return callable(getattr(ExportJob, "report_progress", None))
    return callable(getattr(getattr(export, "Progress", None), "update", None))


def contract_problems() -> list[str]:
    """What about the installed host differs from what the plugin relies on (empty: nothing)."""
    checks: list[tuple[bool, str]] = [
        (hook_arguments() in (("job",), ("job", "progress")), f"skyarchive_export{hook_arguments()}"),
        (_has_progress_channel(), "the progress channel (0.3: job.report_progress, 0.4: progress.update)"),
        (issubclass(SkyarchiveError, Exception) and issubclass(UsageError, SkyarchiveError), "the error types"),
        (_fields(ExportJob) >= {"request", "config", "engine", "export_dir", "started_at"}, "ExportJob's fields"),
        (_fields(ExportResult) >= {"export_dir", "post_count", "media_count"}, "ExportResult's fields"),
        (_fields(ExportRequest) >= {"did", "format", "since", "until", "media"}, "ExportRequest's fields"),
        (_parameters(selection_criteria) == ["request"], "selection_criteria(request)"),
        ([str(c) for c in POST_ORDER] == ["posts.created_at DESC", "posts.uri ASC"], "POST_ORDER"),  # blocks.Copy
        (_parameters(export.post_record) == ["post"], "post_record(post)"),
        (_parameters(export.csv_row) == ["post"], "csv_row(post)"),
        (isinstance(export.JSON_OPTIONS, Mapping), "JSON_OPTIONS"),
        (isinstance(getattr(export, "JSONL_OPTIONS", {}), Mapping), "JSONL_OPTIONS"),
        (isinstance(export.CSV_HEADER, tuple) and all(isinstance(h, str) for h in export.CSV_HEADER), "CSV_HEADER"),
        (
            _parameters(write_manifest)
            == ["export_dir", "request", "exported_at", "post_count", "media_count", "media_skipped", "exporter"],
            "write_manifest(export_dir, *, request, exported_at, post_count, media_count, media_skipped, exporter)",
        ),
        (tuple(posts_table.columns.keys()) == POST_COLUMNS, "the posts table's columns"),
        (tuple(media_table.columns.keys()) == MEDIA_COLUMNS, "the media table's columns"),
    ]
    return [what for ok, what in checks if not ok]


__all__ = [
    "MANIFEST_NAME",
    "MEDIA_COLUMNS",
    "MEDIA_DIR_NAME",
    "POSTS_FILE",
    "POST_COLUMNS",
    "POST_ORDER",
    "ExportJob",
    "ExportRequest",
    "ExportResult",
    "PerPost",
    "SkyarchiveError",
    "UsageError",
    "contract_problems",
    "has_labels",
    "hook_arguments",
    "media_table",
    "per_post",
    "posts_table",
    "selection_criteria",
    "write_manifest",
]  # fmt: skip
