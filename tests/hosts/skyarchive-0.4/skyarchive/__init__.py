"""skyarchive: a local-first archive of Bluesky posts (0.4 release line)."""

__version__ = "0.4.1"
