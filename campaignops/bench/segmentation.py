"""Benchmark: segmentation of the winback brief against the bare SQL count of its rules.

For each size and database: build the synthetic warehouse (seed 42, its time recorded),
then, each in a fresh child process (so that peak RSS is that step's own):

- the **floor**: ``count_floor``, the bare single ``SELECT count(*)`` of the brief's rules;
- the **write floor**: the same rule matches written to ``co_audience`` by one
  ``INSERT ... SELECT`` with no waterfall at all: what materialising the audience costs
  by itself (this is not a target, it shows where segmentation's time goes);
- **segmentation**: ``segment()``, the full waterfall materialised in ``co_audience``.

Each is run twice, best time kept (the machine may be shared), ``co_audience`` emptied
before every write. Then per-row function costs are probed with serial scans: the
address check (a Python ``re`` callback on SQLite, ``~`` on PostgreSQL) and the two
bucket hashes (a Python md5 UDF on SQLite, ``md5()`` in SQL on PostgreSQL).

SQLite files live in a temporary directory (free disk checked first) and are deleted
afterwards; PostgreSQL runs in a scratch database dropped with ``WITH (FORCE)``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from campaignops.bench.common import peak_rss_mb, run_child, write_doc

ROOT = Path(__file__).resolve().parents[2]
BRIEF = ROOT / "examples" / "briefs" / "winback.yaml"
SEED = 42
SIZES = (1_000_000, 10_000_000)
QUICK_SIZES = (20_000, 100_000)
REPEATS = 2
TARGET_RATIO = 3.0
TARGET_RSS_MB = 500.0
STEP_PROBES = ("address_check", "suppressions", "frequency_cap", "dedup_rank", "two_buckets")
PG_ADMIN_URL = os.environ.get("CAMPAIGNOPS_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Disk needed per customer (warehouse, indexes, one audience, sort spill, WAL), with room to spare.
BYTES_PER_CUSTOMER = 700

# ------------------------------------------------------------------------ child processes


def _as_of(args: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(args["as_of"])


def _engine(url: str) -> sa.Engine:
    from campaignops.warehouse import make_engine

    return make_engine(url)


def _backend_pid(engine: sa.Engine) -> int | None:
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def _backend_peak_mb(engine: sa.Engine, pid: int | None) -> float | None:
    """The PostgreSQL backend's peak RSS (VmHWM), if the work ran on it and it is local."""
    if pid is None or _backend_pid(engine) != pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _cpu_seconds(pid: int | None) -> float | None:
    """CPU time of the process doing the work: this one (SQLite) or the PG backend."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_used(before: float | None, pid: int | None) -> float | None:
    after = _cpu_seconds(pid)
    return None if before is None or after is None else round(after - before, 2)


def _clear_audience(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("TRUNCATE co_audience")
        else:
            conn.exec_driver_sql("DELETE FROM co_audience")


def child_generate(args: dict[str, Any]) -> dict[str, Any]:
    """Build the warehouse and the project tables."""
    from campaignops import migrations
    from campaignops.synthetic import init_warehouse

    engine = _engine(args["url"])
    summary = init_warehouse(engine, customers=args["customers"], seed=SEED, as_of=_as_of(args),
                             progress=False, replace=True)
    migrations.upgrade(engine)
    return {"seconds": summary.seconds, "customers": summary.customers,
            "suppressions": summary.suppressions, "contact_history": summary.contact_history,
            "rss_mb": peak_rss_mb()}


def child_floor(args: dict[str, Any]) -> dict[str, Any]:
    """The bare count of the brief's rules."""
    from campaignops.brief import load_brief
    from campaignops.segmentation import count_floor

    engine = _engine(args["url"])
    brief = load_brief(BRIEF)
    pid = _backend_pid(engine)
    cpu = _cpu_seconds(pid)
    started = time.perf_counter()
    n = count_floor(engine, brief, _as_of(args))
    seconds = time.perf_counter() - started
    # On PostgreSQL the count runs with parallel workers whose CPU the backend's does not
    # include: no CPU figure rather than a partial one.
    return {"seconds": round(seconds, 3), "count": n, "rss_mb": peak_rss_mb(),
            "cpu_s": None if pid is not None else _cpu_used(cpu, pid),
            "backend_rss_mb": _backend_peak_mb(engine, pid)}


