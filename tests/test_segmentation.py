"""Segmentation: right to the last recipient, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from decimal import Decimal

import pytest
import sqlalchemy as sa

from campaignops.brief import validate_brief
from campaignops.rules import evaluate, parse_rule
from campaignops.schema import audience, customers, warehouse_metadata
from campaignops.segmentation import count_floor, segment
from campaignops.sql import bucket_of
from campaignops.warehouse import Warehouse, make_engine
from tests.factories import AS_OF, brief_dict, build_warehouse, customer

pytestmark = pytest.mark.unit


def outcomes(engine: sa.Engine, run_id: str) -> dict[int | str, tuple[str, str | None, str | None]]:
    """customer_id (or seed address) -> (outcome, reason, cell)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(audience.c.customer_id, audience.c.email, audience.c.outcome,
                                      audience.c.reason, audience.c.cell)
                            .where(audience.c.run_id == run_id)).all()
    return {(cid if cid is not None else email): (o, r, c) for cid, email, o, r, c in rows}


def test_waterfall_reasons_in_order(db_url: str) -> None:
    rows = [
        customer(1),                                            # sent
        customer(2, email_opt_in=False),                        # no consent
        customer(3, email="not-an-address"),                    # invalid
        customer(4, email=None),                                # missing address
        customer(5),                                            # unsubscribed (case differs)
        customer(6),                                            # legal hold beats unsubscribe
        customer(7),                                            # over the cap
        customer(8, first_name=""),                             # missing first name
        customer(9, first_name=None),                           # missing first name
        customer(10, email="Person1@Example.com "),             # duplicate address of 1
        customer(11, lifecycle_stage="lead"),                   # not matched at all
        customer(12, loyalty_tier="staff"),                     # excluded by the brief
        customer(13, email_opt_in=None),                        # unknown consent = no consent
    ]
    engine = build_warehouse(
        db_url, rows,
        supp=[{"address": "PERSON5@example.com", "reason": "unsubscribe"},
              {"address": "person6@example.com", "reason": "unsubscribe"},
              {"address": "person6@example.com", "reason": "legal_hold"},
              {"address": "person1@example.com", "reason": "hard_bounce", "channel": "sms"}],
        history=[{"customer_id": 7, "sent_at": AS_OF - dt.timedelta(days=d)} for d in (1, 2)]
        + [{"customer_id": 1, "sent_at": AS_OF - dt.timedelta(days=30)}] * 3,
        seeds=["seed1@example.com"],
    )
    brief = validate_brief(brief_dict(
        content={"template_id": "t", "subject": "s", "required_fields": ["first_name"]},
        frequency_cap={"max_messages": 2, "per_days": 7},
        audience={"include": {"field": "lifecycle_stage", "op": "eq", "value": "customer"},
                  "exclude": {"field": "loyalty_tier", "op": "eq", "value": "staff"}},
    ))
    wf = segment(Warehouse(engine), brief, "run1", AS_OF)
    got = outcomes(engine, "run1")
    assert got[1] == ("send", None, "all")
    assert got[2][1] == "no_consent" and got[13][1] == "no_consent"
    assert got[3][1] == "invalid_address" and got[4][1] == "invalid_address"
    assert got[5][1] == "suppressed_unsubscribe"
    assert got[6][1] == "suppressed_legal_hold"
    assert got[7][1] == "frequency_cap"
    assert got[8][1] == "missing_first_name" and got[9][1] == "missing_first_name"
    assert got[10][1] == "duplicate_address"
    assert 11 not in got and 12 not in got
    assert got["seed1@example.com"] == ("seed", None, None)
    assert wf.matched == 11 and wf.recipients == 2 and wf.seeds == 1
    removed = {s["reason"]: s["removed"] for s in wf.steps}
    assert removed["no_consent"] == 2 and removed["invalid_address"] == 2
    assert removed["duplicate_address"] == 1 and removed["frequency_cap"] == 1
    assert wf.steps[-1]["remaining"] == wf.eligible == 1


def test_fallback_keeps_customers_missing_a_field(sqlite_url: str) -> None:
    engine = build_warehouse(sqlite_url, [customer(1, first_name=None), customer(2)])
    brief = validate_brief(brief_dict(content={
        "template_id": "t", "subject": "s", "required_fields": ["first_name"],
        "fallbacks": {"first_name": "there"}}))
    wf = segment(Warehouse(engine), brief, "r", AS_OF)
    assert wf.recipients == 2


