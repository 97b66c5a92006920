"""Lifecycle operations: sales acceptance, the SLA, the report, the CLI, the flow's events."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from campaignops import migrations
from campaignops.cli import main
from campaignops.errors import LifecycleRefused, NotFound
from campaignops.lifecycle.model import DEFAULT_MODEL, load_model
from campaignops.lifecycle.report import accept, lifecycle_report, sla_report
from campaignops.lifecycle.scoring import score_customers
from campaignops.schema import customers, engagement_events, lifecycle_history, lifecycle_scores
from tests.factories import build_warehouse, customer

NOW = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def _mql(cid: int, at: dt.datetime) -> dict[str, Any]:
    """35 fit points + a fresh open (25): an MQL at 60 when scored at `at`."""
    return customer(cid, last_open_at=at, last_purchase_at=None, lifetime_value=Decimal(600))


def _lead(cid: int) -> dict[str, Any]:
    return customer(cid, last_open_at=None, last_purchase_at=None, lifetime_value=Decimal(600))  # 35


@pytest.mark.unit
def test_accept_moves_an_mql_to_sql_once_and_rescoring_keeps_it(sqlite_url: str) -> None:
    entered = NOW - dt.timedelta(hours=5)
    engine = build_warehouse(sqlite_url, [_mql(1, entered), _mql(2, entered), _lead(3)])
    model = load_model()
    score_customers(engine, model, entered)
    assert accept(engine, 1, "dana.sales", now=NOW) == ("mql", "sql")
    with pytest.raises(LifecycleRefused):
        accept(engine, 1, "dana.sales", now=NOW)  # already an SQL
    with pytest.raises(LifecycleRefused):
        accept(engine, 3, "dana.sales", now=NOW)  # a lead is not an MQL
    with pytest.raises(NotFound):
        accept(engine, 99, "dana.sales", now=NOW)
    again = score_customers(engine, model, entered + dt.timedelta(hours=1))
    assert again.entered == {}  # the SQL stays an SQL, nobody else moved
    with engine.connect() as conn:
        stages = {int(c): str(st) for c, st in conn.execute(
            sa.select(lifecycle_scores.c.customer_id, lifecycle_scores.c.stage))}
        acc = conn.execute(sa.select(lifecycle_history).where(lifecycle_history.c.reason == "sales_accepted")).all()
    assert stages == {1: "sql", 2: "mql", 3: "lead"}
    assert [(r.customer_id, r.actor, r.scoring_id) for r in acc] == [(1, "dana.sales", None)]


@pytest.mark.unit
def test_sla_counts_late_acceptances_and_waiting_breaches(sqlite_url: str) -> None:
    early, recent = NOW - dt.timedelta(hours=5), NOW - dt.timedelta(hours=1)
    engine = build_warehouse(sqlite_url, [_mql(1, early), _mql(2, early)])
    model = load_model()
    score_customers(engine, model, early)
    with engine.begin() as conn:  # a third customer becomes an MQL an hour ago
        conn.execute(sa.insert(customers), [_mql(3, recent)])
    score_customers(engine, model, recent)
    accept(engine, 1, "dana.sales", now=NOW)   # after 5 h: late
    accept(engine, 3, "dana.sales", now=NOW)   # after 1 h: within
    r = sla_report(engine, model, NOW - dt.timedelta(days=1), now=NOW)
    assert (r.accepted, r.within, r.late, r.waiting, r.breached) == (2, 1, 1, 1, 1)


@pytest.mark.unit
def test_report_funnel_flows_conversion_and_median(sqlite_url: str) -> None:
    t0 = NOW - dt.timedelta(days=3)
    engine = build_warehouse(sqlite_url, [_mql(1, t0), _mql(2, t0), _lead(3)])
    score_customers(engine, load_model(), t0)
    accept(engine, 1, "dana.sales", now=t0 + dt.timedelta(hours=2))
    accept(engine, 2, "dana.sales", now=t0 + dt.timedelta(hours=6))
    rep = lifecycle_report(engine, NOW - dt.timedelta(days=7), NOW)
    by = {s.stage: s for s in rep.stages}
    assert (by["mql"].customers, by["sql"].customers, by["lead"].customers) == (0, 2, 1)
    assert by["mql"].entered == 2 and by["mql"].converted == 2 and by["mql"].conversion == 1.0
    assert by["mql"].median_days == pytest.approx(4 / 24, abs=1e-4)  # median of 2 h and 6 h
    assert ("mql", "sql", 2) in rep.flows and ("-", "lead", 1) in rep.flows


@pytest.mark.unit
def test_cli_score_report_accept_sla(sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", sqlite_url)
    build_warehouse(sqlite_url, [_mql(1, NOW), _lead(2)]).dispose()
    model = tmp_path / "model.yaml"  # the MQL threshold a little lower: the open decays while the test runs
    model.write_text(DEFAULT_MODEL.read_text().replace("min_score: 60", "min_score: 55"))
    run = CliRunner()
    out = run.invoke(main, ["lifecycle", "score", "--local", "--model", str(model)])
    assert out.exit_code == 0 and "1 entered mql" in out.output and "1 entered lead" in out.output, out.output
    out = run.invoke(main, ["lifecycle", "accept", "1", "--as", "dana.sales"])
    assert out.exit_code == 0 and "mql -> sql" in out.output, out.output
    out = run.invoke(main, ["lifecycle", "accept", "2", "--as", "dana.sales"])
    assert out.exit_code == LifecycleRefused.exit_code and out.output.count("\n") == 1, out.output
    out = run.invoke(main, ["lifecycle", "report", "--days", "7"])
    assert out.exit_code == 0 and "2 customers scored" in out.output, out.output
    out = run.invoke(main, ["lifecycle", "sla", "--no-event"])
    assert out.exit_code == 0 and "1 within the SLA" in out.output, out.output
    out = run.invoke(main, ["lifecycle", "score", "--local", "--model", "nope.yaml"])
    assert out.exit_code == 16, out.output


@pytest.mark.unit
def test_synthetic_engagement_events_at_plausible_rates(sqlite_url: str) -> None:
    from campaignops.engagement import RATES, generate_engagement_events
    from campaignops.synthetic import init_warehouse
    from campaignops.warehouse import make_engine

    engine = make_engine(sqlite_url)
    summary = init_warehouse(engine, customers=2000, seed=7)
    n = generate_engagement_events(engine, summary.as_of, seed=7, chunk=700)
    with engine.connect() as conn:
        per_type = {str(k): int(v) for k, v in conn.execute(
            sa.select(engagement_events.c.event_type, sa.func.count()).group_by(engagement_events.c.event_type))}
        newest = conn.execute(sa.select(sa.func.max(engagement_events.c.occurred_at))).scalar_one()
    assert sum(per_type.values()) == n and set(per_type) == set(RATES)
    assert per_type["email_open"] > per_type["email_click"] > per_type["purchase"]
    assert 1 < n / 2000 < 15 and newest <= summary.as_of
    assert generate_engagement_events(engine, summary.as_of, seed=7, chunk=700) == n  # same inputs, same events
    migrations.upgrade(engine)
    result = score_customers(engine, load_model(), summary.as_of)
    assert result.used_events and result.scored == 2000


@pytest.mark.flow
def test_flow_emits_one_event_per_target_stage_and_the_funnel(
        prefect_api: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    import tasks.lifecycle
    from flows.lifecycle import lifecycle_scoring

    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", sqlite_url)
    build_warehouse(sqlite_url, [_mql(1, NOW), _mql(2, NOW), _lead(3)]).dispose()
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks.lifecycle, "emit_event", lambda **kw: events.append(kw))
    model = tmp_path / "model.yaml"
    model.write_text(DEFAULT_MODEL.read_text().replace("min_score: 60", "min_score: 55"))
    out = lifecycle_scoring(model_path=str(model))
    assert out["entered"] == {"lead": 1, "mql": 2} and out["backward"] == 0
    assert [(e["event"], e["payload"]["stage"], e["payload"]["count"]) for e in events] == [
        ("campaignops.lifecycle.transitioned", "lead", 1), ("campaignops.lifecycle.transitioned", "mql", 2)]
    text = json.dumps(events, default=str)
    assert "@example.com" not in text and "Name1" not in text
    assert lifecycle_scoring(model_path=str(model))["entered"] == {} and len(events) == 2  # nothing changed: no event
    with get_client(sync_client=True) as client:
        (art,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["lifecycle-funnel"])),
                                       limit=1)
    assert "mql" in str(art.data) and "@" not in str(art.data)


@pytest.mark.unit
def test_rule_fields_scored_stage_score_and_entered_within_days(sqlite_url: str) -> None:
    from campaignops.rules import compile_rule, parse_rule

    t0 = NOW - dt.timedelta(days=3)
    engine = build_warehouse(sqlite_url, [_mql(1, t0), _lead(2), _lead(3)])
    score_customers(engine, load_model(), t0)
    with engine.begin() as conn:  # customer 2 opens today: an MQL entered now
        conn.execute(sa.update(customers).where(customers.c.customer_id == 2).values(last_open_at=NOW))
    score_customers(engine, load_model(), NOW)
    rule = parse_rule({"all": [{"field": "scored_stage", "op": "eq", "value": "mql"},
                               {"field": "stage_entered_at", "op": "within_days", "value": 1}]}, intake=True)
    with engine.connect() as conn:
        new_mqls = set(conn.execute(sa.select(customers.c.customer_id).where(compile_rule(rule, NOW))).scalars())
        high = set(conn.execute(sa.select(customers.c.customer_id).where(compile_rule(
            parse_rule({"field": "lifecycle_score", "op": "gte", "value": 50}), NOW))).scalars())
    assert new_mqls == {2} and high == {1, 2}


@pytest.mark.unit
def test_batch_accept_from_a_file_is_one_audited_transaction(sqlite_url: str, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    from campaignops import audit

    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", sqlite_url)
    entered = NOW - dt.timedelta(hours=1)
    engine = build_warehouse(sqlite_url, [*(_mql(i, entered) for i in range(1, 6)), _lead(6)])
    score_customers(engine, load_model(), entered)
    batch = tmp_path / "accepted.txt"
    batch.write_text("# accepted in Monday's review\n1\n2\n3\n3\n6\n99\n")
    run = CliRunner()
    assert run.invoke(main, ["audit", "init-key"]).exit_code == 0
    out = run.invoke(main, ["lifecycle", "accept", "--file", str(batch), "--as", "dana.sales"])
    assert out.exit_code == 0, out.output
    assert "3 accepted into sql by dana.sales; skipped: 1 not an MQL, 1 never scored, 1 repeated" in out.output
    with engine.connect() as conn:
        stages = {int(c): str(st) for c, st in conn.execute(
            sa.select(lifecycle_scores.c.customer_id, lifecycle_scores.c.stage))}
        acc = conn.execute(sa.select(lifecycle_history.c.customer_id, lifecycle_history.c.actor).where(
            lifecycle_history.c.reason == "sales_accepted").order_by(lifecycle_history.c.customer_id)).all()
    assert [stages[i] for i in range(1, 7)] == ["sql", "sql", "sql", "mql", "mql", "lead"]
    assert [tuple(r) for r in acc] == [(1, "dana.sales"), (2, "dana.sales"), (3, "dana.sales")]
    (rec,) = audit.of_step(engine, "lifecycle")
    assert rec.action == "accepted" and rec.details["accepted"] == 3 and rec.details["wrong_stage"] == 1
    batch.write_text("1\nnot-an-id\n")
    out = run.invoke(main, ["lifecycle", "accept", "--file", str(batch), "--as", "dana.sales"])
    assert out.exit_code == 1 and "line 2: not a customer id" in out.output, out.output
    engine.dispose()
