"""Prefect tasks: thin, retryable wrappers around the steps' logic (testable via .fn()).

One module per step, named as the step's logic module in campaignops/: intake,
segmentation, qa, approval, handoff, contact_history (and kpis, results).
"""

from tasks.approval import (
    decide_without_wait,
    expire_wait,
    open_wait,
    prepare_approval,
    record_decision,
)
from tasks.audit import publish_audit_head
from tasks.contact_history import record_contact_history
from tasks.handoff import hand_off_audience
from tasks.intake import accept_brief
from tasks.kpis import publish_kpis
from tasks.preflight import check_handoff_ready
from tasks.qa import check_audience
from tasks.results import refresh_run_results
from tasks.run import close_dry_run, record_failure, resume_run
from tasks.segmentation import segment_audience

__all__ = [
    "accept_brief",
    "segment_audience",
    "check_audience",
    "check_handoff_ready",
    "prepare_approval",
    "decide_without_wait",
    "open_wait",
    "record_decision",
    "expire_wait",
    "hand_off_audience",
    "record_contact_history",
    "publish_kpis",
    "close_dry_run",
    "record_failure",
    "resume_run",
    "publish_audit_head",
    "refresh_run_results",
]
