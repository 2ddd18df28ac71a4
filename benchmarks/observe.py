"""What the harness watches around a run, from its own process: the archive's pages in the OS page cache,
PostgreSQL's open transactions, and what the archiver went through during the export.

- The page cache (SQLite): :func:`evict` drops a file's pages (``fsync``, then ``posix_fadvise(DONTNEED)``:
  dirty pages cannot be dropped, so they are written first); :func:`resident_fraction` tells how much of a
  file is cached (``mincore`` on a read-only ``mmap`` of it, through ctypes; None where that is unavailable).
- PostgreSQL (:class:`PgTransactions`): a thread polls ``pg_stat_activity`` every 10 ms for the client
  backends of the benchmark's database (other than its own) with an open transaction, and keeps the age
  (``now() - xact_start``) of each transaction seen; the longest is the export's read transaction (a
  transaction that lives less than 10 ms may go unseen). The server's ``shared_buffers`` cannot be dropped
  from here, so PostgreSQL has no cold runs.
- The archiver (:func:`archiver_window`): its attempts that overlap the export's window (CLOCK_MONOTONIC,
  shared by every process on Linux), their errors and their longest wait.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .archiver import ArchiverReport
from .archives import BenchmarkError, psycopg

#: How often PostgreSQL's transactions are polled (s).
PG_POLL_S = 0.01
#: The client backends of one database (but the poller's own) that are inside a transaction, and its age.
PG_TRANSACTIONS = (
    "SELECT pid, xact_start, EXTRACT(EPOCH FROM now() - xact_start)::float8 FROM pg_stat_activity "
    "WHERE datname = %s AND pid <> pg_backend_pid() AND xact_start IS NOT NULL AND backend_type = 'client backend'"
)
#: The bytes of one mincore vector entry that tell "resident" (bit 0; the others are reserved).
_LOW_BIT = bytes(b & 1 for b in range(256))


def _libc() -> Any:
    """libc with errno, and the argument types of mmap, munmap and mincore; None where they are missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mmap_, munmap, mincore = libc.mmap, libc.munmap, libc.mincore
    except (OSError, AttributeError):
        return None
    mmap_.restype = ctypes.c_void_p
    mmap_.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    munmap.restype, munmap.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t]
    mincore.restype, mincore.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    return libc


_LIBC = _libc()
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident_fraction(path: Path) -> float | None:
    """The fraction of ``path``'s pages in the page cache (0 to 1); None if it cannot be told (no mincore, an
    empty or missing file)."""
    if _LIBC is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        address = _LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address is None or address == _MAP_FAILED:
            return None
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vector = ctypes.create_string_buffer(pages)
            if _LIBC.mincore(address, size, vector) != 0:
                return None
            return vector.raw[:pages].translate(_LOW_BIT).count(1) / pages
        finally:
            _LIBC.munmap(address, size)
    finally:
        os.close(fd)


def sqlite_files(db: Path) -> list[Path]:
    """The database file and those of its ``-wal``, ``-shm`` and ``-journal`` that exist."""
    return [db, *(p for p in (db.with_name(db.name + s) for s in ("-wal", "-shm", "-journal")) if p.is_file())]


def evict(paths: Iterable[Path]) -> None:
    """Drop the pages of each file from the page cache (written first if dirty); a vanished file is skipped."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_through(paths: Iterable[Path]) -> None:
    """Read each file once, so that its pages are in the page cache."""
    for path in paths:
        with path.open("rb") as stream:
            while stream.read(1 << 20):
                pass


def longest_and_total(samples: Iterable[tuple[Any, Any, float]]) -> tuple[float, float]:
    """``(longest, total)`` seconds of the transactions in ``samples`` of ``(pid, xact_start, age s)``.

    A transaction is one ``(pid, xact_start)``; its duration is the largest age seen of it.
    """
    ages: dict[tuple[Any, Any], float] = {}
    for pid, started, age in samples:
        ages[pid, started] = max(ages.get((pid, started), 0.0), float(age))
    return max(ages.values(), default=0.0), sum(ages.values())


class PgTransactions:
    """Poll ``pg_stat_activity`` on a thread while a run goes on (a context manager); then :meth:`result`."""

    def __init__(self, location: str, *, every: float = PG_POLL_S) -> None:
        self.location, self.every = location, every
        self.database = location.rsplit("/", 1)[1].split("?", 1)[0]
        self.samples: list[tuple[Any, Any, float]] = []
        self.polls = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="pg-transactions", daemon=True)
        self._conn: Any = None

    def __enter__(self) -> PgTransactions:
        try:
            self._conn = psycopg().connect(self.location, autocommit=True, connect_timeout=5)
        except Exception as exc:  # psycopg.Error
            raise BenchmarkError(f"cannot poll pg_stat_activity on {self.location}: {exc}") from None
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()

    def _poll(self) -> None:
        try:
            while True:
                self.samples += self._conn.execute(PG_TRANSACTIONS, (self.database,)).fetchall()
                self.polls += 1
                if self._stop.wait(self.every):
                    return
        except Exception as exc:  # psycopg.Error: reported by result()
            self.error = exc

    def result(self) -> tuple[float, float]:
        """``(longest, total)`` seconds of the transactions seen (see :func:`longest_and_total`)."""
        if self.error is not None:
            raise BenchmarkError(f"polling pg_stat_activity on {self.location} failed: {self.error}")
        return longest_and_total(self.samples)


@dataclass(frozen=True)
class ArchiverWindow:
    """The archiver's attempts that overlapped one export: how many, how many failed, the longest wait (s)."""

    attempts: int
    errors: int
    longest_wait_s: float


def archiver_window(report: ArchiverReport, start: float, end: float) -> ArchiverWindow:
    """What the archiver went through between ``start`` and ``end`` (``time.monotonic()``): the attempts that
    began before ``end`` and ended after ``start``."""
    inside = [
        n for n, (began, wait) in enumerate(zip(report.attempted_at, report.waits, strict=True))
        if began < end and began + wait > start
    ]  # fmt: skip
    failed = {error.attempt for error in report.errors}
    return ArchiverWindow(
        attempts=len(inside),
        errors=sum(n in failed for n in inside),
        longest_wait_s=max((report.waits[n] for n in inside), default=0.0),
    )
