"""Plans that hold on a PostgreSQL warehouse straight after a bulk load (no statistics).

Timing belongs to the benchmark (docs/bench-fresh-load.md); here the plans themselves are
checked: PostgreSQL, left alone on such a warehouse, picks a nested loop that repeats the
frequency-cap aggregate for each customer; campaignops' segmentation and QA sessions do not.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from campaignops.bench.fresh_load import freshly_loaded
from campaignops.brief import load_brief
from campaignops.qa.gx import qa_url
from campaignops.segmentation import audience_query, history_probe, one_pass_settings
from campaignops.synthetic import init_warehouse
from campaignops.warehouse import Warehouse, make_engine, open_warehouse

pytestmark = pytest.mark.integration
AS_OF = dt.datetime(2026, 11, 1, 9, 0)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_pg(pg_url: str) -> Iterator[Warehouse]:
    """A 5,000-customer warehouse with primary keys only and no planner statistics."""
    engine = make_engine(pg_url)
    init_warehouse(engine, customers=5_000, seed=42, as_of=AS_OF)
    engine.dispose()
    freshly_loaded(pg_url)
    wh = open_warehouse(pg_url)
    yield wh
    wh.engine.dispose()


def _plan(wh: Warehouse, tuned: bool) -> str:
    brief = load_brief(ROOT / "examples" / "briefs" / "winback.yaml")
    rows = audience_query(brief, "r", AS_OF, history_probe(wh)).rows
    sql = str(rows.compile(wh.engine, compile_kwargs={"literal_binds": True}))
    with wh.engine.begin() as conn:
        if tuned:
            with one_pass_settings(conn):
                return "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql))
        return "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql))


def test_segmentation_plans_no_nested_loop_without_statistics(fresh_pg: Warehouse) -> None:
    assert "Nested Loop" in _plan(fresh_pg, tuned=False)  # the trap is real on this warehouse
    assert "Nested Loop" not in _plan(fresh_pg, tuned=True)


def test_qa_sessions_keep_the_users_options_and_add_theirs(fresh_pg: Warehouse) -> None:
    given = fresh_pg.engine.url.update_query_dict({"options": "-c statement_timeout=123456"})
    engine = sa.create_engine(qa_url(given))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW enable_nestloop").scalar() == "off"
        assert conn.exec_driver_sql("SHOW jit").scalar() == "off"
        assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "123456ms"
    engine.dispose()
    with fresh_pg.engine.connect() as conn:  # the warehouse's other sessions are untouched
        assert conn.exec_driver_sql("SHOW enable_nestloop").scalar() == "on"


def test_qa_url_leaves_sqlite_alone() -> None:
    url = sa.engine.make_url("sqlite:////tmp/w.db")
    assert qa_url(url) is url
