"""The plugin's settings: its ``[plugins.export_batching]`` table, validated.

Each setting is declared once, in :class:`Settings`: its type (the annotation), its default, its bounds
and its description (:func:`setting`). Validation (:func:`parse_settings`), the error messages and the
table of docs/configuration.md (checked by a test) all follow from that declaration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints


class ConfigError(ValueError):
    """A bad ``[plugins.export_batching]`` table; the message is one line."""


def setting(default: Any, description: str, *, minimum: int | None = None, positive: bool = False) -> Any:
    """A field of :class:`Settings`: its default, what it means, and its bounds.

    ``minimum``: the smallest integer allowed; ``positive``: a number above 0 (and finite).
    """
    return field(default=default, metadata={"description": description, "minimum": minimum, "positive": positive})


@dataclass(frozen=True)
class Settings:
    """Validated settings; the defaults are those of an absent table."""

    threshold: int = setting(
        5000,
        "selections with fewer posts than this are exported by skyarchive's own exporter;"
        " `0` sends every export through the plugin",
        minimum=0,
    )
    batch_size: int = setting(1000, "posts fetched, encoded and written per batch", minimum=1)
    max_batch_bytes: int = setting(
        16 * 1024 * 1024,
        "upper bound on the stored size of the posts read, encoded and written at once: a batch of very large posts"
        " (rich embeds) is handled in pieces within it",
        minimum=1,
    )
    progress_interval: float = setting(
        5.0,
        "the longest the console may go without a line, matching skyarchive's console (at most one"
        " progress line per 5 s)",
        positive=True,
    )
    checksums: bool = setting(
        False,
        "write a `SHA256SUMS` of every file into each export; with `true`, every export goes through the"
        " plugin, whatever `threshold` says",
    )
    encoder_process: bool = setting(
        True,
        "encode selections of 10,000 posts and more on both cores: a second process encodes batches and writes"
        " the posts file beside the export (faster; see docs/benchmarks.md for its memory); `false`: in the"
        " export's own process alone",
    )
    link_unchanged_media: bool = setting(
        False,
        "with `--media`, hard-link each media file that is unchanged since the newest complete earlier export of"
        " the DID (same name and size, its source last modified before that export began) instead of copying it"
        " again: a repeat export then costs only what changed (docs/usage.md, section 7); with `true`, every"
        " export with `--media` goes through the plugin, whatever `threshold` says",
    )


@dataclass(frozen=True)
class Declared:
    """One setting as :class:`Settings` declares it."""

    name: str
    kind: type  #: int, float or bool
    default: Any
    description: str
    minimum: int | None
    positive: bool

    @property
    def type_name(self) -> str:
        return {int: "integer", float: "number", bool: "boolean"}[self.kind]

    @property
    def allowed(self) -> str:
        """The values allowed, as docs/configuration.md writes them."""
        if self.kind is bool:
            return "`true`, `false`"
        if self.positive:
            return "> 0, finite"
        return f"≥ {self.minimum}" if self.minimum is not None else "any"

    def check(self, value: Any) -> Any:
        """``value`` as this setting holds it; ConfigError (one line, naming the key) if it is not allowed."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{self.name} must be true or false, not {type(value).__name__} {value!r}")
            return value
        accepted = (int, float) if self.kind is float else (int,)
        if isinstance(value, bool) or not isinstance(value, accepted):
            kind = "a number" if self.kind is float else "an integer"
            raise ConfigError(f"{self.name} must be {kind}, not {type(value).__name__} {value!r}")
        if self.positive and not 0 < value < math.inf:
            raise ConfigError(f"{self.name} must be a positive finite number, not {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{self.name} must be at least {self.minimum}, not {value!r}")
        return self.kind(value)


def declared() -> dict[str, Declared]:
    """Every setting, by name, in the order :class:`Settings` declares them."""
    hints = get_type_hints(Settings)
    return {
        f.name: Declared(
            name=f.name,
            kind=hints[f.name],
            default=f.default,
            description=f.metadata["description"],
            minimum=f.metadata["minimum"],
            positive=f.metadata["positive"],
        )
        for f in fields(Settings)
    }


def parse_settings(table: Mapping[str, Any]) -> Settings:
    """Validate a config table; raise ConfigError naming the first bad key.

    >>> parse_settings({"batch_size": 500}).batch_size
    500
    """
    known = declared()
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return Settings(**{name: known[name].check(value) for name, value in table.items()})
