"""Which exporter runs: the host's below the threshold, the plugin's at or above it."""

from __future__ import annotations

import json

import pytest

from .conftest import DID, ArchiveFolder


def exporter_of(archive_folder: ArchiveFolder, *args: str) -> str:
    out = archive_folder.root / f"out{len(list(archive_folder.root.glob('out*')))}"
    result = archive_folder.cli("export", "--did", DID, "--format", "json", "--out", str(out), *args)
    assert result.code == 0, result.err
    manifest = json.loads((result.export_dir / "manifest.json").read_text(encoding="utf-8"))
    return str(manifest["exporter"]).split()[0]


@pytest.mark.parametrize(
    ("threshold", "expected"), [(41, "skyarchive"), (40, "export_batching"), (0, "export_batching")]
)
def test_threshold_selects_the_exporter(archive_folder: ArchiveFolder, threshold: int, expected: str) -> None:
    archive_folder.enable_plugin(threshold=threshold, batch_size=7)
    archive_folder.seed(40)
    assert exporter_of(archive_folder) == expected


def test_threshold_counts_the_selection_not_the_archive(archive_folder: ArchiveFolder) -> None:
    archive_folder.seed(300)
    last_day = archive_folder.sql("SELECT max(substr(created_at, 1, 10)) AS d FROM posts")[0]["d"]
    on_last_day = archive_folder.sql("SELECT count(*) AS n FROM posts WHERE created_at >= ?", last_day)[0]["n"]
    assert 0 < on_last_day < 300
    archive_folder.enable_plugin(threshold=on_last_day + 1, batch_size=7)
    assert exporter_of(archive_folder, "--since", last_day) == "skyarchive"
    assert exporter_of(archive_folder) == "export_batching"


def test_default_threshold_leaves_small_archives_to_the_host(archive_folder: ArchiveFolder) -> None:
    archive_folder.enable_plugin()
    archive_folder.seed(100)
    assert exporter_of(archive_folder) == "skyarchive"


def test_plugin_not_enabled_means_host(archive_folder: ArchiveFolder) -> None:
    archive_folder.seed(40)
    assert exporter_of(archive_folder) == "skyarchive"
