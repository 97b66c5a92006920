"""QA expectation suites on a real audience in SQLite (and PostgreSQL for the happy path).

Each fail-path test corrupts a correct audience in one way and checks that exactly the
expected check fails. The audience is built here with SQLAlchemy (not by segmentation),
with a deterministic control/cell assignment so the shares are exactly on target.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from campaignops import migrations
from campaignops.brief import Brief
from campaignops.qa import gx as qa_gx
from campaignops.qa.data_docs import ASSETS, VENDOR
from campaignops.resources import warehouse_for
from campaignops.schema import (
    audience,
    contact_history,
    customers,
    offers,
    suppressions,
    warehouse_metadata,
)
from campaignops.warehouse import make_engine
from tasks.markdown import qa_markdown

pytestmark = pytest.mark.unit

RUN_ID = "3f2a9c0e5b7d41e8a6c2d9f0b1e4a7c3"
OTHER_RUN = "aa00bb11cc22dd33ee44ff5566778899"
SEND_AT = dt.datetime(2031, 3, 3, 14, 0, tzinfo=dt.UTC)
N_CUSTOMERS = 3000
# Customers 151.. are eligible; 153 and 155 are send recipients (ids 151, 161, ... are control).
TARGET, TARGET2 = 153, 155
SEEDS = ("seed.qa.one@example.org", "seed.qa.two@example.org", "seed.qa.three@example.org")

BRIEF_DATA: dict[str, Any] = {
    "campaign_id": "winback-lapsed-customers",
    "name": "Win back lapsed customers",
    "owner": "dana.campaigns@example.com",
    "objective": "Bring back 1,500 customers",
    "kpi": {"metric": "repeat_purchases", "target": 1500},
    "content": {"template_id": "winback-v2", "subject": "We miss you", "required_fields": ["first_name"]},
    "audience": {"include": {"field": "lifecycle_stage", "op": "eq", "value": "customer"}},
    "frequency_cap": {"max_messages": 2, "per_days": 7},
    "control_group": {"percent": 10, "salt": "winback-2026"},
    "cells": [
        {"name": "ten_off", "percent": 50, "offer_code": "WELCOME10"},
        {"name": "fifteen_off", "percent": 50, "offer_code": "SPRING15"},
    ],
    "expected_audience": {"min": 1000, "max": 2000000},
    "drift_tolerance_percent": 15,
    "approvals": [{"stage": "qa", "approvers": ["quinn.qa@example.com"]}],
}


def make_brief(**changes: Any) -> Brief:
    return Brief.model_validate({**BRIEF_DATA, **changes})


def email_of(i: int) -> str:
    return f"person{i:06d}.qzx@example.com"


def first_of(i: int) -> str:
    return f"Qzfirst{i:06d}"


def last_of(i: int) -> str:
    return f"Qzlast{i:06d}"


def build_warehouse(url: str, n: int = N_CUSTOMERS, run_id: str = RUN_ID) -> dict[str, int]:
    """A warehouse and one run's correct audience; returns counts by outcome.

    Customers 1..n. Excluded (in that order, 1 % each of n): suppressed, unconsented, over the
    frequency cap, missing first name, duplicate address. Every other customer is eligible;
    among eligible ones (in id order) every 10th is control, the rest alternate between the
    two cells: exactly 10 % control and 50/50 cells.
    """
    engine = make_engine(url)
    warehouse_metadata.create_all(engine)
    migrations.upgrade(engine)
    block = max(1, n // 100)
    bounds = {"suppressed": block, "no_consent": 2 * block, "frequency_cap": 3 * block,
              "missing_first_name": 4 * block, "duplicate_address": 5 * block}
    cust, aud, hist = [], [], []
    eligible = sent = 0
    counts = {"send": 0, "control": 0, "excluded": 0, "seed": 0}
    for i in range(1, n + 1):
        reason = next((r for r, b in bounds.items() if i <= b), None)
        address = email_of(1 if reason == "duplicate_address" else i)
        cust.append({
            "customer_id": i, "email": address, "first_name": None if reason == "missing_first_name" else first_of(i),
            "last_name": last_of(i), "country": "US", "language": "en", "lifecycle_stage": "customer",
            "loyalty_tier": "silver", "email_opt_in": reason != "no_consent", "sms_opt_in": False,
        })
        shown = f" {address.upper()}" if i % 11 == 0 else address  # key is lower(trim(email))
        row = {"run_id": run_id, "customer_id": i, "email": shown, "address_key": address,
               "first_name": cust[-1]["first_name"], "last_name": last_of(i), "language": "en",
               "country": "US", "loyalty_tier": "silver", "is_seed": False,
               "outcome": "excluded", "reason": reason, "cell": None, "offer_code": None}
        if reason is None:
            if eligible % 10 == 0:
                row["outcome"] = "control"
            else:
                row["outcome"] = "send"
                ten = sent % 2 == 0
                sent += 1
                row["cell"] = "ten_off" if ten else "fifteen_off"
                row["offer_code"] = "WELCOME10" if ten else "SPRING15"
            eligible += 1
        counts[str(row["outcome"])] += 1
        aud.append(row)
        if reason == "frequency_cap":
            for days in (1, 3):
                hist.append({"customer_id": i, "campaign_id": "newsletter", "run_id": OTHER_RUN,
                             "channel": "email", "sent_at": (SEND_AT - dt.timedelta(days=days)).replace(tzinfo=None)})
        elif i % 7 == 0:  # under the cap in the window, plenty outside it, sms, and this run's own
            base = SEND_AT.replace(tzinfo=None)
            hist += [
                {"customer_id": i, "campaign_id": "newsletter", "run_id": OTHER_RUN, "channel": "email",
                 "sent_at": base - dt.timedelta(days=2)},
                *({"customer_id": i, "campaign_id": "old", "run_id": OTHER_RUN, "channel": "email",
                   "sent_at": base - dt.timedelta(days=8 + d)} for d in range(3)),
                {"customer_id": i, "campaign_id": "sms", "run_id": OTHER_RUN, "channel": "sms",
                 "sent_at": base - dt.timedelta(days=1)},
                {"customer_id": i, "campaign_id": "winback", "run_id": run_id, "channel": "email",
                 "sent_at": base},
            ]
    for address in SEEDS:
        aud.append({"run_id": run_id, "customer_id": None, "email": address, "address_key": address,
                    "first_name": None, "last_name": None, "language": None, "country": None,
                    "loyalty_tier": None, "outcome": "seed", "reason": None, "cell": None,
                    "offer_code": None, "is_seed": True})
        counts["seed"] += 1
    supp = [{"channel": "email", "address": f"  {email_of(i).upper()} ", "reason": "unsubscribe",
             "created_at": dt.datetime(2030, 1, 1)} for i in range(1, bounds["suppressed"] + 1)]
    supp.append({"channel": "sms", "address": email_of(n), "reason": "complaint",  # other channel
                 "created_at": dt.datetime(2030, 1, 1)})
    offer_rows = [
        {"offer_code": code, "description": code, "valid_from": dt.datetime(2031, 1, 1),
         "valid_to": dt.datetime(2031, 6, 30)} for code in ("WELCOME10", "SPRING15", "OLD5")
    ]
    with engine.begin() as conn:
        for table, rows in ((customers, cust), (audience, aud), (contact_history, hist),
                            (suppressions, supp), (offers, offer_rows)):
            for start in range(0, len(rows), 20000):
                conn.execute(table.insert(), rows[start : start + 20000])
    engine.dispose()
    return counts


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("qa_template") / "warehouse.db"
    counts = build_warehouse(f"sqlite:///{path}")
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:  # fold the WAL into the file so a copy is complete
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.exec_driver_sql("PRAGMA journal_mode=DELETE")
    engine.dispose()
    return path, counts


@pytest.fixture
def wh(template_db: tuple[Path, dict[str, int]], sqlite_url: str) -> str:
    """A fresh copy of the correct SQLite warehouse."""
    shutil.copyfile(template_db[0], sa.engine.make_url(sqlite_url).database or "")
    return sqlite_url


@pytest.fixture(scope="session")
def qa() -> Any:
    import campaignops.qa as qa_module

    return qa_module


def run(qa: Any, url: str, home: Path, brief: Brief | None = None, **kw: Any) -> Any:
    kw.setdefault("build_docs", False)
    return qa.run_audience_qa(warehouse_for(url), RUN_ID, brief or make_brief(), send_at=SEND_AT, home=home, **kw)


def sql(url: str, *statements: str, **params: Any) -> None:
    params = {"t": TARGET, "t2": TARGET2, **params}
    engine = make_engine(url)
    with engine.begin() as conn:
        for s in statements:
            conn.execute(sa.text(s), params)
    engine.dispose()


def by_name(result: Any) -> dict[str, Any]:
    return {c.name: c for c in result.checks}


EXPECTED_CHECKS = {
    "outcome_values_known", "no_suppressed_recipient", "no_unconsented_recipient",
    "no_recipient_over_frequency_cap", "unique_customer_among_recipients",
    "unique_address_among_recipients", "address_key_normalised", "valid_address_format",
    "required_field_present[first_name]", "offer_valid_at_send_time", "cell_and_offer_match_brief",
    "send_rows_have_a_cell", "control_share", "cell_share[ten_off]", "cell_share[fifteen_off]",
    "audience_size_in_expected_range", "size_within_drift_of_recent_runs", "excluded_rows_have_reason",
}


# --------------------------------------------------------------------------- pass path


def test_correct_audience_passes_every_check(qa: Any, db_url: str, tmp_path: Path) -> None:
    counts = build_warehouse(db_url)
    result = run(qa, db_url, tmp_path, recent_sizes=[counts["send"] - 40, counts["send"] + 30, counts["send"]],
                 build_docs=True)
    failing = [(c.name, c.observed, c.threshold, c.error) for c in result.checks if not c.passed]
    assert failing == []
    assert result.passed and not result.warnings and not result.failed_critical
    assert set(by_name(result)) == EXPECTED_CHECKS
    checks = by_name(result)
    assert checks["audience_size_in_expected_range"].observed == counts["send"] == 2565
    assert checks["control_share"].observed == pytest.approx(10.0)
    assert checks["cell_share[ten_off]"].observed == pytest.approx(50.02, abs=0.01)
    assert checks["no_suppressed_recipient"].observed == 0
    assert checks["audience_size_in_expected_range"].threshold == "1000..2000000"
    assert checks["control_share"].threshold.startswith("10% ± ")
    assert result.data_docs is not None and result.data_docs.is_file()
    assert result.data_docs.is_relative_to(tmp_path / "gx")
    assert (tmp_path / "gx" / "results" / f"audience-{RUN_ID}.json").is_file()
    assert result.seconds > 0
    if db_url.startswith("postgresql"):  # the connection string stays out of every output
        host = sa.engine.make_url(db_url).render_as_string(hide_password=True).split("@")[-1]
        for p in (tmp_path / "gx").rglob("*"):
            if p.is_file() and p.suffix in (".html", ".json"):
                assert host not in p.read_text(encoding="utf-8", errors="replace")


# --------------------------------------------------------------------------- fail paths

Corruption = Callable[[str, dict[str, int]], None]


def _suppress_recipient(url: str, counts: dict[str, int]) -> None:
    # a send recipient (id 53 is eligible), recorded with other case and spaces
    sql(url, "INSERT INTO suppressions (channel, address, reason, created_at) "
             "VALUES ('email', :a, 'complaint', '2030-06-01 00:00:00.000000')", a=f" {email_of(TARGET).title()}")


def _suppress_seed(url: str, counts: dict[str, int]) -> None:
    sql(url, "INSERT INTO suppressions (channel, address, reason, created_at) "
             "VALUES ('email', :a, 'hard_bounce', '2030-06-01 00:00:00.000000')", a=SEEDS[0])


def _unconsent(url: str, counts: dict[str, int]) -> None:
    sql(url, "UPDATE customers SET email_opt_in = FALSE WHERE customer_id = :t",
        "UPDATE customers SET email_opt_in = NULL WHERE customer_id = :t2")


def _over_cap(url: str, counts: dict[str, int]) -> None:
    for days in (1, 6):  # two emails from another campaign in the last 7 days
        sql(url, "INSERT INTO contact_history (customer_id, campaign_id, run_id, channel, sent_at) "
                 "VALUES (:t, 'promo', :r, 'email', :ts)", r=OTHER_RUN,
            ts=(SEND_AT - dt.timedelta(days=days)).replace(tzinfo=None))


def _duplicate_row(url: str, counts: dict[str, int]) -> None:
    sql(url, "INSERT INTO co_audience (run_id, customer_id, email, address_key, first_name, last_name, "
             "language, country, loyalty_tier, outcome, reason, cell, offer_code, is_seed) "
             "SELECT run_id, customer_id, email, address_key, first_name, last_name, language, country, "
             "loyalty_tier, outcome, reason, cell, offer_code, is_seed FROM co_audience "
             "WHERE run_id = :r AND customer_id = :t", r=RUN_ID)


def _invalid_address(url: str, counts: dict[str, int]) -> None:
    sql(url, "UPDATE co_audience SET email = 'person000153.qzx@@example', address_key = 'person000153.qzx@@example' "
             "WHERE customer_id = :t")


def _unnormalised_key(url: str, counts: dict[str, int]) -> None:
    sql(url, "UPDATE co_audience SET address_key = 'someone.else.qzx@example.com' WHERE customer_id = :t")


def _missing_field(url: str, counts: dict[str, int]) -> None:
    sql(url, "UPDATE co_audience SET first_name = NULL WHERE customer_id = :t",
        "UPDATE co_audience SET first_name = '   ' WHERE customer_id = :t2")


def _expired_offer(url: str, counts: dict[str, int]) -> None:
    sql(url, "UPDATE offers SET valid_to = '2031-03-01 00:00:00.000000' WHERE offer_code = 'WELCOME10'")


def _unknown_offer(url: str, counts: dict[str, int]) -> None:
    sql(url, "UPDATE co_audience SET offer_code = 'NOPE99' WHERE customer_id = :t")


def _wrong_offer_for_cell(url: str, counts: dict[str, int]) -> None:
    sql(url, "UPDATE co_audience SET offer_code = 'OLD5' WHERE customer_id = :t")


def _send_row_without_cell(url: str, counts: dict[str, int]) -> None:
    sql(url, "UPDATE co_audience SET cell = NULL, offer_code = NULL WHERE customer_id = :t")


def _shift_control(url: str, counts: dict[str, int]) -> None:
    # half of the control group is sent to: 5 % instead of 10 %
    sql(url, "UPDATE co_audience SET outcome = 'send', cell = 'ten_off', offer_code = 'WELCOME10' "
             "WHERE outcome = 'control' AND customer_id % 2 = 0",
        "UPDATE co_audience SET outcome = 'send', cell = 'fifteen_off', offer_code = 'SPRING15' "
        "WHERE outcome = 'control' AND customer_id % 2 = 1 AND customer_id % 4 = 1")


def _skew_cell(url: str, counts: dict[str, int]) -> None:
    # a fifth of ten_off moved to fifteen_off: 40/60
    sql(url, "UPDATE co_audience SET cell = 'fifteen_off', offer_code = 'SPRING15' "
             "WHERE cell = 'ten_off' AND customer_id % 5 = 0")


def _too_small(url: str, counts: dict[str, int]) -> None:
    # keep the first 1,100 eligible customers (shares stay on target): 990 sends, below min 1000
    sql(url, "DELETE FROM co_audience WHERE outcome IN ('send', 'control') AND customer_id > 1250")


def _unknown_outcome(url: str, counts: dict[str, int]) -> None:
    sql(url, "UPDATE co_audience SET outcome = 'maybe' WHERE customer_id = 3")


FAILS: dict[str, tuple[Corruption, set[str]]] = {
    "suppressed recipient": (_suppress_recipient, {"no_suppressed_recipient"}),
    "suppressed seed": (_suppress_seed, {"no_suppressed_recipient"}),
    "unconsented recipient": (_unconsent, {"no_unconsented_recipient"}),
    "over the frequency cap": (_over_cap, {"no_recipient_over_frequency_cap"}),
    "duplicated row": (_duplicate_row, {"unique_customer_among_recipients", "unique_address_among_recipients"}),
    "invalid address": (_invalid_address, {"valid_address_format"}),
    "address key not normalised": (_unnormalised_key, {"address_key_normalised"}),
    "missing required field": (_missing_field, {"required_field_present[first_name]"}),
    "expired offer": (_expired_offer, {"offer_valid_at_send_time"}),
    "unknown offer": (_unknown_offer, {"offer_valid_at_send_time", "cell_and_offer_match_brief"}),
    "offer of another cell": (_wrong_offer_for_cell, {"cell_and_offer_match_brief"}),
    "send row without a cell": (_send_row_without_cell, {"send_rows_have_a_cell"}),
    "control share shifted": (_shift_control, {"control_share"}),
    "cell split skewed": (_skew_cell, {"cell_share[ten_off]", "cell_share[fifteen_off]"}),
    "audience below min": (_too_small, {"audience_size_in_expected_range"}),
    "unknown outcome": (_unknown_outcome, {"outcome_values_known"}),
}


@pytest.mark.parametrize("case", list(FAILS))
def test_each_corruption_fails_its_check(
    qa: Any, wh: str, template_db: tuple[Path, dict[str, int]], tmp_path: Path, case: str
) -> None:
    corrupt, expected = FAILS[case]
    corrupt(wh, dict(template_db[1]))
    result = run(qa, wh, tmp_path)
    failed = {c.name for c in result.failed_critical}
    assert failed == expected, [(c.name, c.observed, c.threshold) for c in result.failed_critical]
    assert not result.passed
    assert all(c.error is None for c in result.checks)
    assert all(isinstance(c.observed, int | float) for c in result.failed_critical)


def test_failure_counts_are_observed(qa: Any, wh: str, tmp_path: Path) -> None:
    _missing_field(wh, {})
    _expired_offer(wh, {})
    checks = by_name(run(qa, wh, tmp_path))
    assert checks["required_field_present[first_name]"].observed == 2
    assert checks["offer_valid_at_send_time"].observed == 1283  # every ten_off row
    assert checks["required_field_present[first_name]"].threshold == "0 rows missing first_name"


def test_audience_above_max_fails(qa: Any, wh: str, tmp_path: Path) -> None:
    result = run(qa, wh, tmp_path, brief=make_brief(expected_audience={"min": 10, "max": 2000}))
    assert [c.name for c in result.failed_critical] == ["audience_size_in_expected_range"]
    assert result.failed_critical[0].observed == 2565
    assert result.failed_critical[0].threshold == "10..2000"


def test_drift_is_a_warning(qa: Any, wh: str, tmp_path: Path) -> None:
    # the recent runs were ~30 % larger: this one shrank
    result = run(qa, wh, tmp_path, recent_sizes=[3700, 3660, 3640])
    assert result.passed  # warning-level: the run goes on to a person
    assert [c.name for c in result.warnings] == ["size_within_drift_of_recent_runs"]
    drift = result.warnings[0]
    assert drift.observed == 2565 and not drift.critical
    assert drift.threshold == "3111..4209 (median 3660 ± 15%)"


def test_drift_and_cap_skipped_when_not_applicable(qa: Any, wh: str, tmp_path: Path) -> None:
    brief = make_brief(frequency_cap=None, drift_tolerance_percent=None,
                       content={"template_id": "t", "subject": "s", "required_fields": ["first_name"],
                                "fallbacks": {"first_name": "there"}})
    result = run(qa, wh, tmp_path, brief=brief, recent_sizes=[5000])
    names = set(by_name(result))
    assert "no_recipient_over_frequency_cap" not in names
    assert "size_within_drift_of_recent_runs" not in names
    assert "required_field_present[first_name]" not in names
    assert len(result.skipped) == 3 and result.passed


def test_cells_without_offers(qa: Any, wh: str, tmp_path: Path) -> None:
    sql(wh, "UPDATE co_audience SET offer_code = NULL")
    cells = [{"name": "ten_off", "percent": 50}, {"name": "fifteen_off", "percent": 50}]
    assert run(qa, wh, tmp_path, brief=make_brief(cells=cells)).passed


def test_every_critical_check_fails_alike_on_both_databases(qa: Any, db_url: str, tmp_path: Path) -> None:
    """Many corruptions at once, each on its own send recipient: same verdicts and counts on
    SQLite and PostgreSQL (regex, booleans, timestamps and joins behave the same)."""
    build_warehouse(db_url)
    sql(db_url,
        "INSERT INTO suppressions (channel, address, reason, created_at) "
        "VALUES ('email', :a, 'complaint', '2030-06-01 00:00:00')",
        "UPDATE customers SET email_opt_in = FALSE WHERE customer_id = 155",
        "INSERT INTO contact_history (customer_id, campaign_id, run_id, channel, sent_at) "
        "VALUES (157, 'p', 'x', 'email', :ts), (157, 'p', 'x', 'email', :ts)",
        "INSERT INTO co_audience (run_id, customer_id, email, address_key, outcome, cell, offer_code, "
        "first_name, is_seed) SELECT run_id, customer_id, email, address_key, outcome, cell, offer_code, "
        "first_name, is_seed FROM co_audience WHERE customer_id = 163",
        "UPDATE co_audience SET email = 'x.qzx@@example', address_key = 'x.qzx@@example' WHERE customer_id = 165",
        "UPDATE co_audience SET first_name = '' WHERE customer_id = 167",
        "UPDATE co_audience SET offer_code = 'NOPE99' WHERE customer_id = 169",
        "UPDATE co_audience SET address_key = 'other.qzx@example.com' WHERE customer_id = 173",
        "UPDATE co_audience SET cell = NULL, offer_code = NULL WHERE customer_id = 175",
        "UPDATE co_audience SET outcome = 'maybe' WHERE customer_id = 3",
        a=email_of(153), ts=(SEND_AT - dt.timedelta(days=1)).replace(tzinfo=None))
    result = run(qa, db_url, tmp_path)
    observed = {c.name: c.observed for c in result.failed_critical}
    assert observed == {
        "outcome_values_known": 1, "no_suppressed_recipient": 1, "no_unconsented_recipient": 1,
        "no_recipient_over_frequency_cap": 1, "unique_customer_among_recipients": 2,
        "unique_address_among_recipients": 2, "address_key_normalised": 1, "valid_address_format": 1,
        "required_field_present[first_name]": 1, "offer_valid_at_send_time": 1,
        "cell_and_offer_match_brief": 1, "send_rows_have_a_cell": 1,
    }
    assert all(c.error is None for c in result.checks)
    if db_url.startswith("postgresql"):
        # GX's connections (and the temporary table holding the batch) are closed on return;
        # campaignops' own pooled connections are released first, so only GX's could remain
        warehouse_for(db_url).dispose()
        engine = sa.create_engine(db_url)
        with engine.connect() as conn:
            others = conn.execute(sa.text("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = :d "
                                          "AND pid <> pg_backend_pid()"),
                                  {"d": sa.engine.make_url(db_url).database}).scalar_one()
        engine.dispose()
        assert others == 0


# --------------------------------------------------------------------------- personal data


def test_no_personal_data_in_any_output(qa: Any, wh: str, template_db: tuple[Path, dict[str, int]],
                                        tmp_path: Path) -> None:
    for corrupt in (_suppress_recipient, _unconsent, _over_cap, _duplicate_row, _invalid_address,
                    _missing_field, _unknown_offer, _skew_cell, _unknown_outcome, _unnormalised_key):
        corrupt(wh, template_db[1])
    sql(wh, "UPDATE co_audience SET reason = NULL WHERE customer_id = 1")
    result = run(qa, wh, tmp_path, build_docs=True, recent_sizes=[9000])
    assert len(result.failed_critical) >= 10 and result.warnings
    engine = make_engine(wh)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT email, address_key, first_name, last_name FROM co_audience "
                                    "WHERE run_id = :r"), {"r": RUN_ID}).all()
    engine.dispose()
    secrets = {v.strip().lower() for row in rows for v in row if v and v.strip()}
    assert len(secrets) > 7000
    # every personal value built here contains "qz" (names Qzfirst…/Qzlast…, addresses …qzx@…)
    assert all("qz" in s for s in secrets - {s.lower() for s in SEEDS})
    outputs = [result.to_json().encode(), json.dumps(dataclasses.asdict(result), default=str).encode(),
               qa_markdown(result).encode()]
    files = [p for p in (tmp_path / "gx").rglob("*") if p.is_file()]
    assert result.data_docs in files and len(files) > 5
    assert any(p.suffix == ".json" for p in files)  # the stored result
    # the CSS/JavaScript copied into the site are the bytes the package ships (no data reaches
    # them): minified code that happens to spell "qz" is not a leak
    shipped = {f.read_bytes() for f in ASSETS.rglob("*") if f.is_file()}
    vendored = [p for p in files if VENDOR.as_posix() in p.as_posix()]
    assert vendored and all(p.read_bytes() in shipped for p in vendored)
    outputs += [p.read_bytes() for p in files if p not in vendored]
    token = re.compile(rb"[a-z0-9._%+'-]+@[a-z0-9.-]+|qz(?:first|last)\d{6}")
    for blob in outputs:
        low = blob.lower()
        found = {t.decode("utf-8", "replace").strip() for t in token.findall(low)}
        assert found & secrets == set()
        try:
            text = low.decode("utf-8")
        except UnicodeDecodeError:
            continue  # a packaged image or font: checked by tokens above
        assert "qz" not in text
        assert "@example.com" not in text and "@example.org" not in text


def test_leak_guard_fails_closed(qa: Any, wh: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With GX's full result format and no scrubbing, addresses would leak: the guard removes the
    output and fails the run instead."""
    _invalid_address(wh, {})
    _duplicate_row(wh, {})
    monkeypatch.setattr(qa_gx, "RESULT_FORMAT", {"result_format": "COMPLETE"})
    monkeypatch.setattr(qa_gx, "scrub", lambda value: value)
    monkeypatch.setattr(qa_gx, "scrub_validation_result", lambda result: None)
    with pytest.raises(RuntimeError, match="audience addresses"):
        run(qa, wh, tmp_path, build_docs=True)
    assert not list((tmp_path / "gx" / "results").glob("*.json"))
    assert not (tmp_path / "gx" / "data_docs" / f"audience-{RUN_ID}").exists()