def test_rerun_of_the_same_run_replaces_its_rows(sqlite_url: str) -> None:
    engine = build_warehouse(sqlite_url, [customer(i) for i in range(1, 51)])
    brief = validate_brief(brief_dict())
    segment(Warehouse(engine), brief, "r", AS_OF)
    wf = segment(Warehouse(engine), brief, "r", AS_OF)
    with engine.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(audience)).scalar()
    assert n == 50 == wf.recipients


def _population(n: int, shared_every: int = 0) -> list[dict[str, object]]:
    rows = []
    for i in range(1, n + 1):
        email = f"p{i}@example.com"
        if shared_every and i % shared_every == 0:
            email = f"p{i - 1}@example.com"
        rows.append(customer(i, email=email))
    return rows


def test_control_and_cells_hit_their_shares_and_are_stable(db_url: str) -> None:
    engine = build_warehouse(db_url, _population(20_000))
    brief = validate_brief(brief_dict(
        control_group={"percent": 10, "salt": "winback-2026"},
        cells=[{"name": "a", "percent": 50, "offer_code": "WELCOME10"},
               {"name": "b", "percent": 50, "offer_code": "SPRING15"}]))
    wf = segment(Warehouse(engine), brief, "r1", AS_OF)
    assert abs(wf.control / wf.eligible - 0.10) < 0.01
    assert abs(wf.cells["a"] / (wf.cells["a"] + wf.cells["b"]) - 0.5) < 0.01
    first = outcomes(engine, "r1")
    # The SQL draw equals the Python definition of the draw.
    for cid in (1, 2, 3, 500, 19_999):
        expected = "control" if bucket_of(f"p{cid}@example.com", "winback-2026") < 1000 else "send"
        assert first[cid][0] == expected
    # New customers arrive: every old customer keeps its draw and cell.
    with engine.begin() as conn:
        conn.execute(sa.insert(customers), [customer(i) for i in range(20_001, 21_001)])
    segment(Warehouse(engine), brief, "r2", AS_OF)
    second = outcomes(engine, "r2")
    assert all(second[cid] == first[cid] for cid in first)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(audience.c.cell, audience.c.offer_code).distinct()
                            .where(audience.c.run_id == "r1", audience.c.outcome == "send")).all()
    offers = {str(cell): str(offer) for cell, offer in rows}
    assert offers == {"a": "WELCOME10", "b": "SPRING15"}


def test_people_sharing_an_address_share_the_draw(sqlite_url: str) -> None:
    engine = build_warehouse(sqlite_url, _population(4000, shared_every=2))
    brief = validate_brief(brief_dict(control_group={"percent": 30, "salt": "hh"}))
    segment(Warehouse(engine), brief, "r", AS_OF)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(audience.c.address_key, audience.c.outcome)
                            .where(audience.c.run_id == "r", audience.c.outcome != "excluded")).all()
    keys = Counter(k for k, _ in rows)
    assert max(keys.values()) == 1, "an address appears twice among recipients and control"
    # and the draw for an address ignores which of its customers won
    for key, outcome in rows[:200]:
        assert outcome == ("control" if bucket_of(key, "hh") < 3000 else "send")


def test_none_suppressed_unconsented_or_over_cap_survive(db_url: str) -> None:
    rows = [customer(i, email_opt_in=(i % 7 != 0)) for i in range(1, 3001)]
    supp = [{"address": f"person{i}@example.com", "reason": r}
            for i, r in zip(range(1, 3001, 11), ["unsubscribe", "hard_bounce", "complaint",
                                                  "legal_hold", "do_not_contact"] * 1000, strict=False)]
    history = [{"customer_id": i, "sent_at": AS_OF - dt.timedelta(days=1)} for i in range(1, 3001, 5)]
    engine = build_warehouse(db_url, rows, supp=supp, history=history * 2)
    brief = validate_brief(brief_dict(frequency_cap={"max_messages": 2, "per_days": 7}))
    segment(Warehouse(engine), brief, "r", AS_OF)
    sent = {cid for cid, (o, _, _) in outcomes(engine, "r").items() if o == "send"}
    suppressed = set(range(1, 3001, 11))
    capped = set(range(1, 3001, 5))
    unconsented = {i for i in range(1, 3001) if i % 7 == 0}
    assert sent and not sent & (suppressed | capped | unconsented)
    assert sent == set(range(1, 3001)) - suppressed - capped - unconsented



