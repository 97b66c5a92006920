"""SMS eligibility: the segmentation's SQL against a plain-Python evaluation, on random small warehouses."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignops.brief import Brief, validate_brief
from campaignops.schema import audience, contact_history, customers, sms_phones, suppressions
from campaignops.segmentation import BUCKETS, CELL_SALT_SUFFIX, SUPPRESSION_REASONS, segment
from campaignops.sms import e164
from campaignops.sql import bucket_of
from campaignops.warehouse import Warehouse, make_engine
from tests.factories import AS_OF, brief_dict, build_warehouse, customer

# A few numbers written several ways, numbers valid only for one country, and non-numbers.
PHONES = ["+14155550100", "415-555-0100", " (415) 555 0100", "+14155550101", "415.555.0101",
          "020 7946 0958", "+442079460958", "0151 12345678", "+4915112345678", "12", "call me", ""]
COUNTRIES = ["US", "GB", "DE", "ZZ"]
STYLES = ["+1415555{:04d}", "(415) 555-{:04d}", "415.555.{:04d}"]
# Many distinct US numbers too (so the draws spread over the buckets), in several spellings.
phone_strategy = st.sampled_from(PHONES) | st.builds(lambda style, n: style.format(n),
                                                     st.sampled_from(STYLES), st.integers(100, 140))

customer_strategy = st.fixed_dictionaries({
    "phone": st.none() | phone_strategy,
    "country": st.none() | st.sampled_from(COUNTRIES),
    "sms_opt_in": st.none() | st.booleans() | st.just(True),
    "lifecycle_stage": st.sampled_from(["customer", "customer", "lead"]),
    "first_name": st.sampled_from(["Ann", "", None]),
})
supp_strategy = st.fixed_dictionaries({
    "channel": st.sampled_from(["sms", "sms", "email"]),
    "address": phone_strategy,
    "reason": st.sampled_from([*SUPPRESSION_REASONS, "other"]),
})
history_strategy = st.fixed_dictionaries({
    "customer": st.integers(0, 11),
    "channel": st.sampled_from(["sms", "email"]),
    "days_ago": st.integers(0, 14),
})
brief_strategy = st.fixed_dictionaries({
    "cap": st.none() | st.integers(1, 2),
    "control": st.sampled_from([0.0, 25.0, 50.0]),
    "salt": st.sampled_from(["s1", "flash", "x", "spring"]),
    "need_name": st.booleans(),
})


def make_brief(b: dict[str, Any]) -> Brief:
    """An SMS brief with the drawn cap, control share, salt and required field."""
    return validate_brief(brief_dict(
        channel="sms",
        content={"template_id": "t", "text": "Hi {first_name}",
                 "required_fields": ["first_name"] if b["need_name"] else []},
        frequency_cap={"max_messages": b["cap"], "per_days": 7} if b["cap"] else None,
        control_group={"percent": b["control"], "salt": b["salt"]},
        cells=[{"name": "a", "percent": 40}, {"name": "b", "percent": 60}],
    ))


def expected(brief: Brief, rows: list[dict[str, Any]], supp: list[dict[str, Any]],
             history: list[dict[str, Any]]) -> dict[int, tuple[str, str | None, str | None]]:
    """customer_id -> (outcome, reason, cell), evaluated in plain Python."""
    prio: dict[str, int] = {}
    for s in supp:
        key = e164(s["address"].strip(" "), None)
        if s["channel"] == "sms" and key is not None:
            p = SUPPRESSION_REASONS.index(s["reason"]) if s["reason"] in SUPPRESSION_REASONS else 4
            prio[key] = min(prio.get(key, p), p)
    since = AS_OF - dt.timedelta(days=7)
    reasons: dict[int, str | None] = {}
    keys: dict[int, str | None] = {}
    for r in rows:
        if r["lifecycle_stage"] != "customer":
            continue
        cid, key = r["customer_id"], e164(r["phone"], r["country"])
        keys[cid] = key
        contacts = sum(1 for h in history if h["customer_id"] == cid and h["channel"] == "sms"
                       and h["sent_at"] >= since)
        reason: str | None = None
        if not r["sms_opt_in"]:
            reason = "no_consent"
        elif key is None:
            reason = "invalid_phone"
        elif key in prio:
            reason = f"suppressed_{SUPPRESSION_REASONS[prio[key]]}"
        elif brief.frequency_cap and contacts >= brief.frequency_cap.max_messages:
            reason = "frequency_cap"
        elif "first_name" in brief.content.required_fields and not (r["first_name"] or "").strip():
            reason = "missing_first_name"
        reasons[cid] = reason
    out: dict[int, tuple[str, str | None, str | None]] = {}
    seen: set[str] = set()
    cut = round(brief.control_group.percent * BUCKETS / 100)
    for cid in sorted(reasons):
        reason, key = reasons[cid], keys[cid]
        if reason is None and key in seen:
            reason = "duplicate_phone"
        if reason is not None:
            out[cid] = ("excluded", reason, None)
            continue
        assert key is not None
        seen.add(key)
        salt = brief.control_group.salt
        if bucket_of(key, salt) < cut:
            out[cid] = ("control", None, None)
        else:
            out[cid] = ("send", None, "a" if bucket_of(key, salt + CELL_SALT_SUFFIX) < 4000 else "b")
    return out


BUILT: set[str] = set()  # the warehouses built in this session (each test's URL is its own)


def check(url: str, people: list[dict[str, Any]], supp: list[dict[str, Any]],
          hist: list[dict[str, Any]], b: dict[str, Any]) -> None:
    """Segment a fresh warehouse and compare it with the Python evaluation."""
    rows = [customer(i, **p) for i, p in enumerate(people)]
    history = [{"customer_id": h["customer"], "channel": h["channel"], "campaign_id": "x", "run_id": "r0",
                "sent_at": AS_OF - dt.timedelta(days=h["days_ago"], hours=1)} for h in hist]
    engine = make_engine(url) if url in BUILT else build_warehouse(url, [])
    BUILT.add(url)
    with engine.begin() as conn:  # reused across examples: empty it first
        for t in (customers, suppressions, contact_history, audience, sms_phones):
            conn.execute(sa.delete(t))
        if rows:
            conn.execute(sa.insert(customers), rows)
        if supp:
            conn.execute(sa.insert(suppressions), [s | {"created_at": AS_OF} for s in supp])
        if history:
            conn.execute(sa.insert(contact_history), history)
    brief = make_brief(b)
    segment(Warehouse(engine), brief, "p1", AS_OF)
    with engine.connect() as conn:
        got_rows = conn.execute(sa.select(audience.c.customer_id, audience.c.outcome, audience.c.reason,
                                          audience.c.cell, audience.c.address_key)
                                .where(audience.c.run_id == "p1")).all()
    engine.dispose()
    got = {cid: (o, r, c) for cid, o, r, c, _ in got_rows}
    assert got == expected(brief, rows, supp, history)
    reached = [k for _, o, _, _, k in got_rows if o in ("send", "control")]
    assert len(reached) == len(set(reached)), "a phone reached twice"


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
GIVEN = given(people=st.lists(customer_strategy, max_size=12), supp=st.lists(supp_strategy, max_size=5),
              hist=st.lists(history_strategy, max_size=6), b=brief_strategy)


@pytest.mark.unit
@SETTINGS
@GIVEN
def test_sms_eligibility_sql_equals_python_on_sqlite(sqlite_url: str, people: list[dict[str, Any]],
                                                      supp: list[dict[str, Any]], hist: list[dict[str, Any]],
                                                      b: dict[str, Any]) -> None:
    check(sqlite_url, people, supp, hist, b)


@pytest.mark.integration
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@GIVEN
def test_sms_eligibility_sql_equals_python_on_postgresql(pg_url: str, people: list[dict[str, Any]],
                                                          supp: list[dict[str, Any]],
                                                          hist: list[dict[str, Any]], b: dict[str, Any]) -> None:
    check(pg_url, people, supp, hist, b)


@pytest.mark.unit
def test_a_shared_phone_shares_the_draw_whoever_is_first(sqlite_url: str) -> None:
    # the same number for three people: one of them is reached, and whether they are
    # control or not is the number's draw, not the person's
    people = [{"phone": p, "country": "US", "sms_opt_in": True, "lifecycle_stage": "customer",
               "first_name": "Ann"} for p in ("415-555-0100", "+14155550100", "(415) 555 0100")]
    for salt in ("s1", "flash"):
        check(sqlite_url, people, [], [], {"cap": None, "control": 50.0, "salt": salt, "need_name": False})
