"""Trust nothing the database alone says: each attack a writer with access to the warehouse
database tried (triggers dropped where needed) is refused or detected, and nothing is sent;
on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from campaignops import approval, audit, runs
from campaignops.approvers import add_approver
from campaignops.esp.sandbox import EspSandbox
from campaignops.handoff import UnprovenApproval
from campaignops.schema import approvals, audience, contact_history
from tests.conftest import AUDIT_KEY, TOKEN
from tests.factories import drop_guards
from tests.flowkit import (
    WINBACK,
    WINBACK_APPROVERS,
    approved_run,
    hand_off,
    record_history,
    warehouse,
)

pytestmark = pytest.mark.flow
CAMPAIGN = "winback-lapsed-customers"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def env(request: pytest.FixtureRequest, warehouse_template: Path, sandbox: EspSandbox,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A 20,000-customer warehouse (SQLite copy, or built on a scratch PostgreSQL), the ESP
    sandbox and the winback approvers with their keys."""
    if request.param == "sqlite":
        wh = tmp_path / "warehouse.db"
        shutil.copy(warehouse_template, wh)
        url = f"sqlite:///{wh}"
    else:
        from campaignops.synthetic import init_warehouse
        from campaignops.warehouse import make_engine

        url = request.getfixturevalue("pg_url")
        engine = make_engine(url)
        init_warehouse(engine, customers=20_000, seed=7, progress=False)
        engine.dispose()
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", url)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_URL", sandbox.url)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", TOKEN)
    engine = warehouse().engine
    keys = {name: add_approver(engine, name) for name in WINBACK_APPROVERS.values()}
    yield {"engine": engine, "keys": keys, "sandbox": sandbox, "url": url}


def qa_only_run(env: dict[str, Any]) -> str:
    """A winback run through QA with its qa stage approved; business still to decide."""
    from campaignops import qa
    from campaignops.intake import accept_brief
    from campaignops.segmentation import segment_audience
    from campaignops.settings import load_settings

    wh = warehouse()
    run_id = str(uuid.uuid4())
    accept_brief(wh, run_id, str(WINBACK))
    segment_audience(wh, run_id)
    qa.check_audience(wh, run_id, load_settings().home)
    packet = approval.prepare_approval(wh, run_id, "qa")
    judged = approval.record_decision(wh, run_id, "qa", WINBACK_APPROVERS["qa"], "approve", "",
                                      env["keys"][WINBACK_APPROVERS["qa"]], "test", packet.packet_digest)
    assert judged.accepted
    approval.open_wait(wh, run_id, "business", packet.packet_digest, in_process=False)
    return run_id


def nothing_sent(env: dict[str, Any], run_id: str) -> None:
    assert env["sandbox"].deliveries(CAMPAIGN, run_id) == {}
    with env["engine"].connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(contact_history)
                            .where(contact_history.c.run_id == run_id)).scalar_one() == 0


def test_an_inserted_approval_row_decides_nothing_and_is_reported(env: dict[str, Any]) -> None:
    engine = env["engine"]
    run_id = qa_only_run(env)
    waiting = audit.latest(engine, run_id, "approval:business", ("waiting",))
    assert waiting is not None
    with engine.begin() as conn:  # the forged row, digest copied from the audit's waiting record
        conn.execute(sa.insert(approvals).values(
            run_id=run_id, stage="business", approver=WINBACK_APPROVERS["business"],
            decision="approve", reason=None, packet_digest=waiting.details["packet_digest"],
            decided_at=runs.utcnow()))
    # the wait is not skipped: only a signed record decides a stage
    assert approval.decide_without_wait(warehouse(), run_id, "business",
                                        waiting.details["packet_digest"]) is None
    with pytest.raises(UnprovenApproval, match="stage business has no signed approval") as err:
        hand_off(run_id)
    assert err.value.ignored_rows == 1 and "\n" not in str(err.value)
    actions = [(r.step, r.action) for r in audit.trail(engine, run_id)]
    assert ("handoff", "approval_rows_ignored") in actions and ("handoff", "refused") in actions
    nothing_sent(env, run_id)


def test_an_address_changed_between_the_approvals_is_refused(env: dict[str, Any]) -> None:
    engine = env["engine"]
    run_id = qa_only_run(env)
    with engine.begin() as conn:
        cid = conn.execute(sa.select(sa.func.min(audience.c.customer_id)).where(
            audience.c.run_id == run_id, audience.c.outcome == "send")).scalar_one()
        conn.execute(sa.update(audience).where(audience.c.run_id == run_id,
                                               audience.c.customer_id == cid)
                     .values(email="attacker@evil.example"))
    wh = warehouse()
    packet = approval.prepare_approval(wh, run_id, "business")  # the business approver sees this
    judged = approval.record_decision(wh, run_id, "business", WINBACK_APPROVERS["business"], "approve",
                                      "", env["keys"][WINBACK_APPROVERS["business"]], "test",
                                      packet.packet_digest)
    assert judged.accepted
    with pytest.raises(UnprovenApproval, match="differs from what was approved"):
        hand_off(run_id)  # qa approved another address: the two stages did not approve one thing
    nothing_sent(env, run_id)


