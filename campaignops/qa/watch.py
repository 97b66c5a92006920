"""The watch's two QA checks: what moved since the campaign's recent runs (docs/watch.md).

They are computed from campaignops' own per-run counts (campaignops.watch), not by a GX
suite: warnings unless the brief's ``watch.critical`` is true, each with the numbers that
explain it. A warning bypasses a standing approval, so a person decides.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy.engine import Engine

from campaignops import watch
from campaignops.qa.results import CheckResult, QAResult


def watch_checks(c: watch.Comparison) -> tuple[list[CheckResult], list[str]]:
    """The checks that apply to the comparison, and the skipped ones with why."""
    if c.base_run_id is None:
        why = "no previous sent run of the campaign"
        return [], [f"{watch.PSI_CHECK}: {why}", f"{watch.CHURN_CHECK}: {why}"]
    psi_flags = c.psi_flags
    worst = max(c.shifts, key=lambda s: s.psi, default=None)
    psi_observed = ("; ".join(s.line() for s in psi_flags) if psi_flags
                    else f"largest PSI {worst.psi:.3f} ({worst.dimension})" if worst else "no composition")
    churn_flags = c.churn_flags
    moved = sum(x.count for x in c.churn)
    churn_observed = ("; ".join(x.line() for x in churn_flags) if churn_flags
                      else f"{moved:,} entered or left in all, no cause beyond tolerance")
    return [
        CheckResult(watch.PSI_CHECK, "campaignops.watch", c.critical, not psi_flags, psi_observed,
                    f"PSI < {c.psi_warning:g} per dimension against {len(c.recent_run_ids)} recent sent run(s)"),
        CheckResult(watch.CHURN_CHECK, "campaignops.watch", c.critical, not churn_flags, churn_observed,
                    f"each cause < {c.churn_warning_percent:g} % of the previous audience "
                    f"({c.base_audience:,}) or < {c.churn_min_count:,} people"),
    ], []


def add_watch_checks(engine: Engine, run_id: str, result: QAResult) -> QAResult:
    """The suite's result with the watch's checks added (a critical one failing blocks the run)."""
    checks, skipped = watch_checks(watch.compare(engine, run_id))
    failed = [c for c in checks if not c.passed]
    critical = [c for c in failed if c.critical]
    return dataclasses.replace(
        result, passed=result.passed and not critical, checks=[*result.checks, *checks],
        warnings=[*result.warnings, *(c for c in failed if not c.critical)],
        failed_critical=[*result.failed_critical, *critical], skipped=[*result.skipped, *skipped])
