"""skyarchive: a local-first archive of Bluesky posts (0.3 release line)."""

__version__ = "0.3.2"
