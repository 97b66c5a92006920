"""SMS segmentation: consent, E.164, sms suppressions, cap per channel, one send per phone."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from campaignops.brief import validate_brief
from campaignops.schema import audience, sms_phones
from campaignops.segmentation import count_sends, segment
from campaignops.sql import bucket_of
from campaignops.warehouse import Warehouse
from tests.factories import AS_OF, brief_dict, build_warehouse, customer

pytestmark = pytest.mark.unit


def sms_brief(**overrides: object) -> dict[str, object]:
    """A valid SMS brief as parsed YAML."""
    base = brief_dict(channel="sms", content={"template_id": "flash", "text": "Hi {first_name}, 20% off"})
    base.update(overrides)
    return base


def sms_customer(cid: int, phone: str | None = None, **kw: object) -> dict[str, object]:
    """A US customer who opted in to SMS, with a distinct valid number by default."""
    return customer(cid, **({"phone": phone if phone is not None else f"(415) 555-{cid:04d}",
                             "sms_opt_in": True} | kw))


def rows_of(engine: sa.Engine, run_id: str) -> dict[int, tuple[str, str | None, str | None]]:
    """customer_id -> (outcome, reason, address_key)."""
    with engine.connect() as conn:
        got = conn.execute(sa.select(audience.c.customer_id, audience.c.outcome, audience.c.reason,
                                     audience.c.address_key).where(audience.c.run_id == run_id)).all()
    return {cid: (o, r, k) for cid, o, r, k in got}


def test_sms_waterfall(db_url: str) -> None:
    rows = [
        sms_customer(1),                                          # sent
        sms_customer(2, sms_opt_in=False),                        # no consent
        sms_customer(3, sms_opt_in=None),                         # unknown consent
        sms_customer(4, phone="12"),                              # not a number
        customer(5, sms_opt_in=True, phone=None),                 # no phone
        sms_customer(6, phone="020 7946 0958"),                   # a GB number read as US: invalid
        sms_customer(7, phone="020 7946 0958", country="GB"),     # the same, for a GB customer: valid
        sms_customer(8),                                          # suppressed (written as E.164)
        sms_customer(9),                                          # suppressed as written nationally
        sms_customer(10),                                         # legal hold beats unsubscribe
        sms_customer(11),                                         # over the sms cap
        sms_customer(12),                                         # e-mail history only: not capped
        sms_customer(13, phone="+1 415-555-0001"),                # same number as 1
        sms_customer(14, email_opt_in=False),                     # e-mail consent does not matter
        sms_customer(15, lifecycle_stage="lead"),                 # not matched
    ]
    engine = build_warehouse(
        db_url, rows,
        supp=[{"channel": "sms", "address": "+14155550008", "reason": "unsubscribe"},
              {"channel": "sms", "address": " +1 (415) 555-0009 ", "reason": "unsubscribe"},
              {"channel": "sms", "address": "+14155550010", "reason": "unsubscribe"},
              {"channel": "sms", "address": "+1 415 555 0010", "reason": "legal_hold"},
              {"channel": "email", "address": "+14155550012", "reason": "unsubscribe"},
              {"channel": "email", "address": "person1@example.com", "reason": "unsubscribe"}],
        history=[{"customer_id": 11, "channel": "sms", "sent_at": AS_OF - dt.timedelta(days=1)},
                 {"customer_id": 12, "channel": "email", "sent_at": AS_OF - dt.timedelta(days=1)}],
        seeds=["seed@example.com"],
    )
    brief = validate_brief(sms_brief(frequency_cap={"max_messages": 1, "per_days": 7}))
    wf = segment(Warehouse(engine), brief, "run1", AS_OF)
    got = rows_of(engine, "run1")
    assert got[1] == ("send", None, "+14155550001")
    assert got[2][1] == got[3][1] == "no_consent"
    assert got[4][1] == got[5][1] == got[6][1] == "invalid_phone"
    assert got[7] == ("send", None, "+442079460958")
    assert got[8][1] == got[9][1] == "suppressed_unsubscribe"
    assert got[10][1] == "suppressed_legal_hold"
    assert got[11][1] == "frequency_cap"
    assert got[12][0] == "send" and got[14][0] == "send"
    assert got[13] == ("excluded", "duplicate_phone", "+14155550001")
    assert 15 not in got and None not in got  # no e-mail seed in an SMS run
    removed = {s["reason"]: s["removed"] for s in wf.steps}
    assert removed == {"no_consent": 2, "invalid_phone": 3, "suppressed_legal_hold": 1,
                       "suppressed_do_not_contact": 0, "suppressed_complaint": 0,
                       "suppressed_hard_bounce": 0, "suppressed_unsubscribe": 2, "frequency_cap": 1,
                       "duplicate_phone": 1}
    assert wf.recipients == wf.eligible == 4 and wf.seeds == 0
    assert count_sends(Warehouse(engine), brief, AS_OF) == 4
    with engine.connect() as conn:  # the count staged nothing that stayed
        runs = {r for (r,) in conn.execute(sa.select(sms_phones.c.run_id).distinct())}
    assert runs == {"run1"}


def test_staging_is_paged_and_replaced(sqlite_url: str) -> None:
    from campaignops.segmentation import stage_phones

    engine = build_warehouse(sqlite_url, [sms_customer(i) for i in range(1, 26)],
                             supp=[{"channel": "sms", "address": f"+1415555{i:04d}", "reason": "complaint"}
                                   for i in range(1, 8)])
    brief = validate_brief(sms_brief())
    for _ in range(2):
        with engine.begin() as conn:
            assert stage_phones(conn, brief, "r", AS_OF, page=4) == 25
    with engine.connect() as conn:
        n_customers, n_supp = conn.execute(sa.select(
            sa.func.count(sms_phones.c.customer_id),
            sa.func.count() - sa.func.count(sms_phones.c.customer_id))).one()
    assert (n_customers, n_supp) == (25, 7)


def test_people_sharing_a_phone_share_the_draw(sqlite_url: str) -> None:
    # a household: three customers, one number written three ways
    rows = [sms_customer(i, phone=p) for i, p in
            ((1, "415-555-0100"), (2, "+14155550100"), (3, "(415) 555 0100"))]
    rows += [sms_customer(i) for i in range(10, 400)]
    engine = build_warehouse(sqlite_url, rows)
    brief = validate_brief(sms_brief(control_group={"percent": 30, "salt": "flash"},
                                     cells=[{"name": "a", "percent": 50}, {"name": "b", "percent": 50}]))
    segment(Warehouse(engine), brief, "r1", AS_OF)
    got = rows_of(engine, "r1")
    assert [got[i][1] for i in (2, 3)] == ["duplicate_phone", "duplicate_phone"]
    want = "control" if bucket_of("+14155550100", "flash") < 3000 else "send"
    assert got[1][0] == want
    controls = sum(1 for o, _, _ in got.values() if o == "control")
    assert 60 < controls < 180  # ~30 % of 391
    for cid, (outcome, _, key) in got.items():
        if outcome in ("send", "control") and key is not None:
            assert (bucket_of(key, "flash") < 3000) == (outcome == "control"), cid


def test_an_unapproved_sms_run_is_refused_at_handoff(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from campaignops import runs
    from campaignops.errors import HandoffRefused
    from campaignops.handoff import hand_off_audience
    from campaignops.settings import load_settings

    engine = build_warehouse(sqlite_url, [sms_customer(1)])
    brief = validate_brief(sms_brief())
    runs.register_run(engine, "r1", brief, "sms.yaml", AS_OF)
    assert runs.get_run(engine, "r1").brief == brief  # the stored brief reloads as accepted
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", "t")
    with pytest.raises(HandoffRefused, match="has no signed approval; nothing was sent"):
        hand_off_audience(Warehouse(engine), load_settings(), "r1")
