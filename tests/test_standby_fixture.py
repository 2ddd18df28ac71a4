"""The primary/hot-standby fixture of tests/standby.py is what it claims: streaming replication to a read-only
standby, and recovery conflicts that cancel standby transactions after max_standby_streaming_delay."""

from __future__ import annotations

import importlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine

from .postgres import DRIVER, _unavailable
from .standby import (  # noqa: F401 - primary_and_standby is a fixture
    PrimaryAndStandby,
    StandbyStartupError,
    primary_and_standby,
    start_primary_and_standby,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgresql]

ROWS = 20_000
#: How long the first test holds the standby's replay back (seconds).
REPLAY_PAUSE = 1.0
#: SQLSTATEs: a write in a read-only transaction; a serialization failure (what a recovery conflict raises).
READ_ONLY, CANCELLED = "25006", "40001"


def _require_driver(driver: str) -> None:
    """Skip for a driver this environment lacks; the host's own driver (tests/postgres.py) is required."""
    if driver == "psycopg" and sqlalchemy.__version__.startswith("1."):
        pytest.skip("SQLAlchemy 1.4 has no psycopg 3 dialect")
    try:
        importlib.import_module(driver)
    except ImportError as exc:
        if driver == DRIVER:
            _unavailable(f"the {driver} driver is not installed ({exc})")
        pytest.skip(f"{driver} is not installed here (the host uses {DRIVER})")


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


@pytest.fixture
def engines(primary_and_standby: PrimaryAndStandby) -> Iterator[tuple[Engine, Engine]]:  # noqa: F811
    """An autocommit engine on the primary and a plain one on the standby, with the host's driver."""
    primary = create_engine(primary_and_standby.primary_url, isolation_level="AUTOCOMMIT")
    standby = create_engine(primary_and_standby.standby_url)
    try:
        yield primary, standby
    finally:
        standby.dispose()
        primary.dispose()


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_rows_reach_the_read_only_standby(primary_and_standby: PrimaryAndStandby, driver: str) -> None:  # noqa: F811
    _require_driver(driver)
    pair = primary_and_standby
    assert pair.url("standby", driver) == f"postgresql+{driver}://postgres@127.0.0.1:{pair.standby_port}/skyarchive"
    primary = create_engine(pair.url("primary", driver), isolation_level="AUTOCOMMIT")
    standby = create_engine(pair.url("standby", driver))
    table = f"replicated_{driver}"
    resume = threading.Timer(REPLAY_PAUSE, pair.sql, ("standby", "SELECT pg_wal_replay_resume()"))
    try:
        with primary.connect() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
            conn.execute(text(f"CREATE TABLE {table} (token text)"))
        pair.wait_for_replay()
        # Hold replay back, so that the row can only be there once wait_for_replay() has waited for it.
        pair.sql("standby", "SELECT pg_wal_replay_pause()")
        with primary.connect() as conn:
            token = conn.execute(text(f"INSERT INTO {table} SELECT md5(random()::text) RETURNING token")).scalar_one()
            written = conn.execute(text("SELECT pg_current_wal_lsn()")).scalar_one()
            assert conn.execute(text("SELECT pg_is_in_recovery()")).scalar_one() is False
        assert pair.sql("standby", f"SELECT count(*) FROM {table}") == [(0,)]
        resume.start()
        started = time.monotonic()
        reached = pair.wait_for_replay()
        assert time.monotonic() - started >= REPLAY_PAUSE - 0.1

        with standby.connect() as conn:
            assert conn.execute(
                text("SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)"), {"lsn": written}
            ).scalar()
            assert conn.execute(text(f"SELECT token FROM {table}")).scalars().all() == [token]
            assert conn.execute(text("SELECT pg_is_in_recovery()")).scalar_one() is True
            assert conn.execute(text("SELECT status FROM pg_stat_wal_receiver")).scalar_one() == "streaming"
        with standby.connect() as conn, pytest.raises(sqlalchemy.exc.DBAPIError) as raised:
            conn.execute(text(f"INSERT INTO {table} VALUES ('written on the standby')"))
        assert _sqlstate(raised.value) == READ_ONLY, raised.value
        assert "read-only transaction" in str(raised.value)
        assert pair.sql("primary", f"SELECT count(*) FROM {table}") == [(1,)]
        assert pair.sql("standby", f"SELECT '{reached}'::pg_lsn >= '{written}'::pg_lsn") == [(True,)]
    finally:
        resume.cancel()
        pair.sql("standby", "SELECT pg_wal_replay_resume()")
        with primary.connect() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        standby.dispose()
        primary.dispose()


def _snapshot_conflicts(pair: PrimaryAndStandby) -> int:
    rows = pair.sql(
        "standby",
        "SELECT confl_snapshot FROM pg_stat_database_conflicts WHERE datname = current_database()",
    )
    return int(rows[0][0])


def _backend_alive(pair: PrimaryAndStandby, pid: int) -> bool:
    return pair.sql("standby", f"SELECT count(*) FROM pg_stat_activity WHERE pid = {int(pid)}") == [(1,)]


