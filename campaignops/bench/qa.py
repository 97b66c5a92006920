"""Benchmark: the audience QA suite (Great Expectations) against the same checks as plain SQL.

For each size and database: build the synthetic warehouse (seed 42), segment
examples/briefs/winback.yaml once, then time in fresh child processes
(a) ``run_audience_qa`` with ``build_docs=False`` and ``True``, and
(b) the floor: the same checks hand-written as plain SQL (one aggregate pass over the run's
rows plus one query per join check), each with its peak RSS. The floor's counts are compared
with the checks' observed values, so both measured the same thing.

SQLite files live in a temporary directory; PostgreSQL runs in a scratch database dropped
afterwards (``WITH (FORCE)``). Measurements run one after another; the load average before
each is recorded because other work may share the machine.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from campaignops.bench.common import run_child, write_doc

ROOT = Path(__file__).resolve().parents[2]
BRIEF = ROOT / "examples" / "briefs" / "winback.yaml"
AS_OF = dt.datetime(2031, 3, 3, 12, 0)
RUN_ID = "be0c4a1f9d2e4b7a8c6d5e3f2a1b0c9d"
SEED = 42
PG_ADMIN_URL = os.environ.get("CAMPAIGNOPS_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Bytes per customer of a built and segmented SQLite warehouse, with room to spare.
SQLITE_BYTES_PER_CUSTOMER = 700

# ---------------------------------------------------------------------------------- children

GX_CHILD = r"""
import datetime as dt, json, sys, time
from pathlib import Path
args = json.loads({args!r})
import great_expectations  # noqa: F401  (about 3 s; paid once per process, not timed)
from campaignops.bench.common import peak_rss_mb
from campaignops.brief import load_brief
from campaignops.qa import run_audience_qa
from campaignops.warehouse import open_warehouse
brief = load_brief(args["brief"])
wh = open_warehouse(args["url"])
base = peak_rss_mb()
started = time.perf_counter()
result = run_audience_qa(wh, args["run_id"], brief, send_at=dt.datetime.fromisoformat(args["send_at"]),
                         home=Path(args["home"]), build_docs=args["build_docs"])
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": round(seconds, 2), "rss_mb": peak_rss_mb(), "rss_before_mb": base,
                  "passed": result.passed, "checks": len(result.checks),
                  "observed": {{c.name: c.observed for c in result.checks}}}}))
"""

FLOOR_CHILD = r"""
import json, time
args = json.loads({args!r})
from campaignops.bench.common import peak_rss_mb
from campaignops.bench.qa import floor_queries
from campaignops.warehouse import make_engine
import sqlalchemy as sa
engine = make_engine(args["url"])
queries = floor_queries(engine.dialect.name)
base = peak_rss_mb()
started = time.perf_counter()
observed = {{}}
with engine.connect() as conn:
    for q in queries:
        row = conn.execute(sa.text(q), {{"r": args["run_id"], "send_at": args["send_at_sql"],
                                         "window_start": args["window_start_sql"]}}).mappings().one()
        observed.update({{k: (float(v) if v is not None and not float(v).is_integer() else int(v or 0))
                         for k, v in row.items()}})
seconds = time.perf_counter() - started
engine.dispose()
print(json.dumps({{"seconds": round(seconds, 2), "rss_mb": peak_rss_mb(), "rss_before_mb": base,
                  "queries": len(queries), "observed": observed}}))
"""

def floor_queries(dialect: str) -> list[str]:
    """The audience suite's checks for the winback brief as plain SQL (the benchmark's floor).

    One aggregate pass over the run's rows, then one query per check that joins another table
    or groups. Parameters: :r (run id), :send_at and :window_start (timestamps).
    """
    from campaignops.sql import ADDRESS_REGEX

    pattern = ADDRESS_REGEX.replace("'", "''")
    match = f"address_key ~ '{pattern}'" if dialect == "postgresql" else f"address_key REGEXP '{pattern}'"
    recipients = "outcome IN ('send', 'seed')"
    one_pass = f"""
