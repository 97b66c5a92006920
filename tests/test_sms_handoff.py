"""The SMS handoff: an SMS run through the same gates (QA, signed approvals) to the ESP's SMS
endpoint, reconciled exactly once, on SQLite and PostgreSQL; quiet hours and segments at QA.

The synthetic warehouse's numbers are fictitious (+1 555), so these tests build small
warehouses of valid numbers themselves.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from campaignops.approvers import add_approver
from campaignops.errors import HandoffRefused, QAFailed
from campaignops.esp import EspSandbox, Faults
from campaignops.schema import audit_log, contact_history, deliveries
from tests.factories import build_warehouse, customer
from tests.flowkit import WINBACK_APPROVERS, approved_run, hand_off, record_history

pytestmark = pytest.mark.unit

TOKEN = "sms-handoff-token-4c1d"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "briefs" / "sms-flash-sale.yaml"
OPEN = "2027-03-02T19:00:00Z"  # 14:00 in New York, 09:00 in Honolulu, 19:00 in London
QUIET_IN_US = "2027-03-02T15:00:00Z"  # 07:00 in Los Angeles: quiet there, not in London
US_QUIET_ENDS = "2027-03-02T18:00:00Z"  # 08:00 in Honolulu (and Adak): open in every US zone


def sms_customers(n_us: int = 30, n_gb: int = 20, **kw: Any) -> list[dict[str, Any]]:
    """Customers who opted in to SMS with valid numbers, written as people write them."""
    rows = [customer(i, phone=f"(415) 555-{i:04d}", sms_opt_in=True, country="US", **kw)
            for i in range(1, n_us + 1)]
    rows += [customer(i, phone=f"020 7946 0{i:03d}", sms_opt_in=True, country="GB", region=None, **kw)
             for i in range(n_us + 1, n_us + n_gb + 1)]
    return rows


def e164(row: dict[str, Any]) -> str:
    digits = "".join(ch for ch in row["phone"] if ch.isdigit())
    return f"+1{digits}" if row["country"] == "US" else f"+44{digits[1:]}"


def write_brief(tmp_path: Path, **changes: Any) -> Path:
    """The example SMS brief with a fixed send time, a plain audience and the changes."""
    data = yaml.safe_load(EXAMPLE.read_text())
    data |= {"send_at": OPEN, "expected_audience": {"min": 1, "max": 1000},
             "audience": {"include": {"all": [{"field": "lifecycle_stage", "op": "eq", "value": "customer"}]}},
             "frequency_cap": None, "control_group": {"percent": 0, "salt": "flash"}}
    data |= changes
    path = tmp_path / "sms.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}))
    return path


@pytest.fixture
def sms_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A warehouse of 50 SMS customers, the sandbox, the token, and the approvers' keys."""
    rows = sms_customers()
    engine = build_warehouse(db_url, rows)
    sb = EspSandbox(TOKEN).start()
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", db_url)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_URL", sb.url)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", TOKEN)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_BATCH_SIZE", "8")
    monkeypatch.setenv("CAMPAIGNOPS_ESP_BACKOFF_SECONDS", "0.001")
    keys = {name: add_approver(engine, name) for name in WINBACK_APPROVERS.values()}
    try:
        yield {"engine": engine, "sandbox": sb, "keys": keys, "rows": rows}
    finally:
        sb.stop()
        engine.dispose()


