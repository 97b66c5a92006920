"""QA: Great Expectations suites validate the data where it lives; a critical failure blocks the run.

The suites live as JSON in ``expectations/``, one per thing they guard:

* ``audience.json`` (:func:`run_audience_qa`, the pipeline's QA step :func:`check_audience`):
  one run's materialised audience in ``co_audience``;
* ``warehouse_health.json`` (:func:`run_warehouse_qa`): the warehouse's own tables;
* ``handoff_file.json`` (:func:`run_handoff_file_qa`): a file drop's CSV and manifest.

Modules: ``suites`` (files, loading, expansion), ``gx`` (running GX), ``results`` (typed
verdicts, scrubbing of personal data), one module per suite.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from campaignops import audit, runs
from campaignops.errors import QAFailed
from campaignops.qa.audience import run_audience_qa, share_tolerance
from campaignops.qa.guide import explain
from campaignops.qa.handoff_file import run_handoff_file_qa
from campaignops.qa.health import WAREHOUSE_TABLES, run_warehouse_qa
from campaignops.qa.results import CheckResult, QAResult
from campaignops.qa.sms import add_sms_checks
from campaignops.qa.suites import EXPECTATIONS_DIR, SuiteError, load_suite
from campaignops.qa.watch import add_watch_checks
from campaignops.warehouse import Warehouse

__all__ = [
    "EXPECTATIONS_DIR", "WAREHOUSE_TABLES", "CheckResult", "QAResult", "QAVerdict", "SuiteError",
    "check_audience", "load_suite", "recorded_verdict", "run_audience_qa", "run_handoff_file_qa",
    "run_warehouse_qa", "share_tolerance",
]
SYSTEM = "campaignops"
DRIFT_CHECK = "size_within_drift_of_recent_runs"


@dataclass(frozen=True)
class QAVerdict:
    """The audience suite's verdict on one run, as audited (counts and check names only)."""

    run_id: str
    suite: str
    passed: bool
    checks: int
    failed_critical: tuple[str, ...]
    warnings: tuple[str, ...]
    applied: tuple[str, ...]  # every check that ran (the drift check only with recent runs)
    qa_digest: str  # what an approval binds to: every check's verdict and observed value
    data_docs: str | None
    seconds: float
    # the send digest (campaignops.handoff.outbox) of the audience QA passed, computed once
    # here so each stage's packet binds to it without re-reading the audience; the handoff
    # recomputes it from what it stages and refuses on any difference
    send_digest: str = ""

    @property
    def drifted(self) -> bool:
        """True when the size-drift check warned."""
        return DRIFT_CHECK in self.warnings

    def details(self) -> dict[str, object]:
        """The audit record's details."""
        data = asdict(self)
        data.pop("run_id")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def qa_digest(result: QAResult) -> str:
    """SHA-256 over every check's canonical JSON (what an approval is bound to)."""
    checks = [asdict(c) for c in result.checks]
    return hashlib.sha256(json.dumps(checks, sort_keys=True, default=str).encode()).hexdigest()


def check_audience(wh: Warehouse, run_id: str, home: Path) -> tuple[QAVerdict, QAResult]:
    """The QA step: the audience suite on the run's audience; QAFailed (carrying both) when blocked."""
    from campaignops.handoff.outbox import digest_audience  # the handoff package imports qa

    run = runs.get_run(wh.engine, run_id)
    send_at = runs.send_time(run.brief).replace(tzinfo=dt.UTC)
    sms = run.brief.channel == "sms"
    result = run_audience_qa(
        wh, run_id, run.brief, send_at=send_at, home=home.resolve(),
        recent_sizes=runs.recent_sizes(wh.engine, run.campaign_id, run_id),
        suite_name="audience_sms" if sms else "audience",
    )
    if sms:
        result = add_sms_checks(wh.engine, run_id, run.brief, send_at, result)
    result = add_watch_checks(wh.engine, run_id, result)
    verdict = QAVerdict(
        run_id=run_id, suite=result.suite, passed=result.passed, checks=len(result.checks),
        failed_critical=tuple(c.name for c in result.failed_critical),
        warnings=tuple(c.name for c in result.warnings),
        applied=tuple(c.name for c in result.checks), qa_digest=qa_digest(result),
        data_docs=str(result.data_docs) if result.data_docs else None,
        seconds=round(result.seconds, 3),
        send_digest=(digest_audience(wh.engine, run_id, run.brief)[0]
                     if result.passed and not run.dry_run else ""),
    )
    audit.append(wh.engine, run_id=run_id, step="qa", action="passed" if result.passed else "blocked",
                 actor=SYSTEM, details=verdict.details())
    if not result.passed:
        runs.set_status(wh.engine, run_id, runs.QA_BLOCKED)
        detail = "; and ".join(f"{c.name} (observed {c.observed}, expected {c.threshold}): "
                               f"{explain(c.name)}" for c in result.failed_critical)
        raise QAFailed(f"QA blocked run {run_id}: {detail}", verdict=verdict, result=result)
    runs.set_status(wh.engine, run_id, runs.QA_PASSED)
    return verdict, result


def recorded_verdict(wh: Warehouse, run_id: str) -> QAVerdict:
    """The run's latest QA verdict as its audit trail records it."""
    rec = audit.latest(wh.engine, run_id, "qa")
    if rec is None or not audit.genuine(rec):
        raise QAFailed(f"run {run_id} has no signed QA verdict: run QA before approval or handoff")
    d = rec.details
    return QAVerdict(
        run_id=run_id, suite=str(d["suite"]), passed=bool(d["passed"]), checks=int(d["checks"]),
        failed_critical=tuple(d["failed_critical"]), warnings=tuple(d["warnings"]),
        applied=tuple(d["applied"]), qa_digest=str(d["qa_digest"]),
        data_docs=d.get("data_docs"), seconds=float(d["seconds"]),
        send_digest=str(d.get("send_digest") or ""),
    )
