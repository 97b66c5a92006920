"""Benchmark: lifecycle scoring in the warehouse, first and incremental, beside a bare count of its inputs.

For each database: SIZE customers (fit attributes spread by fixed functions of the id) and
EVENTS_PER customer engagement events over the last 180 days, generated inside the database.
Each measurement runs in a fresh process (its wall time and peak memory are its own):

- **count floor**: ``SELECT count(*)`` of ``customers`` and of ``engagement_events``: reading
  the inputs, nothing more;
- **first scoring**: every customer scored, every stage a history row (``score_customers``);
- **rescoring, no change**: an hour later with no new event: the watermark's scan of the
  events after it, the fit recomputed for everyone, nothing written;
- **rescoring, 1 % changed**: a new event for every hundredth customer, then a scoring:
  exactly those rewritten.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from campaignops import migrations
from campaignops.bench.common import run_child, write_doc
from campaignops.bench.segmentation import _postgres, _sqlite, bench_databases
from campaignops.schema import engagement_events, warehouse_metadata
from campaignops.warehouse import make_engine

SIZE = 1_000_000
QUICK_SIZE = 20_000
EVENTS_PER = 3
AS_OF = dt.datetime(2026, 11, 1, 12)
KINDS = ("email_open", "email_click", "web_visit", "form_submit", "purchase")


def _series(dialect: str, n: int) -> str:
    """A FROM clause of g = 1..n."""
    if dialect == "postgresql":
        return f"generate_series(CAST(1 AS BIGINT), {n}) g"
    return f"(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n}) SELECT g FROM s)"  # noqa: S608 - an int


def _days_before(dialect: str, days_sql: str) -> str:
    """A timestamp `days_sql` days before AS_OF, in the warehouse's own format."""
    if dialect == "postgresql":
        return f"(timestamp '{AS_OF:%Y-%m-%d %H:%M:%S}' - ({days_sql}) * interval '1 day')"
    return f"(datetime('{AS_OF:%Y-%m-%d %H:%M:%S}', '-' || ({days_sql}) || ' days') || '.000000')"


def _build(url: str, n: int) -> float:
    """The warehouse, generated inside the database; the seconds it took."""
    t0 = time.perf_counter()
    engine = make_engine(url)
    warehouse_metadata.create_all(engine)
    engagement_events.create(engine)
    migrations.upgrade(engine)
    d = engine.dialect.name
    true, false = ("true", "false") if d == "postgresql" else ("1", "0")
    kinds = "CASE mod(g, 5) " + " ".join(f"WHEN {i} THEN '{k}'" for i, k in enumerate(KINDS)) + " END"
    with engine.begin() as conn:  # every value below is a constant or an int
        conn.exec_driver_sql(
            "INSERT INTO customers (customer_id, email, country, email_opt_in, lifetime_value, "  # noqa: S608
            "lifecycle_stage, last_purchase_at, last_open_at) "
            f"SELECT g, 'p' || g || '@example.com', CASE mod(g, 4) WHEN 0 THEN 'US' WHEN 1 THEN 'FR' "
            f"WHEN 2 THEN 'DE' ELSE 'BR' END, CASE WHEN mod(g, 3) = 0 THEN {false} ELSE {true} END, "
            f"mod(g * 31, 1000), 'lead', CASE WHEN mod(g, 7) = 0 THEN {_days_before(d, 'mod(g, 300)')} END, "
            f"{_days_before(d, 'mod(g, 90)')} FROM {_series(d, n)}")
        conn.exec_driver_sql(
            "INSERT INTO engagement_events (customer_id, event_type, occurred_at) "  # noqa: S608
            f"SELECT mod(g * 7919, {n}) + 1, {kinds}, {_days_before(d, 'mod(g * 13, 180)')} "
            f"FROM {_series(d, n * EVENTS_PER)}")
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    engine.dispose()
    return time.perf_counter() - t0


