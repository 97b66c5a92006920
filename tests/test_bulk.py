"""Bulk writes: what BulkInsert writes reads back through SQLAlchemy exactly as it was given."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from campaignops.bulk import BulkInsert, writer_kind
from campaignops.warehouse import make_engine

pytestmark = pytest.mark.unit

META = sa.MetaData()
T = sa.Table(
    "co_bulk_probe", META,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("name", sa.String(64)),
    sa.Column("flag", sa.Boolean, nullable=False),
    sa.Column("at", sa.DateTime),
    sa.Column("day", sa.Date),
)
WHEN = dt.datetime(2031, 3, 9, 23, 0, 5, 120000)
ROWS = [
    (1, "plain", True, WHEN, WHEN.date()),
    (2, None, False, None, None),
    (3, "tab\tand\nnewline \\ back", True, WHEN - dt.timedelta(days=400), dt.date(2020, 2, 29)),
    (4, "", False, WHEN, WHEN.date()),
]


def test_rows_read_back_as_written_in_any_column_order(db_url: str) -> None:
    engine = make_engine(db_url)
    META.create_all(engine)
    with engine.begin() as conn:
        writer = BulkInsert(conn, T, ["flag", "id", "day", "at", "name"])
        assert writer.kind == ("sqlite" if engine.dialect.name == "sqlite" else "copy")
        n = writer.write([(flag, i, day, at, name) for i, name, flag, at, day in ROWS])
        assert writer.write([]) == 0
    assert n == len(ROWS)
    with engine.connect() as conn:
        back = [tuple(r) for r in conn.execute(sa.select(T).order_by(T.c.id))]
        # what SQLAlchemy's own insert stores compares equal in SQL too
        at_filter = conn.execute(sa.select(sa.func.count()).select_from(T).where(T.c.at >= WHEN)).scalar_one()
    assert back == ROWS
    assert at_filter == 2


def test_nothing_is_written_when_the_transaction_rolls_back(db_url: str) -> None:
    engine = make_engine(db_url)
    META.create_all(engine)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        BulkInsert(conn, T).write([ROWS[0]])
        raise RuntimeError("abort")
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(T)).scalar_one() == 0
        assert writer_kind(conn) in ("sqlite", "copy")
