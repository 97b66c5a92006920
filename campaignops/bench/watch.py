"""Benchmark: the watch's record step (composition + churn) against a scan floor and the segmentation.

For each size and database: build the synthetic warehouse (seed 42), segment the winback
brief a first time (week 0, marked sent: the previous sent run), then, in a fresh child
process, ``REPEATS`` times: the segmentation of week 1 (``segment()``), the **floors**
(a bare ``SELECT outcome, count(*) ... GROUP BY outcome`` over the run's rows, and the same
over both runs' rows, which the churn reads), the **composition** (``composition_insert``),
the **churn** (``churn_insert``) and ``record()`` as the run calls it (both, with their
deletes). Best of the repeats kept. The share is record's time over the segmentation's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from campaignops.bench.common import peak_rss_mb, run_child, write_doc
from campaignops.bench.segmentation import (
    BRIEF,
    _engine,
    _load,
    _postgres,
    _sqlite,
    bench_databases,
)
from campaignops.bench.segmentation import _child as segmentation_child

SIZES: tuple[int, ...] = (1_000_000, 10_000_000)
# CAMPAIGNOPS_BENCH_WATCH_SIZES=1000000,3000000: other sizes (a shared machine, short of time).
SIZES = tuple(int(x) for x in os.environ.get("CAMPAIGNOPS_BENCH_WATCH_SIZES", "").split(",") if x) or SIZES
QUICK_SIZES = (20_000, 100_000)
REPEATS = 2
TARGET_PERCENT = 10.0
WEEK = dt.timedelta(days=7)
STEPS = ("segment", "floor_run", "floor_both", "composition", "churn", "record")


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return round(time.perf_counter() - started, 3)


def child_measure(args: dict[str, Any]) -> dict[str, Any]:
    """Week 0 segmented and sent, then week 1 segmented and recorded REPEATS times, each step timed."""
    from campaignops import runs, watch
    from campaignops.brief import load_brief
    from campaignops.schema import audience, run_churn, run_composition
    from campaignops.segmentation import segment
    from campaignops.warehouse import Warehouse

    engine = _engine(args["url"])
    wh, brief = Warehouse(engine), load_brief(BRIEF)
    as_of = dt.datetime.fromisoformat(args["as_of"])
    base, cur = f"bench-watch-base-{uuid.uuid4().hex[:8]}", f"bench-watch-cur-{uuid.uuid4().hex[:8]}"
    runs.register_run(engine, base, brief, "bench", as_of)
    base_seconds = _timed(lambda: segment(wh, brief, base, as_of))
    runs.set_status(engine, base, runs.SENT)
    runs.register_run(engine, cur, brief, "bench", as_of + WEEK)
    a = audience.c
    one = sa.select(a.outcome, sa.func.count()).where(a.run_id == cur).group_by(a.outcome)
    both = sa.select(a.outcome, sa.func.count()).where(a.run_id.in_((cur, base))).group_by(a.outcome)

    def execute(stmt: Any, clear: Any = None) -> None:
        with engine.begin() as conn, watch.record_settings(conn):
            if clear is not None:
                conn.execute(sa.delete(clear).where(clear.c.run_id == cur))
            conn.execute(stmt).close()

    times: dict[str, list[float]] = {s: [] for s in STEPS}
    for _ in range(REPEATS):
        times["segment"].append(_timed(lambda: segment(wh, brief, cur, as_of + WEEK)))
        times["floor_run"].append(_timed(lambda: execute(one)))
        times["floor_both"].append(_timed(lambda: execute(both)))
        times["composition"].append(_timed(lambda: execute(watch.composition_insert(cur), run_composition)))
        times["churn"].append(_timed(lambda: execute(watch.churn_insert(cur, base, as_of), run_churn)))
        times["record"].append(_timed(lambda: watch.record(engine, cur)))
    with engine.connect() as conn:
        rows = {o: int(n) for o, n in conn.execute(one)}
        moved = int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(run_churn.c.count), 0))
                                 .where(run_churn.c.run_id == cur)).scalar_one())
    return {"base_segment_s": base_seconds, "times": times, "rows": rows, "moved": moved,
            "rss_mb": peak_rss_mb()}


def child_main(name: str, args_json: str) -> None:
    """Entry point of a child process: run one step, print its JSON on the last line."""
    print(json.dumps({"measure": child_measure}[name](json.loads(args_json))))


def _measure(db: str, customers: int, as_of: dt.datetime) -> dict[str, Any]:
    row: dict[str, Any] = {"db": db, "customers": customers}
    opener = _sqlite if db == "sqlite" else _postgres
    try:
        with opener(customers) as url:
            common = {"url": url, "as_of": as_of.isoformat()}
            row["load_before"] = _load()
            row["generate"] = segmentation_child("generate", customers=customers, **common)
            code = ("from campaignops.bench.watch import child_main; "
                    f"child_main('measure', {json.dumps(json.dumps(common))})")
            row |= run_child(code)
            row["best"] = {s: min(row["times"][s]) for s in STEPS}
            row["load_after"] = _load()
    except RuntimeError as exc:
        row["error"] = str(exc)
    return row


def _pct(r: dict[str, Any], step: str) -> float:
    return float(100 * r["best"][step] / r["best"]["segment"])


def render(rows: list[dict[str, Any]], quick: bool, skipped: list[str]) -> str:
    """The markdown body of docs/bench-watch.md."""
    out = [
        "The watch's record step (`campaignops.watch.record`: the run's composition and its churn "
        "since the previous sent run, written to `co_run_composition` and `co_run_churn`) on the "
        f"synthetic warehouse (seed 42), `examples/briefs/winback.yaml` segmented for week 0 (marked "
        "sent) and week 1, measured by `python -m campaignops.bench --only "
        f"watch{' --quick' if quick else ''}`.",
        "",
        "- **segmentation**: `segment()` of week 1 (the run the watch follows).",
        "- **floor (run)**: a bare `SELECT outcome, count(*) FROM co_audience WHERE run_id = ? GROUP "
        "BY outcome`: one scan of the run's rows, what the composition cannot go below. **floor "
        "(both)**: the same over both runs' rows (`run_id IN (?, ?)`), what the churn reads.",
        "- **composition**: `composition_insert` (one grouping of the run's rows, summed per "
        "dimension); **churn**: `churn_insert` (both runs' rows grouped by `customer_id`, the "
        "movers looked up in `customers`); **record**: both with their deletes, as the run calls it.",
        f"- All in one fresh child process per size and database, {REPEATS} repeats, best kept; "
        "the machine is shared (load averages below).",
        "",
        "| customers | database | run rows | movers | segmentation (s) | floor run (s) | floor both (s) "
        "| composition (s) | churn (s) | record (s) | record / segmentation | composition / floor run "
        "| churn / floor both |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['customers']:,} | {r['db']} | | | | | | | | | | | {r['error']} |")
            continue
        b = r["best"]
        out.append(
            f"| {r['customers']:,} | {r['db']} | {sum(r['rows'].values()):,} | {r['moved']:,} "
            f"| {b['segment']:.2f} | {b['floor_run']:.3f} | {b['floor_both']:.3f} "
            f"| {b['composition']:.3f} | {b['churn']:.3f} | {b['record']:.3f} "
            f"| **{_pct(r, 'record'):.1f} %** | {b['composition'] / b['floor_run']:.1f}x "
            f"| {b['churn'] / b['floor_both']:.1f}x |")
    largest = max((r["customers"] for r in rows if "error" not in r), default=0)
    out += ["", f"Target (issue 17): record adds under {TARGET_PERCENT:.0f} % to the run's segmentation "
            f"at 10,000,000 customers. At the largest size measured ({largest:,}):", ""]
    for r in rows:
        if "error" in r or r["customers"] != largest:
            continue
        pct = _pct(r, "record")
        out.append(f"- **{r['db']}**: {pct:.1f} % "
                   f"(**{'met' if pct < TARGET_PERCENT else 'not met'}**); composition "
                   f"{_pct(r, 'composition'):.1f} %, churn {_pct(r, 'churn'):.1f} %.")
    out += ["", "### Runs", "",
            "| customers | database | generate (s) | week 0 segmentation (s) | all runs (s) | peak RSS (MB) "
            "| load avg before / after |", "|---:|---|---:|---:|---|---:|---|"]
    for r in rows:
        if "error" in r:
            continue
        runs_s = "; ".join(f"{s} {r['times'][s]}" for s in STEPS)
        out.append(f"| {r['customers']:,} | {r['db']} | {r['generate']['seconds']:.1f} "
                   f"| {r['base_segment_s']:.2f} | {runs_s} | {r['rss_mb']:.0f} "
                   f"| {r['load_before']} / {r['load_after']} |")
    if skipped:
        out += ["", *(f"- skipped: {s}" for s in skipped)]
    out += ["", "What the numbers mean and how the queries are built: docs/watch.md."]
    return "\n".join(out)


def run(quick: bool = False, sizes: tuple[int, ...] | None = None) -> Path:
    """Measure every size on SQLite and PostgreSQL; write docs/bench-watch.md."""
    as_of = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    rows: list[dict[str, Any]] = []
    dbs, skipped = bench_databases()
    for db in dbs:
        for n in sizes:
            row = _measure(db, n, as_of)
            rows.append(row)
            print(f"watch bench: {db} {n:,}: " + (row["error"] if "error" in row else json.dumps(row["best"])),
                  file=sys.stderr, flush=True)
    return write_doc("watch", "the watch's record step (composition + churn)", render(rows, quick, skipped))
