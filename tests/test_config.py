"""Config validation: the plugin's table and the host's file. Every error is one line, before anything runs."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

from export_batching_plugin.config import ConfigError, Settings, declared, parse_settings

from .conftest import DID, HOST_VERSION, ArchiveFolder


def test_defaults() -> None:
    assert parse_settings({}) == Settings(
        threshold=5000, batch_size=1000, max_batch_bytes=16 * 1024 * 1024, progress_interval=5.0, checksums=False,
        encoder_process=True,
    )  # fmt: skip


def test_valid_values_are_kept() -> None:
    table = {"threshold": 0, "batch_size": 1, "max_batch_bytes": 4096, "progress_interval": 1, "checksums": True,
             "encoder_process": False}  # fmt: skip
    settings = parse_settings(table)
    assert settings == Settings(threshold=0, batch_size=1, max_batch_bytes=4096, progress_interval=1.0, checksums=True,
                                encoder_process=False)  # fmt: skip
    assert isinstance(settings.progress_interval, float)


DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def toml_value(text: str) -> object:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - 3.10
        import tomli as tomllib
    return tomllib.loads(f"v = {text}")["v"]


def test_the_configuration_page_agrees_with_the_declared_settings() -> None:
    """docs/configuration.md's table: each key once, with the declared type, default, bounds and meaning."""
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \| `([^`]+)`[^|]* \| ([^|]+) \| (.+) \|$", DOCS.read_text("utf-8"), re.M)
    documented = {
        name: (kind, toml_value(default), allowed.strip(), meaning.strip())
        for name, kind, default, allowed, meaning in rows
    }
    assert len(documented) == len(rows), "a key is documented twice"
    expected = {s.name: (s.type_name, s.default, s.allowed, s.description) for s in declared().values()}
    assert documented == expected


BAD_TABLES = [
    ({"bach_size": 10}, "unknown key(s): bach_size"),
    ({"batch_size": "1000"}, "batch_size must be an integer, not str"),
    ({"batch_size": 10.0}, "batch_size must be an integer, not float"),
    ({"batch_size": 0}, "batch_size must be at least 1, not 0"),
    ({"batch_size": -5}, "batch_size must be at least 1"),
    ({"threshold": -1}, "threshold must be at least 0, not -1"),
    ({"threshold": True}, "threshold must be an integer, not bool"),
    ({"max_batch_bytes": 0}, "max_batch_bytes must be at least 1"),
    ({"max_batch_bytes": [1]}, "max_batch_bytes must be an integer, not list"),
    ({"progress_interval": 0}, "progress_interval must be a positive finite number"),
    ({"progress_interval": -2.5}, "progress_interval must be a positive finite number"),
    ({"progress_interval": math.nan}, "progress_interval must be a positive finite number"),
    ({"progress_interval": math.inf}, "progress_interval must be a positive finite number"),
    ({"progress_interval": "5s"}, "progress_interval must be a number, not str"),
    ({"checksums": "yes"}, "checksums must be true or false, not str 'yes'"),
    ({"checksums": 1}, "checksums must be true or false, not int 1"),
]


@pytest.mark.parametrize(("table", "message"), BAD_TABLES)
def test_bad_plugin_table_is_rejected(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(table)
    assert message in str(info.value) and "\n" not in str(info.value)


TOML_VALUES = {
    "bach_size = 10": "unknown key(s): bach_size",
    'batch_size = "1000"': "batch_size must be an integer",
    "batch_size = 0": "batch_size must be at least 1",
    "threshold = -1": "threshold must be at least 0",
    "progress_interval = nan": "progress_interval must be a positive finite number",
    "max_batch_bytes = 1.5": "max_batch_bytes must be an integer",
    'checksums = "true"': "checksums must be true or false, not str 'true'",
}


@pytest.mark.parametrize(("line", "message"), TOML_VALUES.items())
def test_bad_plugin_table_stops_the_cli_at_startup(archive_folder: ArchiveFolder, line: str, message: str) -> None:
    archive_folder.seed(10)
    archive_folder.write_config(f'[plugins]\nenabled = ["export_batching"]\n[plugins.export_batching]\n{line}\n')
    result = archive_folder.cli("export", "--did", DID, "--format", "json")
    assert result.code == 2
    assert result.error_line.startswith("skyarchive: error: config: [plugins.export_batching]: ")
    assert message in result.error_line
    assert archive_folder.export_dirs() == []


def test_table_of_a_plugin_that_is_not_enabled(archive_folder: ArchiveFolder) -> None:
    """Before skyarchive 0.5 the table is not looked at; 0.5 refuses it (a mistake it catches) and says which."""
    archive_folder.write_config("[plugins.export_batching]\nbatch_size = 0\n")
    result = archive_folder.cli("init")
    if HOST_VERSION < (0, 5):
        assert result.code == 0
    else:
        assert result.code == 2
        assert "[plugins.export_batching] is the table of a plugin that is not enabled" in result.error_line


HOST_CONFIGS = {
    'database_ur = "sqlite:///x.db"': "unknown key(s): database_ur",
    "database_url = 5": "database_url must be a non-empty string",
    'media_dir = ""': "media_dir must be a non-empty string",
    '[plugins]\nenabled = "export_batching"': "plugins.enabled must be a list",
    "[plugins]\nenabled = [1]": "each name in plugins.enabled must be a non-empty string",
    "[plugins]\nexport_batching = 3": "plugins.export_batching must be a table",
    "database_url = ": "cannot read",
}


@pytest.mark.parametrize(("text", "message"), HOST_CONFIGS.items())
def test_bad_host_config_is_one_line(archive_folder: ArchiveFolder, text: str, message: str) -> None:
    archive_folder.write_config(text + "\n")
    result = archive_folder.cli("init")
    assert result.code == 2
    assert message in result.error_line
    assert not archive_folder.db.exists()


def test_config_is_found_by_option_then_env_then_cwd(
    archive_folder: ArchiveFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    custom = archive_folder.root / "custom.toml"
    custom.write_text('database_url = "sqlite:///by-option.db"\n', encoding="utf-8")
    env = archive_folder.root / "env.toml"
    env.write_text('database_url = "sqlite:///by-env.db"\n', encoding="utf-8")
    archive_folder.write_config('database_url = "sqlite:///by-cwd.db"\n')
    assert archive_folder.cli("init").code == 0 and Path("by-cwd.db").exists()
    monkeypatch.setenv("SKYARCHIVE_CONFIG", str(env))
    assert archive_folder.cli("init").code == 0 and Path("by-env.db").exists()
    assert archive_folder.cli("--config", str(custom), "init").code == 0 and Path("by-option.db").exists()
    missing = archive_folder.cli("--config", "nope.toml", "init")
    assert missing.code == 2 and "no such file: nope.toml" in missing.error_line
