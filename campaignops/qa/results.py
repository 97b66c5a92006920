"""QA verdicts: GX results read into typed checks, and kept free of personal data.

Validation runs with ``SUMMARY`` and ``partial_unexpected_count: 0`` and the query checks
count rows only; every kept result (``QAResult``, the stored JSON, Data Docs) is scrubbed of
unexpected-value lists and then searched for the guarded data's addresses before it is
returned: a hit removes the output and raises (fail closed).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops.qa.suites import COUNT_ONLY_TYPE

RESULT_FORMAT: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 0}


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


def scrub(value: Any) -> Any:
    """Drop every key that may carry row values, recursively."""
    if isinstance(value, dict):
        return {
            k: scrub(v)
            for k, v in value.items()
            if not (isinstance(k, str) and _FORBIDDEN_RESULT_KEYS.search(k))
        }
    if isinstance(value, list):
        return [scrub(v) for v in value]
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


def scrub_validation_result(result: Any) -> None:
    """Scrub an ExpectationSuiteValidationResult in place."""
    for r in result.results:
        r.result = scrub(dict(r.result or {}))
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


def check_results(
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


def at_tokens(paths: list[Path]) -> set[str]:
    tokens: set[str] = set()
    for path in paths:
        for token in _AT_TOKEN_RE.findall(path.read_bytes()):
            text = token.decode("utf-8", "replace").strip().lower()
            for candidate in (text, text.strip("'.:`")):
                if "@" in candidate and len(candidate) <= 254:
                    tokens.add(candidate)
    return tokens


def count_leaks(engine: Engine, found: set[str], queries: list[tuple[str, dict[str, Any]]]) -> int:
    """Rows whose address is among the @-tokens found in outputs (each query counts rows)."""
    tokens = sorted(found)
    if not tokens:
        return 0
    leaked = 0
    with engine.connect() as conn:
        for text, params in queries:
            stmt = sa.text(text).bindparams(sa.bindparam("tokens", expanding=True))
            for start in range(0, len(tokens), 500):
                leaked += int(
                    conn.execute(stmt, {**params, "tokens": tokens[start : start + 500]}).scalar_one()
                )
    return leaked