@pytest.mark.parametrize("change", ["address", "fields", "cell_offer", "brief"])
def test_anything_changed_after_approval_is_refused(env: dict[str, Any], change: str) -> None:
    engine = env["engine"]
    run_id, _ = approved_run(env["keys"])
    with engine.begin() as conn:
        where = sa.and_(audience.c.run_id == run_id, audience.c.outcome == "send")
        cid = conn.execute(sa.select(sa.func.min(audience.c.customer_id)).where(where)).scalar_one()
        one = sa.and_(where, audience.c.customer_id == cid)
        if change == "address":
            conn.execute(sa.update(audience).where(one).values(email="attacker@evil.example"))
        elif change == "fields":
            conn.execute(sa.update(audience).where(one).values(first_name="Mallory"))
        elif change == "cell_offer":
            conn.execute(sa.update(audience).where(one).values(cell="fifteen_off", offer_code="SPRING15"))
        else:
            row = conn.execute(sa.text("SELECT brief_json FROM co_runs WHERE run_id = :r"),
                               {"r": run_id}).scalar_one()
            data = json.loads(row)
            data["content"]["template_id"] = "phishing-v1"
            conn.execute(sa.text("UPDATE co_runs SET brief_json = :b WHERE run_id = :r"),
                         {"b": json.dumps(data), "r": run_id})
    with pytest.raises(UnprovenApproval, match="differs from what was approved"):
        hand_off(run_id)
    nothing_sent(env, run_id)


@pytest.mark.parametrize("tamper", ["append_approval", "delete_tail", "edit_record"])
def test_a_tampered_audit_stops_the_handoff(env: dict[str, Any], tamper: str) -> None:
    engine = env["engine"]
    if tamper == "append_approval":
        run_id = qa_only_run(env)
    else:
        run_id, _ = approved_run(env["keys"])
    from campaignops.settings import load_settings

    audit.anchor(engine, load_settings().resolved_anchor_file)  # as every run's end does
    drop_guards(engine)
    head = audit.head(engine)
    assert head is not None and head.n is not None
    with engine.begin() as conn:
        if tamper == "append_approval":  # a forged "business approved", chained but unsigned
            waiting = audit.latest(engine, run_id, "approval:business", ("waiting",))
            assert waiting is not None
            details = json.dumps({"packet_digest": waiting.details["packet_digest"], "via": "cli",
                                  "campaign_id": CAMPAIGN}, sort_keys=True, separators=(",", ":"))
            at = "2026-12-02T00:00:00.000000+00:00"
            h = audit.record_hash(head.hash, head.n + 1, run_id, "approval:business", "approved",
                                  WINBACK_APPROVERS["business"], details, at)
            conn.execute(sa.text(
                "INSERT INTO co_audit (run_id, step, action, actor, details, created_at, prev_hash, "
                "hash, n, mac, key_id) VALUES (:r, 'approval:business', 'approved', :a, :d, :t, :p, "
                ":h, :n, :m, 'forged')"),
                {"r": run_id, "a": WINBACK_APPROVERS["business"], "d": details, "t": at,
                 "p": head.hash, "h": h, "n": head.n + 1, "m": audit.sign(b"guess" * 8, h)})
        elif tamper == "delete_tail":
            conn.execute(sa.text("DELETE FROM co_audit WHERE n > :n"), {"n": head.n - 3})
        else:
            conn.execute(sa.text("UPDATE co_audit SET actor = 'mallory' WHERE n = 2"))
    with pytest.raises(UnprovenApproval, match="audit chain does not verify"):
        hand_off(run_id)
    nothing_sent(env, run_id)


def test_contact_history_records_what_was_sent_not_an_edited_audience(env: dict[str, Any]) -> None:
    engine = env["engine"]
    run_id, _ = approved_run(env["keys"])
    out = hand_off(run_id)
    assert out.reconciled
    with engine.begin() as conn:  # after the send, before contact history
        conn.execute(sa.update(audience).where(audience.c.run_id == run_id, audience.c.outcome == "send")
                     .values(cell="fifteen_off", offer_code="EXPIRED5"))
    record_history(run_id)
    with engine.connect() as conn:
        offers = set(conn.execute(sa.select(contact_history.c.offer_code).distinct().where(
            contact_history.c.run_id == run_id)).scalars())
        delivered = conn.execute(sa.text("SELECT COUNT(*) FROM co_deliveries WHERE run_id = :r"),
                                 {"r": run_id}).scalar_one()
    assert offers == {"WELCOME10", "SPRING15"}  # as posted, not EXPIRED5
    assert delivered == out.approved == len(env["sandbox"].deliveries(CAMPAIGN, run_id))