def _repeatable_read(conn: Connection) -> None:
    """Begin a REPEATABLE READ transaction on ``conn`` (its snapshot lives as long as the transaction)."""
    conn.execution_options(isolation_level="REPEATABLE READ")
    conn.begin()


@pytest.mark.parametrize("standby_session", ["idle in transaction", "running a statement"])
def test_vacuum_on_the_primary_cancels_a_long_standby_transaction(
    primary_and_standby: PrimaryAndStandby,  # noqa: F811
    engines: tuple[Engine, Engine],
    standby_session: str,
) -> None:
    pair = primary_and_standby
    primary, standby = engines
    delay = pair.max_standby_streaming_delay
    assert delay == 3.0
    assert pair.sql("standby", "SHOW hot_standby_feedback") == [("off",)]
    with primary.connect() as conn:
        conn.execute(text("DROP TABLE IF EXISTS t"))
        conn.execute(text("CREATE TABLE t (id int PRIMARY KEY, pad text NOT NULL)"))
        conn.execute(text(f"INSERT INTO t SELECT n, repeat('x', 40) FROM generate_series(1, {ROWS}) AS n"))
    pair.wait_for_replay()
    conflicts_before = _snapshot_conflicts(pair)

    with standby.connect() as short, standby.connect() as long:
        # The control: a short transaction that ends before the vacuum is replayed.
        with short.begin():
            assert short.execute(text("SELECT count(*) FROM t")).scalar_one() == ROWS
        # The long one keeps its snapshot, which still sees the rows the vacuum will remove.
        _repeatable_read(long)
        assert long.execute(text("SHOW transaction_isolation")).scalar_one() == "repeatable read"
        assert long.execute(text("SELECT count(*) FROM t")).scalar_one() == ROWS
        pid = long.execute(text("SELECT pg_backend_pid()")).scalar_one()

        with primary.connect() as conn:
            conn.execute(text("DELETE FROM t WHERE id % 2 = 0"))
            conn.execute(text("VACUUM t"))
        vacuumed = time.monotonic()

        with pytest.raises(sqlalchemy.exc.DBAPIError) as raised:
            if standby_session == "running a statement":
                # Busy on the server when the conflict comes: the statement is cancelled (an ERROR).
                long.execute(text("SELECT pg_sleep(:s)"), {"s": delay + 10})
            else:
                # Idle in its transaction when the conflict comes: the session is terminated (FATAL).
                while _backend_alive(pair, pid) and time.monotonic() < vacuumed + delay + 15:
                    time.sleep(0.2)
                long.execute(text("SELECT count(*) FROM t"))
        cancelled_after = time.monotonic() - vacuumed
        long.invalidate()  # dead (terminated) or in an aborted transaction (cancelled): discard it

        error = str(raised.value)
        if standby_session == "running a statement":
            # The statement is cancelled (an ERROR); the session lives on, in an aborted transaction.
            assert _sqlstate(raised.value) == CANCELLED, error
            assert "canceling statement due to conflict with recovery" in error
            logged = "ERROR:  canceling statement due to conflict with recovery"
        else:
            # The session is terminated (FATAL). psycopg 3 reports the server's message (SQLSTATE 40001); psycopg2
            # only sees the closed connection ("server closed the connection unexpectedly"): the log tells why.
            assert "conflict with recovery" in error or raised.value.connection_invalidated, error
            logged = "FATAL:  terminating connection due to conflict with recovery"
        log = pair.standby.log_tail(1000).splitlines()
        assert any(f"[{pid}]" in line and logged in line for line in log), "\n".join(log[-20:])
        # Not before max_standby_streaming_delay (less the time the VACUUM itself took to return), not much later.
        assert delay - 1.0 <= cancelled_after <= delay + 15, cancelled_after

        # Replay goes on; the control session is unharmed and sees the vacuumed table.
        pair.wait_for_replay()
        with short.begin():
            assert short.execute(text("SELECT count(*) FROM t")).scalar_one() == ROWS // 2
    deadline = time.monotonic() + 10
    while _snapshot_conflicts(pair) <= conflicts_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _snapshot_conflicts(pair) == conflicts_before + 1


def test_teardown_stops_both_servers_even_when_the_body_fails() -> None:
    with pytest.raises(ZeroDivisionError), start_primary_and_standby(max_standby_streaming_delay="500ms") as pair:
        assert pair.max_standby_streaming_delay == 0.5
        assert pair.sql("standby", "SELECT pg_is_in_recovery()") == [(True,)]
        base_dir, ports = pair.base_dir, (pair.primary_port, pair.standby_port)
        1 / 0  # noqa: B018
    assert not base_dir.exists()
    for port in ports:
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # nothing listens on the port any more


def test_a_server_that_does_not_start_is_reported_with_its_log() -> None:
    with (
        pytest.raises(StandbyStartupError, match="invalid value for parameter") as raised,
        start_primary_and_standby(settings={"shared_buffers": "lots"}),
    ):
        raise AssertionError("the primary started")
    assert "tail of" in str(raised.value)
