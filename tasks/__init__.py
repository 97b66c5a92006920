"""Prefect tasks: thin, retryable wrappers around campaignops.steps (testable via .fn())."""

from tasks.approval import prepare_approval, record_decision, record_expiry
from tasks.handoff import hand_off_audience, record_contact_history
from tasks.intake import accept_brief
from tasks.qa import check_audience
from tasks.segmentation import segment_audience

__all__ = [
    "accept_brief",
    "segment_audience",
    "check_audience",
    "prepare_approval",
    "record_decision",
    "record_expiry",
    "hand_off_audience",
    "record_contact_history",
]