def child_write_floor(args: dict[str, Any]) -> dict[str, Any]:
    """The rule matches written to co_audience with no waterfall: the cost of materialising."""
    from campaignops.brief import load_brief
    from campaignops.schema import audience, customers
    from campaignops.segmentation import AUDIENCE_COLUMNS, rule_filter

    engine = _engine(args["url"])
    brief = load_brief(BRIEF)
    where = rule_filter(brief, _as_of(args))
    c = customers.c
    rows = sa.select(
        sa.literal(args["run_id"]), c.customer_id, sa.func.trim(c.email),
        sa.func.lower(sa.func.trim(c.email)), c.first_name, c.last_name, c.language, c.country,
        c.loyalty_tier, sa.literal("send"), sa.null(), sa.null(), sa.null(), sa.false(),
        c.lifecycle_stage,
    ).where(where)
    _clear_audience(engine)
    pid = _backend_pid(engine)
    cpu = _cpu_seconds(pid)
    started = time.perf_counter()
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL jit = off")  # as segment() does
        n = conn.execute(sa.insert(audience).from_select(list(AUDIENCE_COLUMNS), rows)).rowcount
    seconds = time.perf_counter() - started
    out = {"seconds": round(seconds, 3), "rows": n, "rss_mb": peak_rss_mb(),
           "cpu_s": _cpu_used(cpu, pid), "backend_rss_mb": _backend_peak_mb(engine, pid)}
    _clear_audience(engine)
    return out


def child_segment(args: dict[str, Any]) -> dict[str, Any]:
    """The full segmentation, materialised."""
    from campaignops.brief import load_brief
    from campaignops.segmentation import segment
    from campaignops.warehouse import Warehouse

    engine = _engine(args["url"])
    brief = load_brief(BRIEF)
    _clear_audience(engine)
    pid = _backend_pid(engine)
    cpu = _cpu_seconds(pid)
    started = time.perf_counter()
    wf = segment(Warehouse(engine), brief, args["run_id"], _as_of(args))
    seconds = time.perf_counter() - started
    out = {"seconds": round(seconds, 3), "matched": wf.matched, "eligible": wf.eligible,
           "control": wf.control, "recipients": wf.recipients, "rss_mb": peak_rss_mb(),
           "cpu_s": _cpu_used(cpu, pid), "backend_rss_mb": _backend_peak_mb(engine, pid)}
    _clear_audience(engine)
    return out


def child_costs(args: dict[str, Any]) -> dict[str, Any]:
    """Each waterfall step alone over the rule matches, as segment() runs it (best of 2)."""
    from campaignops.brief import load_brief
    from campaignops.schema import customers
    from campaignops.segmentation import (
        CELL_SALT_SUFFIX,
        frequency_cap_check,
        history_probe,
        rule_filter,
        suppression_priority,
    )
    from campaignops.sql import bucket, valid_address
    from campaignops.warehouse import Warehouse

    engine = _engine(args["url"])
    brief = load_brief(BRIEF)
    as_of = _as_of(args)
    where = rule_filter(brief, as_of)
    c = customers.c
    key = sa.func.lower(sa.func.trim(c.email))
    salt = brief.control_group.salt
    supp = suppression_priority(brief.channel)
    assert brief.frequency_cap is not None
    over_cap, cap_joins = frequency_cap_check(brief, as_of, history_probe(Warehouse(engine)))
    capped: Any = customers
    for sub, on in cap_joins:
        capped = capped.outerjoin(sub, on)
    rank = sa.func.row_number().over(partition_by=key, order_by=c.customer_id)
    ranked = sa.select(rank.label("rn")).where(where).subquery()
    probes: dict[str, sa.Select[Any]] = {
        "scan": sa.select(sa.func.count(key)).where(where),
        "address_check": sa.select(sa.func.count()).where(where, valid_address(key)),
        "suppressions": sa.select(sa.func.count(supp.c.p))
        .select_from(customers.outerjoin(supp, supp.c.k == key)).where(where),
        "frequency_cap": sa.select(sa.func.count()).select_from(capped).where(where, over_cap),
        "dedup_rank": sa.select(sa.func.count()).select_from(ranked).where(ranked.c.rn == 1),
        "two_buckets": sa.select(
            sa.func.sum(bucket(key, sa.literal(salt))),
            sa.func.sum(bucket(key, sa.literal(salt + CELL_SALT_SUFFIX))),
        ).where(where),
    }
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # INSERT ... SELECT runs serially in PostgreSQL 15: probe the same way.
            conn.exec_driver_sql("SET max_parallel_workers_per_gather = 0")
            conn.exec_driver_sql("SET jit = off")
        for name, q in probes.items():
            best = None
            for _ in range(2):
                started = time.perf_counter()
                conn.execute(q).all()
                took = time.perf_counter() - started
                best = took if best is None else min(best, took)
            out[name] = round(best or 0.0, 3)
    return out


