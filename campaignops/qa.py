"""QA expectation suites: Great Expectations validates the data where it lives.

The suites live as JSON in ``expectations/``, one per thing they guard, loaded by name:

* ``audience.json`` (``run_audience_qa``): one run's materialised audience in ``co_audience``,
  a GX query asset over the warehouse, parameterised from the brief;
* ``warehouse_health.json`` (``run_warehouse_qa``): the warehouse's own tables (customers,
  suppressions, offers, contact_history, seed_recipients), one GX table asset each;
* ``handoff_file.json`` (``run_handoff_file_qa``): a file-drop CSV and its manifest, streamed
  into a private temporary SQLite file and validated there (never a DataFrame of the file).

Brief values reach the audience suite through ``{"$PARAMETER": ...}`` and
``expectation_parameters=``; query-based expectations
(``unexpected_rows_expectation``) carry ``:name`` placeholders that are replaced here by
values this module computes and validates itself (a hex run id, formatted timestamps,
integers, whitelisted column names), never by raw brief strings.

Personal data: validation runs with ``SUMMARY`` and ``partial_unexpected_count: 0``, the
unexpected-rows queries select ``row_id`` only, and every kept result (``QAResult``, the
stored JSON under ``home/gx/results``, Data Docs under ``home/gx/data_docs``) is scrubbed of
unexpected-value lists and then checked for the guarded data's addresses (the run's, the
warehouse's, the file's) before it is returned; a hit removes the output and raises.

Great Expectations is imported lazily (it costs about 3 s) and each validation gets its own
ephemeral context (GX is not thread-safe).

Shares (control, cells) are compared with a tolerance of ``SHARE_TOLERANCE_POINTS`` (0.5
points), widened to ``SHARE_Z`` binomial standard errors when the audience is too small for
0.5 points to be meaningful: the control draw and the cell split come from a hash of the
address, so a correct audience of n rows deviates from the target by about
``100 * sqrt(p (1 - p) / n)`` points (0.42 points for 10 % of 5,000 rows), and a fixed
0.5-point bound would block correct small runs at random. At ``SHARE_Z = 4`` a correct
run fails one share check with probability about 6e-5; at 100,000 rows the bound is 0.5
points for a 10 % control and 0.63 points for a 50/50 split.

Drift (audience size against the median of the campaign's recent runs) is warning-level:
a recurring campaign's size moves for legitimate reasons (list growth, seasonality), and
PRODUCT.md routes a drifting run to a person (the standing approval pauses) rather than
blocking it. In the audience suite the only other warning is ``excluded_rows_have_reason``
(an audit-trail gap, not a wrong send); every other check is critical. Each suite file says
per check (``meta.critical``); docs/qa.md lists them all.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import math
import re
import shutil
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from campaignops.brief import PERSONALISATION_FIELDS, Brief
from campaignops.db import make_engine

if TYPE_CHECKING:  # pragma: no cover
    import great_expectations

log = logging.getLogger(__name__)

EXPECTATIONS_DIR = Path(__file__).resolve().parent.parent / "expectations"
RESULT_FORMAT: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 0}
SHARE_TOLERANCE_POINTS = 0.5
SHARE_Z = 4.0
RUN_ID_RE = re.compile(r"^[0-9A-Fa-f][0-9A-Fa-f-]{7,63}$")
CELL_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DOCS_SITE = "campaignops"
# GX is not thread-safe even with one context per validation: its suite-parameter parser is a
# shared pyparsing grammar (concurrent runs fail with "push_first() missing ... 'toks'") and
# get_context() sets a process-wide current context. Validations in one process take turns.
_GX_LOCK = threading.Lock()
_PLACEHOLDER_RE = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)\b")
# Result keys that may hold row values (addresses, names): never kept.
_FORBIDDEN_RESULT_KEYS = re.compile(
    r"unexpected_list|unexpected_index|unexpected_counts|unexpected_rows|unexpected_values|details"
)
# Anything around an "@" (valid or not: invalid addresses are the ones most likely to be listed).
_AT_TOKEN_RE = re.compile(rb"[^\s\"<>(),;\\\[\]{}]*@[^\s\"<>(),;\\\[\]{}]*")


@dataclass(frozen=True)
class CheckResult:
    """One expectation's verdict; observed holds counts or shares only, never row values."""

    name: str
    expectation: str
    critical: bool
    passed: bool
    observed: str | float | int | None
    threshold: str
    error: str | None = None  # the expectation could not be evaluated (it then fails)


@dataclass(frozen=True)
class QAResult:
    """A suite's verdict on one run: passed is False iff a critical check failed."""

    suite: str
    passed: bool
    checks: list[CheckResult]
    warnings: list[CheckResult]  # failed non-critical checks
    failed_critical: list[CheckResult]
    seconds: float
    data_docs: Path | None
    skipped: list[str] = field(default_factory=list)  # checks that did not apply, with why

    def to_json(self) -> str:
        """Canonical JSON (for artifacts and the audit trail)."""
        data = asdict(self)
        data["data_docs"] = str(self.data_docs) if self.data_docs else None
        return json.dumps(data, sort_keys=True, default=str)


