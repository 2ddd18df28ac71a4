"""An archiver that keeps inserting posts while an export runs: ``python -m benchmarks.archiver --db FILE
--out REPORT.json [--every 0.1] [--timeout 5] [--duration S] [--did DID] [--journal-mode keep|wal|delete]
[--cleanup]``.

Why: skyarchive's users archive continuously; an export that holds the archive's lock for its whole run (as a
long read transaction does in SQLite's rollback-journal mode, where a commit waits for every reader to finish)
makes the archiver wait, and past its busy timeout fail with "database is locked". This process is that
archiver, made measurable: with the stdlib ``sqlite3`` module and its busy timeout (``timeout=``, 5 s by
default, as a Python archiver would have), it inserts one post every ``--every`` seconds, each in its own
transaction, and records how long each attempt took (busy waiting included) and which ones failed.

It prints ``ready`` on stdout once its connection is open and its first insert attempt is done, and runs for
``--duration`` seconds or until SIGTERM or SIGINT; a signal ends it after the attempt under way (which is never
cut short), and then it writes the report (JSON, written to a scratch file and renamed, so a reader never sees
half of it):

- ``attempts``, ``inserted``: the insert attempts, and those committed;
- ``errors``: ``{at, message, attempt}`` for each failed attempt (``sqlite3.OperationalError``, such as
  "database is locked"): ``at`` is the ``time.monotonic()`` the attempt began, ``attempt`` its index;
- ``waits``, ``attempted_at``: for each attempt, the seconds it took and the ``time.monotonic()`` it began;
- ``longest_wait``, ``total_s``, ``start_monotonic``, ``end_monotonic``, ``start_wall``, ``end_wall``;
- ``journal_mode`` (the one in effect), ``deleted`` (rows removed by ``--cleanup``), ``pid``, ``did``.

``time.monotonic()`` is CLOCK_MONOTONIC, shared by every process on Linux: a caller can lay the attempts over
the window of its export. The Python API: :func:`start_archiver`, :func:`stop_archiver`, :class:`ArchiverReport`.
The module uses nothing outside the standard library, so that ``python -I benchmarks/archiver.py`` runs it.

Exit status: 0 (also when attempts failed: they are the measurement); 2 for a bad argument, a database that
cannot be opened, a missing ``posts`` table or a journal mode that cannot be set (no report, no ``ready``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any

#: skyarchive.seed.DEFAULT_DID, the DID the benchmark exports (kept here: this module imports only the stdlib).
DEFAULT_DID = "did:plc:q6gjnaw2blty4crticxkmujt"
JOURNAL_MODES = ("keep", "wal", "delete")
READY = "ready"
#: Every column without a default; the others keep theirs (no media, no counts, not a reply).
INSERT = "INSERT INTO posts (uri, cid, did, text, created_at, indexed_at, archived_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
CHECK_TABLE = "SELECT uri, cid, did, text, created_at, indexed_at, archived_at FROM posts LIMIT 0"


class ArchiverFailed(Exception):
    """The archiver did not start, did not stop, or exited with an error: the measurement would be wrong."""


@dataclass(frozen=True)
class InsertError:
    """One failed attempt: when it began (``time.monotonic()``), SQLite's message, and its index."""

    at: float
    message: str
    attempt: int


@dataclass(frozen=True)
class ArchiverReport:
    """What the archiver measured (the JSON report, read back); see the module's docstring for each field."""

    attempts: int
    inserted: int
    errors: tuple[InsertError, ...]
    waits: tuple[float, ...]
    attempted_at: tuple[float, ...]
    longest_wait: float
    total_s: float
    start_monotonic: float
    end_monotonic: float
    start_wall: str
    end_wall: str
    journal_mode: str
    deleted: int
    pid: int
    did: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArchiverReport:
        """The report from its JSON object (lists become tuples, errors InsertError)."""
        values = dict(data)
        values["errors"] = tuple(InsertError(**error) for error in data["errors"])
        values["waits"] = tuple(data["waits"])
        values["attempted_at"] = tuple(data["attempted_at"])
        return cls(**values)


@dataclass(frozen=True)
class Options:
    """The command line, as data (also what :func:`start_archiver` turns back into arguments)."""

    db: Path
    out: Path
    every: float = 0.1
    timeout: float = 5.0
    duration: float | None = None
    did: str = DEFAULT_DID
    journal_mode: str = "keep"
    cleanup: bool = False

    def argv(self) -> list[str]:
        """The arguments that parse back to these options."""
        args = ["--db", str(self.db), "--out", str(self.out), "--every", repr(self.every)]
        args += ["--timeout", repr(self.timeout), "--did", self.did, "--journal-mode", self.journal_mode]
        args += [] if self.duration is None else ["--duration", repr(self.duration)]
        return args + (["--cleanup"] if self.cleanup else [])


