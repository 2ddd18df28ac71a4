"""The config file: found by --config, else $SKYARCHIVE_CONFIG, else ./skyarchive.toml.

A missing ./skyarchive.toml means defaults; a file named by --config or the
environment variable must exist. Unknown keys and ill-typed values are errors.
Relative paths (and a relative SQLite URL) are relative to the current directory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_NAME = "skyarchive.toml"
ENV_VAR = "SKYARCHIVE_CONFIG"


@dataclass(frozen=True)
class AppConfig:
    database_url: str = "sqlite:///skyarchive.db"
    media_dir: Path = Path("media")
    exports_dir: Path = Path("exports")
    plugins_enabled: tuple[str, ...] = ()
    #: Each plugin's own ``[plugins.<name>]`` table, handed to that plugin.
    plugin_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    source: Path | None = None


_KIND = {str: "a non-empty string", list: "a list", dict: "a table"}


def _expect(value: object, kind: type, where: str) -> Any:
    if not isinstance(value, kind) or (kind is str and not value):
        raise UsageError(f"config: {where} must be {_KIND[kind]}, not {value!r}")
    return value


def load_config(
    path: str | None = None,
    *,
    db_url: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> AppConfig:
    """Read and validate the config file; ``db_url`` (``--db``) overrides ``database_url``."""
    explicit = path or environ.get(ENV_VAR)
    source = Path(explicit) if explicit else Path(DEFAULT_CONFIG_NAME)
    data: dict[str, Any] = {}
    if source.is_file():
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(f"config: cannot read {source}: {exc}") from None
    elif explicit:
        raise UsageError(f"config: no such file: {source}")
    else:
        source = None  # type: ignore[assignment]

    unknown = sorted(set(data) - {"database_url", "media_dir", "exports_dir", "plugins"})
    if unknown:
        raise UsageError(f"config: unknown key(s): {', '.join(unknown)}")
    defaults = AppConfig()
    database_url = _expect(data.get("database_url", defaults.database_url), str, "database_url")
    media_dir = _expect(data.get("media_dir", str(defaults.media_dir)), str, "media_dir")
    exports_dir = _expect(data.get("exports_dir", str(defaults.exports_dir)), str, "exports_dir")

    plugins = _expect(data.get("plugins", {}), dict, "[plugins]")
    enabled = _expect(plugins.get("enabled", []), list, "plugins.enabled")
    for name in enabled:
        _expect(name, str, "each name in plugins.enabled")
    settings: dict[str, Mapping[str, Any]] = {}
    for key, value in plugins.items():
        if key == "enabled":
            continue
        if not isinstance(value, dict):
            raise UsageError(f"config: plugins.{key} must be a table")
        settings[key] = value
    return AppConfig(
        database_url=db_url or database_url,
        media_dir=Path(media_dir),
        exports_dir=Path(exports_dir),
        plugins_enabled=tuple(dict.fromkeys(enabled)),
        plugin_settings=settings,
        source=source,
    )