def test_a_decision_through_prefects_api_is_recorded_as_observed(env: dict[str, Any]) -> None:
    """A decision that claims to come from the CLI, without the CLI's proof, is recorded as
    coming through Prefect's UI or API (what campaignops can observe), the claim kept apart."""
    engine = env["engine"]
    run_id = qa_only_run(env)
    wh = warehouse()
    packet = approval.prepare_approval(wh, run_id, "business")
    approval.record_decision(wh, run_id, "business", WINBACK_APPROVERS["business"], "approve", "",
                             env["keys"][WINBACK_APPROVERS["business"]], "cli", packet.packet_digest,
                             wait_key="business-1")
    rec = audit.latest(engine, run_id, "approval:business", ("approved",))
    assert rec is not None and rec.details["via"] == "ui-or-api" and rec.details["claimed_via"] == "cli"
    proof = approval.channel_proof(AUDIT_KEY.encode(), run_id, "business", "business-2",
                                   WINBACK_APPROVERS["business"], "approve")
    assert approval.observed_via(f"cli:{proof}", run_id, "business", "business-2",
                                 WINBACK_APPROVERS["business"], "approve") == "cli"
    # a proof for another wait, approver or decision does not carry over
    assert approval.observed_via(f"cli:{proof}", run_id, "business", "business-3",
                                 WINBACK_APPROVERS["business"], "approve") == "ui-or-api"


def test_a_waiting_run_whose_prefect_run_ended_is_closed(env: dict[str, Any]) -> None:
    engine = env["engine"]
    run_id = qa_only_run(env)
    assert [r.run_id for r in runs.waiting_runs(engine)] == [run_id]
    assert approval.close_abandoned(warehouse(), {run_id: "PAUSED"}) == []
    assert approval.close_abandoned(warehouse(), {run_id: "RUNNING"}) == []  # a decision being judged
    assert approval.close_abandoned(warehouse(), {run_id: "CRASHED"}) == [run_id]
    assert runs.waiting_runs(engine) == []
    run = runs.get_run(engine, run_id)
    assert run.status == runs.FAILED and run.waiting_stage is None
    assert audit.trail(engine, run_id)[-1].action == "failed"


def test_a_waiting_run_whose_process_died_is_closed(env: dict[str, Any]) -> None:
    import subprocess
    import sys

    engine = env["engine"]
    run_id = qa_only_run(env)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    runs.set_status(engine, run_id, runs.AWAITING, waiting_host=socket.gethostname(),
                    waiting_pid=dead.pid)
    assert approval.close_abandoned(warehouse()) == [run_id]
    assert runs.get_run(engine, run_id).status == runs.FAILED


def test_the_signing_key_is_stored_nowhere_it_protects(env: dict[str, Any], tmp_path: Path,
                                                       prefect_api: str) -> None:
    """After a whole run: the key is in no table, no Prefect artifact, no log, no anchor."""
    from campaignops.settings import load_settings
    from flows.campaign import RunOutcome, campaign_run

    engine = env["engine"]
    run_id, _ = approved_run(env["keys"])
    hand_off(run_id)
    record_history(run_id)
    counted = campaign_run(brief_path=str(WINBACK), mode="count")  # a flow run: artifacts, events
    assert isinstance(counted, RunOutcome)
    key = AUDIT_KEY
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            cols = [c["name"] for c in sa.inspect(engine).get_columns(table)]
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):  # noqa: S608 - names from the inspector
                assert key not in " ".join(str(v) for v in row), (table, cols)
    files = [p for p in load_settings().home.rglob("*") if p.is_file()]
    files.append(prefect_database())  # artifacts, logs, events, flow run inputs
    assert files[-1].is_file()
    for path in files:
        assert key.encode() not in path.read_bytes(), path
    assert counted.run_id


def prefect_database() -> Path:
    """The SQLite file of the Prefect server under test."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    url = sa.engine.make_url(str(PREFECT_API_DATABASE_CONNECTION_URL.value()))
    return Path(str(url.database))



def test_a_paused_run_forced_on_without_input_ends_failed_and_audited(
        env: dict[str, Any], prefect_api: str) -> None:
    from click.testing import CliRunner
    from prefect import get_client
    from prefect.states import Running

    from campaignops.cli import main
    from tests.flowkit import FlowThread, wait_for_stage

    engine = env["engine"]
    run = FlowThread(WINBACK)
    run_id = wait_for_stage(engine, "qa")
    with get_client(sync_client=True) as client:
        # co_runs says "waiting" a moment before Prefect holds the run paused: force it on only
        # once it is, or the pause that follows would wait out the stage's whole deadline
        deadline = time.monotonic() + 60
        while not client.read_flow_run(uuid.UUID(run_id)).state.is_paused():  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "Prefect never held the run paused"
            time.sleep(0.2)
        client.set_flow_run_state(uuid.UUID(run_id), Running(), force=True)
    outcome = run.result(timeout=120)
    assert isinstance(outcome, BaseException)
    record = runs.get_run(engine, run_id)
    assert record.status == runs.FAILED and record.waiting_stage is None
    assert audit.trail(engine, run_id)[-1].action == "failed"
    listed = CliRunner().invoke(main, ["approvals"])
    assert listed.exit_code == 0 and run_id not in listed.output
    nothing_sent(env, run_id)