class SuiteError(ValueError):
    """A suite file is missing, malformed, or lost expectations while loading."""


# --------------------------------------------------------------------------- suites


def _suite_path(name: str, directory: Path | None) -> Path:
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", name):
        raise SuiteError(f"suite name {name!r} is not a plain lower-case name")
    return (directory or EXPECTATIONS_DIR) / f"{name}.json"


def _read_suite_json(name: str, directory: Path | None = None) -> dict[str, Any]:
    path = _suite_path(name, directory)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(f"no expectation suite at {path}") from None
    except json.JSONDecodeError as exc:
        raise SuiteError(f"expectation suite {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise SuiteError(f"expectation suite {path} needs an 'expectations' list")
    for i, exp in enumerate(data["expectations"]):
        meta = exp.get("meta") if isinstance(exp, dict) else None
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            raise SuiteError(f"{path}: expectations[{i}] needs meta.name")
        if not isinstance(meta.get("critical"), bool):
            raise SuiteError(f"{path}: expectations[{i}] ({meta['name']}) needs meta.critical true|false")
    return data


class _CollectLogs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().splitlines()[0])


# GX's unexpected_rows_expectation runs its query twice on every validation: once wrapped in
# COUNT(*) and once more to fetch a sample of the unexpected rows, which it then keeps only in
# the COMPLETE result format (and which campaignops would scrub anyway). The second run doubles
# the cost of every join check (consent, frequency cap) on a passing audience. At run time the
# suites' unexpected_rows_expectation entries are validated by this subclass, which asks GX for
# the count only; the JSON files keep GX's standard type.
COUNT_ONLY_TYPE = "campaignops_unexpected_row_count"
_COUNT_ONLY_LOCK = threading.Lock()


def _register_count_only() -> None:
    """Define (once) the count-only subclass; GX registers it under COUNT_ONLY_TYPE."""
    from great_expectations.expectations import registry

    with _COUNT_ONLY_LOCK:
        try:
            registry.get_expectation_impl(COUNT_ONLY_TYPE)
            return
        except Exception:  # noqa: S110 - not registered yet
            pass
        from great_expectations.expectations import UnexpectedRowsExpectation

        class CampaignopsUnexpectedRowCount(UnexpectedRowsExpectation):
            """unexpected_rows_expectation that only counts the rows (no sample fetched)."""

            metric_dependencies = ("unexpected_rows_query.row_count",)

            def _validate(self, metrics: dict[str, Any], runtime_configuration: dict[str, Any] | None = None,
                          execution_engine: Any = None) -> dict[str, Any]:
                count = metrics["unexpected_rows_query.row_count"]
                return {"success": count == 0, "result": {"observed_value": count}}

        assert CampaignopsUnexpectedRowCount.expectation_type == COUNT_ONLY_TYPE


