"""The warehouse health suite: the data model's own tables validated where they live."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from campaignops.qa.gx import Job, qa_result, remove_output, validate
from campaignops.qa.results import QAResult, at_tokens, count_leaks
from campaignops.qa.suites import SuiteError, expand, read_suite_json, sql_timestamp
from campaignops.runs import utc_naive
from campaignops.warehouse import Warehouse

WAREHOUSE_TABLES = ("customers", "suppressions", "offers", "contact_history", "seed_recipients")


def run_warehouse_qa(
    wh: Warehouse,
    *,
    home: Path,
    as_of: dt.datetime,
    build_docs: bool = True,
    suite_name: str = "warehouse_health",
) -> QAResult:
    """Validate the warehouse's own health (customers, suppressions, offers, contact history).

    Each table is validated where it lives (a GX table asset, no copy). ``as_of`` is the
    moment "now" for the time checks (no future sends, fresh contact history); a naive value
    is taken as UTC. ``passed`` is False iff a critical check failed.
    """
    started = time.perf_counter()
    data = read_suite_json(suite_name)
    as_of = utc_naive(as_of)
    aware = as_of.replace(tzinfo=dt.UTC)
    defaults = data.get("meta", {}).get("parameters", {})
    fresh_days = int(defaults.get("fresh_days", 7))
    text = {
        "as_of": aware.strftime("%Y-%m-%d %H:%M UTC"),
        "fresh_days": fresh_days,
    }
    query_values = {
        "as_of": sql_timestamp(aware),
        "as_of_date": "'" + as_of.strftime("%Y-%m-%d") + "'",
        "fresh_since": sql_timestamp(aware - dt.timedelta(days=fresh_days)),
    }
    ex = expand(data, text, query_values, group_key="table")
    unknown = sorted(set(ex.groups) - set(WAREHOUSE_TABLES))
    if unknown:
        raise SuiteError(f"suite {suite_name}: unknown table(s) {', '.join(unknown)}")
    jobs = []
    for table in WAREHOUSE_TABLES:  # whitelisted names only reach GX
        if table in ex.groups:
            suite_json = {k: v for k, v in data.items() if k != "expectations"}
            suite_json["name"] = f"{data['name']}-{table}"
            suite_json["expectations"] = ex.groups[table]
            jobs.append(Job(table, suite_json, table=table))
    label = f"{suite_name}-{as_of:%Y%m%dT%H%M%SZ}"
    output = validate(wh.engine.url, jobs, {}, label=label, home=home, build_docs=build_docs)
    leaked = count_leaks(wh.engine, at_tokens(output.written), [
        ("SELECT COUNT(*) FROM customers WHERE lower(trim(email)) IN :tokens", {}),
        ("SELECT COUNT(*) FROM suppressions WHERE lower(trim(address)) IN :tokens", {}),
    ])
    if leaked:
        remove_output(output)
        raise RuntimeError(
            f"QA output contained {leaked} warehouse addresses; removed it (a bug in campaignops.qa)"
        )
    return qa_result(suite_name, output, ex.critical, ex.thresholds, started, ex.skipped)
