"""Benchmark harness: the host's exporter vs the export_batching plugin vs sqlite-utils and the sqlite3 CLI.

Run ``python -m benchmarks.run --help``. Each export runs in its own fresh subprocess, under the small
wrapper ``benchmarks/measure.py`` that reports its wall time and peak RSS.
"""
