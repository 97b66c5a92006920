"""Benchmark: building a sandbox (masked copy) beside a plain copy of the same tables.

For each size and database the synthetic warehouse (seed 42) is built, then in fresh child
processes (peak RSS is each one's own):

- **plain copy**: ``copy_warehouse(..., None)``: the five tables streamed across with the
  same reader and bulk writer, straight into place, indexes built: the floor;
- **sandbox**: ``create_sandbox``: the same stream masked, staged and written in masked-key
  order, the collision check, indexes, the marker.

10,000,000 customers run on each database only when its 1,000,000 figures say building
and both copies take under 15 minutes together.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from campaignops.bench.common import run_child, write_doc
from campaignops.bench.segmentation import PG_ADMIN_URL, _pg_reason

SIZES = (1_000_000,)
QUICK_SIZES = (20_000, 100_000)
LARGE = 10_000_000
LARGE_BUDGET_S = 15 * 60
TARGET_RATIO = 3.0
KEY = "bench-sandbox-key-not-a-secret-0123456789abcdef"

CHILD = """
import json, os, sys, time
from campaignops.bench.common import peak_rss_mb
from campaignops.sandbox.create import copy_warehouse, create_sandbox
a = json.loads(os.environ["BENCH_ARGS"])
t = time.perf_counter()
if a["mode"] == "plain":
    s = copy_warehouse(a["src"], a["dst"], None)
else:
    s = create_sandbox(a["src"], a["dst"], a["key"].encode())
print(json.dumps({"seconds": round(time.perf_counter() - t, 2), "rows": s.rows, "peak_rss_mb": peak_rss_mb()}))
"""


def _build(url: str, customers: int) -> float:
    from campaignops.synthetic import init_warehouse
    from campaignops.warehouse import make_engine

    engine = make_engine(url)
    t = time.perf_counter()
    init_warehouse(engine, customers=customers, seed=42, replace=True)
    engine.dispose()
    return round(time.perf_counter() - t, 1)


def _pg_db(admin: sa.Engine, name: str, create: bool) -> str:
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if create:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _measure(db: str, n: int, tmp: Path) -> dict[str, Any]:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT") if db == "postgresql" else None
    tag = uuid.uuid4().hex[:8]
    names = [f"co_bench_{w}_{tag}" for w in ("src", "plain", "mask")]
    if admin is not None:
        src, plain, mask = (_pg_db(admin, x, True) for x in names)
    else:
        src, plain, mask = (f"sqlite:///{tmp / (x + '.db')}" for x in names)
    try:
        built = _build(src, n)
        out: dict[str, Any] = {"db": db, "customers": n, "generate_s": built}
        for mode, dst in (("plain", plain), ("sandbox", mask)):
            out[mode] = run_child(CHILD, env={"BENCH_ARGS": json.dumps(
                {"mode": mode, "src": src, "dst": dst, "key": KEY})})
        print(f"sandbox bench {db} {n:,}: plain {out['plain']['seconds']} s, "
              f"sandbox {out['sandbox']['seconds']} s", file=sys.stderr)
        return out
    finally:
        if admin is not None:
            for x in names:
                _pg_db(admin, x, False)
            admin.dispose()
        else:
            for p in tmp.glob("co_bench_*"):
                p.unlink(missing_ok=True)


def run(quick: bool = False) -> Path:
    """Measure and write docs/bench-sandbox.md."""
    sizes = QUICK_SIZES if quick else SIZES
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    dbs = ["sqlite"] + (["postgresql"] if _pg_reason() is None else [])
    if "postgresql" not in dbs:
        notes.append(f"PostgreSQL at {PG_ADMIN_URL} was not reachable: not measured.")
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as tmp:
        for db in dbs:
            for n in sizes:
                rows.append(_measure(db, n, Path(tmp)))
        for db in dbs if not quick else []:
            one = next(r for r in rows if r["db"] == db and r["customers"] == sizes[-1])
            estimate = (one["generate_s"] + one["plain"]["seconds"] + one["sandbox"]["seconds"]) * LARGE / sizes[-1]
            if estimate < LARGE_BUDGET_S:
                rows.append(_measure(db, LARGE, Path(tmp)))
            else:
                notes.append(f"10,000,000 customers on {db} not run: from the {sizes[-1]:,} figures, "
                             f"building, copying and masking would take about {estimate / 60:.0f} min "
                             f"(budget {LARGE_BUDGET_S // 60} min).")
    rows.sort(key=lambda r: (r["db"], r["customers"]))
    return write_doc("sandbox", "sandbox (masked copy) against a plain copy", render(rows, quick, notes))


def render(rows: list[dict[str, Any]], quick: bool, notes: list[str]) -> str:
    """The page: one row per size and database, then the targets."""
    lines = [
        "`campaignops sandbox create` on the synthetic warehouse (seed 42), beside a plain copy of the "
        "same five tables by the same reader and bulk writer (`copy_warehouse(..., None)`: no masking, "
        "no staging, no collision check). Each is one fresh child process into an empty database of the "
        f"same kind{' (quick run)' if quick else ''}. Rebuild with "
        "`make bench BENCH_ARGS='--only sandbox'`.",
        "",
        "| customers | database | generate (s) | plain copy (s) | sandbox (s) | sandbox / plain | "
        "plain peak RSS (MB) | sandbox peak RSS (MB) | customers/s masked |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p, s = r["plain"], r["sandbox"]
        lines.append(f"| {r['customers']:,} | {r['db']} | {r['generate_s']} | {p['seconds']} | {s['seconds']} | "
                     f"{s['seconds'] / p['seconds']:.2f}x | {p['peak_rss_mb']} | {s['peak_rss_mb']} | "
                     f"{r['customers'] / s['seconds']:,.0f} |")
    lines += ["", "Targets (issue 15): within 3x of the plain copy, memory flat.", ""]
    for db in sorted({r["db"] for r in rows}):
        mine = [r for r in rows if r["db"] == db]
        worst = max(r["sandbox"]["seconds"] / r["plain"]["seconds"] for r in mine)
        rss = [r["sandbox"]["peak_rss_mb"] for r in mine]
        lines.append(f"- **{db}**: worst sandbox / plain {worst:.2f}x "
                     f"({'met' if worst <= TARGET_RATIO else 'NOT met'}); sandbox peak RSS "
                     f"{min(rss)}-{max(rss)} MB from {mine[0]['customers']:,} to {mine[-1]['customers']:,} "
                     f"customers ({'flat' if max(rss) - min(rss) < 50 else 'NOT flat'}).")
    lines += [""] + [f"- {n}" for n in notes]
    lines += [
        "",
        "Where the sandbox's extra time goes: the masking itself in Python (an HMAC-SHA256 per address "
        "and phone, a cached HMAC per distinct name, one AES call per Feistel round for a whole "
        "column of ids), writing each table twice (a session-private staging table, then into place "
        "in masked-key order, so the physical order says nothing of production's ids) and the "
        "collision check (distinct addresses counted in both databases; the source side runs beside "
        "the copy on another core).",
    ]
    return "\n".join(lines)
