"""A small exact warehouse and a faulty send through the real steps and the ESP sandbox."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from campaignops.approvers import add_approver
from campaignops.schema import audience, deliveries
from tests.conftest import TOKEN
from tests.factories import brief_dict, build_warehouse, customer
from tests.flowkit import WINBACK_APPROVERS, approved_run, hand_off, record_history

CAMPAIGN = "spring-offer"
CUSTOMERS = 60  # 1..60 customers; 61..65 leads (never matched)


def brief(**overrides: Any) -> dict[str, Any]:
    """The spring brief: two cells; the faulty version gives cell B the wrong offer."""
    data = brief_dict(
        campaign_id=CAMPAIGN, owner="dana.campaigns@example.com",
        cells=[{"name": "A", "percent": 50, "offer_code": "WELCOME10"},
               {"name": "B", "percent": 50, "offer_code": "WELCOME10"}],  # B should be SPRING15
        control_group={"percent": 10, "salt": "spring"},
        approvals=[{"stage": "qa", "approvers": [WINBACK_APPROVERS["qa"]]},
                   {"stage": "business", "approvers": [WINBACK_APPROVERS["business"]]}],
        expected_audience={"min": 0, "max": 1000},
    )
    data.update(overrides)
    return data


def write_brief(path: Path, data: dict[str, Any]) -> Path:
    """The brief as a YAML file."""
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def setup_warehouse(url: str, monkeypatch: pytest.MonkeyPatch, sandbox_url: str) -> dict[str, str]:
    """The exact warehouse, the sandbox and the approvers; their keys."""
    rows = [customer(i) for i in range(1, CUSTOMERS + 1)]
    rows += [customer(i, lifecycle_stage="lead") for i in range(CUSTOMERS + 1, CUSTOMERS + 6)]
    engine = build_warehouse(url, rows, seeds=["proof@seed.example"],
                             as_of=dt.datetime.now(dt.UTC).replace(tzinfo=None))
    engine.dispose()
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", url)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_URL", sandbox_url)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", TOKEN)
    from tests.flowkit import warehouse

    eng = warehouse().engine
    return {name: add_approver(eng, name) for name in WINBACK_APPROVERS.values()}


def send(keys: dict[str, str], brief_path: Path) -> str:
    """A run through intake, segmentation, QA, both approvals, handoff and history; its id."""
    run_id, _ = approved_run(keys, brief_path)
    hand_off(run_id)
    record_history(run_id)
    return run_id


def cells_of(engine: sa.Engine, run_id: str) -> dict[int, str]:
    """customer_id -> cell the run's segmentation drew."""
    with engine.connect() as conn:
        return {int(c): str(cell) for c, cell in conn.execute(
            sa.select(audience.c.customer_id, audience.c.cell).where(
                audience.c.run_id == run_id, audience.c.outcome == "send"))}


def sandbox_customers(sandbox: Any, run_id: str, campaign: str = CAMPAIGN) -> list[int]:
    """The customer ids the ESP sandbox itself recorded as delivered for the run."""
    return sorted(int(r["customer_id"]) for r in sandbox.delivery_rows(campaign, run_id)
                  if not r["seed"])


def delivered(engine: sa.Engine, run_id: str) -> list[int]:
    """Customer ids in co_deliveries the ESP accepted for the run."""
    with engine.connect() as conn:
        return sorted(int(c) for c in conn.execute(sa.select(deliveries.c.customer_id).where(
            deliveries.c.run_id == run_id, deliveries.c.is_seed == sa.false(),
            deliveries.c.outcome == "accepted")).scalars())


def correction_brief(source: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A correction brief: cell B's customers get SPRING15, no holdout, the cap waived."""
    data = brief(campaign_id=f"{CAMPAIGN}-fix", audience=source,
                 cells=[{"name": "fix", "percent": 100, "offer_code": "SPRING15"}],
                 control_group={"percent": 0, "salt": "fix"},
                 frequency_cap={"max_messages": 1, "per_days": 30}, waive_frequency_cap=True)
    data.update(overrides)
    return data


def remediate(keys: dict[str, str], brief_path: Path, incident_id: str) -> str:
    """A correction run of the incident through intake, segmentation, QA, both approvals,
    handoff and history, as the remediate flow's steps run them; its id."""
    run_id, _ = approved_run(keys, brief_path, incident_id)
    hand_off(run_id)
    record_history(run_id)
    return run_id


def faulty_send(db_url: str, sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The faulty spring run (cell B carries the wrong offer), sent to the sandbox: engine,
    run_id, sandbox, tmp and the approvers' keys."""
    keys = setup_warehouse(db_url, monkeypatch, sandbox.url)
    run_id = send(keys, write_brief(tmp_path / "spring.yaml", brief()))
    from tests.flowkit import warehouse

    return {"engine": warehouse().engine, "run_id": run_id, "sandbox": sandbox, "tmp": tmp_path,
            "keys": keys}