def _count_only(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of suite JSON whose unexpected_rows_expectation entries use the count-only type."""
    out = dict(data)
    out["expectations"] = [
        {**e, "type": COUNT_ONLY_TYPE} if e.get("type") == "unexpected_rows_expectation" else e
        for e in data["expectations"]
    ]
    return out


def _build_suite(data: dict[str, Any], source: str) -> great_expectations.ExpectationSuite:
    """An ExpectationSuite from JSON, failing loudly when GX drops an expectation."""
    import great_expectations as gx

    gx_logger = logging.getLogger("great_expectations.core.expectation_suite")
    handler = _CollectLogs()
    gx_logger.addHandler(handler)
    propagate = gx_logger.propagate
    gx_logger.propagate = False  # GX logs the whole traceback; we raise with its message
    try:
        suite = gx.ExpectationSuite(**copy.deepcopy(data))
    finally:
        gx_logger.removeHandler(handler)
        gx_logger.propagate = propagate
    wanted, got = len(data["expectations"]), len(suite.expectations)
    if got != wanted:
        loaded = {e.meta.get("name") for e in suite.expectations if e.meta}
        lost = [e["meta"]["name"] for e in data["expectations"] if e["meta"]["name"] not in loaded]
        why = "; ".join(handler.messages) or "no reason logged"
        raise SuiteError(
            f"expectation suite {source} has {wanted} expectations but Great Expectations "
            f"loaded {got} (dropped: {', '.join(lost) or '?'}): {why}"
        )
    return suite


def load_suite(name: str, directory: Path | None = None) -> great_expectations.ExpectationSuite:
    """The suite expectations/<name>.json as GX loads it (templates unexpanded).

    Raises SuiteError when GX loads fewer expectations than the file holds (GX drops an
    unknown or invalid expectation with only a log line).
    """
    data = _read_suite_json(name, directory)
    return _build_suite(data, str(_suite_path(name, directory)))


# --------------------------------------------------------------------------- parameters


def share_tolerance(target_percent: float, n: int) -> float:
    """Tolerance in percentage points for a share drawn by hash from n rows."""
    if n <= 0:
        return SHARE_TOLERANCE_POINTS
    p = min(max(target_percent / 100.0, 0.0), 1.0)
    standard_error = 100.0 * math.sqrt(p * (1.0 - p) / n)
    return max(SHARE_TOLERANCE_POINTS, SHARE_Z * standard_error)


def _sql_timestamp(value: dt.datetime) -> str:
    """A naive-UTC timestamp literal in SQLAlchemy's SQLite storage format (PostgreSQL reads it)."""
    utc = value.astimezone(dt.UTC).replace(tzinfo=None)
    return "'" + utc.strftime("%Y-%m-%d %H:%M:%S.%f") + "'"


def _fill_query(query: str, values: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise SuiteError(f"query placeholder :{key} has no value (known: {', '.join(sorted(values))})")
        return values[key]

    return _PLACEHOLDER_RE.sub(sub, query)


@dataclass
class _Plan:
    """The run-time suite (templates expanded), its parameters and per-check thresholds."""

    suite_json: dict[str, Any]
    parameters: dict[str, Any]
    thresholds: dict[str, str]
    critical: dict[str, bool]
    skipped: list[str]
    batch_query: str


def _counts_by_outcome(engine_url: str, run_id: str) -> dict[str, int]:
    engine = make_engine(engine_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT outcome, COUNT(*) FROM co_audience WHERE run_id = :run_id GROUP BY outcome"
                ),
                {"run_id": run_id},
            ).all()
    finally:
        engine.dispose()
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


def _rename_parameters(value: Any, suffix: str) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            return {"$PARAMETER": f"{value['$PARAMETER']}{suffix}"}
        return {k: _rename_parameters(v, suffix) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename_parameters(v, suffix) for v in value]
    return value


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
    query_values: dict[str, str] = {"run_id": f"'{run_id}'", "send_at": _sql_timestamp(send_at)}
    skipped: list[str] = []
    cap = brief.frequency_cap
    if cap is not None:
        query_values["cap_max"] = str(int(cap.max_messages))
        query_values["window_start"] = _sql_timestamp(send_at - dt.timedelta(days=int(cap.per_days)))
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

    expectations: list[dict[str, Any]] = []
    thresholds: dict[str, str] = {}
    critical: dict[str, bool] = {}

    def add(exp: dict[str, Any], fmt: dict[str, Any]) -> None:
        meta = exp["meta"]
        kwargs = exp["kwargs"]
        if isinstance(kwargs.get("unexpected_rows_query"), str):
            kwargs["unexpected_rows_query"] = _fill_query(kwargs["unexpected_rows_query"], fmt["_query"])
        thresholds[meta["name"]] = meta["threshold"] = str(meta.get("threshold", "")).format(**fmt)
        critical[meta["name"]] = bool(meta["critical"])
        expectations.append(exp)

    for template in data["expectations"]:
        meta = template["meta"]
        when = meta.get("applies_when")
        if when == "frequency_cap" and cap is None:
            skipped.append(f"{meta['name']}: the brief sets no frequency cap")
            continue
        if when == "drift" and not drift:
            why = "no recent run sizes" if not recent_sizes else "the brief sets no drift tolerance"
            skipped.append(f"{meta['name']}: {why}")
            continue
        if when not in (None, "frequency_cap", "drift"):
            raise SuiteError(f"{meta['name']}: unknown applies_when {when!r}")
        each = meta.get("for_each")
        if each is None:
            add(copy.deepcopy(template), {**text, "_query": query_values})
        elif each == "cell":
            for i, cell in enumerate(brief.cells):
                exp = _rename_parameters(copy.deepcopy(template), f"__{i}")
                exp["kwargs"]["column"] = f"{template['kwargs']['column']}_{i}"
                exp["meta"]["name"] = f"{meta['name']}[{cell.name}]"
                tol = share_tolerance(float(cell.percent), n_send)
                params[f"cell_min__{i}"] = max(0.0, float(cell.percent) - tol)
                params[f"cell_max__{i}"] = min(100.0, float(cell.percent) + tol)
                add(exp, {**text, "cell_target": float(cell.percent), "cell_tolerance": tol,
                          "_query": query_values})
        elif each == "required_field":
            if not required:
                skipped.append(f"{meta['name']}: the brief requires no personalisation field")
            for name in required:
                if name not in PERSONALISATION_FIELDS:  # whitelisted identifier
                    raise ValueError(f"required field {name!r} is not a personalisation field")
                exp = copy.deepcopy(template)
                exp["meta"]["name"] = f"{meta['name']}[{name}]"
                add(exp, {**text, "field": name, "_query": {**query_values, "field": name}})
        else:
            raise SuiteError(f"{meta['name']}: unknown for_each {each!r}")

    suite_json = {k: v for k, v in data.items() if k != "expectations"}
    suite_json["name"] = f"{data['name']}-{run_id}"
    suite_json["expectations"] = expectations
    return _Plan(suite_json, params, thresholds, critical, skipped, _batch_query(run_id, brief))


# --------------------------------------------------------------------------- results


def _scrub(value: Any) -> Any:
    """Drop every key that may carry row values, recursively."""
    if isinstance(value, dict):
        return {
            k: _scrub(v)
            for k, v in value.items()
            if not (isinstance(k, str) and _FORBIDDEN_RESULT_KEYS.search(k))
        }
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _scrub_exception_info(info: Any) -> Any:
    """Keep whether and why an expectation raised, not the traceback or the message's body.

    GX messages can embed a whole result dict (InvalidCacheValueError does); only the first
    line is kept.
    """
    if not isinstance(info, dict):
        return info
    out: dict[str, Any] = {}
    for k, v in info.items():
        if k == "exception_traceback":
            out[k] = None
        elif k == "exception_message":
            out[k] = _first_line(v)
        else:
            out[k] = _scrub_exception_info(v)
    return out


def _first_line(message: Any) -> str | None:
    if message is None:
        return None
    lines = str(message).strip().splitlines()
    return (lines[0] if lines else "")[:300]


def _scrub_validation_result(result: Any) -> None:
    """Scrub an ExpectationSuiteValidationResult in place."""
    for r in result.results:
        r.result = _scrub(dict(r.result or {}))
        r.exception_info = _scrub_exception_info(r.exception_info)


def _exception_of(info: Any) -> str | None:
    """The first raised exception's message in a (possibly per-metric) exception_info."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return _first_line(info.get("exception_message")) or "error"
    for v in info.values():
        found = _exception_of(v)
        if found:
            return found
    return None


def _observed(exp_type: str, result: dict[str, Any], kwargs: dict[str, Any]) -> str | float | int | None:
    value = result.get("observed_value")
    if exp_type in (
        "unexpected_rows_expectation",
        COUNT_ONLY_TYPE,
        "expect_table_row_count_to_be_between",
        "expect_table_row_count_to_equal",
    ):
        return int(value) if isinstance(value, int | float) else None
    if exp_type == "expect_column_mean_to_be_between":
        try:
            return round(float(value), 3) if value is not None else None
        except (TypeError, ValueError):
            return None
    if exp_type.startswith("expect_table_columns_to_match"):
        # column names, never row values
        return ", ".join(str(v) for v in value)[:300] if isinstance(value, list) else None
    mostly = kwargs.get("mostly")
    if isinstance(mostly, int | float) and mostly < 1:  # a share check: the failing share
        percent = result.get("unexpected_percent")
        return round(float(percent), 3) if isinstance(percent, int | float) else None
    count = result.get("unexpected_count")
    return int(count) if isinstance(count, int | float) else None


def _check_results(
    validations: list[Any], critical: dict[str, bool], thresholds: dict[str, str]
) -> list[CheckResult]:
    checks = []
    for validation in validations:
        for r in validation.results:
            config = r.expectation_config
            name = str((config.meta or {}).get("name"))
            error = _exception_of(r.exception_info)
            checks.append(
                CheckResult(
                    name=name,
                    # the suite file's type (the count-only subclass validates its query checks)
                    expectation="unexpected_rows_expectation" if config.type == COUNT_ONLY_TYPE
                    else str(config.type),
                    critical=critical.get(name, True),
                    passed=bool(r.success) and error is None,
                    observed=_observed(str(config.type), dict(r.result or {}), dict(config.kwargs or {})),
                    threshold=thresholds.get(name, ""),
                    error=error,
                )
            )
    seen = {c.name for c in checks}
    for name in thresholds:  # fail closed: a planned check GX did not report
        if name not in seen:
            checks.append(CheckResult(name, "unknown", critical[name], False, None,
                                      thresholds[name], error="not evaluated"))
    return checks


def _at_tokens(paths: list[Path]) -> set[str]:
    tokens: set[str] = set()
    for path in paths:
        for token in _AT_TOKEN_RE.findall(path.read_bytes()):
            text = token.decode("utf-8", "replace").strip().lower()
            for candidate in (text, text.strip("'.:`")):
                if "@" in candidate and len(candidate) <= 254:
                    tokens.add(candidate)
    return tokens


def _leaked_addresses(engine_url: str, run_id: str, paths: list[Path]) -> int:
    """How many of the run's addresses appear in the given files (should be 0)."""
    return _count_leaks(engine_url, _at_tokens(paths), [
        ("SELECT COUNT(*) FROM co_audience WHERE run_id = :run_id "
         "AND (address_key IN :tokens OR lower(trim(email)) IN :tokens)", {"run_id": run_id}),
    ])


def _count_leaks(engine_url: str, found: set[str], queries: list[tuple[str, dict[str, Any]]]) -> int:
    """Rows whose address is among the @-tokens found in outputs (each query counts rows)."""
    tokens = sorted(found)
    if not tokens:
        return 0
    engine = make_engine(engine_url)
    try:
        leaked = 0
        with engine.connect() as conn:
            for text, params in queries:
                stmt = sa.text(text).bindparams(sa.bindparam("tokens", expanding=True))
                for start in range(0, len(tokens), 500):
                    leaked += int(
                        conn.execute(stmt, {**params, "tokens": tokens[start : start + 500]}).scalar_one()
                    )
    finally:
        engine.dispose()
    return leaked


# --------------------------------------------------------------------------- running


@contextmanager
def _gx_context(docs_dir: Path | None) -> Iterator[Any]:
    """A fresh ephemeral context: in-memory stores, no progress bars, one local docs site."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites: dict[str, Any] = {}
    if docs_dir is not None:
        sites[DOCS_SITE] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder", "show_cta_footer": False},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    yield gx.get_context(mode="ephemeral", project_config=config)


# GX materialises the run's batch once as a temporary table inside the warehouse and runs every
# metric against it. Without it, GX re-executes the whole batch query to learn its columns
# (column_reflection_fallback), and psycopg fetches every row of it into the client each time:
# at 100,000 rows on PostgreSQL 6.5 s instead of 3.4 s, and personal data pulled into memory.
# Needs the TEMP privilege (PostgreSQL's default for every role; not on a read-only standby).
USE_TEMP_TABLE = True


def _add_datasource(context: Any, engine_url: str) -> Any:
    url = sa.engine.make_url(engine_url)
    dialect = url.get_backend_name()
    kw = {"connection_string": url.render_as_string(hide_password=False), "create_temp_table": USE_TEMP_TABLE}
    if dialect == "sqlite":
        return context.data_sources.add_sqlite("warehouse", **kw)
    if dialect == "postgresql":
        return context.data_sources.add_postgres("warehouse", **kw)
    return context.data_sources.add_sql("warehouse", **kw)


def _close_engine(datasource: Any) -> None:
    """Close GX's connections now (and with them the temporary table), not at garbage collection."""
    try:
        execution_engine = datasource.get_execution_engine()
        connection = getattr(execution_engine, "_connection", None)
        if connection is not None:
            connection.close()
        execution_engine.close()
        execution_engine.engine.dispose()
        datasource.get_engine().dispose()  # the engine GX opened to test the connection
    except Exception:  # pragma: no cover - best effort
        log.debug("could not close the GX engine", exc_info=True)


@dataclass
class _Job:
    """One batch to validate: a query or a table of the database, and the suite part for it."""

    asset: str
    suite_json: dict[str, Any]
    query: str | None = None
    table: str | None = None


@dataclass
class _Output:
    validations: list[Any]
    written: list[Path]  # every file QA wrote (stored results, Data Docs pages)
    stored: Path
    docs_dir: Path | None
    data_docs: Path | None


def _validate(
    engine_url: str,
    jobs: list[_Job],
    parameters: dict[str, Any],
    *,
    label: str,
    home: Path,
    build_docs: bool,
) -> _Output:
    """Validate every job in one fresh GX context; scrub, store and (optionally) render the results.

    The stored result is ``home/gx/results/<label>.json`` (one validation: its result; several:
    a list); Data Docs go to ``home/gx/data_docs/<label>/index.html``.
    """
    import great_expectations as gx

    gx_home = Path(home) / "gx"
    docs_dir = gx_home / "data_docs" / label if build_docs else None
    results_dir = gx_home / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    data_docs: Path | None = None
    validations: list[Any] = []
    _register_count_only()
    with _GX_LOCK, _gx_context(docs_dir) as context:
        datasource = _add_datasource(context, engine_url)
        try:
            for job in jobs:
                suite = _build_suite(_count_only(job.suite_json), f"{job.suite_json['name']} (expanded)")
                suite = context.suites.add(suite)
                if job.query is not None:
                    asset = datasource.add_query_asset(job.asset, query=job.query)
                else:
                    asset = datasource.add_table_asset(job.asset, table_name=job.table)
                batch_definition = asset.add_batch_definition_whole_table("run")
                validation_definition = context.validation_definitions.add(
                    gx.ValidationDefinition(name=suite.name, data=batch_definition, suite=suite)
                )
                validations.append(
                    validation_definition.run(
                        expectation_parameters=parameters, result_format=RESULT_FORMAT
                    )
                )
        finally:
            _close_engine(datasource)

        for validation in validations:
            _scrub_validation_result(validation)
        store = context.validation_results_store
        for key in store.list_keys():  # what Data Docs render from: scrubbed too
            stored = store.get(key)
            _scrub_validation_result(stored)
            store.set(key, stored)

        stored_path = results_dir / f"{label}.json"
        payload: Any = [_scrub(v.to_json_dict()) for v in validations]
        stored_path.write_text(
            json.dumps(payload[0] if len(payload) == 1 else payload, indent=1, sort_keys=True, default=str),
            encoding="utf-8",
        )
        written = [stored_path]
        if docs_dir is not None:
            if docs_dir.exists():
                shutil.rmtree(docs_dir)
            context.build_data_docs(site_names=[DOCS_SITE])
            data_docs = docs_dir / "index.html"
            written += [p for p in docs_dir.rglob("*") if p.suffix in (".html", ".json")]
    return _Output(validations, written, stored_path, docs_dir, data_docs)


def _remove_output(output: _Output) -> None:
    output.stored.unlink(missing_ok=True)
    if output.docs_dir is not None:
        shutil.rmtree(output.docs_dir, ignore_errors=True)


def _result(
    suite: str,
    output: _Output,
    critical: dict[str, bool],
    thresholds: dict[str, str],
    started: float,
    skipped: list[str],
    extra: list[CheckResult] | None = None,
) -> QAResult:
    checks = _check_results(output.validations, critical, thresholds) + list(extra or [])
    failed_critical = [c for c in checks if c.critical and not c.passed]
    warnings = [c for c in checks if not c.critical and not c.passed]
    return QAResult(
        suite=suite,
        passed=not failed_critical,
        checks=checks,
        warnings=warnings,
        failed_critical=failed_critical,
        seconds=round(time.perf_counter() - started, 3),
        data_docs=output.data_docs,
        skipped=skipped,
    )


def run_audience_qa(
    engine_url: str,
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

    data = _read_suite_json(suite_name)
    counts = _counts_by_outcome(engine_url, run_id)
    plan = _plan(data, run_id, brief, send_at, counts, recent_sizes)
    output = _validate(
        engine_url,
        [_Job("audience", plan.suite_json, query=plan.batch_query)],
        plan.parameters,
        label=f"{suite_name}-{run_id}",
        home=home,
        build_docs=build_docs,
    )
    leaked = _leaked_addresses(engine_url, run_id, output.written)
    if leaked:
        _remove_output(output)
        raise RuntimeError(
            f"QA output contained {leaked} audience addresses; removed it (a bug in campaignops.qa)"
        )
    return _result(suite_name, output, plan.critical, plan.thresholds, started, plan.skipped)


# --------------------------------------------------------------------------- warehouse health

WAREHOUSE_TABLES = ("customers", "suppressions", "offers", "contact_history", "seed_recipients")


def _utc_naive(value: dt.datetime) -> dt.datetime:
    """A naive datetime is taken as UTC (how the warehouse stores times)."""
    return value if value.tzinfo is None else value.astimezone(dt.UTC).replace(tzinfo=None)


def _expand(
    data: dict[str, Any],
    text: dict[str, Any],
    query_values: dict[str, str],
    *,
    group_key: str | None = None,
    extra_for_each: dict[str, list[tuple[str, dict[str, Any], dict[str, str]]]] | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str], dict[str, bool], list[str]]:
    """Templates → concrete expectations grouped by meta[group_key] (or one group "").

    for_each values name a list of (suffix, extra text, extra query values): one expectation
    each, named ``name[suffix]``.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    thresholds: dict[str, str] = {}
    critical: dict[str, bool] = {}
    skipped: list[str] = []
    for template in data["expectations"]:
        meta = template["meta"]
        if meta.get("applies_when") is not None:
            raise SuiteError(f"{meta['name']}: applies_when is not supported in suite {data['name']}")
        group = str(meta.get(group_key, "")) if group_key else ""
        if group_key and not group:
            raise SuiteError(f"{meta['name']}: needs meta.{group_key}")
        each = meta.get("for_each")
        if each is None:
            variants: list[tuple[str | None, dict[str, Any], dict[str, str]]] = [(None, {}, {})]
        elif extra_for_each is not None and each in extra_for_each:
            variants = list(extra_for_each[each])
            if not variants:
                skipped.append(f"{meta['name']}: no {each.replace('_', ' ')} to check")
        else:
            raise SuiteError(f"{meta['name']}: unknown for_each {each!r}")
        for suffix, more_text, more_values in variants:
            exp = copy.deepcopy(template)
            name = meta["name"] if suffix is None else f"{meta['name']}[{suffix}]"
            exp["meta"]["name"] = name
            query = exp["kwargs"].get("unexpected_rows_query")
            if isinstance(query, str):
                exp["kwargs"]["unexpected_rows_query"] = _fill_query(query, {**query_values, **more_values})
            thresholds[name] = exp["meta"]["threshold"] = str(meta.get("threshold", "")).format(
                **text, **more_text
            )
            critical[name] = bool(meta["critical"])
            groups.setdefault(group, []).append(exp)
    return groups, thresholds, critical, skipped


def run_warehouse_qa(
    engine_url: str,
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
    data = _read_suite_json(suite_name)
    as_of = _utc_naive(as_of)
    aware = as_of.replace(tzinfo=dt.UTC)
    defaults = data.get("meta", {}).get("parameters", {})
    fresh_days = int(defaults.get("fresh_days", 7))
    text = {
        "as_of": aware.strftime("%Y-%m-%d %H:%M UTC"),
        "fresh_days": fresh_days,
    }
    query_values = {
        "as_of": _sql_timestamp(aware),
        "as_of_date": "'" + as_of.strftime("%Y-%m-%d") + "'",
        "fresh_since": _sql_timestamp(aware - dt.timedelta(days=fresh_days)),
    }
    groups, thresholds, critical, skipped = _expand(data, text, query_values, group_key="table")
    unknown = sorted(set(groups) - set(WAREHOUSE_TABLES))
    if unknown:
        raise SuiteError(f"suite {suite_name}: unknown table(s) {', '.join(unknown)}")
    jobs = []
    for table in WAREHOUSE_TABLES:  # whitelisted names only reach GX
        if table in groups:
            suite_json = {k: v for k, v in data.items() if k != "expectations"}
            suite_json["name"] = f"{data['name']}-{table}"
            suite_json["expectations"] = groups[table]
            jobs.append(_Job(table, suite_json, table=table))
    label = f"{suite_name}-{as_of:%Y%m%dT%H%M%SZ}"
    output = _validate(engine_url, jobs, {}, label=label, home=home, build_docs=build_docs)
    leaked = _count_leaks(engine_url, _at_tokens(output.written), [
        ("SELECT COUNT(*) FROM customers WHERE lower(trim(email)) IN :tokens", {}),
        ("SELECT COUNT(*) FROM suppressions WHERE lower(trim(address)) IN :tokens", {}),
    ])
    if leaked:
        _remove_output(output)
        raise RuntimeError(
            f"QA output contained {leaked} warehouse addresses; removed it (a bug in campaignops.qa)"
        )
    return _result(suite_name, output, critical, thresholds, started, skipped)


# --------------------------------------------------------------------------- handoff file

_COLUMN_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
FIELD_COUNT_COLUMN = "co_qa_fields"  # how many fields the CSV row had (added while loading)
LOAD_CHUNK_ROWS = 50_000


def _read_manifest(manifest_path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no manifest at {manifest_path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"manifest {manifest_path} is not valid JSON: {exc}") from None
    rows, columns, sha = manifest.get("rows"), manifest.get("columns"), manifest.get("sha256")
    if (
        not isinstance(manifest, dict)
        or isinstance(rows, bool)
        or not isinstance(rows, int)
        or rows < 0
        or not isinstance(columns, list)
        or not all(isinstance(c, str) for c in columns)
        or not isinstance(sha, str)
    ):
        raise ValueError(f"manifest {manifest_path} needs rows (int), columns (list) and sha256")
    return manifest


def _load_csv(csv_path: Path, db_path: Path) -> tuple[list[str], str]:
    """Stream the CSV into table handoff_file of a new SQLite file; returns (header, sha256).

    One pass over the bytes: hashed as read, parsed with the csv module, inserted
    LOAD_CHUNK_ROWS rows at a time (all columns TEXT, empty fields as NULL, plus the row's
    field count). Memory stays at one chunk whatever the file's size.
    """
    import csv
    import hashlib
    import sqlite3

    digest = hashlib.sha256()

    def lines() -> Iterator[str]:
        with Path(csv_path).open("rb") as raw:
            for line in raw:
                digest.update(line)
                yield line.decode("utf-8", errors="replace")

    reader = csv.reader(lines())
    header = next(reader, None) or []
    if (
        not header
        or len(set(header)) != len(header)
        or not all(_COLUMN_RE.fullmatch(c) and c != FIELD_COUNT_COLUMN for c in header)
    ):
        for _ in reader:  # hash the rest
            pass
        raise ValueError(
            f"{Path(csv_path).name}: the header must be distinct lower-case column names, "
            f"got {len(header)} column(s)"
        )
    columns = [*header, FIELD_COUNT_COLUMN]
    n = len(header)
    conn = sqlite3.connect(db_path)
    try:
        conn.execute(
            "CREATE TABLE handoff_file ("  # noqa: S608 - names matched _COLUMN_RE
            + ", ".join(f'"{c}" TEXT' for c in header)
            + f', "{FIELD_COUNT_COLUMN}" INTEGER)'
        )
        insert = (
            f"INSERT INTO handoff_file VALUES ({', '.join('?' for _ in columns)})"  # noqa: S608
        )
        chunk: list[list[Any]] = []
        for record in reader:
            fields = len(record)
            row: list[Any] = [v if v != "" else None for v in record[:n]]
            row += [None] * (n - len(row))
            row.append(fields)
            chunk.append(row)
            if len(chunk) >= LOAD_CHUNK_ROWS:
                conn.executemany(insert, chunk)
                chunk = []
        if chunk:
            conn.executemany(insert, chunk)
        conn.commit()
    finally:
        conn.close()
    return header, digest.hexdigest()


def _csv_addresses_in(csv_path: Path, tokens: set[str]) -> int:
    """How many CSV rows carry an address among tokens (streamed)."""
    import csv

    if not tokens:
        return 0
    found = 0
    with Path(csv_path).open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        index = header.index("address") if "address" in header else None
        for record in reader:
            values = [record[index]] if index is not None and index < len(record) else record
            found += any(v.strip().lower() in tokens for v in values)
    return found


def run_handoff_file_qa(
    csv_path: Path,
    manifest_path: Path,
    *,
    home: Path,
    required_fields: list[str] | tuple[str, ...] = (),
    build_docs: bool = True,
    suite_name: str = "handoff_file",
) -> QAResult:
    """Validate a file-drop handoff (write_file_drop's CSV + manifest) before it is released.

    The CSV is streamed once into a private temporary SQLite file beside it (hashed while read,
    LOAD_CHUNK_ROWS rows per insert: no DataFrame of the file) and validated there with GX's
    SQL data source, so cross-row checks (unique customer, unique address) see the whole file.
    The temporary file is deleted before this returns. The manifest's sha256 is compared with
    the bytes read (a check computed here, declared in the suite's meta.computed_checks).
    """
    import tempfile

    started = time.perf_counter()
    data = _read_suite_json(suite_name)
    manifest = _read_manifest(manifest_path)
    fields = list(dict.fromkeys(required_fields))
    for name in fields:
        if name not in PERSONALISATION_FIELDS:  # whitelisted identifiers reach the SQL
            raise ValueError(f"required field {name!r} is not a personalisation field")
    raw_label = str(manifest.get("run_id") or Path(csv_path).stem)
    label = f"{suite_name}-{re.sub(r'[^A-Za-z0-9._-]', '_', raw_label)[:100]}"

    folder = Path(csv_path).resolve().parent
    with tempfile.TemporaryDirectory(dir=folder, prefix=".qa-") as scratch:  # mode 0700
        db_path = Path(scratch) / "handoff.sqlite"
        header, sha = _load_csv(Path(csv_path), db_path)
        text = {
            "manifest_rows": manifest["rows"],
            "manifest_columns": ", ".join(manifest["columns"]),
            "header_fields": len(header),
        }
        groups, thresholds, critical, skipped = _expand(
            data, text, {"header_fields": str(len(header))}, extra_for_each={
                "required_field": [(f, {"field": f}, {"field": f}) for f in fields],
            },
        )
        parameters = {
            "manifest_rows": int(manifest["rows"]),
            "manifest_columns": [*manifest["columns"], FIELD_COUNT_COLUMN],
        }
        suite_json = {k: v for k, v in data.items() if k != "expectations"}
        suite_json["name"] = f"{data['name']}-file"
        suite_json["expectations"] = groups.get("", [])
        output = _validate(
            f"sqlite:///{db_path}",
            [_Job("handoff_file", suite_json, table="handoff_file")],
            parameters,
            label=label,
            home=home,
            build_docs=build_docs,
        )
    computed: list[CheckResult] = []
    for check in data.get("meta", {}).get("computed_checks", []):
        if check.get("name") != "sha256_matches_manifest":
            raise SuiteError(f"suite {suite_name}: unknown computed check {check.get('name')!r}")
        computed.append(CheckResult(
            name="sha256_matches_manifest", expectation="campaignops.sha256",
            critical=bool(check.get("critical", True)), passed=sha == manifest["sha256"],
            observed="matches" if sha == manifest["sha256"] else "differs",
            threshold=str(check.get("threshold", "")),
        ))
    leaked = _csv_addresses_in(Path(csv_path), _at_tokens(output.written))
    if leaked:
        _remove_output(output)
        raise RuntimeError(
            f"QA output contained {leaked} handoff addresses; removed it (a bug in campaignops.qa)"
        )
    return _result(suite_name, output, critical, thresholds, started, skipped, computed)


# --------------------------------------------------------------------------- rendering


def _md(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(result: QAResult) -> str:
    """The QA result as a Markdown table (for a Prefect markdown artifact)."""
    verdict = "PASSED" if result.passed else "BLOCKED"
    lines = [
        f"## QA suite `{result.suite}`: {verdict}",
        "",
        f"{len(result.checks)} checks, {len(result.failed_critical)} critical failed, "
        f"{len(result.warnings)} warnings, {result.seconds:.2f} s.",
        "",
        "| check | level | observed | threshold | verdict |",
        "|---|---|---|---|---|",
    ]
    for c in result.checks:
        level = "critical" if c.critical else "warning"
        observed = "n/a" if c.observed is None else c.observed
        if c.passed:
            mark = "pass"
        elif c.error:
            mark = f"**ERROR** ({c.error})"
        else:
            mark = "**FAIL**" if c.critical else "**WARN**"
        lines.append(f"| {_md(c.name)} | {level} | {_md(observed)} | {_md(c.threshold)} | {_md(mark)} |")
    if result.skipped:
        lines += ["", "Not applicable: " + "; ".join(_md(s) for s in result.skipped) + "."]
    if result.data_docs is not None:
        lines += ["", f"Great Expectations Data Docs: [{_md(result.data_docs.name)}]"
                      f"({Path(result.data_docs).resolve().as_uri()}) (`{_md(result.data_docs)}`)."]
    return "\n".join(lines) + "\n"
