"""posts.csv from PostgreSQL's own CSV writer: ``COPY (…) TO STDOUT (FORMAT csv)`` (psycopg 3): the query, and
its rows as libpq hands them over (one ``bytes`` each, spooled as they come).

PostgreSQL quotes a CSV value exactly when csv.writer does (it holds the delimiter, the quote, CR or LF; quotes
inside doubled), and its text can hold no NUL. It differs in three ways, handled in the query: it quotes an
empty string (so empty strings are sent as NULL, which it writes as nothing), writes booleans as ``t``/``f``
(the query writes ``true``/``false``), and ends lines with ``\\n``. Each row starts with four fields: ``0,,,,``
and then the host's line exactly, for a post without embed or labels (most); otherwise ``1``, the embed and the
labels in hex (so that no quoting can change them), and the byte length of what follows the empty MediaFiles
field, where :func:`.csvlines.copy_lines_encoder` puts MediaFiles in; it adds Labels at the end. Why: the
server's CSV writer is C (docs/benchmarks.md, "Measurements behind the design"). Used only with fast encoders
that passed the self-check, psycopg 3 (psycopg2's ``copy_expert`` cannot be read a batch at a time), and a
UTF-8 client encoding.
"""

from __future__ import annotations

from itertools import islice
from typing import Any

from sqlalchemy import case, func, literal_column, null, or_, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql.expression import ColumnElement, Select

from .host import POST_ORDER, ExportRequest, posts_table, selection_criteria


def _sql(text: str) -> ColumnElement[Any]:
    """A constant, written into the statement (a bound parameter would need a type cast)."""
    return literal_column(text)


_EMPTY, _UTF8, _HEX, _TRUE, _FALSE, _ONE, _ZERO = map(
    _sql, ("''", "'UTF8'", "'hex'", "'true'", "'false'", "'1'", "'0'")
)
#: What makes csv.writer and PostgreSQL quote a field: a comma, a quote, LF, CR.
_SPECIAL = [_sql(text) for text in ("','", "'\"'", "E'\\n'", "E'\\r'")]


def usable(conn: Connection) -> bool:
    """Whether COPY can be used on this connection: psycopg 3, UTF-8 client encoding."""
    if conn.dialect.driver != "psycopg":
        return False
    dbapi_connection: Any = conn.connection.dbapi_connection
    return str(dbapi_connection.info.encoding).replace("_", "-").lower() in ("utf-8", "utf8")


def _blank(column: Any) -> ColumnElement[Any]:
    return func.nullif(column, _EMPTY)


def _flag(column: Any) -> ColumnElement[Any]:
    return case((column, _TRUE), else_=_FALSE)


def _csv_length(column: Any) -> ColumnElement[Any]:
    """The byte length of ``column`` as a CSV field (NULL and '' -> 0)."""
    quoted = or_(*(func.strpos(column, special) > 0 for special in _SPECIAL))
    quotes = func.length(column) - func.length(func.replace(column, _SPECIAL[1], _EMPTY))
    utf8_length = func.octet_length(func.convert_to(func.coalesce(column, _EMPTY), _UTF8))
    return utf8_length + case((quoted, 2 + quotes), else_=0)


def copy_query(request: ExportRequest, *, with_labels: bool) -> Select[Any]:
    """The query whose COPY CSV rows :func:`copy_lines_encoder` turns into posts.csv lines."""
    p = posts_table.c
    has_json = or_(p.embed_data.is_not(None), p.labels.is_not(None))
    after = 1 + _csv_length(p.embed_type) + 1 + _csv_length(p.indexed_at) + (1 if with_labels else 0)
    columns = [
        case((has_json, _ONE), else_=_ZERO),
        func.encode(func.convert_to(p.embed_data, _UTF8), _HEX),
        func.encode(func.convert_to(p.labels, _UTF8), _HEX),
        case((has_json, after)),
        _blank(p.uri), _blank(p.cid), _blank(p.did), _blank(p.text), _blank(p.created_at),
        p.like_count, p.repost_count, p.reply_count, p.quote_count, _flag(p.is_reply), _blank(p.reply_parent),
        _flag(p.has_media), null(), _blank(p.embed_type), _blank(p.indexed_at), *([null()] if with_labels else []),
    ]  # fmt: skip
    return select(*columns).where(*selection_criteria(request)).order_by(*POST_ORDER)


class _Abandoned(Exception):
    """Handed to psycopg's COPY block when it is left before the end: psycopg then cancels the COPY."""


class CopyRows:
    """The COPY CSV rows of ``stmt``, read ``fetchmany(n)`` at a time (one row per item, as libpq gives them)."""

    def __init__(self, conn: Connection, stmt: Select[Any]) -> None:
        compiled = stmt.compile(dialect=conn.dialect)
        dbapi_connection: Any = conn.connection.dbapi_connection
        self._cursor = dbapi_connection.cursor()
        self._block = self._cursor.copy(f"COPY ({compiled.string}) TO STDOUT (FORMAT csv)", compiled.params)
        self._rows = iter(self._block.__enter__())
        self._ended = False

    def fetchmany(self, size: int) -> list[bytes]:
        rows = [bytes(row) for row in islice(self._rows, size)]
        self._ended = len(rows) < size
        return rows

    def close(self) -> None:
        try:
            if self._ended:
                self._block.__exit__(None, None, None)
            else:  # stopped early: cancelled, the transaction is then rolled back
                self._block.__exit__(_Abandoned, _Abandoned(), None)
        finally:
            self._cursor.close()
