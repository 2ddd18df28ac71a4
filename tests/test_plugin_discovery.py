"""How the host finds the plugin: enabled, installed but not enabled, enabled but missing."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib.metadata import entry_points
from pathlib import Path

import pluggy
import pytest
from skyarchive.cli import run_export
from skyarchive.config import AppConfig
from skyarchive.errors import UsageError
from skyarchive.export import ExportJob, ExportRequest
from skyarchive.plugins import load_plugins

from export_batching_plugin.config import Settings
from export_batching_plugin.plugin import ExportBatching, ExportBatchingWithProgress

from .conftest import DID, HOST_VERSION, ArchiveFolder
from .harness import insert_rows, make_engine, post_row


def test_plugin_is_installed_under_the_entry_point_group() -> None:
    (ep,) = [ep for ep in entry_points(group="skyarchive.plugins") if ep.name == "export_batching"]
    assert ep.value == "export_batching_plugin.plugin:create_plugin"


def test_enabled_plugin_is_registered_with_the_hook_of_this_host() -> None:
    pm = load_plugins(AppConfig(plugins_enabled=("export_batching",)))
    plugin = pm.get_plugin("export_batching")
    expected = ExportBatchingWithProgress if HOST_VERSION >= (0, 4) else ExportBatching
    assert type(plugin) is expected
    assert [impl.plugin_name for impl in pm.hook.skyarchive_export.get_hookimpls()] == ["export_batching"]


def test_installed_but_not_enabled_plugin_stays_off() -> None:
    table = {"export_batching": {"batch_size": 10}} if HOST_VERSION < (0, 5) else {}  # 0.5 refuses such a table
    pm = load_plugins(AppConfig(plugin_settings=table))
    assert pm.get_plugin("export_batching") is None
    assert pm.hook.skyarchive_export.get_hookimpls() == []


def test_the_other_hosts_hook_does_not_fit(tmp_path: Path) -> None:
    """The plugin must pick its hook by host release: the other one is rejected, or never gets progress to report."""
    from skyarchive import hookspecs

    wrong = ExportBatching if HOST_VERSION >= (0, 4) else ExportBatchingWithProgress
    pm = pluggy.PluginManager("skyarchive")
    pm.add_hookspecs(hookspecs)
    if HOST_VERSION < (0, 4):
        with pytest.raises(pluggy.PluginValidationError):
            pm.register(wrong(Settings()))
        return
    # 0.4: a hookimpl asking for fewer arguments registers, but reports through 0.3's job.report_progress.
    pm.register(wrong(Settings(threshold=0)))
    engine = make_engine(tmp_path / "a.db")
    insert_rows(engine, [post_row(n) for n in range(3)])
    job = ExportJob(
        request=ExportRequest.create(did="did:plc:owner", format="json"), config=AppConfig(), engine=engine,
        export_dir=tmp_path / "out" / "x", started_at=datetime.now(timezone.utc),
    )  # fmt: skip
    with pytest.raises(AttributeError, match="report_progress"):
        run_export(job, pm)
    engine.dispose()


def test_enabled_but_missing_plugin_is_an_error(archive_folder: ArchiveFolder) -> None:
    with pytest.raises(UsageError, match="'nope' is enabled but not installed"):
        load_plugins(AppConfig(plugins_enabled=("nope",)))
    archive_folder.write_config('[plugins]\nenabled = ["export_batching", "nope"]\n')
    result = archive_folder.cli("init")
    assert result.code == 2
    assert "plugin 'nope' is enabled but not installed" in result.error_line
    assert not archive_folder.db.exists()


def test_export_with_the_plugin_enabled_works(archive_folder: ArchiveFolder) -> None:
    archive_folder.enable_plugin(threshold=0, batch_size=7)
    archive_folder.seed(50)
    result = archive_folder.cli("export", "--did", DID, "--format", "json")
    assert result.code == 0, result.err
    assert len(json.loads((result.export_dir / "posts.json").read_text(encoding="utf-8"))) == 50