SELECT
  SUM(CASE WHEN outcome NOT IN ('send', 'control', 'excluded', 'seed') THEN 1 ELSE 0 END) AS outcome_values_known,
  SUM(CASE WHEN {recipients} AND (email IS NULL OR address_key IS NULL OR address_key <> lower(trim(email)))
      THEN 1 ELSE 0 END) AS address_key_normalised,
  SUM(CASE WHEN {recipients} AND address_key IS NOT NULL AND NOT ({match}) THEN 1 ELSE 0 END)
      AS valid_address_format,
  SUM(CASE WHEN outcome = 'send' AND (first_name IS NULL OR trim(first_name) = '') THEN 1 ELSE 0 END)
      AS "required_field_present[first_name]",
  SUM(CASE WHEN outcome = 'send' AND (cell IS NOT NULL OR offer_code IS NOT NULL)
      AND NOT ((cell = 'ten_off' AND offer_code = 'WELCOME10') OR (cell = 'fifteen_off' AND offer_code = 'SPRING15'))
      THEN 1 ELSE 0 END) AS cell_and_offer_match_brief,
  SUM(CASE WHEN outcome = 'send' AND cell IS NULL THEN 1 ELSE 0 END) AS send_rows_have_a_cell,
  SUM(CASE WHEN outcome = 'send' THEN 1 ELSE 0 END) AS audience_size_in_expected_range,
  100.0 * SUM(CASE WHEN outcome = 'control' THEN 1 ELSE 0 END)
      / NULLIF(SUM(CASE WHEN outcome IN ('send', 'control') THEN 1 ELSE 0 END), 0) AS control_share,
  100.0 * SUM(CASE WHEN outcome = 'send' AND cell = 'ten_off' THEN 1 ELSE 0 END)
      / NULLIF(SUM(CASE WHEN outcome = 'send' THEN 1 ELSE 0 END), 0) AS "cell_share[ten_off]",
  100.0 * SUM(CASE WHEN outcome = 'send' AND cell = 'fifteen_off' THEN 1 ELSE 0 END)
      / NULLIF(SUM(CASE WHEN outcome = 'send' THEN 1 ELSE 0 END), 0) AS "cell_share[fifteen_off]",
  SUM(CASE WHEN outcome = 'excluded' AND reason IS NULL THEN 1 ELSE 0 END) AS excluded_rows_have_reason
FROM co_audience WHERE run_id = :r"""  # noqa: S608 - constants only
    return [
        one_pass,
        f"""SELECT COUNT(*) AS no_suppressed_recipient FROM co_audience
WHERE run_id = :r AND {recipients}
AND address_key IN (SELECT lower(trim(address)) FROM suppressions WHERE channel = 'email')""",  # noqa: S608
        """SELECT COUNT(*) AS no_unconsented_recipient FROM co_audience b
LEFT JOIN customers c ON c.customer_id = b.customer_id
WHERE b.run_id = :r AND b.outcome = 'send'
AND (c.customer_id IS NULL OR c.email_opt_in IS NULL OR c.email_opt_in = FALSE)""",
        """SELECT COUNT(*) AS no_recipient_over_frequency_cap FROM (
SELECT b.row_id FROM co_audience b JOIN contact_history h ON h.customer_id = b.customer_id
AND h.channel = 'email' AND h.run_id <> :r AND h.sent_at >= :window_start AND h.sent_at <= :send_at
WHERE b.run_id = :r AND b.outcome = 'send' GROUP BY b.row_id HAVING COUNT(*) >= 2) t""",
        f"""SELECT COALESCE(SUM(n), 0) AS unique_customer_among_recipients FROM (
SELECT COUNT(*) AS n FROM co_audience WHERE run_id = :r AND {recipients} AND customer_id IS NOT NULL
GROUP BY customer_id HAVING COUNT(*) > 1) t""",  # noqa: S608
        f"""SELECT COALESCE(SUM(n), 0) AS unique_address_among_recipients FROM (
SELECT COUNT(*) AS n FROM co_audience WHERE run_id = :r AND {recipients} AND address_key IS NOT NULL
GROUP BY address_key HAVING COUNT(*) > 1) t""",  # noqa: S608
        """SELECT COUNT(*) AS offer_valid_at_send_time FROM co_audience b
