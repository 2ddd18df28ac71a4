"""Benchmark harness: the host's exporter vs the export_batching plugin vs their peers, on SQLite and PostgreSQL.

Run ``python -m benchmarks.run --help``. Each export runs in its own fresh subprocess, under the small
wrapper ``benchmarks/measure.py`` that reports its wall time and peak RSS.
"""
