"""The audience suite: one run's materialised audience validated inside the warehouse.

``audience.json`` runs against a GX query asset over ``co_audience`` for the run,
parameterised from the brief. Shares (control, cells) are compared with a tolerance of
``SHARE_TOLERANCE_POINTS`` (0.5 points), widened to ``SHARE_Z`` binomial standard errors
when the audience is too small for 0.5 points to be meaningful: the control draw and the
cell split come from a hash of the address, so a correct audience of n rows deviates from
the target by about ``100 * sqrt(p (1 - p) / n)`` points (0.42 points for 10 % of 5,000
rows), and a fixed 0.5-point bound would block correct small runs at random. At
``SHARE_Z = 4`` a correct run fails one share check with probability about 6e-5; at
100,000 rows the bound is 0.5 points for a 10 % control and 0.63 points for a 50/50 split.

Drift (audience size against the median of the campaign's recent runs) is warning-level: a
recurring campaign's size moves for legitimate reasons (list growth, seasonality), and such
a run goes to a person (a standing approval pauses) rather than being blocked. The only
other warning is ``excluded_rows_have_reason`` (an audit-trail gap, not a wrong send); every
other check is critical. Each suite file says per check (``meta.critical``); docs/qa.md
lists them all.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops.brief import PERSONALISATION_FIELDS, Brief
from campaignops.qa.gx import Job, qa_result, remove_output, validate
from campaignops.qa.results import QAResult, at_tokens, count_leaks
from campaignops.qa.suites import Variant, expand, read_suite_json, sql_timestamp
from campaignops.warehouse import Warehouse

SHARE_TOLERANCE_POINTS = 0.5


SHARE_Z = 4.0


RUN_ID_RE = re.compile(r"^[0-9A-Fa-f][0-9A-Fa-f-]{7,63}$")


CELL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def share_tolerance(target_percent: float, n: int) -> float:
    """Tolerance in percentage points for a share drawn by hash from n rows."""
    if n <= 0:
        return SHARE_TOLERANCE_POINTS
    p = min(max(target_percent / 100.0, 0.0), 1.0)
    standard_error = 100.0 * math.sqrt(p * (1.0 - p) / n)
    return max(SHARE_TOLERANCE_POINTS, SHARE_Z * standard_error)


def _counts_by_outcome(engine: Engine, run_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT outcome, COUNT(*) FROM co_audience WHERE run_id = :run_id GROUP BY outcome"),
            {"run_id": run_id},
        ).all()
    return {str(outcome): int(n) for outcome, n in rows}


def _batch_query(run_id: str, brief: Brief) -> str:
    cell_columns = []
    for i, cell in enumerate(brief.cells):
        if not CELL_NAME_RE.fullmatch(cell.name):  # the Brief model enforces it; checked again
            raise ValueError(f"cell name {cell.name!r} is not a plain identifier")
        cell_columns.append(
            f", CASE WHEN a.outcome = 'send' THEN CASE WHEN a.cell = '{cell.name}' THEN 100.0 "
            f"ELSE 0.0 END END AS co_qa_cell_pct_{i}"
        )
    # run_id matched RUN_ID_RE and cell names CELL_NAME_RE: no quote can reach the SQL text.
    return (
        "SELECT a.row_id, a.customer_id, a.email, a.address_key, a.first_name, a.last_name, "  # noqa: S608
        "a.language, a.country, a.loyalty_tier, a.outcome, a.reason, a.cell, a.offer_code, "
        "a.is_seed, CASE WHEN a.outcome = 'control' THEN 100.0 WHEN a.outcome = 'send' THEN 0.0 "
        f"END AS co_qa_control_pct{''.join(cell_columns)} "
        f"FROM co_audience a WHERE a.run_id = '{run_id}'"
    )


@dataclass
class _Plan:
    """The run-time suite (templates expanded), its parameters and per-check thresholds."""

    suite_json: dict[str, Any]
    parameters: dict[str, Any]
    thresholds: dict[str, str]
    critical: dict[str, bool]
    skipped: list[str]
    batch_query: str


def _plan(
    data: dict[str, Any],
    run_id: str,
    brief: Brief,
    send_at: dt.datetime,
    counts: dict[str, int],
    recent_sizes: list[int] | None,
) -> _Plan:
    n_send = counts.get("send", 0)
    n_eligible = n_send + counts.get("control", 0)
    control_pct = float(brief.control_group.percent)
    control_tol = share_tolerance(control_pct, n_eligible)
    params: dict[str, Any] = {
        "size_min": int(brief.expected_audience.min),
        "size_max": int(brief.expected_audience.max),
        "control_min": max(0.0, control_pct - control_tol),
        "control_max": min(100.0, control_pct + control_tol),
        "cell_offer_pairs": [[c.name, c.offer_code] for c in brief.cells],
    }
    text: dict[str, Any] = {
        **params,
        "control_target": control_pct,
        "control_tolerance": control_tol,
        "send_at": send_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cell_offer_text": ", ".join(f"{c.name}/{c.offer_code or '-'}" for c in brief.cells),
    }
    query_values: dict[str, str] = {"run_id": f"'{run_id}'", "send_at": sql_timestamp(send_at)}
    cap = brief.effective_frequency_cap
    if cap is not None:
        query_values["cap_max"] = str(int(cap.max_messages))
        query_values["window_start"] = sql_timestamp(send_at - dt.timedelta(days=int(cap.per_days)))
        text.update(cap_max=int(cap.max_messages), cap_days=int(cap.per_days))
    drift = bool(recent_sizes) and brief.drift_tolerance_percent is not None
    if drift:
        assert recent_sizes is not None and brief.drift_tolerance_percent is not None
        median = float(statistics.median(int(s) for s in recent_sizes))
        tol = float(brief.drift_tolerance_percent)
        params["drift_min"] = math.ceil(median * (1 - tol / 100) - 1e-9)
        params["drift_max"] = math.floor(median * (1 + tol / 100) + 1e-9)
        text.update(
            drift_min=params["drift_min"],
            drift_max=params["drift_max"],
            drift_median=median,
            drift_tolerance=tol,
        )
    fallbacks = set(brief.content.fallbacks)
    required = [f for f in brief.content.required_fields if f not in fallbacks]
    for name in required:
        if name not in PERSONALISATION_FIELDS:  # whitelisted identifiers reach the SQL
            raise ValueError(f"required field {name!r} is not a personalisation field")
    cells = []
    for i, cell in enumerate(brief.cells):
        tol = share_tolerance(float(cell.percent), n_send)
        params[f"cell_min__{i}"] = max(0.0, float(cell.percent) - tol)
        params[f"cell_max__{i}"] = min(100.0, float(cell.percent) + tol)
        cells.append(Variant(cell.name, text={"cell_target": float(cell.percent), "cell_tolerance": tol},
                             parameter_suffix=f"__{i}", column_suffix=f"_{i}"))
    no_drift = None if drift else (
        "no recent run sizes" if not recent_sizes else "the brief sets no drift tolerance")
    ex = expand(
        data, text, query_values,
        conditions={"frequency_cap": None if cap is not None else "the brief sets no frequency cap",
                    "drift": no_drift},
        for_each={"cell": cells,
                  "required_field": [Variant(f, text={"field": f}, query={"field": f}) for f in required]},
        empty_reasons={"required_field": "the brief requires no personalisation field"},
    )
    suite_json = {k: v for k, v in data.items() if k != "expectations"}
    suite_json["name"] = f"{data['name']}-{run_id}"
    suite_json["expectations"] = ex.groups.get("", [])
    return _Plan(suite_json, params, ex.thresholds, ex.critical, ex.skipped, _batch_query(run_id, brief))


def _leaked_addresses(engine: Engine, run_id: str, paths: list[Path]) -> int:
    """How many of the run's addresses appear in the given files (should be 0)."""
    return count_leaks(engine, at_tokens(paths), [
        ("SELECT COUNT(*) FROM co_audience WHERE run_id = :run_id "
         "AND (address_key IN :tokens OR lower(trim(email)) IN :tokens)", {"run_id": run_id}),
    ])


