"""Lifecycle tasks: score every customer in the warehouse, announce the transitions, the funnel.

They run in the ``lifecycle-scoring`` flow (flows/lifecycle.py). One event per scoring run and
target stage, with the count; never one per person, never a name or address.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.events import emit_event

from campaignops.lifecycle.model import load_model
from campaignops.lifecycle.report import lifecycle_report, sla_report
from campaignops.lifecycle.scoring import ScoringResult, score_customers, transitions
from campaignops.resources import open_resources
from campaignops.schema import lifecycle_history
from tasks.common import RETRY_DELAYS, TASK_RETRIES, retry_transient

TRANSITIONED = "campaignops.lifecycle.transitioned"
SLA_BREACHED = "campaignops.lifecycle.sla_breached"


@task(name="score-lifecycle", retries=TASK_RETRIES, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_transient)
def score_lifecycle(model_path: str | None = None, full: bool = False) -> str:
    """Score in SQL from the watermark on (everyone when full); history rows for the stage changes; the id."""
    r = open_resources()
    return score_customers(r.warehouse.engine, load_model(model_path), full=full).scoring_id


def emit_transitions(result: ScoringResult) -> list[str]:
    """One campaignops.lifecycle.transitioned event per target stage entered in this run."""
    sent = []
    for stage, count in result.entered.items():
        emit_event(event=TRANSITIONED,
                   resource={"prefect.resource.id": f"campaignops.lifecycle.stage.{stage}",
                             "prefect.resource.name": stage, "campaignops.stage": stage},
                   payload={"scoring_id": result.scoring_id, "stage": stage, "count": count,
                            "model_version": result.model_version, "as_of": result.as_of.isoformat()})
        sent.append(stage)
    return sent


@task(name="announce-transitions")
def announce_transitions(scoring_id: str, model_path: str | None = None) -> dict[str, int]:
    """Emit the run's transition events (counts only); entered per stage."""
    r = open_resources()
    with r.warehouse.engine.connect() as conn:
        entered, backward = transitions(conn, scoring_id)
        as_of = conn.execute(sa.select(sa.func.max(lifecycle_history.c.at)).where(
            lifecycle_history.c.scoring_id == scoring_id)).scalar_one()
    result = ScoringResult(scoring_id, load_model(model_path).version, as_of or dt.datetime.now(dt.UTC),
                           sum(entered.values()), entered, backward)
    emit_transitions(result)
    return {**entered, "backward": backward}


@task(name="publish-funnel")
def publish_funnel(scoring_id: str, days: int = 30) -> str:
    """The funnel (per stage: now, entered and converted in the last `days`, median days) as a table."""
    r = open_resources()
    report = lifecycle_report(r.warehouse.engine, dt.datetime.now(dt.UTC).replace(tzinfo=None)
                              - dt.timedelta(days=days))
    rows = [{"stage": s.stage, "customers": s.customers, f"entered ({days} d)": s.entered,
             "moved on": s.converted,
             "conversion": "-" if s.conversion is None else f"{s.conversion:.1%}",
             "median days in stage": "-" if s.median_days is None else f"{s.median_days:.1f}"}
            for s in report.stages]
    key = "lifecycle-funnel"
    create_table_artifact(key=key, table=rows, description=f"lifecycle funnel after scoring {scoring_id}")
    return key


@task(name="check-sla")
def check_sla(model_path: str | None = None, days: int = 7) -> int:
    """MQLs waiting past the model's SLA; an event with the count when there are any."""
    r = open_resources()
    model = load_model(model_path)
    report = sla_report(r.warehouse.engine, model, dt.datetime.now(dt.UTC).replace(tzinfo=None)
                        - dt.timedelta(days=days))
    if report.breached:
        emit_sla_breach(report.breached, report.hours, report.waiting)
    return report.breached


def emit_sla_breach(breached: int, hours: float, waiting: int) -> None:
    """campaignops.lifecycle.sla_breached: how many MQLs wait past the SLA (counts only)."""
    emit_event(event=SLA_BREACHED, resource={"prefect.resource.id": "campaignops.lifecycle.sla.mql"},
               payload={"breached": breached, "waiting": waiting, "sla_hours": hours})
