"""Benchmark: a sent run's results against one count over the same rows.

For each database: a warehouse of SIZE customers, one sent run whose audience is every
customer (10 % held out, two cells), contact history for the treated, and purchases
planted after the send at 12 % of the treated and 10 % of the holdout (by a fixed spread
of the customer ids, so every run plants the same rows). Then, best of
REPEATS in this process:

- **count floor**: ``SELECT count(*)`` of the run's ``co_audience`` rows joined to
  ``customers``: reading the rows the results read, nothing more;
- **results**: ``run_results`` (the outcome per cell and by day since the send, the send
  times, the contact pressure, the statistics).

The planted lift (2 points) must fall inside the measured 95 % interval.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from campaignops import migrations, runs
from campaignops.bench.common import write_doc
from campaignops.bench.segmentation import _postgres, _sqlite, bench_databases
from campaignops.brief import validate_brief
from campaignops.results import RunResults, run_results
from campaignops.schema import audience, customers, warehouse_metadata
from campaignops.warehouse import Warehouse, make_engine

SIZE = 10_000_000
QUICK_SIZE = 100_000
REPEATS = 3
TARGET_RATIO = {"postgresql": 3.0, "sqlite": 15.0}  # results / count floor
RUN = "bench-results"
SENT = dt.datetime(2026, 11, 2, 12)
PLANTED = 0.02


def _series(dialect: str, n: int) -> str:
    """A FROM clause of g = 1..n."""
    if dialect == "postgresql":
        return f"generate_series(1, {n}) g"
    return f"(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n}) SELECT g FROM s)"  # noqa: S608 - an int


def _build(url: str, n: int) -> Warehouse:
    """The warehouse, the run and its rows, generated inside the database."""
    engine = make_engine(url)
    warehouse_metadata.create_all(engine)
    migrations.upgrade(engine)
    d = engine.dialect.name
    rnd = "mod(g * 7919, 1000) / 1000.0"  # a fixed spread of the ids: the same rows every time
    ts = "timestamp " if d == "postgresql" else ""
    frac = "" if d == "postgresql" else ".000000"
    ctl = "mod(g, 10) = 0"
    with engine.begin() as conn:  # every value below is a constant or an int
        conn.exec_driver_sql(
            "INSERT INTO customers (customer_id, email, lifecycle_stage, last_purchase_at, last_open_at) "  # noqa: S608
            f"SELECT g, 'p' || g || '@example.com', 'customer', CASE WHEN {rnd} < "
            f"CASE WHEN {ctl} THEN 0.10 ELSE 0.12 END THEN {ts}'2026-11-05 12:00:00{frac}' "
            f"ELSE {ts}'2026-05-01 00:00:00{frac}' END, {ts}'2026-10-01 00:00:00{frac}' FROM {_series(d, n)}")
        conn.exec_driver_sql(
            "INSERT INTO co_audience (run_id, customer_id, address_key, outcome, cell, is_seed) "  # noqa: S608
            f"SELECT '{RUN}', customer_id, email, CASE WHEN mod(customer_id, 10) = 0 THEN 'control' "
            "ELSE 'send' END, CASE WHEN mod(customer_id, 10) = 0 THEN NULL "
            "WHEN mod(customer_id, 2) = 0 THEN 'a' ELSE 'b' END, "
            f"{'false' if d == 'postgresql' else '0'} FROM customers")
        conn.exec_driver_sql(
            "INSERT INTO contact_history (customer_id, campaign_id, run_id, channel, cell, sent_at) "  # noqa: S608
            f"SELECT customer_id, 'bench', '{RUN}', 'email', CASE WHEN mod(customer_id, 2) = 0 THEN 'a' "
            f"ELSE 'b' END, {ts}'2026-11-02 12:00:00{frac}' FROM customers WHERE mod(customer_id, 10) <> 0")
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    brief = validate_brief({
        "campaign_id": "bench", "name": "Bench", "owner": "owner@example.com", "objective": "bench",
        "kpi": {"metric": "purchase_after_send", "target": 0.01},
        "content": {"template_id": "t", "subject": "s"},
        "audience": {"include": {"field": "lifecycle_stage", "op": "eq", "value": "customer"}},
        "control_group": {"percent": 10.0, "salt": "s"},
        "cells": [{"name": "a", "percent": 50}, {"name": "b", "percent": 50}],
        "expected_audience": {"min": 0, "max": 10**9}, "approvals": [{"stage": "qa", "approvers": ["q@example.com"]}],
    })
    runs.register_run(engine, RUN, brief, "bench.yaml", SENT)
    runs.set_status(engine, RUN, runs.SENT)
    return Warehouse(engine)


def _best(fn: Callable[[], Any]) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(REPEATS):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def _measure(db: str, n: int) -> dict[str, Any]:
    place: AbstractContextManager[str] = _postgres(n) if db == "postgresql" else _sqlite(n)
    with place as url:
        t0 = time.perf_counter()
        wh = _build(url, n)
        built = time.perf_counter() - t0

        def floor() -> int:
            with wh.engine.connect() as conn:
                return int(conn.execute(sa.select(sa.func.count()).select_from(
                    audience.join(customers, customers.c.customer_id == audience.c.customer_id))
                    .where(audience.c.run_id == RUN)).scalar_one())

        t_floor, rows = _best(floor)
        t_res, res = _best(lambda: run_results(wh, RUN, now=SENT + dt.timedelta(days=20)))
        wh.dispose()
    r: RunResults = res
    return {"db": db, "customers": n, "rows": rows, "build_s": built, "floor_s": t_floor, "results_s": t_res,
            "ratio": t_res / t_floor, "lift": r.total.lift, "low": r.total.lift_low, "high": r.total.lift_high,
            "notes": len(r.notes)}


def _rows(quick: bool) -> Iterator[dict[str, Any]]:
    n = QUICK_SIZE if quick else SIZE
    for db in bench_databases()[0]:
        yield _measure(db, n)


def run(quick: bool = False) -> Path:
    """Measure and write docs/bench-results.md."""
    rows = list(_rows(quick))
    lines = ["| database | customers (= audience rows) | build s | count floor s | results s | "
             "results / floor | target | planted lift in the 95% CI |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        covered = r["low"] is not None and r["low"] < PLANTED < r["high"]
        lines.append(f"| {r['db']} | {r['customers']:,} | {r['build_s']:.1f} | {r['floor_s']:.2f} | "
                     f"{r['results_s']:.2f} | {r['ratio']:.1f}x | {TARGET_RATIO[r['db']]:g}x | "
                     f"{'yes' if covered else 'NO'} ({r['lift']:+.4f} in [{r['low']:+.4f}, {r['high']:+.4f}]) |")
    body = ("\n".join(lines) + "\n\n"
            f"{'Quick run (--quick): small sizes, not the stated figures.' if quick else ''}\n"
            "The results are one `GROUP BY` (with one `SUM(CASE ...)` per day since the send, up to 30), "
            "two grouped counts for the contact pressure and one for the send times, all in the database; "
            "the count floor is one `count(*)` over the same join. SQLite's count is an index-only scan "
            "and its per-row CASE columns are interpreted, hence the larger multiple there "
            "(docs/results.md).")
    return write_doc("results", "results against the holdout", body)
