"""Plugin loading: entry points in group ``skyarchive.plugins``, only those enabled.

An entry point names a factory: called with the plugin's ``[plugins.<name>]``
table (a dict, empty when absent), it returns the object to register, or
raises ValueError/TypeError for a bad table.

Before any plugin is loaded the config is checked against what is installed
(0.5): an enabled name without an entry point, or a ``[plugins.<name>]`` table
of a plugin that is not enabled, is a UsageError that suggests the closest
enabled or installed name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points

import pluggy

from . import hookspecs
from .config import AppConfig
from .errors import SkyarchiveError, UsageError

ENTRY_POINT_GROUP = "skyarchive.plugins"


def _normalise(name: str) -> str:
    """A name as compared for suggestions: lowercase, '-' and '.' as '_', no 'skyarchive_' or '_plugin'."""
    key = name.lower().replace("-", "_").replace(".", "_")
    return key.removeprefix("skyarchive_").removesuffix("_plugin") or key


def closest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name`` (a pip name, a typo, other case or separators), or None."""
    by_key: dict[str, str] = {}
    for candidate in candidates:
        by_key.setdefault(_normalise(candidate), candidate)
    match = difflib.get_close_matches(_normalise(name), list(by_key), n=1, cutoff=0.6)
    return by_key[match[0]] if match else None


def _check_enabled(enabled: Iterable[str], installed: Mapping[str, EntryPoint]) -> None:
    for name in enabled:
        if name not in installed:
            guess = closest_name(name, installed)
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise UsageError(
                f"config: plugin {name!r} is enabled but not installed (no {ENTRY_POINT_GROUP} entry point){hint}"
            )


def _stray_table_hint(table: str, enabled: tuple[str, ...], installed: Iterable[str]) -> str:
    """What to say about ``[plugins.<table>]``, a table of no enabled plugin."""
    guess = closest_name(table, enabled)
    if guess is not None:
        return f"did you mean {guess!r}?"
    guess = closest_name(table, installed)
    if guess == table:
        return f"add {table!r} to plugins.enabled, or remove the table"
    if guess is not None:
        return f"did you mean {guess!r}? (installed but not enabled)"
    if enabled:
        return "the enabled plugins are " + ", ".join(repr(name) for name in enabled)
    return "no plugin is enabled (plugins.enabled is empty)"


def _check_tables(config: AppConfig, installed: Iterable[str]) -> None:
    for table in config.plugin_settings:
        if table not in config.plugins_enabled:
            hint = _stray_table_hint(table, config.plugins_enabled, installed)
            raise UsageError(f"config: [plugins.{table}] is the table of a plugin that is not enabled; {hint}")


def load_plugins(config: AppConfig) -> pluggy.PluginManager:
    """A PluginManager with the hookspecs and every enabled plugin registered."""
    pm = pluggy.PluginManager("skyarchive")
    pm.add_hookspecs(hookspecs)
    installed: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        installed.setdefault(ep.name, ep)
    _check_enabled(config.plugins_enabled, installed)
    _check_tables(config, installed)
    for name in config.plugins_enabled:
        ep = installed[name]
        try:
            factory = ep.load()
        except Exception as exc:
            raise SkyarchiveError(f"plugin {name!r} failed to load: {exc}") from exc
        try:
            plugin = factory(dict(config.plugin_settings.get(name, {})))
        except (ValueError, TypeError) as exc:
            raise UsageError(f"config: [plugins.{name}]: {exc}") from exc
        try:
            pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise SkyarchiveError(f"plugin {name!r} does not fit skyarchive's hooks: {exc}") from exc
    return pm