@dataclass
class Tally:
    """The attempts so far (mutable while the archiver runs)."""

    waits: list[float] = field(default_factory=list)
    attempted_at: list[float] = field(default_factory=list)
    errors: list[InsertError] = field(default_factory=list)
    inserted: list[str] = field(default_factory=list)


def positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, not {text!r}")
    return value


def non_negative(text: str) -> float:
    """An argparse type: a finite number >= 0."""
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text!r}")
    return value


def parse_args(argv: Sequence[str]) -> Options:
    """Options from the command line (argparse exits with status 2 on a bad one)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.archiver", description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--db", type=Path, required=True, help="the SQLite archive (must exist and hold the posts table)")
    add("--out", type=Path, required=True, help="where to write the JSON report")
    add("--every", type=positive, default=0.1, help="seconds from the start of one attempt to the next (0.1)")
    add("--timeout", type=non_negative, default=5.0, help="sqlite3's busy timeout, in seconds (5, its default)")
    add("--duration", type=positive, default=None, help="stop after this many seconds (default: at SIGTERM)")
    add("--did", default=DEFAULT_DID, help=f"the author of the inserted posts ({DEFAULT_DID})")
    add("--journal-mode", choices=JOURNAL_MODES, default="keep", help="set the archive's journal mode first")
    add("--cleanup", action="store_true", help="delete the inserted posts at the end")
    args = parser.parse_args(list(argv))
    return Options(
        args.db, args.out, args.every, args.timeout, args.duration, args.did, args.journal_mode, args.cleanup
    )


def rfc3339(moment: datetime) -> str:
    """``2025-11-01T12:00:00.000Z``: skyarchive's timestamps (UTC, milliseconds)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_rfc3339() -> str:
    """The current wall-clock time, as :func:`rfc3339` writes it: newer than any seeded post."""
    return rfc3339(datetime.now(timezone.utc))


class StopSignal:
    """SIGTERM and SIGINT set a flag and wake :meth:`sleep` (through ``signal.set_wakeup_fd``).

    The Python-level handler runs between bytecodes, so an insert under way (busy waiting in SQLite's C code)
    always finishes first; the self-pipe makes the wait between attempts end at once, without polling.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._read, write = os.pipe()
        for fd in (self._read, write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when a signal comes (also one that came just before)."""
        if seconds > 0 and self.received is None:
            select.select([self._read], [], [], seconds)
        try:
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass


def connect(options: Options) -> tuple[sqlite3.Connection, str]:
    """Open the archive (never creating it), set the journal mode if asked; ``(connection, mode in effect)``.

    Raises ArchiverFailed when the file, the table or the mode is not there.
    """
    if not options.db.is_file():
        raise ArchiverFailed(f"no such database file: {options.db}")
    uri = options.db.resolve().as_uri() + "?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=options.timeout)
        if options.journal_mode == "keep":
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
        else:
            mode = str(conn.execute(f"PRAGMA journal_mode={options.journal_mode}").fetchone()[0])
            if mode.lower() != options.journal_mode:
                raise ArchiverFailed(f"journal mode {options.journal_mode} was refused (it stays {mode})")
        conn.execute(CHECK_TABLE).fetchall()
    except sqlite3.Error as exc:
        raise ArchiverFailed(f"cannot use {options.db}: {exc}") from None
    return conn, mode.lower()


def attempt(conn: sqlite3.Connection, uri: str, did: str, number: int, tally: Tally) -> None:
    """Insert one post in its own transaction; record how long it took and, if SQLite refused, why.

    ``with conn:`` rolls back a failed COMMIT too (Python 3.10 to 3.12 do), so a refused attempt does not keep
    its RESERVED lock and lock out every other writer until the next one.
    """
    began = time.monotonic()
    stamp = now_rfc3339()
    row = (uri, f"bafyarchiver{os.getpid()}x{number}", did, f"archiver post {number}", stamp, stamp, stamp)
    try:
        with conn:
            conn.execute(INSERT, row)
    except sqlite3.OperationalError as exc:
        tally.errors.append(InsertError(began, str(exc), number))
    else:
        tally.inserted.append(uri)
    tally.attempted_at.append(began)
    tally.waits.append(time.monotonic() - began)


def cleanup(conn: sqlite3.Connection, uris: list[str]) -> int:
    """Delete the posts this run inserted (one transaction); the number deleted (0 if SQLite refused)."""
    try:
        with conn:
            return conn.executemany("DELETE FROM posts WHERE uri = ?", [(uri,) for uri in uris]).rowcount
    except sqlite3.OperationalError as exc:
        print(f"archiver: cleanup failed: {exc}", file=sys.stderr)
        return 0


