"""The plugin's settings: its ``[plugins.export_batching]`` table, validated."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


class ConfigError(ValueError):
    """A bad ``[plugins.export_batching]`` table; the message is one line."""


@dataclass(frozen=True)
class Settings:
    """Validated settings; the defaults are those of an absent table."""

    #: Selections with fewer posts than this are left to the host's exporter.
    threshold: int = 5000
    #: Posts fetched, encoded and written per batch.
    batch_size: int = 1000
    #: Upper bound on the stored size of one batch; batches of large posts shrink to fit.
    max_batch_bytes: int = 16 * 1024 * 1024
    #: Longest gap between two progress lines on the console, in seconds.
    progress_interval: float = 5.0
    #: Write a SHA256SUMS of every file into each export (then every selection goes through the plugin).
    checksums: bool = False


_MINIMUM = {"threshold": 0, "batch_size": 1, "max_batch_bytes": 1}
_FLOATS = {"progress_interval"}
_BOOLS = {"checksums"}


def parse_settings(table: Mapping[str, Any]) -> Settings:
    """Validate a config table; raise ConfigError naming the first bad key.

    >>> parse_settings({"batch_size": 500}).batch_size
    500
    """
    known = {f.name: f for f in fields(Settings)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for name, value in table.items():
        if name in _BOOLS:
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, not {type(value).__name__} {value!r}")
            values[name] = value
            continue
        wants_float = name in _FLOATS
        if isinstance(value, bool) or not isinstance(value, (int, float) if wants_float else int):
            kind = "a number" if wants_float else "an integer"
            raise ConfigError(f"{name} must be {kind}, not {type(value).__name__} {value!r}")
        number: float = value
        if wants_float and not 0 < number < math.inf:
            raise ConfigError(f"{name} must be a positive finite number, not {value!r}")
        if not wants_float and number < _MINIMUM[name]:
            raise ConfigError(f"{name} must be at least {_MINIMUM[name]}, not {value!r}")
        values[name] = float(number) if wants_float else number
    return Settings(**values)