def no_phone_in(text: str, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        assert e164(r) not in text and r["phone"] not in text


def test_an_sms_run_goes_through_the_gates_and_is_reconciled_exactly_once(
    sms_env: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    engine, sb, rows = sms_env["engine"], sms_env["sandbox"], sms_env["rows"]
    run_id, _ = approved_run(sms_env["keys"], write_brief(tmp_path))
    out = hand_off(run_id)
    assert out.reconciled and out.approved == 50
    rec = out.reconciliation
    assert (rec.accepted, rec.rejected, rec.segments, rec.expected_segments) == (50, 0, 50, 50)
    assert out.report.batches == 7  # 50 recipients, 8 a batch

    got = sb.sms_rows("sms-flash-sale", run_id)
    assert sorted(r["phone"] for r in got) == sorted(e164(r) for r in rows)  # each number once
    assert {r["send_at"] for r in got} == {OPEN} and {r["segments"] for r in got} == {1}
    assert sb.deliveries("sms-flash-sale", run_id) == {str(i): 1 for i in range(1, 51)}

    again = hand_off(run_id)  # a task retry: everything is in the ledger, nothing is re-sent
    assert again.reconciled and again.report.skipped == 7 and again.report.sent == 0
    assert record_history(run_id) == 50
    assert record_history(run_id) == 0  # once
    with engine.connect() as conn:
        record = conn.execute(sa.select(deliveries.c.address_key, deliveries.c.outcome)
                              .where(deliveries.c.run_id == run_id)).all()
        history = conn.execute(sa.select(contact_history.c.channel, sa.func.count())
                               .where(contact_history.c.run_id == run_id)
                               .group_by(contact_history.c.channel)).all()
        trail = conn.execute(sa.select(audit_log).where(audit_log.c.run_id == run_id)).all()
    assert sorted(a for a, _ in record) == sorted(e164(r) for r in rows)
    assert {o for _, o in record} == {"accepted"}
    assert history == [("sms", 50)]
    no_phone_in(json.dumps([tuple(map(str, t)) for t in trail]) + caplog.text, rows)


def test_the_sms_handoff_under_faults_delivers_every_recipient_once(
    sms_env: dict[str, Any], tmp_path: Path
) -> None:
    sb = sms_env["sandbox"]
    run_id, _ = approved_run(sms_env["keys"], write_brief(tmp_path))
    sb.faults = Faults(rate_limit=0.15, error_before_store=0.15, error_after_store=0.15,
                       drop_connection=0.15, seed=5)
    out = hand_off(run_id)
    assert out.reconciled and out.reconciliation.segments == 50
    assert sb.deliveries("sms-flash-sale", run_id) == {str(i): 1 for i in range(1, 51)}
    assert any(k.startswith("fault_") for k in sb.stats(run_id))


def test_quiet_hours_block_the_run_at_qa_naming_how_many(sms_env: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(QAFailed) as err:
        approved_run(sms_env["keys"], write_brief(tmp_path, send_at=QUIET_IN_US))
    assert "no_recipient_in_quiet_hours (observed 30 of 50 recipients would get this SMS in quiet hours" \
        in str(err.value)
    assert "(countries: US)" in str(err.value)
    no_phone_in(str(err.value), sms_env["rows"])


def test_quiet_hours_defer_those_recipients_to_the_end_of_their_window(
    sms_env: dict[str, Any], tmp_path: Path
) -> None:
    sb = sms_env["sandbox"]
    run_id, _ = approved_run(sms_env["keys"], write_brief(
        tmp_path, send_at=QUIET_IN_US, quiet_hours_policy="defer"))
    from campaignops.approval import prepare_approval
    from tasks.markdown import handoff_markdown, packet_markdown
    from tests.flowkit import warehouse

    packet = prepare_approval(warehouse(), run_id, "business")
    assert packet.sms == (
        "SMS text: 69 characters before personalisation; the longest personalised message is 1 segment "
        "(max_segments 1)",
        "quiet hours: 30 of 50 recipients are in quiet hours (21:00-08:00 local) at "
        "2027-03-02T15:00:00+00:00: deferred to the end of their window",
        f"deferred: recipients in US get it at {US_QUIET_ENDS}")
    shown = packet_markdown(packet)
    assert f"deferred: recipients in US get it at {US_QUIET_ENDS}" in shown
    no_phone_in(shown, sms_env["rows"])
    out = hand_off(run_id)
    assert out.reconciled and "| SMS segments billed | 50 |" in handoff_markdown(out)
    got = {r["customer_id"]: r["send_at"] for r in sb.sms_rows("sms-flash-sale", run_id)}
    assert {cid: t for cid, t in got.items() if cid <= 30} == dict.fromkeys(range(1, 31), US_QUIET_ENDS)
    assert {cid: t for cid, t in got.items() if cid > 30} == dict.fromkeys(range(31, 51), QUIET_IN_US)
    assert {b["send_at"] for b in sb.batches("sms-flash-sale", run_id)} == {QUIET_IN_US}


def test_the_longest_personalised_text_must_fit_max_segments(
    db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rows = sms_customers(n_us=5, n_gb=0)
    rows[2]["first_name"] = "Maximilian-Alexander " * 4  # 84 characters: the text is 2 segments
    rows[3]["first_name"] = "Zoë"  # ë is GSM-7: still 1 segment
    engine = build_warehouse(db_url, rows)
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", db_url)
    keys = {name: add_approver(engine, name) for name in WINBACK_APPROVERS.values()}
    content = {"template_id": "t", "required_fields": ["first_name"],  # 95 characters without the name
               "text": "Hi {first_name}, 20% off everything in the shop today only, come early. Reply STOP to opt out"}
    with pytest.raises(QAFailed) as err:
        approved_run(keys, write_brief(tmp_path, content=content))
    assert ("longest_message_within_max_segments (observed the longest personalised message is "
            "2 segments, expected <= 1 (max_segments))") in str(err.value)
    assert "Maximilian" not in str(err.value)
    run_id, _ = approved_run(keys, write_brief(tmp_path, content=content, max_segments=2))  # 2 passes
    assert run_id
    engine.dispose()


def test_a_non_gsm_character_makes_the_longest_message_ucs2(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from campaignops import runs
    from campaignops.brief import load_brief
    from campaignops.qa.sms import longest_message_segments
    from campaignops.segmentation import segment_audience
    from campaignops.warehouse import Warehouse

    rows = sms_customers(n_us=3, n_gb=0)
    rows[0]["first_name"] = "Łukasz"  # Ł is not GSM-7: UCS-2, 70 characters a segment
    rows[1]["first_name"] = "Bartholomew-Maximilian"  # longer, but GSM-7
    engine = build_warehouse(sqlite_url, rows)
    brief_path = write_brief(tmp_path, content={
        "template_id": "t", "required_fields": ["first_name"],
        "text": "Hi {first_name}, 20% off everything in the shop today only, come in early. Reply STOP"})
    brief = load_brief(brief_path)
    runs.register_run(engine, "r1", brief, str(brief_path), dt.datetime(2026, 12, 1))
    segment_audience(Warehouse(engine), "r1")
    assert longest_message_segments(engine, "r1", brief) == 2  # 6 + 81 UTF-16 units > 70
    engine.dispose()


def test_a_run_without_send_at_is_judged_again_at_the_handoff(
    sms_env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from campaignops import handoff
    from campaignops.qa import sms as qa_sms

    # QA judges "now" when it runs, the handoff again when it runs: here, open then, quiet now.
    monkeypatch.setattr(qa_sms, "check_quiet_hours", _never_quiet)
    run_id, _ = approved_run(sms_env["keys"], write_brief(tmp_path, send_at=None))
    monkeypatch.setattr(handoff, "check_quiet_hours", _always_quiet)
    with pytest.raises(HandoffRefused, match="nothing was sent: 50 of 50 recipients"):
        hand_off(run_id)
    assert sms_env["sandbox"].stats(run_id) == {}


def _never_quiet(engine: Any, run_id: str, brief: Any, at: dt.datetime) -> Any:
    from campaignops.qa.quiet_hours import QuietHoursCheck

    return QuietHoursCheck(run_id, at.isoformat(), "block", 50, 0, 0, [], True,
                           "0 of 50 recipients would get this SMS in quiet hours")


def _always_quiet(engine: Any, run_id: str, brief: Any, at: dt.datetime) -> Any:
    from campaignops.qa.quiet_hours import QuietHoursCheck

    return QuietHoursCheck(run_id, at.isoformat(), "block", 50, 50, 0, ["US"], False,
                           "50 of 50 recipients would get this SMS in quiet hours")


def test_file_mode_is_refused_for_sms(sms_env: dict[str, Any], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run_id, _ = approved_run(sms_env["keys"], write_brief(tmp_path))
    monkeypatch.setenv("CAMPAIGNOPS_HANDOFF_MODE", "file")
    with pytest.raises(HandoffRefused, match="file drop is for e-mail only"):
        hand_off(run_id)


def test_every_sms_check_has_a_guide_entry_and_a_docs_heading() -> None:
    from campaignops.qa import EXPECTATIONS_DIR
    from campaignops.qa.guide import GUIDE, SMS_GUIDE, explain
    from campaignops.qa.sms import QUIET_CHECK, SEGMENTS_CHECK

    suite = json.loads((Path(EXPECTATIONS_DIR) / "audience_sms.json").read_text(encoding="utf-8"))
    names = {e["meta"]["name"] for e in suite["expectations"]} | {QUIET_CHECK, SEGMENTS_CHECK}
    assert names <= set(GUIDE) | set(SMS_GUIDE)
    docs = (Path(__file__).resolve().parents[1] / "docs" / "sms.md").read_text(encoding="utf-8")
    assert all(f"\n### {name}\n" in docs for name in SMS_GUIDE)
    assert explain("valid_phone_format").endswith("(docs/sms.md#valid_phone_format)")
