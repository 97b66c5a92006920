"""Prefect tasks: thin, retryable wrappers around campaignops.steps (testable via .fn())."""

from tasks.approval import (
    open_wait,
    prepare_approval,
    record_decision,
    try_standing_approval,
)
from tasks.handoff import hand_off_audience, publish_kpis, record_contact_history
from tasks.intake import accept_brief
from tasks.qa import check_audience
from tasks.segmentation import segment_audience

__all__ = [
    "accept_brief",
    "segment_audience",
    "check_audience",
    "prepare_approval",
    "try_standing_approval",
    "open_wait",
    "record_decision",
    "hand_off_audience",
    "record_contact_history",
    "publish_kpis",
]
