"""PostgreSQL for the tests: a fresh database per test, dropped afterwards.

The server is the one at $SKYARCHIVE_TEST_PG_HOST:$SKYARCHIVE_TEST_PG_PORT
(default 127.0.0.1:5432, user postgres, trust auth). Under CI (CI=true) a
missing server or driver is a failure; elsewhere the tests skip and say why.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

HOST = os.environ.get("SKYARCHIVE_TEST_PG_HOST", "127.0.0.1")
PORT = os.environ.get("SKYARCHIVE_TEST_PG_PORT", "5432")
USER = os.environ.get("SKYARCHIVE_TEST_PG_USER", "postgres")
#: SQLAlchemy 1.4 (skyarchive 0.3) has no psycopg 3 dialect; 2.x (0.4) uses psycopg 3.
DRIVER = "psycopg2" if sqlalchemy.__version__.startswith("1.") else "psycopg"


def url(database: str) -> str:
    return f"postgresql+{DRIVER}://{USER}@{HOST}:{PORT}/{database}"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required under CI: {reason}")
    pytest.skip(f"no PostgreSQL to test against: {reason}")


def admin_engine() -> Engine:
    """An AUTOCOMMIT engine on the server's ``postgres`` database, or skip/fail."""
    try:
        engine = create_engine(url("postgres"), isolation_level="AUTOCOMMIT")
        with engine.connect():
            pass
    except ImportError as exc:
        _unavailable(f"the {DRIVER} driver is not installed ({exc})")
        raise
    except sqlalchemy.exc.OperationalError as exc:
        _unavailable(f"cannot connect to {HOST}:{PORT} as {USER} ({str(exc.orig).strip().splitlines()[0]})")
        raise
    return engine


@pytest.fixture
def pg_url() -> Iterator[str]:
    """The URL of a new, empty database; dropped after the test."""
    admin = admin_engine()
    name = f"skyarchive_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield url(name)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def terminate_other_backends(database_url: str) -> int:
    """Kill every other session on the database of ``database_url`` (as another session would), waiting up to
    5 s for each to end (PostgreSQL 14+: otherwise the next statement may still get through)."""
    database = database_url.rsplit("/", 1)[1]
    admin = admin_engine()
    try:
        with admin.connect() as conn:
            killed = conn.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
                " WHERE datname = %(db)s AND pid <> pg_backend_pid()",
                {"db": database},
            ).scalar_one()
    finally:
        admin.dispose()
    return int(killed)