def insert_until_stopped(conn: sqlite3.Connection, options: Options, stop: StopSignal, tally: Tally) -> None:
    """Attempt an insert every ``options.every`` seconds (from start to start; late ones are not made up)."""
    start = time.monotonic()
    end = math.inf if options.duration is None else start + options.duration
    base = f"at://{options.did}/app.bsky.feed.post/archiver-{os.getpid()}-{time.time_ns() // 1_000_000}"
    number = 0
    while True:
        began = time.monotonic()
        attempt(conn, f"{base}-{number}", options.did, number, tally)
        if number == 0:
            print(READY, flush=True)
        number += 1
        if stop.received is not None or time.monotonic() >= end:
            return
        stop.sleep(min(began + options.every, end) - time.monotonic())
        if stop.received is not None or time.monotonic() >= end:
            return


def run(options: Options) -> ArchiverReport:
    """Connect, insert until the duration ends or a signal comes, clean up if asked, write the report."""
    stop = StopSignal()  # first: a SIGTERM during the connection still ends the run with a report
    conn, mode = connect(options)
    tally = Tally()
    start_monotonic, start_wall = time.monotonic(), now_rfc3339()
    try:
        insert_until_stopped(conn, options, stop, tally)
    finally:
        end_monotonic, end_wall = time.monotonic(), now_rfc3339()
        deleted = cleanup(conn, tally.inserted) if options.cleanup else 0
        conn.close()
        report = ArchiverReport(
            attempts=len(tally.waits),
            inserted=len(tally.inserted),
            errors=tuple(tally.errors),
            waits=tuple(tally.waits),
            attempted_at=tuple(tally.attempted_at),
            longest_wait=max(tally.waits, default=0.0),
            total_s=end_monotonic - start_monotonic,
            start_monotonic=start_monotonic,
            end_monotonic=end_monotonic,
            start_wall=start_wall,
            end_wall=end_wall,
            journal_mode=mode,
            deleted=deleted,
            pid=os.getpid(),
            did=options.did,
        )
        write_report(options.out, report)
    return report


def write_report(path: Path, report: ArchiverReport) -> None:
    """Write the report as JSON to a scratch file beside ``path``, then rename it into place."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(asdict(report), indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)


def read_report(path: Path) -> ArchiverReport:
    """The report an archiver wrote to ``path``."""
    return ArchiverReport.from_json(json.loads(path.read_text(encoding="utf-8")))


def _wait_ready(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Read the child's stdout until its ``ready`` line; raises ArchiverFailed if it exits or takes too long."""
    assert process.stdout is not None
    fd, seen, deadline = process.stdout.fileno(), b"", time.monotonic() + timeout
    while b"\n" not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise ArchiverFailed(f"the archiver printed no {READY!r} line within {timeout} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            process.wait()
            assert process.stderr is not None
            error = process.stderr.read().decode(errors="replace").strip()
            raise ArchiverFailed(f"the archiver exited ({process.returncode}) before it was ready: {error}")
        seen += chunk
    if seen.split(b"\n", 1)[0].strip() != READY.encode():
        raise ArchiverFailed(f"the archiver printed {seen!r}, not {READY!r}")


def start_archiver(
    db: Path,
    report: Path,
    *,
    every: float = 0.1,
    timeout: float = 5.0,
    duration: float | None = None,
    did: str = DEFAULT_DID,
    journal_mode: str = "keep",
    cleanup: bool = False,
    ready_timeout: float = 30.0,
    python: str = sys.executable,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start an archiver on ``db`` and return once it is inserting (its ``ready`` line).

    Runs this file with ``python -I`` (no work-tree folder on ``sys.path``, nothing but the stdlib imported).
    A stale ``report`` is removed first, so that :func:`stop_archiver` can only read this run's.
    """
    options = Options(db, report, every, timeout, duration, did, journal_mode, cleanup)
    report.unlink(missing_ok=True)
    command = [python, "-I", str(Path(__file__).resolve()), *options.argv()]
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        _wait_ready(process, ready_timeout)
    except BaseException:
        process.kill()
        process.communicate()
        raise
    return process


def stop_archiver(process: subprocess.Popen[bytes], report: Path, *, timeout: float = 30.0) -> ArchiverReport:
    """Send SIGTERM (unless it has ended by itself: ``duration``), wait, and read its report.

    ``timeout`` must exceed the busy timeout: the attempt under way is finished first. Raises ArchiverFailed
    when it does not end in time (it is then killed) or ends with an error.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise ArchiverFailed(f"the archiver did not stop within {timeout} s of SIGTERM; killed") from None
    if process.returncode != 0:
        raise ArchiverFailed(f"the archiver exited with {process.returncode}: {stderr.decode(errors='replace')}")
    return read_report(report)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the archiver; 2 (and a message on stderr) when it cannot start."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(options)
    except ArchiverFailed as exc:
        print(f"archiver: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
