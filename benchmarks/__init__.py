"""Benchmark harness: the host's exporter vs the export_batching plugin vs their peers, on SQLite and PostgreSQL.

Run ``python -m benchmarks.run --help``. Each export runs in its own fresh subprocess, under the small
wrapper ``benchmarks/measure.py`` that reports its wall time, peak RSS, the whole export's memory (every process it
starts, PSS summed), temporary disk space, first progress line and (SQLite) how long it held
the archive's SHARED lock; ``observe.py`` watches the rest from the harness (the page cache, PostgreSQL's
transactions, the archiver), ``slowdisk.py`` slows the export's disk and ``archiver.py`` writes to the archive
during an export.
"""
