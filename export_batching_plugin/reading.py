"""Reading the selection: one read snapshot, held only while the rows are read.

No LIMIT/OFFSET paging: the posts come from a single statement, so the export costs O(N) and sees one
consistent snapshot of the archive. Inside the snapshot nothing but reading happens: on SQLite the rows are
copied, in C, into the export's own database file (:meth:`Snapshot.copy_selection`); elsewhere they are
streamed (:func:`open_stream`) into the spool, or, where there is no room for one, encoded as they come.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from sqlalchemy import Column, MetaData, Table, func, insert, literal_column, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql import operators
from sqlalchemy.sql.expression import Select

from .host import POST_ORDER, ExportRequest, media_table, posts_table, selection_criteria

log = logging.getLogger("export_batching_plugin")

#: The schema name of the copy while the snapshot's connection writes it.
COPY_SCHEMA = "export_batching_copy"
#: The copy's page size: large pages hold a post and its embed without overflow pages (copy and sort faster).
COPY_PAGE_SIZE = 65536
SERVER_CURSOR_DRIVERS = frozenset({"psycopg", "psycopg2"})


class NoRoom(Exception):
    """The copy of the selection outgrew the room it was given (SQLite: "database or disk is full")."""


class Snapshot:
    """A connection inside one read transaction, from :meth:`open` until :meth:`end`, begun the way the engine
    is set up to begin it (events, ``isolation_level``), then made a snapshot where that needs more: on SQLite an
    explicit BEGIN unless the engine's setup emitted one (Python's sqlite3 begins only before writes); on
    PostgreSQL ``REPEATABLE READ``, read-only (reset when the connection goes back to the pool), its session
    timeouts lifted for this transaction only (:func:`_no_timeouts`)."""

    def __init__(self, root: Connection, conn: Connection, transaction: Any, copy: str | None) -> None:
        self.conn, self.copy = conn, copy
        self._root, self._transaction = root, transaction
        self._open = True

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """End the transaction if it is still open, give the connection back; never raises (the failure that
        stopped the reading is told)."""
        with suppress(BaseException):
            self.end(complete=False)

    @classmethod
    def open(cls, engine: Engine, *, copy_to: str | None = None, room: int = 0) -> Snapshot:
        """The snapshot; with ``copy_to`` (SQLite), with an empty copy database of at most ``room`` bytes attached
        at that path, for :meth:`copy_selection`."""
        root = engine.connect()
        try:
            conn = root
            if root.dialect.name == "postgresql":
                conn = root.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            if copy_to is not None:
                _attach_copy(root, copy_to, room)
            transaction = conn.begin()
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(_no_timeouts(conn.dialect.server_version_info or ()))
            if conn.dialect.name == "sqlite":
                dbapi_connection: Any = conn.connection.dbapi_connection
                if not getattr(dbapi_connection, "in_transaction", True):
                    conn.exec_driver_sql("BEGIN")
        except BaseException:
            with suppress(Exception):
                _detach_copy(root)
            root.close()
            raise
        return cls(root, conn, transaction, copy_to)

    def copy_selection(self, request: ExportRequest, *, media: bool) -> int:
        """Copy the selection's posts (with ``media``, its media rows too) into the copy database and end the
        snapshot; how many posts. Raises NoRoom when the copy outgrows its room. No ``ORDER BY``: SQLite reads
        the archive the cheapest way (in storage order: sequentially, even cold and on an archive written
        oldest first), and :meth:`.blocks.Copy.sort` orders the copy after the snapshot. Values are stored as
        they are (the copy's columns have no types); the media rows, far fewer, in the host's order."""
        posts = _copy_table(posts_table)
        query = select(*posts_table.columns).where(*selection_criteria(request))
        try:
            copied = int(self.conn.execute(insert(posts).from_select(list(posts.columns.keys()), query)).rowcount)
            if media:
                copy = _copy_table(media_table)
                self.conn.execute(insert(copy).from_select(list(copy.columns.keys()), media_query(request)))
            self._transaction.commit()  # the copy's rows; the archive itself was only read
        except OperationalError as exc:
            if "full" in str(exc.orig):  # SQLITE_FULL: the room given (max_page_count), or the disk
                raise NoRoom(str(exc.orig)) from None
            raise
        self._open = False
        try:
            _detach_copy(self._root)
        except Exception:
            self._root.invalidate()  # not back to the pool with the copy attached
        finally:
            self._root.close()
        return copied

    def end(self, *, complete: bool) -> None:
        """End the transaction (again: nothing) and give the connection back (a copy not kept detached). A failure
        here is logged as a warning when every row was read (``complete``: nothing can change the export now),
        else not at all (the failure that stopped the reading is the one that matters)."""
        if not self._open:
            return
        self._open = False
        ended = False
        try:
            self._transaction.rollback()
            if self.copy is not None:
                _detach_copy(self._root)
            ended = True
        except Exception as exc:
            if complete:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                log.warning("export_batching: every row was read, but ending the read transaction failed: %s", first)
        finally:
            if not ended:  # not back to the pool as it is: its reset would fail and log again
                with suppress(Exception):
                    self._root.invalidate()
            self._root.close()


def _copy_table(table: Any) -> Table:
    """The copy's table of ``table``'s name (no column types: values are stored as they are)."""
    return Table(table.name, MetaData(schema=COPY_SCHEMA), *(Column(c.name, c.type) for c in table.columns))


def _attach_copy(conn: Connection, path: str, room: int) -> None:
    """Attach an empty copy database at ``path`` to ``conn``, of at most ``room`` bytes. Outside any
    transaction (ATTACH cannot run in one), on the driver's connection (an engine's ``begin`` events would
    open one)."""
    dbapi_connection: Any = conn.connection.dbapi_connection
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"ATTACH DATABASE ? AS {COPY_SCHEMA}", (path,))
        for pragma in (
            f"page_size = {COPY_PAGE_SIZE}", "journal_mode = OFF", "synchronous = OFF",
            f"max_page_count = {max(room // COPY_PAGE_SIZE, 16)}",
        ):  # fmt: skip
            cursor.execute(f"PRAGMA {COPY_SCHEMA}.{pragma}")
        table: Any
        for table in (posts_table, media_table):
            columns = ", ".join(f'"{column.name}"' for column in table.columns)
            cursor.execute(f'CREATE TABLE {COPY_SCHEMA}."{table.name}" ({columns})')
    finally:
        cursor.close()


def _detach_copy(conn: Connection) -> None:
    dbapi_connection: Any = conn.connection.dbapi_connection
    names = [row[1] for row in dbapi_connection.execute("PRAGMA database_list").fetchall()]
    if COPY_SCHEMA in names:
        dbapi_connection.execute(f"DETACH DATABASE {COPY_SCHEMA}")


def _no_timeouts(server_version: tuple[Any, ...]) -> str:
    """``SET LOCAL`` of the timeouts that could end the read transaction where skyarchive's one read completes
    (without a spool the plugin pauses between fetches while it encodes): set to 0 for this transaction only,
    as pg_dump does for its session."""
    names = ["statement_timeout", "idle_in_transaction_session_timeout"]
    if tuple(server_version[:1]) >= (17,):
        names.append("transaction_timeout")
    return "SELECT " + ", ".join(f"set_config('{name}', '0', true)" for name in names)


def count_selection(conn: Connection, request: ExportRequest) -> int:
    """How many posts the request selects."""
    stmt = select(func.count()).select_from(posts_table).where(*selection_criteria(request))
    return int(conn.execute(stmt).scalar_one())


def count_archive(conn: Connection) -> int:
    """How many posts the archive holds (all owners)."""
    return int(conn.execute(select(func.count()).select_from(posts_table)).scalar_one())


@dataclass(frozen=True)
class Stream:
    """The rows of one executed query: ``fetchmany(n)`` until it returns nothing, then ``close()``."""

    fetchmany: Callable[[int], Sequence[Any]]
    close: Callable[[], None]


def open_stream(conn: Connection, stmt: Select[Any], *, batch_size: int) -> Stream:
    """Execute ``stmt`` for streaming, on the snapshot's connection; rows as plain tuples where the driver allows:
    pysqlite's own cursor behind SQLAlchemy's result (its row objects cost more than the encoding; the one processor
    skipped, Boolean's, the encoders' ``bool()`` undoes); psycopg 3's or psycopg2's server-side cursor (``FETCH n``
    per ``fetchmany``, never the whole result client side); any other driver, SQLAlchemy's rows, streamed."""
    driver = conn.dialect.driver
    if driver == "pysqlite":
        result = conn.execute(stmt)
        return Stream(result.cursor.fetchmany, result.close)
    if driver in SERVER_CURSOR_DRIVERS:
        compiled = stmt.compile(dialect=conn.dialect)
        dbapi_connection: Any = conn.connection.dbapi_connection
        cursor = dbapi_connection.cursor(name=f"export_batching_{secrets.token_hex(4)}")
        cursor.execute(compiled.string, compiled.params)
        return Stream(cursor.fetchmany, cursor.close)
    streamed = conn.execution_options(stream_results=True, max_row_buffer=batch_size).execute(stmt)
    return Stream(lambda n: [tuple(row) for row in streamed.fetchmany(n)], streamed.close)


