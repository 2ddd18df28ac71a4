"""The one error type the CLI turns into a one-line message."""

from __future__ import annotations


class SkyarchiveError(Exception):
    """A failure the user can act on; its message is one line."""

    exit_code = 1


class UsageError(SkyarchiveError):
    """Bad input: bad config, bad option values. Nothing was changed."""

    exit_code = 2
