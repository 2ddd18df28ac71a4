"""A real PostgreSQL primary and a streaming hot standby on loopback ports, for recovery-conflict tests.

:func:`start_primary_and_standby` (a context manager) and the module-scoped fixture :func:`primary_and_standby`
build two throw-away servers from the PostgreSQL binaries on this machine (not the server of tests/postgres.py):

* a primary: ``initdb`` with trust auth on 127.0.0.1 (replication included), ``wal_level=replica``,
  ``fsync=off``, ``autovacuum=off`` (so that only the test's own ``VACUUM`` removes rows), and a database
  ``skyarchive``;
* a hot standby: ``pg_basebackup -R -X stream`` from it over a physical replication slot, with
  ``hot_standby_feedback=off`` and a short ``max_standby_streaming_delay`` (3 s unless told), so that a standby
  transaction whose snapshot still needs rows a replayed ``VACUUM`` removes is cancelled ("conflict with
  recovery") once the delay has passed.

Both listen on 127.0.0.1 only, on free ports, and keep their Unix sockets in their own temporary directory.
PostgreSQL refuses to run as root: as root the server binaries run as the ``postgres`` OS user (``runuser``),
as anyone else they run as that user. The servers are stopped (``pg_ctl -m immediate``) and their directory
removed on exit, whether the body raised or not. A failed start raises :class:`StandbyStartupError` with the
tail of the server's log.

Missing binaries, ``runuser``, ``postgres`` user or driver skip the tests that use them and say why; under CI
(``CI=true``) they fail instead (the rule of tests/postgres.py). Set ``SKYARCHIVE_TEST_PG_BINDIR`` to use
binaries other than PostgreSQL 15's (or the first ``initdb`` on ``PATH``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from .postgres import DRIVER, _unavailable

HOST = "127.0.0.1"
USER = "postgres"
DATABASE = "skyarchive"
#: The physical replication slot the standby streams from.
SLOT = "skyarchive_standby"
#: Where to look for the server binaries, after $SKYARCHIVE_TEST_PG_BINDIR.
BINDIR_CANDIDATES = ("/usr/lib/postgresql/15/bin",)
BINARIES = ("initdb", "pg_ctl", "pg_basebackup", "postgres")
#: The standby's base backup: WAL streamed alongside, recovery settings written (-R), a permanent slot (-C -S),
#: no waiting for a spread checkpoint or for fsync.
BACKUP_OPTIONS = ("-X", "stream", "-R", "-C", "-S", SLOT, "--checkpoint=fast", "--no-sync")
#: The characters a Unix socket's path may have (sun_path), less ".s.PGSQL.NNNNN".
_MAX_SOCKET_DIR = 107 - len("/.s.PGSQL.65535")

Which = Literal["primary", "standby"]
Driver = Literal["psycopg", "psycopg2"]


class StandbyStartupError(RuntimeError):
    """A command or server failed while the pair was being set up; the message ends with the server log's tail."""


