"""Bulk writes of many rows into one table: COPY on PostgreSQL, the driver's executemany on SQLite.

SQLAlchemy's ``conn.execute(table.insert(), [dict, ...])`` builds parameters row by row in
Python; for hundreds of thousands of rows that is most of the write. :class:`BulkInsert`
takes tuples in a fixed column order and hands them to the driver in one call a chunk:
psycopg's COPY (binary-free text protocol, rows adapted in C) or sqlite3's executemany,
after the column types' own bind processing (so SQLite stores dates and timestamps in
the format SQLAlchemy reads back). Any other dialect gets the plain SQLAlchemy insert.
The rows join the connection's transaction: nothing is committed here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

Row = Sequence[Any]


def writer_kind(conn: Connection) -> str:
    """How this connection bulk-writes: ``sqlite``, ``copy`` (psycopg) or ``generic``."""
    dialect = conn.dialect
    if dialect.name == "sqlite":
        return "sqlite"
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        return "copy"
    return "generic"


class BulkInsert:
    """Writes rows (tuples in ``columns`` order) into ``table`` on ``conn``, a chunk per call.

    ``processed``: the values are the Python objects SQLAlchemy would bind (datetimes,
    booleans); on SQLite each column's bind processor is applied. Pass ``False`` for values
    already in the database's own stored form (read raw from another SQLite database).
    """

    def __init__(self, conn: Connection, table: sa.Table, columns: Sequence[str] | None = None,
                 processed: bool = True) -> None:
        self.conn, self.table = conn, table
        self.names = list(columns) if columns is not None else [c.name for c in table.columns]
        self.kind = writer_kind(conn)
        dialect = conn.dialect
        self.processors: list[tuple[int, Callable[[Any], Any]]] = []
        if self.kind == "sqlite" and processed:
            for i, name in enumerate(self.names):
                p = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
                if p is not None:
                    self.processors.append((i, p))
        prep = dialect.identifier_preparer
        target = f"{prep.format_table(table)} ({', '.join(prep.quote(n) for n in self.names)})"
        # identifiers from the Table, quoted by the dialect; values always bound
        self.insert = f"INSERT INTO {target} VALUES ({', '.join('?' for _ in self.names)})"  # noqa: S608
        self.copy_sql = f"COPY {target} FROM STDIN"

    def write(self, rows: Sequence[Row]) -> int:
        """Write the rows; how many."""
        if not rows:
            return 0
        dbapi: Any = self.conn.connection.dbapi_connection
        if self.kind == "sqlite":
            if self.processors:
                prepared = []
                for row in rows:
                    out = list(row)
                    for i, p in self.processors:
                        out[i] = p(out[i])
                    prepared.append(out)
                rows = prepared
            cursor = dbapi.cursor()
            try:
                cursor.executemany(self.insert, rows)
            finally:
                cursor.close()
        elif self.kind == "copy":
            cursor = dbapi.cursor()
            try:
                with cursor.copy(self.copy_sql) as copy:
                    for row in rows:
                        copy.write_row(row)
            finally:
                cursor.close()
        else:
            self.conn.execute(self.table.insert(), [dict(zip(self.names, r, strict=True)) for r in rows])
        return len(rows)