def run_audience_qa(
    wh: Warehouse,
    run_id: str,
    brief: Brief,
    *,
    send_at: dt.datetime,
    home: Path,
    recent_sizes: list[int] | None = None,
    build_docs: bool = True,
    suite_name: str = "audience",
) -> QAResult:
    """Validate run_id's audience against the audience suite, inside the warehouse."""
    started = time.perf_counter()
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        raise ValueError("run_id must be a hex or UUID string")
    if send_at.tzinfo is None:
        raise ValueError("send_at needs a time zone")
    if recent_sizes is not None and any(int(s) < 0 for s in recent_sizes):
        raise ValueError("recent_sizes must be non-negative counts")

    data = read_suite_json(suite_name)
    counts = _counts_by_outcome(wh.engine, run_id)
    plan = _plan(data, run_id, brief, send_at, counts, recent_sizes)
    output = validate(
        wh.engine.url,
        [Job("audience", plan.suite_json, query=plan.batch_query)],
        plan.parameters,
        label=f"{suite_name}-{run_id}",
        home=home,
        build_docs=build_docs,
    )
    leaked = _leaked_addresses(wh.engine, run_id, output.written)
    if leaked:
        remove_output(output)
        raise RuntimeError(
            f"QA output contained {leaked} audience addresses; removed it (a bug in campaignops.qa)"
        )
    return qa_result(suite_name, output, plan.critical, plan.thresholds, started, plan.skipped)