def test_frequency_cap_same_with_and_without_the_history_index(sqlite_url: str) -> None:
    """SQLite probes contact history per customer when an index allows it, else aggregates."""
    from campaignops.segmentation import history_probe

    rows = [customer(i) for i in range(1, 601)]
    # 0 to 3 sends per customer, some outside the 7-day window, some on another channel.
    history = [{"customer_id": i, "sent_at": AS_OF - dt.timedelta(days=d)}
               for i in range(1, 601) for d in (1, 3, 9)[: i % 4]]
    history += [{"customer_id": i, "sent_at": AS_OF - dt.timedelta(days=1), "channel": "sms"}
                for i in range(1, 601, 3)]
    engine = build_warehouse(sqlite_url, rows, history=history)
    brief = validate_brief(brief_dict(frequency_cap={"max_messages": 2, "per_days": 7}))
    assert history_probe(Warehouse(engine))
    probed = segment(Warehouse(engine), brief, "probe", AS_OF)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_contact_history_customer_sent")
    assert not history_probe(Warehouse(engine))
    aggregated = segment(Warehouse(engine), brief, "aggregate", AS_OF)
    assert outcomes(engine, "probe") == outcomes(engine, "aggregate")
    assert probed.steps == aggregated.steps
    capped = {cid for cid, (_, reason, _) in outcomes(engine, "probe").items() if reason == "frequency_cap"}
    assert capped == {i for i in range(1, 601) if i % 4 in (2, 3)}


# --- the rule compiler against a plain-Python evaluation -----------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

COUNTRIES = ["US", "CA", "GB", "DE"]
STAGES = ["lead", "customer", "churned"]

maybe = st.none() | st.just(1)
row_strategy = st.fixed_dictionaries({
    "lead_score": st.none() | st.integers(0, 100),
    "country": st.none() | st.sampled_from(COUNTRIES),
    "lifecycle_stage": st.none() | st.sampled_from(STAGES),
    "last_open_at": st.none() | st.integers(0, 400).map(lambda d: AS_OF - dt.timedelta(days=d, hours=3)),
    "signup_date": st.none() | st.integers(0, 4000).map(lambda d: AS_OF.date() - dt.timedelta(days=d)),
    "email_opt_in": st.none() | st.booleans(),
    "lifetime_value": st.none() | st.integers(0, 100000).map(lambda c: Decimal(c) / 100),
})

cond_strategy = st.one_of(
    st.builds(lambda op, v: {"field": "lead_score", "op": op, "value": v},
              st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]), st.integers(0, 100)),
    st.builds(lambda lo, span: {"field": "lead_score", "op": "between", "value": [lo, lo + span]},
              st.integers(0, 100), st.integers(0, 50)),
    st.builds(lambda op, vs: {"field": "country", "op": op, "value": vs},
              st.sampled_from(["in", "not_in"]), st.lists(st.sampled_from(COUNTRIES), min_size=1, max_size=3)),
    st.builds(lambda op, v: {"field": "lifecycle_stage", "op": op, "value": v},
              st.sampled_from(["eq", "ne"]), st.sampled_from(STAGES)),
    st.builds(lambda op, d: {"field": "last_open_at", "op": op, "value": d},
              st.sampled_from(["within_days", "older_than_days"]), st.integers(0, 400)),
    st.builds(lambda op, d: {"field": "signup_date", "op": op, "value": d},
              st.sampled_from(["within_days", "older_than_days"]), st.integers(0, 4000)),
    st.builds(lambda op, f: {"field": f, "op": op},
              st.sampled_from(["is_null", "not_null"]),
              st.sampled_from(["lead_score", "country", "last_open_at", "email_opt_in"])),
    st.builds(lambda v: {"field": "email_opt_in", "op": "eq", "value": v}, st.booleans()),
    st.builds(lambda op, v: {"field": "lifetime_value", "op": op, "value": v},
              st.sampled_from(["gt", "lte"]), st.integers(0, 1000)),
)
rule_strategy = st.recursive(
    cond_strategy,
    lambda inner: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, inner),
    ),
    max_leaves=8,
)


def _check_rules_match_python(url: str, rows: list[dict[str, object]], raw_rule: dict[str, object]) -> None:
    from campaignops.rules import compile_rule

    engine = make_engine(url)
    warehouse_metadata.create_all(engine)
    full = [customer(i + 1, **r) for i, r in enumerate(rows)]
    with engine.begin() as conn:
        conn.execute(sa.delete(customers))
        if full:
            conn.execute(sa.insert(customers), full)
    rule = parse_rule(raw_rule)
    with engine.connect() as conn:
        got = {r[0] for r in conn.execute(sa.select(customers.c.customer_id).where(compile_rule(rule, AS_OF)))}
    want = {r["customer_id"] for r in full if evaluate(rule, r, AS_OF)}
    engine.dispose()
    assert got == want, f"rule {raw_rule}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row_strategy, max_size=25), raw_rule=rule_strategy)
