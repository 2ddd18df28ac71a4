"""export_batching_plugin: batched, streaming exports for skyarchive."""

__version__ = "0.1.0"