def _touch(url: str, at: dt.datetime) -> None:
    """A new form_submit for every hundredth customer."""
    engine = make_engine(url)
    d = engine.dialect.name
    stamp = f"timestamp '{at:%Y-%m-%d %H:%M:%S}'" if d == "postgresql" else f"'{at:%Y-%m-%d %H:%M:%S}.000000'"
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO engagement_events (customer_id, event_type, occurred_at) "  # noqa: S608
                             f"SELECT customer_id, 'form_submit', {stamp} FROM customers "
                             "WHERE mod(customer_id, 100) = 0")
    engine.dispose()


FLOOR = """
import json, time, sqlalchemy as sa
from campaignops.bench.common import peak_rss_mb
from campaignops.warehouse import make_engine
e = make_engine({url!r})
t = time.perf_counter()
with e.connect() as c:
    rows = sum(int(c.exec_driver_sql(f"SELECT count(*) FROM {{t}}").scalar_one())
               for t in ("customers", "engagement_events"))
print(json.dumps({{"s": time.perf_counter() - t, "rows": rows, "rss_mb": peak_rss_mb()}}))
"""

SCORE = """
import datetime as dt, json, time
from campaignops.bench.common import peak_rss_mb
from campaignops.lifecycle.model import load_model
from campaignops.lifecycle.scoring import score_customers
from campaignops.warehouse import make_engine
e = make_engine({url!r})
model = load_model()
t = time.perf_counter()
r = score_customers(e, model, dt.datetime.fromisoformat({at!r}))
print(json.dumps({{"s": time.perf_counter() - t, "rescored": r.rescored, "scored": r.scored,
                  "incremental": r.incremental, "history": sum(r.entered.values()), "rss_mb": peak_rss_mb()}}))
"""


def _measure(db: str, n: int) -> dict[str, Any]:
    place: AbstractContextManager[str] = _postgres(n) if db == "postgresql" else _sqlite(n)
    with place as url:
        built = _build(url, n)
        floor = run_child(FLOOR.format(url=url))
        first = run_child(SCORE.format(url=url, at=AS_OF.isoformat()))
        same = run_child(SCORE.format(url=url, at=(AS_OF + dt.timedelta(hours=1)).isoformat()))
        _touch(url, AS_OF + dt.timedelta(minutes=90))
        changed = run_child(SCORE.format(url=url, at=(AS_OF + dt.timedelta(hours=2)).isoformat()))
    return {"db": db, "customers": n, "build_s": built, "floor": floor, "first": first, "same": same,
            "changed": changed}


def _rows(quick: bool) -> Iterator[dict[str, Any]]:
    n = QUICK_SIZE if quick else SIZE
    for db in bench_databases()[0]:
        yield _measure(db, n)


def run(quick: bool = False) -> Path:
    """Measure and write docs/bench-lifecycle.md."""
    rows = list(_rows(quick))
    lines = ["| database | customers | events | count floor s | first scoring s (MB) | rescoring, no change s (MB) "
             "| rows written | rescoring, 1 % changed s (MB) | rows written |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        f, a, b, c = r["floor"], r["first"], r["same"], r["changed"]
        lines.append(f"| {r['db']} | {r['customers']:,} | {f['rows'] - r['customers']:,} | {f['s']:.2f} | "
                     f"{a['s']:.1f} ({a['rss_mb']:.0f}) | {b['s']:.1f} ({b['rss_mb']:.0f}) | {b['rescored']:,} | "
                     f"{c['s']:.1f} ({c['rss_mb']:.0f}) | {c['rescored']:,} |")
    body = ("\n".join(lines) + "\n\n"
            f"{'Quick run (--quick): small sizes, not the stated figures. ' if quick else ''}"
            "Each scoring and the floor run in a fresh process; MB is that process's peak resident set "
            "(Python, SQLAlchemy and the model included). The first scoring aggregates every event "
            "(a half-life weight per event) and writes every customer's row and a history row each; "
            "a rescoring reads the events after the watermark (a scan: the warehouse's events table has "
            "no index on occurred_at, and campaignops adds none to the user's tables), recomputes the "
            "fit for every customer and carries everyone else's engagement forward by decay, and "
            "writes only what changed (docs/lifecycle.md).\n\n"
            "```json\n" + json.dumps(rows, indent=1, default=str) + "\n```")
    return write_doc("lifecycle", "lifecycle scoring, first and incremental", body)