@dataclass(frozen=True)
class Server:
    """One of the two servers: its data directory, port and log file."""

    name: str
    data_dir: Path
    port: int
    log_file: Path

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's log ('' if there is none yet)."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class PrimaryAndStandby:
    """A running primary and its streaming hot standby (what the fixture yields)."""

    primary: Server
    standby: Server
    base_dir: Path
    database: str = DATABASE
    #: The standby's max_standby_streaming_delay as the server reports it, in seconds (-1: wait forever).
    max_standby_streaming_delay: float = 3.0
    _driver: str = field(default=DRIVER, repr=False)

    @property
    def primary_port(self) -> int:
        return self.primary.port

    @property
    def standby_port(self) -> int:
        return self.standby.port

    @property
    def primary_url(self) -> str:
        """The primary's database as a SQLAlchemy URL for the host's driver (tests/postgres.py ``DRIVER``:
        psycopg 3 on SQLAlchemy 2, psycopg2 on SQLAlchemy 1.4)."""
        return self.url("primary")

    @property
    def standby_url(self) -> str:
        """The standby's database as a SQLAlchemy URL for the host's driver (see :attr:`primary_url`)."""
        return self.url("standby")

    def url(self, which: Which, driver: Driver | str = DRIVER, database: str | None = None) -> str:
        """``postgresql+<driver>://postgres@127.0.0.1:<port>/<database>`` for ``which`` server; ``driver`` is
        ``"psycopg"`` (psycopg 3) or ``"psycopg2"``, ``database`` the fixture's database unless told."""
        return f"postgresql+{driver}://{USER}@{HOST}:{self._server(which).port}/{database or self.database}"

    def sql(self, which: Which, statement: str, database: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement on ``which`` server in autocommit mode (so ``VACUUM`` works) and return its rows
        ([] for a statement that returns none). A fresh connection, closed afterwards."""
        with contextlib.closing(_connect(self._driver, self._server(which).port, database or self.database)) as conn:
            return _rows(conn, statement)

    def wait_for_replay(self, timeout: float = 30.0) -> str:
        """Wait until the standby has replayed all the WAL the primary has written so far (so everything
        committed before the call), and return the primary's LSN that was waited for.

        While replay waits on a recovery conflict this takes up to ``max_standby_streaming_delay``: call it
        after the conflicting standby transaction has ended (or been cancelled) if that is not wanted.
        Raises ``TimeoutError`` (with both LSNs and the standby log's tail) after ``timeout`` seconds."""
        target = str(self.sql("primary", "SELECT pg_current_wal_lsn()")[0][0])
        deadline = time.monotonic() + timeout
        replayed: object = None
        with contextlib.closing(_connect(self._driver, self.standby.port, self.database)) as conn:
            while True:
                replayed, caught_up = _rows(
                    conn,
                    f"SELECT pg_last_wal_replay_lsn(), coalesce(pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, false)",
                )[0]
                if caught_up:
                    return target
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the standby replayed up to {replayed}, not {target}, within {timeout} s;"
                        f" standby log:\n{self.standby.log_tail()}"
                    )
                time.sleep(0.05)

    def _server(self, which: Which) -> Server:
        if which == "primary":
            return self.primary
        if which == "standby":
            return self.standby
        raise ValueError(f"which must be 'primary' or 'standby', not {which!r}")


# --- preflight: binaries, OS user, driver ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Toolbox:
    bindir: Path
    #: The command prefix that runs a server binary as the postgres user ([] when we are not root).
    as_postgres: tuple[str, ...]
    #: (uid, gid) to give the directories to, or None when we run the binaries as ourselves.
    owner: tuple[int, int] | None
    driver: str
    major: int


def _find_bindir() -> Path | None:
    candidates: list[str] = []
    if os.environ.get("SKYARCHIVE_TEST_PG_BINDIR"):
        candidates.append(os.environ["SKYARCHIVE_TEST_PG_BINDIR"])
    candidates.extend(BINDIR_CANDIDATES)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).resolve().parent))
    for candidate in candidates:
        if all(os.access(Path(candidate, name), os.X_OK) for name in BINARIES):
            return Path(candidate)
    return None


def _find_driver() -> str | None:
    """The host's driver if importable, else the other one (the fixture's own queries work with either)."""
    for name in dict.fromkeys((DRIVER, "psycopg", "psycopg2")):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        return name
    return None


