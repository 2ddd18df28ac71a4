"""Plugin loading: entry points in group ``skyarchive.plugins``, only those enabled.

An entry point names a factory: called with the plugin's ``[plugins.<name>]``
table (a dict, empty when absent), it returns the object to register, or
raises ValueError/TypeError for a bad table.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pluggy

from . import hookspecs
from .config import AppConfig
from .errors import SkyarchiveError, UsageError

ENTRY_POINT_GROUP = "skyarchive.plugins"


def load_plugins(config: AppConfig) -> pluggy.PluginManager:
    """A PluginManager with the hookspecs and every enabled plugin registered."""
    pm = pluggy.PluginManager("skyarchive")
    pm.add_hookspecs(hookspecs)
    installed = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        installed.setdefault(ep.name, ep)
    for name in config.plugins_enabled:
        ep = installed.get(name)
        if ep is None:
            raise UsageError(
                f"config: plugin {name!r} is enabled but not installed (no {ENTRY_POINT_GROUP} entry point)"
            )
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
