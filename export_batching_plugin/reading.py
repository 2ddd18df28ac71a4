"""Reading the selection: one read snapshot, one ordered query, fetched in batches.

No LIMIT/OFFSET paging: the posts come from a single streamed query, so the
export costs O(N) and sees one consistent snapshot of the archive. The
snapshot is held only while rows are read (:meth:`Snapshot.end`).
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from collections.abc import Callable, Generator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import cache, partial
from types import TracebackType
from typing import Any, Protocol

from sqlalchemy import Column, MetaData, Table, func, insert, literal_column, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import operators
from sqlalchemy.sql.expression import Select

from .host import POST_ORDER, ExportRequest, media_table, posts_table, selection_criteria
from .rows import Batch, row_size
from .spoolfile import in_memory, sqlite_temp_directory
from .threads import start_thread

log = logging.getLogger("export_batching_plugin")

#: Drivers whose rows are fetched as plain tuples (see :func:`open_stream`).
RAW_CURSOR_DRIVERS = frozenset({"pysqlite"})
SERVER_CURSOR_DRIVERS = frozenset({"psycopg", "psycopg2"})


class Snapshot:
    """A connection inside one read transaction, from :meth:`open` until :meth:`end`.

    The transaction is begun the way the engine is set up to begin it (events,
    ``isolation_level``), then made a snapshot where that needs more:

    - SQLite: Python's sqlite3 module opens transactions only before writes, so
      unless the engine's setup already did (SQLAlchemy's pysqlite recipe
      emits its own BEGIN), an explicit BEGIN makes the count and the streamed
      queries share one snapshot.
    - PostgreSQL: the connection is set to ``REPEATABLE READ`` and read-only
      (SQLAlchemy's ``isolation_level`` and ``postgresql_readonly`` options,
      reset when the connection goes back to the pool): one snapshot for the
      whole transaction, also on an engine set to autocommit. The server's
      session timeouts are lifted for this transaction only (see :func:`_no_timeouts`).
    """

    def __init__(self, root: Connection, conn: Connection, transaction: Any, *, copying: bool = False) -> None:
        self.conn = conn
        self._root, self._transaction = root, transaction
        self._open = True
        self.copying = copying  #: whether the selection is copied (:meth:`copy_selection`)

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """End the transaction if it is still open, give the connection back; never raises (the failure that
        stopped the reading is told)."""
        with suppress(BaseException):
            self.close(complete=False)

    @classmethod
    def open(cls, engine: Engine, *, copy: bool = False) -> Snapshot:
        """The snapshot; with ``copy``, one that copies the selection where a reader blocks writers (SQLite
        outside WAL mode, see :meth:`copy_selection`), if it can."""
        root = engine.connect()
        try:
            conn = root
            if root.dialect.name == "postgresql":
                conn = root.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            copying = copy and _attach_copy(root)
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
        return cls(root, conn, transaction, copying=copying)

    def copy_selection(self, request: ExportRequest, *, in_date_order: bool, media: bool) -> int:
        """Copy the selection's posts (and, with ``media``, its media rows) in export order into the
        connection's copy database; how many posts. Then :meth:`end` the snapshot and read the copy
        (:func:`read_batches`, :func:`read_media_rows` with ``from_copy``) with the archive free.

        Where a reader's transaction blocks every writer's commit (SQLite's rollback journal, its default),
        the snapshot lasts only as long as SQLite takes to copy the rows, in C, into a database of its own
        (``ATTACH ''``: a temporary file SQLite makes in its temporary directory, SQLITE_TMPDIR or TMPDIR
        or /var/tmp, and unlinks at once, so nothing is left if the process dies; its pages beyond the
        cache of 2 MB are on disk, not in memory). That is shorter than skyarchive's own read of the same
        rows into Python objects (docs/benchmarks.md). The copy stores each value as it is (no column
        types, so no conversions).
        """
        query = _posts_query(request, in_date_order)
        copied = self.conn.execute(insert(_copy_table("posts")).from_select(list(posts_table.columns.keys()), query))
        if media:
            columns = list(media_table.columns.keys())
            self.conn.execute(insert(_copy_table("media")).from_select(columns, _media_query(request)))
        return int(copied.rowcount)

    def end(self, *, complete: bool) -> None:
        """End the transaction (again: nothing). Without a copy, give the connection back too; with one, the
        connection reads the copy until :meth:`close`.

        When every row was read (``complete``), nothing the database does now
        can change the export: a failure here (the server dropped the session,
        say) is logged as a warning. Otherwise it is not reported at all: the
        failure that stopped the reading is the one that matters.
        """
        if not self._open:
            return
        self._open = False
        ended = False
        try:
            if self.copying and complete:
                self._transaction.commit()  # the copy's rows; the archive itself was only read
            else:
                self._transaction.rollback()
            ended = True
        except Exception as exc:
            if complete:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                log.warning("export_batching: every row was read, but ending the read transaction failed: %s", first)
        finally:
            if not ended:  # not back to the pool as it is: its reset would fail and log again
                with suppress(Exception):
                    self._root.invalidate()
            if not ended or not self.copying:
                self._root.close()

    def close(self, *, complete: bool = False) -> None:
        """End the transaction if it is open, drop the copy, give the connection back (again: nothing)."""
        if self._open:
            self.end(complete=complete)
        if self._root.closed:
            return
        try:
            self._root.rollback()  # the copy's reads
            _detach_copy(self._root)
        except Exception:
            with suppress(Exception):
                self._root.invalidate()  # not back to the pool with the copy attached
        finally:
            self._root.close()


#: The schema name of the connection's copy of the selection (see :meth:`Snapshot.copy_selection`).
COPY_SCHEMA = "export_batching_copy"
COPIED = (("posts", posts_table), ("media", media_table))


@cache
def _copy_table(name: str) -> Table:
    """The copy's ``posts`` or ``media`` table (for queries: the copy's own columns have no types)."""
    table = dict(COPIED)[name]
    return Table(name, MetaData(schema=COPY_SCHEMA), *(Column(column.name, column.type) for column in table.columns))


def _attach_copy(conn: Connection) -> bool:
    """Attach an empty copy database to ``conn`` where a reader blocks writers and SQLite keeps temporary
    databases on disk (not in memory, nor in a temporary directory held in memory); whether it did. Outside
    any transaction (ATTACH cannot run in one), on the driver's
    connection (an engine's ``begin`` events would open one)."""
    if conn.dialect.name != "sqlite":
        return False
    dbapi_connection: Any = conn.connection.dbapi_connection
    if getattr(dbapi_connection, "in_transaction", True):
        return False
    try:
        cursor = dbapi_connection.cursor()
        try:
            if str(cursor.execute("PRAGMA main.journal_mode").fetchone()[0]).lower() == "wal":
                return False  # readers do not block writers
            if _temp_in_memory(cursor):
                return False  # the copy would be held in memory
            where = sqlite_temp_directory()
            if where is None or in_memory(where):
                return False  # likewise (a tmpfs TMPDIR); or SQLite has nowhere to put it
            cursor.execute(f"ATTACH DATABASE '' AS {COPY_SCHEMA}")
            cursor.execute(f"PRAGMA {COPY_SCHEMA}.journal_mode = OFF")
            cursor.execute(f"PRAGMA {COPY_SCHEMA}.synchronous = OFF")
            for name, table in COPIED:
                columns = ", ".join(f'"{column.name}"' for column in table.columns)
                cursor.execute(f'CREATE TABLE {COPY_SCHEMA}."{name}" ({columns})')
        finally:
            cursor.close()
    except Exception as exc:  # an older SQLite, a temporary directory that cannot be written: no copy
        log.info("export_batching: reading the archive without copying it first (%s)", exc)
        with suppress(Exception):
            _detach_copy(conn)
        return False
    return True


def _temp_in_memory(cursor: Any) -> bool:
    """Whether SQLite keeps temporary databases in memory (its compile-time TEMP_STORE, and the pragma)."""
    options = [row[0] for row in cursor.execute("PRAGMA compile_options").fetchall()]
    compiled = next((int(o.partition("=")[2]) for o in options if o.startswith("TEMP_STORE=")), 1)
    pragma = int(cursor.execute("PRAGMA temp_store").fetchone()[0])
    return compiled == 3 or (compiled == 2 and pragma != 1) or (compiled == 1 and pragma == 2)


def _detach_copy(conn: Connection) -> None:
    dbapi_connection: Any = conn.connection.dbapi_connection
    names = [row[1] for row in dbapi_connection.execute("PRAGMA database_list").fetchall()]
    if COPY_SCHEMA in names:
        dbapi_connection.execute(f"DETACH DATABASE {COPY_SCHEMA}")


def _no_timeouts(server_version: tuple[Any, ...]) -> str:
    """``SET LOCAL`` of the timeouts that could end the read transaction where skyarchive alone completes.

    The plugin reads the selection with one statement (a server-side cursor, or a COPY) for as long as the
    selection takes, and pauses between fetches while it encodes; skyarchive alone reads it with one
    statement too, but a server's ``statement_timeout`` or ``idle_in_transaction_session_timeout`` (or
    PostgreSQL 17's ``transaction_timeout``) meets the two differently. pg_dump, the other long read-only
    snapshot, sets them to 0 for its session; the plugin does so for its read transaction only
    (``set_config(…, true)``), and the connection goes back to the pool as it was.
    """
    names = ["statement_timeout", "idle_in_transaction_session_timeout"]
    if tuple(server_version[:1]) >= (17,):
        names.append("transaction_timeout")
    return "SELECT " + ", ".join(f"set_config('{name}', '0', true)" for name in names)


def count_selection(conn: Connection, request: ExportRequest) -> int:
    """How many posts the request selects."""
    stmt = select(func.count()).select_from(posts_table).where(*selection_criteria(request))
    return int(conn.execute(stmt).scalar_one())


class Stream(Protocol):
    """The rows of one executed query: ``fetchmany(n)`` until it returns nothing, then ``close()``."""

    def fetchmany(self, size: int, /) -> Sequence[Any]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class _Rows:
    fetchmany: Callable[[int], Sequence[Any]]
    close: Callable[[], None]


def open_stream(conn: Connection, stmt: Select[Any], *, batch_size: int) -> Stream:
    """Execute ``stmt`` for streaming, on the snapshot's connection.

    - pysqlite: through SQLAlchemy (compiled by the dialect, with the engine's events), then rows are
      fetched from the result's own DBAPI cursor, which steps through the result as rows are fetched and
      returns plain tuples, skipping SQLAlchemy's row objects, which cost more than the encoding
      (docs/benchmarks.md, "Measurements behind the design"). The values are the same: the only processor
      pysqlite's result would apply here, Boolean's, turns 0/1 into False/True, and the encoders take
      ``bool()``.
    - psycopg 3, psycopg2: a server-side (named) cursor of the driver's own, on the snapshot's
      connection, executed with the statement SQLAlchemy compiles: tuples again, ``FETCH n`` per
      ``fetchmany``, never the whole result client side. (SQLAlchemy's ``stream_results`` reads a row
      into a buffer of its own on execution, so its DBAPI cursor cannot be read directly.) The fetches
      run one batch ahead on a reader thread (:func:`prefetched`).
    - any other driver: SQLAlchemy's rows, with ``stream_results``.
    """
    driver = conn.dialect.driver
    if driver in RAW_CURSOR_DRIVERS:
        result = conn.execute(stmt)
        return _Rows(result.cursor.fetchmany, result.close)
    if driver in SERVER_CURSOR_DRIVERS:
        compiled = stmt.compile(dialect=conn.dialect)
        dbapi_connection: Any = conn.connection.dbapi_connection
        cursor = dbapi_connection.cursor(name=f"export_batching_{secrets.token_hex(4)}")
        cursor.execute(compiled.string, compiled.params)
        return _Rows(cursor.fetchmany, cursor.close)
    streamed = conn.execution_options(stream_results=True, max_row_buffer=batch_size).execute(stmt)
    return _Rows(streamed.fetchmany, streamed.close)


def count_archive(conn: Connection) -> int:
    """How many posts the archive holds (all owners)."""
    return int(conn.execute(select(func.count()).select_from(posts_table)).scalar_one())


def _in_date_order(criteria: list[Any]) -> list[Any]:
    """The criteria with ``posts.did = :did`` written ``+posts.did = :did`` (SQLite), or unchanged.

    The same rows, in the same order; the unary ``+`` only keeps SQLite from using ``idx_posts_did``, so it
    walks ``idx_posts_created_at`` in the export's order and sorts only ties on ``uri``, instead of sorting
    the whole selection before the first row comes (docs/benchmarks.md, "Measurements behind the design").
    Only worth it when the selection is most of the archive: otherwise it walks the other owners' posts too.
    """

    def is_did(criterion: Any) -> bool:
        left = getattr(criterion, "left", None)
        return (
            getattr(criterion, "operator", None) is operators.eq
            and getattr(left, "key", None) == "did"
            and (getattr(left, "table", None) is posts_table)
        )

    if sum(map(is_did, criteria)) != 1:
        return criteria
    return [literal_column("+posts.did") == c.right if is_did(c) else c for c in criteria]


def _posts_query(request: ExportRequest, in_date_order: bool) -> Select[Any]:
    criteria = selection_criteria(request)
    if in_date_order:
        criteria = _in_date_order(criteria)
    return select(*posts_table.columns).where(*criteria).order_by(*POST_ORDER)


def read_batches(
    conn: Connection,
    request: ExportRequest,
    *,
    batch_size: int,
    max_batch_bytes: int,
    expected: int,
    in_date_order: bool = False,
    from_copy: bool = False,
) -> Generator[Batch, None, None]:
    """Yield the selection's posts in batches of ``batch_size``, from one streamed query.

    A batch also ends once its posts' stored size reaches ``max_batch_bytes``.
    How many rows one fetch asks for follows an estimate of the row size: it
    starts at the whole budget (the first fetch is one row), rises at once to
    any larger row seen and halves after each fetch of smaller ones, so fetch
    sizes double back up after a large post. If the stream ends before
    ``expected`` posts, a warning is logged and the export ends with what was read. ``in_date_order``:
    see :func:`_in_date_order` (SQLite). ``from_copy``: from the snapshot's copy of the selection
    (:meth:`Snapshot.copy_selection`), in the order it was copied.
    """
    query = _copy_query("posts") if from_copy else _posts_query(request, in_date_order)
    batches = batches_of_stream(
        partial(open_stream, conn, query, batch_size=batch_size),
        batch_size=batch_size, max_batch_bytes=max_batch_bytes, expected=expected,
    )  # fmt: skip
    if conn.dialect.driver in SERVER_CURSOR_DRIVERS:
        batches = prefetched(batches)
    return batches


def batches_of_stream(
    open_: Callable[[], Stream],
    *,
    batch_size: int,
    max_batch_bytes: int,
    expected: int,
    size_of: Callable[[Any], int] = row_size,
) -> Generator[Batch, None, None]:
    """The batching of :func:`read_batches` on any stream: opened when first asked, closed when done or stopped."""
    stream = open_()
    try:
        offset = yield from _batches_of(stream, batch_size=batch_size, max_batch_bytes=max_batch_bytes, size_of=size_of)
    finally:
        stream.close()  # the cursor must not outlive the snapshot
    if offset < expected:
        log.warning("export_batching: the selection ended after %d of %d counted posts", offset, expected)


def _batches_of(
    stream: Stream, *, batch_size: int, max_batch_bytes: int, size_of: Callable[[Any], int]
) -> Generator[Batch, None, int]:
    """Batches of at most ``batch_size`` rows and about ``max_batch_bytes``; returns how many rows it yielded."""
    estimate = max_batch_bytes  # bytes per row, for sizing the next fetch
    offset = number = 0
    exhausted = False
    while not exhausted:
        rows: list[Any] = []
        row_sizes: list[int] = []
        size = 0
        while len(rows) < batch_size and size < max_batch_bytes:
            want = min(batch_size - len(rows), max(1, (max_batch_bytes - size) // max(estimate, 1)))
            fetched = stream.fetchmany(want)
            if not fetched:
                exhausted = True
                break
            sizes = [size_of(row) for row in fetched]
            estimate = max(max(sizes), estimate // 2)
            size += sum(sizes)
            rows.extend(fetched)
            row_sizes.extend(sizes)
        if not rows:
            break
        number += 1
        yield Batch(number=number, offset=offset, rows=rows, sizes=row_sizes)
        offset += len(rows)
    return offset


def _media_query(request: ExportRequest) -> Select[Any]:
    return (
        select(*media_table.columns)
        .join(posts_table, media_table.c.post_uri == posts_table.c.uri)
        .where(*selection_criteria(request))
        .order_by(*POST_ORDER, media_table.c.hash)
    )


def _copy_query(name: str) -> Select[Any]:
    """The copy's ``posts`` or ``media`` rows, in the order they were copied."""
    return select(*_copy_table(name).columns).order_by(literal_column("rowid"))


def read_media_rows(
    conn: Connection, request: ExportRequest, *, chunk: int = 1000, from_copy: bool = False
) -> Generator[list[tuple[Any, ...]], None, None]:
    """The selection's media rows in the host's order (the posts' order, then hash), ``chunk`` at a time
    (``from_copy``: from the snapshot's copy, see :meth:`Snapshot.copy_selection`)."""
    stmt = _copy_query("media") if from_copy else _media_query(request)
    stream = open_stream(conn, stmt, batch_size=chunk)
    try:
        while rows := stream.fetchmany(chunk):
            yield [tuple(row) for row in rows]
    finally:
        stream.close()


def prefetched(batches: Generator[Batch, None, None]) -> Generator[Batch, None, None]:
    """``batches``, produced on a reader thread one batch ahead (PostgreSQL).

    The driver lets go of the GIL while it waits for the server, so the server prepares the next
    batch while this one is encoded and written (docs/benchmarks.md, "Measurements behind the design"). One
    batch waits at most: memory stays about twice the byte budget. Errors on the reader thread are raised
    here, when the batch they stopped is asked for. Closing this generator stops the thread and closes
    ``batches`` (and its cursor) on it.
    """
    handover: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()
    end = object()

    def read() -> None:
        try:
            for batch in batches:
                handover.put(batch)
                if stop.is_set():
                    break
            handover.put(end)
        except BaseException as exc:  # handed over, raised in the consumer
            handover.put(exc)
        finally:
            batches.close()

    reader = start_thread(read, "export-reader", doing="reading the rows")
    if reader is None:
        yield from batches
        return
    try:
        while (item := handover.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while reader.running:  # unblock a reader waiting to hand a batch over
            with suppress(queue.Empty):
                handover.get(timeout=0.05)