# --------------------------------------------------------------------------- suites and API


def test_load_suite_counts_match_json(qa: Any) -> None:
    data = json.loads((qa.EXPECTATIONS_DIR / "audience.json").read_text())
    suite = qa.load_suite("audience")
    assert len(suite.expectations) == len(data["expectations"])
    for exp in data["expectations"]:
        assert isinstance(exp["meta"]["critical"], bool) and exp["meta"]["name"]


def test_unknown_expectation_type_fails_loudly(qa: Any, tmp_path: Path) -> None:
    data = json.loads((qa.EXPECTATIONS_DIR / "audience.json").read_text())
    data["expectations"].append({"type": "expect_audience_to_be_lovely", "kwargs": {},
                                 "meta": {"name": "lovely", "critical": True}})
    (tmp_path / "broken.json").write_text(json.dumps(data))
    with pytest.raises(qa.SuiteError, match=r"loaded \d+ .*lovely.*expect_audience_to_be_lovely not found"):
        qa.load_suite("broken", directory=tmp_path)


def test_suite_without_meta_is_rejected(qa: Any, tmp_path: Path) -> None:
    (tmp_path / "nometa.json").write_text(json.dumps(
        {"name": "x", "expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "a"}}]}))
    with pytest.raises(qa.SuiteError, match="meta.name"):
        qa.load_suite("nometa", directory=tmp_path)


@pytest.mark.parametrize("bad", ["x' OR '1'='1", "3f2a9c0e; DROP TABLE customers", "", "ab"])
def test_run_id_is_validated(qa: Any, wh: str, tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="run_id"):
        qa.run_audience_qa(warehouse_for(wh), bad, make_brief(), send_at=SEND_AT, home=tmp_path)


def test_naive_send_time_is_rejected(qa: Any, wh: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="time zone"):
        qa.run_audience_qa(warehouse_for(wh), RUN_ID, make_brief(), send_at=SEND_AT.replace(tzinfo=None), home=tmp_path)


def test_unknown_run_fails_closed(qa: Any, wh: str, tmp_path: Path) -> None:
    result = qa.run_audience_qa(warehouse_for(wh), "0" * 32, make_brief(), send_at=SEND_AT, home=tmp_path, build_docs=False)
    assert not result.passed
    assert "audience_size_in_expected_range" in {c.name for c in result.failed_critical}


def test_share_tolerance(qa: Any) -> None:
    assert qa.share_tolerance(10, 100_000) == pytest.approx(0.5)
    assert qa.share_tolerance(10, 2_850) == pytest.approx(4 * 100 * (0.09 / 2_850) ** 0.5)
    assert qa.share_tolerance(0, 50) == pytest.approx(0.5)
    assert qa.share_tolerance(50, 0) == pytest.approx(0.5)


def test_render_markdown(qa: Any) -> None:
    ok = qa.CheckResult("control_share", "expect_column_mean_to_be_between", True, True, 10.0, "10% ± 0.5")
    bad = qa.CheckResult("no_suppressed_recipient", "unexpected_rows_expectation", True, False, 3, "0 rows")
    warn = qa.CheckResult("size_within_drift_of_recent_runs", "expect_table_row_count_to_be_between",
                          False, False, 700, "850..1150 (median 1000 ± 15%)")
    broken = qa.CheckResult("x|y", "unexpected_rows_expectation", True, False, None, "0 rows", error="boom")
    result = qa.QAResult("audience", False, [ok, bad, warn, broken], [warn], [bad, broken], 1.234, None,
                         ["no_recipient_over_frequency_cap: the brief sets no frequency cap"])
    md = qa_markdown(result)
    assert "BLOCKED" in md
    assert "| check | level | observed | threshold | verdict |" in md
    assert "| control_share | critical | 10.0 | 10% ± 0.5 | pass |" in md
    assert "| no_suppressed_recipient | critical | 3 | 0 rows | **FAIL** |" in md
    assert "| size_within_drift_of_recent_runs | warning | 700 | 850..1150 (median 1000 ± 15%) | **WARN** |" in md
    assert "| x\\|y | critical | n/a | 0 rows | **ERROR** (boom) |" in md
    assert "Not applicable: no_recipient_over_frequency_cap" in md


def test_concurrent_runs_do_not_mix_results(qa: Any, wh: str, tmp_path: Path) -> None:
    """One GX context per validation: runs in parallel threads keep their own results."""
    from concurrent.futures import ThreadPoolExecutor

    runs = {RUN_ID: set(), "b" * 32: {"control_share"}, "c" * 32: {"required_field_present[first_name]"}}
    for run_id in list(runs)[1:]:
        sql(wh, "INSERT INTO co_audience (run_id, customer_id, email, address_key, first_name, last_name, "
                "language, country, loyalty_tier, outcome, reason, cell, offer_code, is_seed) "
                "SELECT :n, customer_id, email, address_key, first_name, last_name, language, country, "
                "loyalty_tier, outcome, reason, cell, offer_code, is_seed FROM co_audience WHERE run_id = :r",
            n=run_id, r=RUN_ID)
    # RUN_ID's own contact history would count against the copies' frequency cap
    sql(wh, "DELETE FROM contact_history WHERE run_id = :r", r=RUN_ID)
    sql(wh, "UPDATE co_audience SET outcome = 'excluded', reason = 'x' WHERE run_id = :n AND outcome = 'control'",
        n="b" * 32)
    sql(wh, "UPDATE co_audience SET first_name = '' WHERE run_id = :n AND customer_id = :t", n="c" * 32)

    def one(run_id: str) -> tuple[str, set[str]]:
        result = qa.run_audience_qa(warehouse_for(wh), run_id, make_brief(), send_at=SEND_AT, home=tmp_path / run_id[:1],
                                    build_docs=True)
        return run_id, {c.name for c in result.failed_critical}

    with ThreadPoolExecutor(max_workers=3) as pool:
        got = dict(pool.map(one, list(runs) * 2))
    assert got == runs


def test_render_markdown_links_data_docs(qa: Any, tmp_path: Path) -> None:
    docs = tmp_path / "gx" / "data_docs" / f"audience-{RUN_ID}" / "index.html"
    result = qa.QAResult("audience", True, [], [], [], 0.5, docs)
    md = qa_markdown(result)
    assert f"[index.html]({docs.resolve().as_uri()})" in md and str(docs) in md