def test_sql_equals_python_on_sqlite(sqlite_url: str, rows: list[dict[str, object]],
                                     raw_rule: dict[str, object]) -> None:
    _check_rules_match_python(sqlite_url, rows, raw_rule)


@pytest.mark.integration
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row_strategy, max_size=25), raw_rule=rule_strategy)
def test_sql_equals_python_on_postgresql(pg_url: str, rows: list[dict[str, object]],
                                         raw_rule: dict[str, object]) -> None:
    _check_rules_match_python(pg_url, rows, raw_rule)


def test_not_within_days_includes_people_who_never_opened(sqlite_url: str) -> None:
    engine = build_warehouse(sqlite_url, [customer(1, last_open_at=None),
                                          customer(2, last_open_at=AS_OF - dt.timedelta(days=5)),
                                          customer(3, last_open_at=AS_OF - dt.timedelta(days=90))])
    brief = validate_brief(brief_dict(audience={"include": {
        "not": {"field": "last_open_at", "op": "within_days", "value": 60}}}))
    segment(Warehouse(engine), brief, "r", AS_OF)
    assert {k for k, v in outcomes(engine, "r").items() if v[0] == "send"} == {1, 3}
    assert count_floor(engine, brief, AS_OF) == 2


def test_sql_text_in_a_value_is_bound_not_executed(db_url: str) -> None:
    engine = build_warehouse(db_url, [customer(1), customer(2, region="x'; DROP TABLE customers; --")])
    brief = validate_brief(brief_dict(audience={"include": {
        "field": "region", "op": "eq", "value": "x'; DROP TABLE customers; --"}}))
    wf = segment(Warehouse(engine), brief, "r", AS_OF)
    assert wf.recipients == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(customers)).scalar() == 2


def test_segmentation_and_qa_agree_on_what_a_valid_address_is(sqlite_url: str) -> None:
    import json
    from pathlib import Path

    from campaignops.sql import ADDRESS_REGEX

    suite = json.loads((Path(__file__).resolve().parents[1] / "expectations" / "audience.json").read_text())
    (regex,) = [e["kwargs"]["regex"] for e in suite["expectations"]
                if e["type"] == "expect_column_values_to_match_regex"]
    assert regex == ADDRESS_REGEX
    engine = build_warehouse(sqlite_url, [
        customer(1, email="ok.name@example.co.uk"), customer(2, email="a@b"),
        customer(3, email="two@@example.com"), customer(4, email="sp ace@example.com"),
        customer(5, email="dot.@example.com"), customer(6, email="x@-bad.com")])
    segment(Warehouse(engine), validate_brief(brief_dict()), "r", AS_OF)
    got = outcomes(engine, "r")
    assert got[1][0] == "send"
    assert all(got[i][1] == "invalid_address" for i in range(2, 7))


ADDRESS_EDGES = [
    "ok.name@example.co.uk", "a@b", "two@@example.com", "sp ace@example.com", "dot.@example.com",
    "x@-bad.com", "x@bad-.com", "x@ok-dash.com", "x@example.c", "x@example.c0m",
    "x@example." + "a" * 63, "x@example." + "a" * 64, "x@example." + "a" * 70,
    "x@" + "a" * 70 + ".com", "x@sub." + "a" * 64 + ".io", "a" * 64 + "@x.io",
    "o'brien+tag@example.org", "x@example.com.", "x@.example.com", "x@example..com",
    "@example.com", "x@example.com\n", "x@1.2.3.example.museum",
]


def test_valid_address_in_sql_is_the_regex_of_the_suite(db_url: str) -> None:
    """valid_address() in each database accepts exactly what ADDRESS_REGEX accepts."""
    import re

    from campaignops.sql import ADDRESS_REGEX, valid_address

    engine = make_engine(db_url)
    with engine.connect() as conn:
        got = {a: bool(conn.execute(sa.select(valid_address(sa.literal(a, sa.String)))).scalar_one())
               for a in ADDRESS_EDGES}
    # fullmatch: "$" in Python also matches before a final newline; SQL's does not.
    expected = {a: re.fullmatch(ADDRESS_REGEX, a) is not None for a in ADDRESS_EDGES}
    assert got == expected
    assert expected["x@example." + "a" * 63] and not expected["x@example." + "a" * 64]
