"""Benchmark: segmentation and QA on PostgreSQL straight after a bulk load, and after ANALYZE.

A nightly ETL leaves the warehouse with primary keys only and no planner statistics until
autovacuum gets to it. For each size: build the synthetic warehouse (seed 42), drop every
secondary index (primary keys only), then make it look freshly loaded: its statistics
deleted, its size estimates reset, autovacuum off for the five tables. Then, each in a fresh
child process (GX imported before the clock starts), the winback brief's segmentation and
its QA suite:

- **fresh**: as campaignops runs them (hash joins whatever the estimates: see
  campaignops/segmentation.py ``one_pass_settings`` and campaignops/qa/gx.py ``qa_url``);
- **fresh, planner left alone** (the smallest size only; what the change bought): the same
  with PostgreSQL's nested loops allowed again;
- **analysed**: the same warehouse after a plain ``ANALYZE`` of the five tables.

Target (issue 19): fresh within 1.5x of analysed.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from campaignops.bench.common import run_child, write_doc
from campaignops.bench.segmentation import ROOT, SEED, _load, _pg_reason, _postgres

SIZES = (100_000, 1_000_000)
QUICK_SIZES = (20_000,)
AS_OF = dt.datetime(2026, 11, 1, 9, 0)
TARGET = 1.5

CHILD = r"""
import datetime as dt, json, tempfile, time, uuid
from pathlib import Path
args = json.loads({args!r})
import great_expectations  # noqa: F401  (paid once per process, not timed)
from campaignops import runs
from campaignops.bench.common import peak_rss_mb
from campaignops.brief import load_brief
from campaignops.qa import gx
from campaignops.qa.audience import run_audience_qa
from campaignops import segmentation
from campaignops.warehouse import open_warehouse
if args["planner_free"]:  # the plans before the change: nested loops allowed again
    gx.PG_SESSION_OPTIONS = "-c jit=off"
    one_pass_settings = segmentation.one_pass_settings
    from contextlib import contextmanager
    @contextmanager
    def _free(conn):
        with one_pass_settings(conn):
            conn.exec_driver_sql("SET LOCAL enable_nestloop = on")
            yield
    segmentation.one_pass_settings = _free
as_of = dt.datetime.fromisoformat(args["as_of"])
brief = load_brief(args["brief"])
wh = open_warehouse(args["url"])
run_id = str(uuid.uuid4())
runs.register_run(wh.engine, run_id, brief, "bench", as_of)
started = time.perf_counter()
wf = segmentation.segment(wh, brief, run_id, as_of)
seg = time.perf_counter() - started
started = time.perf_counter()
result = run_audience_qa(wh, run_id, brief, send_at=(as_of + dt.timedelta(hours=1)).replace(tzinfo=dt.UTC),
                         home=Path(tempfile.mkdtemp()), build_docs=False)
qa = time.perf_counter() - started
print(json.dumps({{"segmentation_s": round(seg, 2), "qa_s": round(qa, 2), "recipients": wf.recipients,
                  "qa_passed": result.passed, "rss_mb": peak_rss_mb()}}))
"""


def drop_secondary_indexes(url: str) -> None:
    """Every index of the warehouse tables but their primary keys: a warehouse as an ETL leaves it."""
    from campaignops.schema import warehouse_metadata

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in warehouse_metadata.sorted_tables:
            for index in table.indexes:
                conn.exec_driver_sql(f'DROP INDEX IF EXISTS "{index.name}"')
    engine.dispose()


def freshly_loaded(url: str) -> None:
    """Primary keys only, no statistics, no autovacuum: the warehouse as a bulk load leaves it."""
    from campaignops.schema import warehouse_metadata

    drop_secondary_indexes(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in warehouse_metadata.sorted_tables:
            conn.exec_driver_sql(f"ALTER TABLE {table.name} SET (autovacuum_enabled = false)")
            conn.execute(sa.text("DELETE FROM pg_statistic WHERE starelid = CAST(:t AS regclass)"),
                         {"t": table.name})
            conn.execute(sa.text("UPDATE pg_class SET reltuples = -1, relpages = 0 "
                                 "WHERE oid = CAST(:t AS regclass)"), {"t": table.name})
    engine.dispose()


def _analyse(url: str) -> None:
    from campaignops.schema import warehouse_metadata

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for table in warehouse_metadata.sorted_tables:
            conn.exec_driver_sql(f"ANALYZE {table.name}")
    engine.dispose()


def _measure(url: str, planner_free: bool = False) -> dict[str, Any]:
    args = {"url": url, "brief": str(ROOT / "examples" / "briefs" / "winback.yaml"),
            "as_of": AS_OF.isoformat(), "planner_free": planner_free}
    return run_child(CHILD.format(args=json.dumps(args)))


def _size(customers: int, with_reference: bool) -> dict[str, Any]:
    from campaignops.synthetic import init_warehouse
    from campaignops.warehouse import make_engine

    row: dict[str, Any] = {"customers": customers, "load": _load()}
    with _postgres(customers) as url:
        engine = make_engine(url)
        init_warehouse(engine, customers=customers, seed=SEED, as_of=AS_OF)
        engine.dispose()
        freshly_loaded(url)
        row["fresh"] = _measure(url)
        if with_reference:
            freshly_loaded(url)
            row["planner_free"] = _measure(url, planner_free=True)
        _analyse(url)
        row["analysed"] = _measure(url)
    return row


def _total(m: dict[str, Any]) -> float:
    return float(m["segmentation_s"]) + float(m["qa_s"])


def run(quick: bool = False) -> Any:
    """Measure and write docs/bench-fresh-load.md."""
    reason = _pg_reason()
    if reason is not None:
        return write_doc("fresh-load", "PostgreSQL straight after a bulk load",
                         f"Not measured: PostgreSQL unreachable ({reason}).")
    sizes = QUICK_SIZES if quick else SIZES
    rows = [_size(n, with_reference=i == 0) for i, n in enumerate(sizes)]
    lines = [__doc__.split("\n\n", 1)[1].strip(), "",
             "| customers | load avg | condition | segmentation (s) | QA (s) | both (s) | / analysed | "
             "peak RSS (MB) | recipients |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    verdicts = []
    for r in rows:
        base = _total(r["analysed"])
        for key, label in (("fresh", "fresh (campaignops)"), ("planner_free", "fresh, planner left alone"),
                           ("analysed", "after ANALYZE")):
            if key not in r:
                continue
            m = r[key]
            lines.append(f"| {r['customers']:,} | {r['load']} | {label} | {m['segmentation_s']:.2f} | "
                         f"{m['qa_s']:.2f} | {_total(m):.2f} | {_total(m) / base:.1f}x | {m['rss_mb']:.0f} | "
                         f"{m['recipients']:,} |")
        ratio = _total(r["fresh"]) / base
        verdicts.append(f"- {r['customers']:,} customers: fresh is {ratio:.2f}x analysed "
                        f"(target <= {TARGET}x: **{'met' if ratio <= TARGET else 'not met'}**).")
    body = "\n".join(lines + ["", *verdicts])
    return write_doc("fresh-load", "PostgreSQL straight after a bulk load", body)
