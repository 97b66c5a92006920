"""Expectation suites as versioned JSON files in expectations/, loaded, checked and expanded.

A suite file holds Great Expectations' own format plus campaignops' ``meta`` per check:
``name``, ``critical`` (a failure blocks) or not (a warning), ``threshold`` (the text a
reader sees, formatted from the run's values), ``applies_when`` (a condition the run must
meet, else the check is listed as not applicable) and ``for_each`` (one check per cell,
per required field...). ``expand`` turns templates into the run's concrete checks;
query-based checks carry ``:name`` placeholders filled from values campaignops computes
and validates itself, never raw brief strings.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import great_expectations

EXPECTATIONS_DIR = Path(__file__).resolve().parents[2] / "expectations"

_PLACEHOLDER_RE = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)\b")


class SuiteError(ValueError):
    """A suite file is missing, malformed, or lost expectations while loading."""


def _suite_path(name: str, directory: Path | None) -> Path:
    if not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", name):
        raise SuiteError(f"suite name {name!r} is not a plain lower-case name")
    return (directory or EXPECTATIONS_DIR) / f"{name}.json"


def read_suite_json(name: str, directory: Path | None = None) -> dict[str, Any]:
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


def register_count_only() -> None:
    """Define (once) the count-only subclass; GX registers it under COUNT_ONLY_TYPE."""
    from great_expectations.expectations import registry

    with _COUNT_ONLY_LOCK:
        try:
            registry.get_expectation_impl(COUNT_ONLY_TYPE)
            return
        except Exception:  # noqa: S110 - not registered yet
            pass
        from great_expectations.expectations.core.unexpected_rows_expectation import (
            UnexpectedRowsExpectation,
        )

        class CampaignopsUnexpectedRowCount(UnexpectedRowsExpectation):
            """unexpected_rows_expectation that only counts the rows (no sample fetched)."""

            metric_dependencies = ("unexpected_rows_query.row_count",)

            def _validate(self, metrics: dict[str, Any], runtime_configuration: dict[str, Any] | None = None,
                          execution_engine: Any = None) -> dict[str, Any]:
                count = metrics["unexpected_rows_query.row_count"]
                return {"success": count == 0, "result": {"observed_value": count}}

        assert CampaignopsUnexpectedRowCount.expectation_type == COUNT_ONLY_TYPE


def count_only(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of suite JSON whose unexpected_rows_expectation entries use the count-only type."""
    out = dict(data)
    out["expectations"] = [
        {**e, "type": COUNT_ONLY_TYPE} if e.get("type") == "unexpected_rows_expectation" else e
        for e in data["expectations"]
    ]
    return out


def build_suite(data: dict[str, Any], source: str) -> great_expectations.ExpectationSuite:
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
    data = read_suite_json(name, directory)
    return build_suite(data, str(_suite_path(name, directory)))


def sql_timestamp(value: dt.datetime) -> str:
    """A naive-UTC timestamp literal in SQLAlchemy's SQLite storage format (PostgreSQL reads it)."""
    utc = value.astimezone(dt.UTC).replace(tzinfo=None)
    return "'" + utc.strftime("%Y-%m-%d %H:%M:%S.%f") + "'"


def fill_query(query: str, values: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise SuiteError(f"query placeholder :{key} has no value (known: {', '.join(sorted(values))})")
        return values[key]

    return _PLACEHOLDER_RE.sub(sub, query)


def _rename_parameters(value: Any, suffix: str) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$PARAMETER"}:
            return {"$PARAMETER": f"{value['$PARAMETER']}{suffix}"}
        return {k: _rename_parameters(v, suffix) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename_parameters(v, suffix) for v in value]
    return value


@dataclass(frozen=True)
class Variant:
    """One concrete check made from a ``for_each`` template."""

    suffix: str  # the check is named ``name[suffix]``
    text: dict[str, Any] = field(default_factory=dict)  # extra values for the threshold text
    query: dict[str, str] = field(default_factory=dict)  # extra :placeholder values
    parameter_suffix: str = ""  # appended to each $PARAMETER name: bounds of its own
    column_suffix: str = ""  # appended to kwargs.column


@dataclass
class Expansion:
    """A suite's templates made concrete for one validation."""

    groups: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by meta[group_key]
    thresholds: dict[str, str] = field(default_factory=dict)
    critical: dict[str, bool] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # checks that did not apply, with why


def expand(
    data: dict[str, Any],
    text: dict[str, Any],
    query_values: dict[str, str],
    *,
    conditions: dict[str, str | None] | None = None,
    for_each: dict[str, list[Variant]] | None = None,
    empty_reasons: dict[str, str] | None = None,
    group_key: str | None = None,
) -> Expansion:
    """Templates to concrete expectations, each with its threshold text and criticality.

    ``conditions`` maps each ``applies_when`` a suite may use to None (it applies) or the
    reason it does not; ``for_each`` maps each ``for_each`` to its variants. Any other value
    of either is a SuiteError (fail closed).
    """
    conditions, for_each, empty_reasons = conditions or {}, for_each or {}, empty_reasons or {}
    out = Expansion()
    for template in data["expectations"]:
        meta = template["meta"]
        when = meta.get("applies_when")
        if when is not None:
            if when not in conditions:
                raise SuiteError(f"{meta['name']}: unknown applies_when {when!r} in suite {data['name']}")
            why_not = conditions[when]
            if why_not is not None:
                out.skipped.append(f"{meta['name']}: {why_not}")
                continue
        group = str(meta.get(group_key, "")) if group_key else ""
        if group_key and not group:
            raise SuiteError(f"{meta['name']}: needs meta.{group_key}")
        each = meta.get("for_each")
        variants: list[Variant | None]
        if each is None:
            variants = [None]
        elif each in for_each:
            variants = list(for_each[each])
            if not variants:
                why = empty_reasons.get(each, f"no {each.replace('_', ' ')} to check")
                out.skipped.append(f"{meta['name']}: {why}")
        else:
            raise SuiteError(f"{meta['name']}: unknown for_each {each!r}")
        for v in variants:
            exp = copy.deepcopy(template)
            if v is not None and v.parameter_suffix:
                exp = _rename_parameters(exp, v.parameter_suffix)
            if v is not None and v.column_suffix:
                exp["kwargs"]["column"] = f"{template['kwargs']['column']}{v.column_suffix}"
            name = meta["name"] if v is None else f"{meta['name']}[{v.suffix}]"
            exp["meta"]["name"] = name
            query = exp["kwargs"].get("unexpected_rows_query")
            if isinstance(query, str):
                exp["kwargs"]["unexpected_rows_query"] = fill_query(
                    query, {**query_values, **(v.query if v else {})})
            threshold = str(meta.get("threshold", "")).format(**text, **(v.text if v else {}))
            out.thresholds[name] = exp["meta"]["threshold"] = threshold
            out.critical[name] = bool(meta["critical"])
            out.groups.setdefault(group, []).append(exp)
    return out
