"""The KPI metric vocabulary: the few outcomes campaignops can measure from the data model.

A brief's ``kpi.metric`` names one of them (or a listed alias); intake refuses any other
name. Each metric is a per-recipient yes/no computed in the warehouse: the customer's
timestamp column is later than the run's send (docs/results.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One measurable outcome: the customers' column that must be later than the send."""

    name: str
    column: str
    definition: str


METRICS = {
    m.name: m for m in (
        Metric("purchase_after_send", "last_purchase_at",
               "customers.last_purchase_at is later than the send"),
        Metric("open_after_send", "last_open_at", "customers.last_open_at is later than the send"),
    )
}
# Names briefs already use, read as the metric they measure.
ALIASES = {
    "repeat_purchases": "purchase_after_send",
    "purchases": "purchase_after_send",
    "opens": "open_after_send",
    "monthly_open_rate": "open_after_send",
}


def resolve(name: str) -> Metric | None:
    """The metric a brief's kpi.metric names (directly or by alias), or None."""
    return METRICS.get(ALIASES.get(name, name))


def known_names() -> list[str]:
    """Every accepted metric name, canonical ones first."""
    return [*METRICS, *ALIASES]
