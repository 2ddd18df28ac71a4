"""skyarchive: a local-first archive of Bluesky posts (0.5 release line)."""

__version__ = "0.5.0"