CHILDREN = {
    "generate": child_generate,
    "floor": child_floor,
    "write_floor": child_write_floor,
    "segment": child_segment,
    "costs": child_costs,
}


def child_main(name: str, args_json: str) -> None:
    """Entry point of a child process: run one step, print its JSON on the last line."""
    print(json.dumps(CHILDREN[name](json.loads(args_json))))


def _child(name: str, **args: Any) -> dict[str, Any]:
    code = (
        "from campaignops.bench.segmentation import child_main; "
        f"child_main({name!r}, {json.dumps(args)!r})"
    )
    return run_child(code)


# ------------------------------------------------------------------------ databases


def _check_disk(path: str, customers: int) -> None:
    need = customers * BYTES_PER_CUSTOMER
    free = shutil.disk_usage(path).free
    if free < need:
        raise RuntimeError(f"needs ~{need / 1e9:.1f} GB free at {path}, has {free / 1e9:.1f} GB")


@contextmanager
def _sqlite(customers: int) -> Iterator[str]:
    tmp = tempfile.mkdtemp(prefix="co-bench-seg-")
    try:
        _check_disk(tmp, customers)
        yield f"sqlite:///{tmp}/warehouse.db"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _postgres(customers: int) -> Iterator[str]:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"co_bench_seg_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            try:
                data_dir = str(conn.exec_driver_sql("SHOW data_directory").scalar_one())
            except sa.exc.DBAPIError:
                data_dir = "/"
            _check_disk(data_dir if os.path.isdir(data_dir) else "/", customers)
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def _pg_reason() -> str | None:
    try:
        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def bench_databases() -> tuple[list[str], list[str]]:
    """The databases to measure (PostgreSQL when its server answers) and the note when it does not."""
    reason = _pg_reason()
    if reason is None:
        return ["sqlite", "postgresql"], []
    return ["sqlite"], [f"PostgreSQL: NO SERVER at {PG_ADMIN_URL} ({reason})"]


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run, with the peak RSS over all runs."""
    best = dict(min(results, key=lambda r: r["seconds"]))
    best["rss_mb"] = max(r["rss_mb"] for r in results)
    rss = [r["backend_rss_mb"] for r in results if r.get("backend_rss_mb") is not None]
    best["backend_rss_mb"] = max(rss) if rss else None
    best["all_seconds"] = [r["seconds"] for r in results]
    return best


def _measure(db: str, customers: int, as_of: dt.datetime) -> dict[str, Any]:
    row: dict[str, Any] = {"db": db, "customers": customers}
    opener = _sqlite if db == "sqlite" else _postgres
    try:
        with opener(customers) as url:
            common = {"url": url, "as_of": as_of.isoformat()}
            row["load_before"] = _load()
            row["generate"] = _child("generate", customers=customers, **common)
            floors, writes, segs = [], [], []
            for i in range(REPEATS):
                floors.append(_child("floor", **common))
                segs.append(_child("segment", run_id=f"bench-seg-{i}", **common))
                writes.append(_child("write_floor", run_id=f"bench-write-{i}", **common))
            row["floor"] = _best(floors)
            row["segment"] = _best(segs)
            row["write_floor"] = _best(writes)
            row["costs"] = _child("costs", **common)
            row["load_after"] = _load()
    except RuntimeError as exc:
        row["error"] = str(exc)
    return row


# ------------------------------------------------------------------------ report


def _fmt_s(x: float | None) -> str:
    return "" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def _fmt_cpu(step: dict[str, Any]) -> str:
    return "n/a" if step.get("cpu_s") is None else f"{step['cpu_s']:.2f}"


def _fmt_mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def _step_costs(r: dict[str, Any]) -> list[float]:
    """Each required step's time over the scan's, in STEP_PROBES order."""
    return [max(r["costs"][k] - r["costs"]["scan"], 0.0) for k in STEP_PROBES]


def _write_cost(r: dict[str, Any]) -> float:
    """What writing the matches to co_audience adds to the floor."""
    return float(max(r["write_floor"]["seconds"] - r["floor"]["seconds"], 0.0))


def _required(r: dict[str, Any]) -> float:
    """The floor plus every required step's cost plus the write: a lower bound."""
    return float(r["floor"]["seconds"] + sum(_step_costs(r)) + _write_cost(r))


