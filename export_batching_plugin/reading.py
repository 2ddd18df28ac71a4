"""Reading the selection: one read snapshot, one ordered query, fetched in batches.

No LIMIT/OFFSET paging: the posts come from a single streamed query, so the
export costs O(N) and sees one consistent snapshot of the archive.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from skyarchive.export import POST_ORDER, ExportRequest, selection_criteria
from skyarchive.models import posts_table
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.expression import Select

log = logging.getLogger("export_batching_plugin")

#: Stored columns whose size can be large; they make up a row's size for the byte budget.
_SIZED = ("text", "embed_data", "labels")


@dataclass(frozen=True)
class Batch:
    """A run of consecutive posts of the export, in export order."""

    number: int  #: 1-based
    offset: int  #: position of its first post in the export (0-based)
    rows: Sequence[Sequence[Any]]  #: row tuples, columns in schema order
    sizes: Sequence[int]  #: each row's stored size (text, embed, labels), as counted for the byte budget

    def describe(self) -> str:
        return f"batch {self.number} (posts {self.offset + 1}-{self.offset + len(self.rows)})"


@contextmanager
def read_snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection inside one read transaction, rolled back at the end.

    - SQLite: the sqlite3 module opens transactions only before writes, so a
      plain SELECT would run in its own implicit snapshot; an explicit BEGIN
      makes the count and the streamed queries share one.
    - PostgreSQL: ``REPEATABLE READ, READ ONLY``: one snapshot for the whole
      transaction (READ COMMITTED would take a new one per statement).
    """
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN")
            elif conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn
        finally:
            transaction.rollback()


def count_selection(conn: Connection, request: ExportRequest) -> int:
    """How many posts the request selects."""
    stmt = select(func.count()).select_from(posts_table).where(*selection_criteria(request))
    return int(conn.execute(stmt).scalar_one())


_TEXT, _EMBED, _LABELS = (posts_table.columns.keys().index(name) for name in _SIZED)


def _stream(conn: Connection, stmt: Select[Any], batch_size: int) -> Any:
    """Execute ``stmt`` for streaming; the result has ``fetchmany`` and ``close`` and yields row tuples.

    SQLite: on the connection's own sqlite3 cursor, which steps through the
    result as rows are fetched and returns plain tuples, skipping the cost of
    SQLAlchemy's row objects (fetching 100k posts, measured under load: 1.34 s
    as SQLAlchemy rows, 0.79 s as tuples). Elsewhere: SQLAlchemy with
    ``stream_results``, i.e. a server-side cursor.
    """
    if conn.dialect.name == "sqlite":
        compiled = stmt.compile(dialect=conn.dialect)
        params = compiled.construct_params()
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(compiled.string, [params[name] for name in compiled.positiontup or ()])
        return cursor
    return conn.execution_options(stream_results=True, max_row_buffer=batch_size).execute(stmt)


def read_batches(
    conn: Connection, request: ExportRequest, *, batch_size: int, max_batch_bytes: int, expected: int
) -> Generator[Batch, None, None]:
    """Yield the selection's posts in batches of ``batch_size``, from one streamed query.

    A batch also ends once its posts' stored size reaches ``max_batch_bytes``.
    How many rows one fetch asks for follows an estimate of the row size: it
    starts at the whole budget (the first fetch is one row), rises at once to
    any larger row seen and halves after each fetch of smaller ones, so fetch
    sizes double back up after a large post. If the stream ends before
    ``expected`` posts, a warning is logged and the export ends with what was read.
    """
    stmt = select(*posts_table.columns).where(*selection_criteria(request)).order_by(*POST_ORDER)
    result = _stream(conn, stmt, batch_size)
    try:
        offset = yield from _batches(result, batch_size=batch_size, max_batch_bytes=max_batch_bytes)
    finally:
        result.close()  # also when the consumer stops early: the cursor must not outlive the snapshot
    if offset < expected:
        log.warning("export_batching: the selection ended after %d of %d counted posts", offset, expected)


def _batches(result: Any, *, batch_size: int, max_batch_bytes: int) -> Generator[Batch, None, int]:
    """The batching of :func:`read_batches`; returns how many posts it yielded."""
    estimate = max_batch_bytes  # bytes per row, for sizing the next fetch
    offset = number = 0
    exhausted = False
    while not exhausted:
        rows: list[Any] = []
        row_sizes: list[int] = []
        size = 0
        while len(rows) < batch_size and size < max_batch_bytes:
            want = min(batch_size - len(rows), max(1, (max_batch_bytes - size) // max(estimate, 1)))
            fetched = result.fetchmany(want)
            if not fetched:
                exhausted = True
                break
            sizes = [len(row[_TEXT] or "") + len(row[_EMBED] or "") + len(row[_LABELS] or "") for row in fetched]
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