def posts_query(request: ExportRequest, *, in_date_order: bool = False) -> Select[Any]:
    """The selection's posts in export order. ``in_date_order`` (SQLite): the owner criterion written
    ``+posts.did = :did``: the same rows in the same order, but SQLite walks ``idx_posts_created_at`` and sorts
    only ties on ``uri`` (in memory), instead of sorting the whole selection (in temporary files) before the
    first row comes."""
    criteria = selection_criteria(request)
    if in_date_order:
        criteria = [
            literal_column("+posts.did") == c.right
            if getattr(c, "operator", None) is operators.eq and getattr(c.left, "key", None) == "did"
            else c
            for c in criteria
        ]
    return select(*posts_table.columns).where(*criteria).order_by(*POST_ORDER)


def media_query(request: ExportRequest) -> Select[Any]:
    """The selection's media rows in the host's order (the posts' order, then hash)."""
    return (
        select(*media_table.columns)
        .join(posts_table, media_table.c.post_uri == posts_table.c.uri)
        .where(*selection_criteria(request))
        .order_by(*POST_ORDER, media_table.c.hash)
    )


def media_rows(conn: Connection, request: ExportRequest, *, chunk: int = 1000) -> Any:
    """The selection's media rows, ``chunk`` at a time (a generator; closing it closes the cursor)."""
    stream = open_stream(conn, media_query(request), batch_size=chunk)
    try:
        while rows := stream.fetchmany(chunk):
            yield [tuple(row) for row in rows]
    finally:
        stream.close()