def _verdict(rows: list[dict[str, Any]], largest: int) -> list[str]:
    lines = []
    for r in rows:
        if r["customers"] != largest or "error" in r:
            continue
        ratio = r["segment"]["seconds"] / r["floor"]["seconds"]
        rss = r["segment"]["rss_mb"]
        lines.append(
            f"- **{r['db']}, {largest:,} customers**: segmentation is {ratio:.1f}x the floor "
            f"(target <= {TARGET_RATIO:.0f}x: **{'met' if ratio <= TARGET_RATIO else 'not met'}**); "
            f"peak RSS {rss:.0f} MB (target < {TARGET_RSS_MB:.0f} MB: "
            f"**{'met' if rss < TARGET_RSS_MB else 'not met'}**). The required work alone "
            f"(below) is {_required(r) / r['floor']['seconds']:.1f}x the floor; segmentation is "
            f"{r['segment']['seconds'] / _required(r):.2f}x the required work."
        )
    return lines


def render(rows: list[dict[str, Any]], quick: bool, skipped: list[str]) -> str:
    """The markdown body of docs/bench-segmentation.md."""
    sizes = sorted({r["customers"] for r in rows})
    out = [
        "Segmentation of `examples/briefs/winback.yaml` (lapsed customers in US/CA/GB, staff "
        "excluded; consent, five suppression reasons, a 2-in-7-days frequency cap, a required "
        "first name, de-duplication by address, a 10 % control group, two cells) on the "
        f"synthetic warehouse (seed {SEED}), measured by `python -m campaignops.bench --only "
        f"segmentation{' --quick' if quick else ''}`.",
        "",
        "- **floor**: `count_floor`, the bare `SELECT count(*)` of the brief's rules (the "
        "issue's reference). It reads and discards.",
        "- **write floor**: the same rule matches written to `co_audience` by one `INSERT ... "
        "SELECT` without any waterfall step: the cost of materialising the audience alone.",
        "- **segmentation**: `segment()`, one `INSERT ... SELECT` of every considered customer "
        "with its outcome (cell, control or exclusion reason), then the seeds and a `GROUP BY` "
        "for the waterfall counts.",
        f"- Each in a fresh child process, best of {REPEATS} (peak RSS: the highest); "
        "`co_audience` emptied before each write. Generation is `init_warehouse` (COPY on "
        "PostgreSQL) including its indexes.",
        "",
        "| customers | database | generate (s) | floor (s) | write floor (s) | segmentation (s) "
        "| segmentation / floor | segmentation / write floor | peak RSS (MB) | PG backend peak RSS (MB) "
        "| matched | recipients |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['customers']:,} | {r['db']} | | | | | | | | | | {r['error']} |")
            continue
        f, w, s = r["floor"], r["write_floor"], r["segment"]
        out.append(
            f"| {r['customers']:,} | {r['db']} | {_fmt_s(r['generate']['seconds'])} "
            f"| {_fmt_s(f['seconds'])} | {_fmt_s(w['seconds'])} | {_fmt_s(s['seconds'])} "
            f"| {s['seconds'] / f['seconds']:.1f}x | {s['seconds'] / w['seconds']:.1f}x "
            f"| {_fmt_mb(s['rss_mb'])} | {_fmt_mb(s['backend_rss_mb'])} "
            f"| {s['matched']:,} | {s['recipients']:,} |"
        )
    out += ["", "Targets (issue 3, at the largest size):", ""]
    out += _verdict(rows, max(sizes)) if sizes else []
    out += [
        "",
        "Peak RSS is the measuring process's own (`ru_maxrss`): on SQLite all the work runs "
        "inside it; on PostgreSQL the work runs in the server and the client stays small, so the "
        "server backend's peak RSS (`VmHWM`, which counts the shared buffers it touched) is shown "
        "beside it. Floor peak RSS: "
        + ", ".join(f"{r['db']} {r['customers']:,}: {_fmt_mb(r['floor']['rss_mb'])} MB"
                    for r in rows if "error" not in r)
        + ".",
        "",
        "### Where the time goes: each step alone",
        "",
        "Each step the waterfall requires, timed alone as a count over the rule matches with "
        "the same SQL `segment()` uses, run serially as `INSERT ... SELECT` runs (PostgreSQL: no "
        "parallel workers, JIT off): the scan; the address check (SQLite: a Python `re` UDF, "
        "`co_valid_address`; PostgreSQL: `~`); the suppression lookup (a join to the "
        "suppressions aggregated by normalised address); the frequency-cap lookup (SQLite: a "
        "correlated count on the contact-history index; PostgreSQL: the window aggregated and "
        "hash-joined); the de-duplication ranking (`row_number()` over the address, a sort); "
        "the two bucket hashes (SQLite: a Python md5 UDF; PostgreSQL: `md5()`). Each step's "
        "cost is its time minus the scan's. **Required work** adds to the floor each step's "
        "cost and the write floor's cost over the floor (materialising the matches): a lower "
        "bound for any segmentation that does these steps as SQL in this database, since "
        "`segment()` does each of them once.",
        "",
        "| customers | database | scan (s) | address check | suppressions | frequency cap "
        "| de-dup ranking | two hashes | writing the matches | required work (s) | required work "
        "/ floor | segmentation / required work |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            continue
        c = r["costs"]
        steps = _step_costs(r)
        write = _write_cost(r)
        required = _required(r)
        out.append(
            f"| {r['customers']:,} | {r['db']} | {_fmt_s(c['scan'])} | "
            + " | ".join(f"+{_fmt_s(x)}" for x in steps)
            + f" | +{_fmt_s(write)} | {_fmt_s(required)} | {required / r['floor']['seconds']:.1f}x "
            f"| {r['segment']['seconds'] / required:.2f} |"
        )
    out += [
        "",
        "### Runs",
        "",
        "| customers | database | warehouse rows (customers / suppressions / contact history) "
        "| floor runs (s) | write floor runs (s) | segmentation runs (s) "
        "| CPU s of the best runs: floor / write floor / segmentation | load avg before / after |",
        "|---:|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            continue
        g = r["generate"]
        out.append(
            f"| {r['customers']:,} | {r['db']} | {g['customers']:,} / {g['suppressions']:,} / "
            f"{g['contact_history']:,} | {r['floor']['all_seconds']} | {r['write_floor']['all_seconds']} "
            f"| {r['segment']['all_seconds']} "
            f"| {_fmt_cpu(r['floor'])} / {_fmt_cpu(r['write_floor'])} / {_fmt_cpu(r['segment'])} "
            f"| {r['load_before']} / {r['load_after']} |"
        )
    out += [
        "",
        "CPU: on SQLite the child process's (all the work is in it); on PostgreSQL the server "
        "backend's, from /proc (the floor's parallel workers are not in it, hence n/a). Wall "
        "time above CPU time is waiting: for the disk, or for cores other work on the machine "
        "was using (see the load averages).",
    ]
    if skipped:
        out += ["", *(f"- skipped: {s}" for s in skipped)]
    out += ["", "What the numbers mean and what was changed for speed: docs/segmentation.md."]
    return "\n".join(out)


def run(quick: bool = False) -> Path:
    """Measure every size on SQLite and PostgreSQL; write docs/bench-segmentation.md."""
    as_of = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    sizes = QUICK_SIZES if quick else SIZES
    rows: list[dict[str, Any]] = []
    dbs, skipped = bench_databases()
    for db in dbs:
        for n in sizes:
            row = _measure(db, n, as_of)
            rows.append(row)
            print(f"segmentation bench: {db} {n:,}: "
                  + (row["error"] if "error" in row else
                     f"floor {row['floor']['seconds']}s, segment {row['segment']['seconds']}s"),
                  file=sys.stderr, flush=True)
    return write_doc("segmentation", "segmentation (winback brief)", render(rows, quick, skipped))