LEFT JOIN offers o ON o.offer_code = b.offer_code
WHERE b.run_id = :r AND b.outcome = 'send' AND b.offer_code IS NOT NULL
AND (o.offer_code IS NULL OR o.valid_from > :send_at OR o.valid_to < :send_at)""",
    ]


# ---------------------------------------------------------------------------------- databases


@contextmanager
def _sqlite_db(n: int) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="co-bench-qa-") as folder:
        need = n * SQLITE_BYTES_PER_CUSTOMER
        free = shutil.disk_usage(folder).free
        if free < need:
            raise RuntimeError(f"not enough disk for {n:,} customers on SQLite: need ~{need / 1e9:.1f} GB, "
                               f"{free / 1e9:.1f} GB free")
        yield f"sqlite:///{Path(folder) / 'warehouse.db'}"


@contextmanager
def _pg_db() -> Iterator[str]:
    name = f"co_bench_qa_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _build(url: str, n: int) -> dict[str, Any]:
    from campaignops import migrations
    from campaignops.brief import load_brief
    from campaignops.segmentation import segment
    from campaignops.synthetic import init_warehouse
    from campaignops.warehouse import Warehouse, make_engine

    engine = make_engine(url)
    try:
        started = time.perf_counter()
        init_warehouse(engine, customers=n, seed=SEED, as_of=AS_OF)
        built = time.perf_counter() - started
        migrations.upgrade(engine)
        started = time.perf_counter()
        waterfall = segment(Warehouse(engine), load_brief(BRIEF), RUN_ID, AS_OF)
        segmented = time.perf_counter() - started
        with engine.connect() as conn:
            rows = int(conn.execute(sa.text("SELECT COUNT(*) FROM co_audience WHERE run_id = :r"),
                                    {"r": RUN_ID}).scalar_one())
            if engine.dialect.name in ("sqlite", "postgresql"):
                conn.exec_driver_sql("ANALYZE co_audience")
                conn.commit()
    finally:
        engine.dispose()
    return {"build_s": round(built, 1), "segment_s": round(segmented, 1), "audience_rows": rows,
            "sends": waterfall.recipients - waterfall.seeds}


def _measure(url: str, home: Path, repeats: int = 1) -> dict[str, Any]:
    send_at = AS_OF.replace(tzinfo=dt.UTC)
    window_start = AS_OF - dt.timedelta(days=7)
    common = {"url": url, "run_id": RUN_ID, "brief": str(BRIEF), "home": str(home)}
    out: dict[str, Any] = {}
    for key, code in (
        ("floor", FLOOR_CHILD.format(args=json.dumps(common | {
            "send_at_sql": AS_OF.strftime("%Y-%m-%d %H:%M:%S.%f"),
            "window_start_sql": window_start.strftime("%Y-%m-%d %H:%M:%S.%f"),
        }))),
        ("gx", GX_CHILD.format(args=json.dumps(common | {"send_at": send_at.isoformat(), "build_docs": False}))),
        ("gx_docs", GX_CHILD.format(args=json.dumps(common | {"send_at": send_at.isoformat(), "build_docs": True}))),
    ):
        tries = []
        for _ in range(repeats):  # the fastest of `repeats` fresh processes (other work shares the machine)
            load = os.getloadavg()[0]
            tries.append(run_child(code) | {"load": round(load, 2)})
        out[key] = min(tries, key=lambda t: t["seconds"]) | {"all_seconds": [t["seconds"] for t in tries]}
    gx, floor = out["gx"]["observed"], out["floor"]["observed"]
    mismatched = sorted(k for k, v in floor.items()
                        if not (isinstance(gx.get(k), int | float) and abs(float(gx[k]) - float(v)) < 0.01))
    out["mismatched"] = mismatched
    return out


# ---------------------------------------------------------------------------------- report


def _row(r: dict[str, Any]) -> str:
    floor, gx, docs = r["floor"], r["gx"], r["gx_docs"]
    ratio = gx["seconds"] / floor["seconds"] if floor["seconds"] else float("nan")
    ratio_docs = docs["seconds"] / floor["seconds"] if floor["seconds"] else float("nan")
    same = "yes" if not r["mismatched"] else "NO: " + ", ".join(r["mismatched"])
    return (
        f"| {r['customers']:,} | {r['db']} | {r['audience_rows']:,} | {r['sends']:,} | "
        f"{floor['seconds']:.2f} ({floor['queries']} q) | {gx['seconds']:.2f} | {ratio:.1f}x | "
        f"{docs['seconds']:.2f} | {ratio_docs:.1f}x | "
        f"{floor['rss_mb']:.0f} / {gx['rss_mb']:.0f} / {docs['rss_mb']:.0f} | "
        f"{same} | {max(floor['load'], gx['load'], docs['load']):.1f} |"
    )


def write_report(raw: list[dict[str, Any]], notes: list[str]) -> Path:
    """docs/bench-qa.md from the measurements (``raw``: one dict per size and database)."""
    growth = max((r[k]["rss_mb"] - r[k]["rss_before_mb"] for r in raw for k in ("gx", "gx_docs")), default=0.0)
    before = max((r["gx"]["rss_before_mb"] for r in raw), default=0.0)
    largest = max((r["audience_rows"] for r in raw), default=0)
    body = "\n".join([
        "Audience QA (`campaignops.qa.run_audience_qa`, the `audience` suite: 17 checks for the "
        "winback brief) against the floor: the same checks as hand-written SQL (one aggregate "
        "pass over the run's rows plus one query per join or group check, "
        "`campaignops.bench.qa.floor_queries`). Warehouse from `init_warehouse(seed=42)`, "
        "audience from segmenting `examples/briefs/winback.yaml` once. Each measurement runs in "
        "a fresh process (full run: the faster of two); seconds are the QA call alone (importing "
        "Great Expectations, about 3 s, is paid once per process and not counted); peak RSS is "
        "the whole child process, imports included.",
        "",
        "| customers | database | audience rows | sends | floor s | GX s (no docs) | vs floor | "
        "GX s (Data Docs) | vs floor | peak RSS MB floor / GX / GX+docs | same counts | load |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
        *[_row(r) for r in raw],
        "",
        "`same counts`: every check's observed value from GX equals the floor's. `load`: the "
        "1-minute load average just before the measurement (2 cores; above 1 means other work "
        "shared the machine, so the seconds are noisy).",
        "",
        f"No DataFrame of the audience: the QA call raised the GX process's peak RSS by at most "
        f"{growth:.0f} MB over the {before:.0f} MB it had after importing Great Expectations, "
        f"with audiences of up to {largest:,} rows (the batch is a temporary table inside the "
        "database; only metric values come back).",
        *([""] + notes if notes else []),
        "",
        "<details><summary>raw</summary>",
        "",
        "```json",
        json.dumps(raw, indent=1),
        "```",
        "</details>",
    ])
    return write_doc("qa", "audience QA against plain SQL", body)


def run(quick: bool = False) -> Path:
    """Measure and write docs/bench-qa.md."""
    sizes = (20_000, 100_000) if quick else (1_000_000, 10_000_000)
    notes: list[str] = []
    raw: list[dict[str, Any]] = []
    for size in sizes:
        makers: tuple[tuple[str, Callable[[], AbstractContextManager[str]]], ...] = (
            ("SQLite", functools.partial(_sqlite_db, size)), ("PostgreSQL", _pg_db))
        for db, make in makers:
            try:
                with make() as url, tempfile.TemporaryDirectory(prefix="co-bench-qa-home-") as home:
                    built = _build(url, size)
                    measured = _measure(url, Path(home), repeats=1 if quick else 2)
            except RuntimeError as exc:
                notes.append(f"- {size:,} customers on {db}: not measured ({exc}).")
                continue
            raw.append({"customers": size, "db": db, **built,
                        **{k: {kk: vv for kk, vv in v.items() if kk != "observed"} if isinstance(v, dict) else v
                           for k, v in measured.items()}})
            print(_row(raw[-1]), flush=True)
    return write_report(raw, notes)