def _toolbox() -> _Toolbox:
    """What is needed to run the servers, or skip (fail under CI) saying what is missing."""
    bindir = _find_bindir()
    if bindir is None:
        where = ", ".join([*BINDIR_CANDIDATES, "PATH"])
        _unavailable(f"no PostgreSQL server binaries ({', '.join(BINARIES)}) in $SKYARCHIVE_TEST_PG_BINDIR, {where}")
        raise AssertionError("unreachable")
    driver = _find_driver()
    if driver is None:
        _unavailable("neither psycopg (3) nor psycopg2 is installed")
        raise AssertionError("unreachable")
    as_postgres: tuple[str, ...] = ()
    owner: tuple[int, int] | None = None
    if os.geteuid() == 0:
        runuser = shutil.which("runuser") or next(
            (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.access(p, os.X_OK)), None
        )
        if runuser is None:
            _unavailable("running as root (which PostgreSQL refuses) and there is no runuser to run it as postgres")
            raise AssertionError("unreachable")
        try:
            entry = pwd.getpwnam(USER)
        except KeyError:
            _unavailable(f"running as root (which PostgreSQL refuses) and there is no {USER!r} OS user to run it as")
            raise AssertionError("unreachable") from None
        as_postgres = (runuser, "-u", USER, "--")
        owner = (entry.pw_uid, entry.pw_gid)
    try:
        version = subprocess.run(
            [*as_postgres, str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"cannot run {bindir / 'postgres'}{' as ' + USER if as_postgres else ''}: {exc}")
        raise AssertionError("unreachable") from None
    match = re.search(r"\s(\d+)(?:\.\d+|devel|beta|rc)", version.stdout)
    if version.returncode != 0 or match is None:
        output = (version.stdout + version.stderr).strip()
        _unavailable(f"cannot run {bindir / 'postgres'}{' as ' + USER if as_postgres else ''}: {output}")
        raise AssertionError("unreachable")
    return _Toolbox(bindir, as_postgres, owner, driver, int(match.group(1)))


# --- helpers ---------------------------------------------------------------------------------------------------


def _connect(driver: str, port: int, database: str) -> Any:
    """An autocommit DB-API connection as postgres over TCP, with psycopg (3) or psycopg2."""
    module: Any = importlib.import_module(driver)
    if driver == "psycopg":
        return module.connect(host=HOST, port=port, user=USER, dbname=database, autocommit=True, connect_timeout=5)
    conn = module.connect(host=HOST, port=port, user=USER, dbname=database, connect_timeout=5)
    conn.autocommit = True
    return conn


def _rows(conn: Any, statement: str) -> list[tuple[Any, ...]]:
    cursor = conn.cursor()
    try:
        cursor.execute(statement)
        return [tuple(row) for row in cursor.fetchall()] if cursor.description is not None else []
    finally:
        cursor.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the kernel's pick; never 5432)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port != 5432:
            return port


def _traversable_by_others(path: Path) -> bool:
    """Whether every directory from / down to ``path`` lets other users through (o+x)."""
    path = path.resolve()
    return all(part.stat().st_mode & 0o001 for part in (path, *path.parents))


def _conf_value(value: str | float) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _delay_setting(delay: float | str) -> str:
    """max_standby_streaming_delay: a number is seconds (negative: wait forever), a string is passed as is."""
    if isinstance(delay, str):
        return delay
    return "-1" if delay < 0 else f"{round(delay * 1000)}ms"


class _Cluster:
    """Runs the commands, writes the configuration and keeps track of what to stop."""

    def __init__(self, tools: _Toolbox, base_dir: Path) -> None:
        self.tools = tools
        self.base_dir = base_dir
        self.started: list[Server] = []
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", HOME=str(base_dir))
        self.env = env

    def run(self, args: Sequence[str], timeout: float, server: Server | None = None) -> str:
        command = [*self.tools.as_postgres, str(self.tools.bindir / args[0]), *args[1:]]
        try:
            done = subprocess.run(
                command, cwd=self.base_dir, env=self.env, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise StandbyStartupError(self._report(f"{args[0]} took more than {timeout} s", exc, server)) from None
        if done.returncode != 0:
            raise StandbyStartupError(self._report(f"{args[0]} exited with {done.returncode}", done, server))
        return done.stdout

    def _report(self, what: str, done: Any, server: Server | None) -> str:
        output = "".join(
            part.decode(errors="replace") if isinstance(part, bytes) else part
            for part in (done.stdout, done.stderr)
            if part
        ).strip()
        report = f"{what}: {' '.join(map(str, done.args))}\n{output}"
        if server is not None:
            report += f"\n--- tail of {server.log_file} ---\n{server.log_tail()}"
        return report

    def configure(self, server: Server, settings: Mapping[str, str | float]) -> None:
        """Append ``settings`` to postgresql.conf (later lines win, so this overrides what came before)."""
        lines = [f"{name} = {_conf_value(value)}" for name, value in settings.items()]
        with (server.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# tests/standby.py\n" + "\n".join(lines) + "\n")

    def start(self, server: Server, timeout: float) -> Server:
        """``pg_ctl -w start``; on a port somebody took meanwhile, retry twice on fresh ports."""
        for attempt in range(3):
            self.started.append(server)
            try:
                wait = ("-w", "-t", str(round(timeout)))
                self.run(
                    ["pg_ctl", "start", *wait, "-D", str(server.data_dir), "-l", str(server.log_file)],
                    timeout + 10,
                    server,
                )
            except StandbyStartupError:
                self.stop(server)
                self.started.remove(server)
                if attempt == 2 or "could not bind" not in server.log_tail(20):
                    raise
                server = Server(server.name, server.data_dir, free_port(), server.log_file)
                self.configure(server, {"port": server.port})
                continue
            return server
        raise AssertionError("unreachable")

    def stop(self, server: Server) -> None:
        """Stop ``server`` (immediate mode), killing its postmaster by pid if pg_ctl cannot."""
        pid_file = server.data_dir / "postmaster.pid"
        if not pid_file.exists():
            return
        with contextlib.suppress(StandbyStartupError):
            self.run(["pg_ctl", "stop", "-m", "immediate", "-w", "-t", "30", "-D", str(server.data_dir)], 40)
        if pid_file.exists():
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pid_file.read_text().splitlines()[0])
                # Only our own postmaster: its command line names the data directory.
                if str(server.data_dir).encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return
                os.kill(pid, signal.SIGKILL)
                for _ in range(100):
                    os.kill(pid, 0)  # raises ProcessLookupError once it is gone
                    time.sleep(0.05)

    def stop_all(self) -> None:
        for server in reversed(self.started):
            self.stop(server)
        self.started.clear()


def _wait_for(what: str, check: Any, timeout: float, server: Server) -> Any:
    """Poll ``check()`` until it returns something truthy; connection errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = check()
        except Exception as exc:  # the drivers' errors share no base class we could import here
            result, last = None, exc
        if result:
            return result
        if time.monotonic() > deadline:
            raise StandbyStartupError(
                f"{what} within {timeout} s (last: {last!r})\n--- tail of {server.log_file} ---\n{server.log_tail()}"
            )
        time.sleep(0.1)


# --- the context manager and the fixture -------------------------------------------------------------------------


@contextlib.contextmanager
def start_primary_and_standby(
    parent_dir: Path | None = None,
    *,
    database: str = DATABASE,
    max_standby_streaming_delay: float | str = 3.0,
    settings: Mapping[str, str | float] | None = None,
    standby_settings: Mapping[str, str | float] | None = None,
    timeout: float = 30.0,
) -> Iterator[PrimaryAndStandby]:
    """Start a primary and a streaming hot standby, yield them caught up, and remove both on exit.

    ``parent_dir`` holds the pair's temporary directory (default: the system's temporary directory; any that
    the postgres user could not reach falls back to /tmp). ``max_standby_streaming_delay`` is in seconds
    (negative: forever) or a PostgreSQL value such as ``"500ms"``. ``settings`` go into both servers'
    postgresql.conf (the standby inherits them), ``standby_settings`` into the standby's only, after the
    fixture's own (so they can override them). ``timeout`` bounds each wait (server start, catching up).
    Skips (fails under CI) when the binaries, OS user or driver are missing; raises
    :class:`StandbyStartupError` when a server does not start.
    """
    tools = _toolbox()
    parent = Path(parent_dir or tempfile.gettempdir())
    if tools.owner is not None and not _traversable_by_others(parent):
        parent = Path("/tmp")
    base_dir = Path(tempfile.mkdtemp(prefix="skyarchive-standby-", dir=parent))
    cluster = _Cluster(tools, base_dir)
    try:
        if tools.owner is not None:
            os.chown(base_dir, *tools.owner)
        os.chmod(base_dir, 0o700)
        socket_dir = str(base_dir) if len(str(base_dir)) <= _MAX_SOCKET_DIR else ""
        primary = Server("primary", base_dir / "primary", free_port(), base_dir / "primary.log")
        standby = Server("standby", base_dir / "standby", free_port(), base_dir / "standby.log")
        while standby.port == primary.port:
            standby = Server("standby", standby.data_dir, free_port(), standby.log_file)

        cluster.run(
            [
                "initdb",
                "-D",
                str(primary.data_dir),
                "-U",
                USER,
                *("--auth=trust", "--encoding=UTF8"),
                "--locale=C",
                "--no-sync",
            ],
            timeout=max(timeout, 60),
        )
        (primary.data_dir / "pg_hba.conf").write_text(
            "# tests/standby.py: trust on the Unix socket and on 127.0.0.1, replication included\n"
            "local all all trust\n"
            "local replication all trust\n"
            f"host all all {HOST}/32 trust\n"
            f"host replication all {HOST}/32 trust\n",
            encoding="utf-8",
        )
        primary_conf: dict[str, str | float] = {
            "listen_addresses": HOST,
            "port": primary.port,
            "unix_socket_directories": socket_dir,
            "wal_level": "replica",
            "max_wal_senders": 5,
            "max_replication_slots": 5,
            "hot_standby": "on",
            "max_connections": 40,
            "shared_buffers": "32MB",
            "fsync": "off",
            "autovacuum": "off",
            "log_line_prefix": "%m [%p] %q%a ",
        }
        if tools.major >= 14:
            primary_conf["log_recovery_conflict_waits"] = "on"
        cluster.configure(primary, {**primary_conf, **(settings or {})})
        primary = cluster.start(primary, timeout)
        _wait_for(
            "the primary did not accept connections",
            lambda: _connect(tools.driver, primary.port, "postgres").close() or True,
            timeout,
            primary,
        )
        with contextlib.closing(_connect(tools.driver, primary.port, "postgres")) as conn:
            _rows(conn, f'CREATE DATABASE "{database}"')

        cluster.run(
            [
                "pg_basebackup",
                "-h",
                HOST,
                "-p",
                str(primary.port),
                "-U",
                USER,
                "-D",
                str(standby.data_dir),
                *BACKUP_OPTIONS,
            ],
            timeout=max(timeout, 60),
            server=primary,
        )
        delay = _delay_setting(max_standby_streaming_delay)
        cluster.configure(
            standby,
            {
                "port": standby.port,
                "hot_standby": "on",
                "hot_standby_feedback": "off",
                "max_standby_streaming_delay": delay,
                "max_standby_archive_delay": delay,
                "wal_receiver_status_interval": "1s",
                **(standby_settings or {}),
            },
        )
        standby = cluster.start(standby, timeout)

        def streaming() -> bool:
            with contextlib.closing(_connect(tools.driver, standby.port, database)) as conn:
                in_recovery = _rows(conn, "SELECT pg_is_in_recovery()")[0][0]
                receiver = _rows(conn, "SELECT status FROM pg_stat_wal_receiver")
            if not in_recovery:
                raise StandbyStartupError("the standby is not in recovery: it is no standby")
            return bool(receiver) and receiver[0][0] == "streaming"

        try:
            _wait_for("the standby did not stream from the primary", streaming, timeout, standby)
        except StandbyStartupError as exc:
            raise StandbyStartupError(f"{exc}\n--- tail of {primary.log_file} ---\n{primary.log_tail()}") from None
        with contextlib.closing(_connect(tools.driver, standby.port, database)) as conn:
            delay_ms = int(
                _rows(conn, "SELECT setting FROM pg_settings WHERE name = 'max_standby_streaming_delay'")[0][0]
            )
        pair = PrimaryAndStandby(
            primary,
            standby,
            base_dir,
            database,
            max_standby_streaming_delay=-1.0 if delay_ms < 0 else delay_ms / 1000,
            _driver=tools.driver,
        )
        pair.wait_for_replay(timeout)
        yield pair
    finally:
        try:
            cluster.stop_all()
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def primary_and_standby(request: pytest.FixtureRequest) -> Iterator[PrimaryAndStandby]:
    """A primary and its streaming hot standby for the module's tests (see :func:`start_primary_and_standby`).

    Indirect parametrization passes keyword arguments through, e.g.
    ``@pytest.mark.parametrize("primary_and_standby", [{"max_standby_streaming_delay": 1}], indirect=True)``.
    """
    options: Mapping[str, Any] = getattr(request, "param", None) or {}
    with start_primary_and_standby(**options) as pair:
        yield pair
