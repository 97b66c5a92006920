"""Symmetric contact pressure: the holdout's would-be sends count towards the frequency cap
exactly as sends do, so the control share holds over recurring runs (issue 21, point 3)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from campaignops import qa, segmentation
from campaignops.approvers import add_approver
from campaignops.errors import QAFailed
from campaignops.esp.sandbox import EspSandbox
from campaignops.intake import accept_brief
from campaignops.qa.guide import GUIDE, explain
from campaignops.runs import utcnow
from campaignops.schema import audience, contact_history, holdout_contacts
from campaignops.settings import load_settings
from tests.conftest import TOKEN
from tests.factories import build_warehouse, customer
from tests.flowkit import (
    WINBACK,
    WINBACK_APPROVERS,
    approved_run,
    hand_off,
    record_history,
    warehouse,
)

pytestmark = pytest.mark.flow
N = 4000  # customers; the first half already had one email this week


@pytest.fixture(params=["sqlite", "sqlite-aggregate",
                        pytest.param("postgresql", marks=pytest.mark.integration)])
def env(request: pytest.FixtureRequest, tmp_path: Path, sandbox: EspSandbox,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A warehouse of N customers, half of them contacted once yesterday; the sandbox ESP."""
    url = (request.getfixturevalue("pg_url") if request.param == "postgresql"
           else f"sqlite:///{tmp_path / 'warehouse.db'}")
    if request.param == "sqlite-aggregate":  # the cap as one aggregate (PostgreSQL's plan)
        monkeypatch.setattr(segmentation, "history_probe", lambda wh: False)
    yesterday = utcnow() - dt.timedelta(days=1)
    build_warehouse(url, [customer(i) for i in range(1, N + 1)],
                    history=[{"customer_id": i, "sent_at": yesterday} for i in range(1, N // 2 + 1)]
                    ).dispose()
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", url)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_URL", sandbox.url)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", TOKEN)
    engine = warehouse().engine
    keys = {name: add_approver(engine, name) for name in WINBACK_APPROVERS.values()}
    data = yaml.safe_load(WINBACK.read_text(encoding="utf-8"))
    data["expected_audience"] = {"min": 1, "max": 100_000}  # cap 2 per 7 days, 10 % holdout
    brief = tmp_path / "winback-small.yaml"
    brief.write_text(yaml.safe_dump(data), encoding="utf-8")
    yield {"engine": engine, "keys": keys, "brief": brief}


def _count(engine: sa.Engine, table: sa.Table, *where: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one())


def test_holdout_is_capped_like_the_treated_and_the_control_share_holds(env: dict[str, Any]) -> None:
    """Run 1 sends; its holdout is recorded as would-be sends; run 2 caps both sides alike."""
    engine, brief = env["engine"], env["brief"]
    first, _ = approved_run(env["keys"], brief)
    hand_off(first)
    sent = record_history(first)
    control_1 = _count(engine, audience, audience.c.run_id == first, audience.c.outcome == "control")
    assert 300 < control_1 < 500 and sent == N - control_1
    # The holdout went to campaignops' own log, never to the warehouse's contact_history.
    assert _count(engine, holdout_contacts, holdout_contacts.c.run_id == first) == control_1
    assert _count(engine, contact_history, contact_history.c.run_id == first) == sent
    with engine.connect() as conn:
        held = set(conn.execute(sa.select(holdout_contacts.c.customer_id)
                                .where(holdout_contacts.c.run_id == first)).scalars())
        sent_to = set(conn.execute(sa.select(contact_history.c.customer_id)
                                   .where(contact_history.c.run_id == first)).scalars())
    assert not held & sent_to

    wh = warehouse()
    second = "00000000-0000-4000-8000-000000000002"
    accept_brief(wh, second, str(brief))
    wf = segmentation.segment_audience(wh, second)
    capped = next(s["removed"] for s in wf.steps if s["reason"] == "frequency_cap")
    # Everyone contacted yesterday now has 2 contacts this week, treated and holdout alike
    # (before: the holdout was never capped, so it kept its place and grew as a share).
    assert capped == N // 2
    assert wf.eligible == N // 2
    verdict, result = qa.check_audience(wh, second, load_settings().home)  # not blocked
    share = next(c for c in result.checks if c.name == "control_share")
    assert share.passed and isinstance(share.observed, float) and 7.0 < share.observed < 13.0
    assert verdict.passed


def test_a_failed_check_says_what_it_means_and_what_to_do(env: dict[str, Any]) -> None:
    """QA's blocking line names the check, what it means, what to do and the docs entry."""
    engine, brief = env["engine"], env["brief"]
    wh = warehouse()
    run_id = "00000000-0000-4000-8000-000000000003"
    accept_brief(wh, run_id, str(brief))
    segmentation.segment_audience(wh, run_id)
    with engine.begin() as conn:  # a holdout twice its size: the share check must fail
        ids = conn.execute(sa.select(audience.c.row_id).where(
            audience.c.run_id == run_id, audience.c.outcome == "send").limit(N // 10)).scalars().all()
        conn.execute(sa.update(audience).where(audience.c.row_id.in_(ids))
                     .values(outcome="control", cell=None, offer_code=None))
    with pytest.raises(QAFailed) as info:
        qa.check_audience(wh, run_id, load_settings().home)
    line = str(info.value)
    assert "\n" not in line and line.startswith(f"QA blocked run {run_id}: control_share (observed ")
    assert "treated and holdout are no longer comparable" in line
    assert "check control_group.percent" in line and line.endswith("(docs/qa.md#control_share)")


def test_every_audience_check_has_a_guide_entry_and_a_docs_heading() -> None:
    """The guide, the suite and docs/qa.md name the same checks."""
    suite = (Path(qa.EXPECTATIONS_DIR) / "audience.json").read_text(encoding="utf-8")
    import json

    names = {e["meta"]["name"] for e in json.loads(suite)["expectations"]}
    assert names == set(GUIDE)
    docs = (Path(__file__).resolve().parents[1] / "docs" / "qa.md").read_text(encoding="utf-8")
    assert all(f"\n### {name}\n" in docs for name in GUIDE)
    assert explain("cell_share[1]").endswith("(docs/qa.md#cell_share)")
    assert explain("unknown_check") == "see docs/qa.md#unknown_check"
