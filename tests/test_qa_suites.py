"""The warehouse-health and handoff-file suites, and fail paths on a segmented audience.

Everything here starts from the synthetic warehouse (campaignops.synthetic.init_warehouse)
and real segmentation, then corrupts it one way per test: the warehouse's own tables for
warehouse_health, the CSV (and, where the test isolates one check, its manifest) written by
write_file_drop for handoff_file, and the materialised audience for the audience suite.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from campaignops import migrations, runs
from campaignops.brief import Brief, load_brief
from campaignops.handoff.file import write_file_drop
from campaignops.qa import gx as qa_gx
from campaignops.resources import warehouse_for
from campaignops.segmentation import SUPPRESSION_REASONS, segment
from campaignops.sql import ADDRESS_REGEX
from campaignops.synthetic import _STAGES, _TIERS, init_warehouse
from campaignops.warehouse import Warehouse, make_engine
from tasks.markdown import qa_markdown

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
AS_OF = dt.datetime(2031, 3, 3, 12, 0)  # naive UTC, as the warehouse stores it
SEND_AT = AS_OF.replace(tzinfo=dt.UTC)
N_CUSTOMERS = 6000
RUN_ID = "5e1f0a2b3c4d4e5f8a9b0c1d2e3f4a5b"
FIELDS = ["first_name"]


def winback(**changes: Any) -> Brief:
    """examples/briefs/winback.yaml, sized for a 6,000-customer warehouse."""
    brief = load_brief(ROOT / "examples" / "briefs" / "winback.yaml")
    data = brief.model_dump(mode="json") | {"expected_audience": {"min": 100, "max": 2_000_000}}
    return Brief.model_validate(data | changes)


def newsletter() -> Brief:
    """examples/briefs/weekly-newsletter.yaml: recurring, drift tolerance 15 %."""
    return load_brief(ROOT / "examples" / "briefs" / "weekly-newsletter.yaml")


def sql(url: str, *statements: str, **params: Any) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        for s in statements:
            conn.execute(sa.text(s), params)
    engine.dispose()


def scalar(url: str, statement: str, **params: Any) -> Any:
    engine = make_engine(url)
    with engine.connect() as conn:
        value = conn.execute(sa.text(statement), params).scalar_one()
    engine.dispose()
    return value


def names(checks: list[Any]) -> set[str]:
    return {c.name for c in checks}


@pytest.fixture(scope="session")
def qa() -> Any:
    import campaignops.qa as qa_module

    return qa_module


def _build(url: str) -> None:
    engine = make_engine(url)
    init_warehouse(engine, customers=N_CUSTOMERS, seed=42, as_of=AS_OF)
    migrations.upgrade(engine)
    segment(Warehouse(engine), winback(), RUN_ID, AS_OF)
    engine.dispose()


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated warehouse with the winback audience segmented (SQLite, built once)."""
    path = tmp_path_factory.mktemp("qa_suites") / "warehouse.db"
    _build(f"sqlite:///{path}")
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:  # fold the WAL into the file so a copy is complete
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.exec_driver_sql("PRAGMA journal_mode=DELETE")
    engine.dispose()
    return path


@pytest.fixture
def wh(template: Path, tmp_path: Path) -> str:
    """A fresh copy of the template warehouse."""
    path = tmp_path / "warehouse.db"
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


# =========================================================================== warehouse health

WAREHOUSE_CHECKS = {
    "customers_not_empty", "customer_id_not_null", "customer_id_unique", "email_consent_known",
    "customer_emails_well_formed", "lifecycle_stage_known", "loyalty_tier_known",
    "customer_dates_not_in_future", "suppressions_not_empty", "suppression_channel_known",
    "email_suppressions_are_addresses", "suppression_reason_known", "offer_window_ordered",
    "no_future_contact_history", "contact_channel_known", "contact_history_fresh",
    "seed_addresses_well_formed",
}


def health(qa: Any, url: str, home: Path, as_of: dt.datetime = AS_OF, **kw: Any) -> Any:
    kw.setdefault("build_docs", False)
    return qa.run_warehouse_qa(warehouse_for(url), home=home, as_of=as_of, **kw)


def test_generated_warehouse_is_healthy(qa: Any, db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    init_warehouse(engine, customers=3000, seed=7, as_of=AS_OF)
    engine.dispose()
    result = health(qa, db_url, tmp_path, as_of=SEND_AT, build_docs=True)
    failing = [(c.name, c.observed, c.threshold, c.error) for c in result.checks if not c.passed]
    assert failing == []
    assert result.passed and result.suite == "warehouse_health"
    assert names(result.checks) == WAREHOUSE_CHECKS
    checks = {c.name: c for c in result.checks}
    assert checks["customers_not_empty"].observed == 3000
    assert 0 < checks["customer_emails_well_formed"].observed < 1  # percent malformed: the generator's defects
    assert checks["no_future_contact_history"].threshold == "0 rows after 2031-03-03 12:00 UTC"
    assert result.data_docs is not None and result.data_docs.is_file()
    assert (tmp_path / "gx" / "results" / "warehouse_health-20310303T120000Z.json").is_file()


def _rebuild_customers_without_keys(url: str) -> None:
    """Warehouses rarely enforce keys (Snowflake, BigQuery, views): drop ours to corrupt ids."""
    sql(url, "CREATE TABLE customers_copy AS SELECT * FROM customers", "DROP TABLE customers",
        "ALTER TABLE customers_copy RENAME TO customers")


def _duplicate_customer(url: str) -> None:
    _rebuild_customers_without_keys(url)
    sql(url, "INSERT INTO customers SELECT * FROM customers WHERE customer_id = 17")


def _null_customer_id(url: str) -> None:
    _rebuild_customers_without_keys(url)
    sql(url, "UPDATE customers SET customer_id = NULL WHERE customer_id = 17")


def _consent_feed_broken(url: str) -> None:  # 2 % unknown consent
    sql(url, "UPDATE customers SET email_opt_in = NULL WHERE customer_id % 50 = 0")


def _malformed_emails(url: str) -> None:  # 10 % lose their @
    sql(url, "UPDATE customers SET email = replace(email, '@', '') WHERE customer_id % 10 = 0")


def _unknown_stage(url: str) -> None:
    sql(url, "UPDATE customers SET lifecycle_stage = 'Customer' WHERE customer_id = 17")


def _unknown_tier(url: str) -> None:
    sql(url, "UPDATE customers SET loyalty_tier = 'STAFF' WHERE customer_id = 17")


def _future_purchase(url: str) -> None:
    sql(url, "UPDATE customers SET last_purchase_at = '2031-04-01 00:00:00.000000' WHERE customer_id = 17")


def _no_suppressions(url: str) -> None:
    sql(url, "DELETE FROM suppressions")


def _suppression_channel_upper(url: str) -> None:
    sql(url, "UPDATE suppressions SET channel = 'EMAIL' WHERE address = "
             "(SELECT MIN(address) FROM suppressions WHERE channel = 'email')")


def _suppressions_hashed(url: str) -> None:  # the feed delivered hashes instead of addresses
    engine = make_engine(url)
    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT DISTINCT address FROM suppressions WHERE channel = 'email'")).all()
        for (address,) in rows:
            conn.execute(sa.text("UPDATE suppressions SET address = :h WHERE address = :a"),
                         {"h": hashlib.sha256(address.encode()).hexdigest(), "a": address})
    engine.dispose()


def _unknown_reason(url: str) -> None:
    sql(url, "UPDATE suppressions SET reason = 'spam_trap' WHERE address = "
             "(SELECT MIN(address) FROM suppressions)")


def _inverted_offer(url: str) -> None:
    sql(url, "UPDATE offers SET valid_to = '2029-01-01 00:00:00.000000' WHERE offer_code = 'SPRING15'")


def _future_contact(url: str) -> None:  # timestamps loaded in the wrong time zone
    sql(url, "INSERT INTO contact_history (customer_id, campaign_id, run_id, channel, sent_at) "
             "VALUES (17, 'weekly-digest', 'tz', 'email', '2031-03-03 17:00:00.000000')")


def _contact_channel_unknown(url: str) -> None:
    sql(url, "UPDATE contact_history SET channel = 'E-mail' WHERE customer_id = "
             "(SELECT MIN(customer_id) FROM contact_history)")


def _seed_malformed(url: str) -> None:
    sql(url, "UPDATE seed_recipients SET email = 'seed+1 at example.com' WHERE email = 'seed+1@example.com'")


def _no_customers(url: str) -> None:
    sql(url, "DELETE FROM customers")


WAREHOUSE_FAILS: dict[str, tuple[Callable[[str], None], set[str], set[str]]] = {
    # case: (corruption, failed critical, warnings)
    "duplicate customer id": (_duplicate_customer, {"customer_id_unique"}, set()),
    "null customer id": (_null_customer_id, {"customer_id_not_null"}, set()),
    "consent feed broken": (_consent_feed_broken, {"email_consent_known"}, set()),
    "malformed emails": (_malformed_emails, set(), {"customer_emails_well_formed"}),
    "unknown lifecycle stage": (_unknown_stage, set(), {"lifecycle_stage_known"}),
    "unknown loyalty tier": (_unknown_tier, set(), {"loyalty_tier_known"}),
    "purchase in the future": (_future_purchase, set(), {"customer_dates_not_in_future"}),
    "suppressions empty": (_no_suppressions, {"suppressions_not_empty"}, set()),
    "suppression channel misspelt": (_suppression_channel_upper, {"suppression_channel_known"}, set()),
    "suppressions hashed": (_suppressions_hashed, {"email_suppressions_are_addresses"}, set()),
    "unknown suppression reason": (_unknown_reason, set(), {"suppression_reason_known"}),
    "offer window inverted": (_inverted_offer, set(), {"offer_window_ordered"}),
    "contact in the future": (_future_contact, {"no_future_contact_history"}, set()),
    "contact channel unknown": (_contact_channel_unknown, {"contact_channel_known"}, set()),
    "seed address malformed": (_seed_malformed, set(), {"seed_addresses_well_formed"}),
    "customers empty": (_no_customers, {"customers_not_empty"}, set()),
}


@pytest.mark.parametrize("case", list(WAREHOUSE_FAILS))
def test_each_warehouse_corruption_fails_its_check(qa: Any, wh: str, tmp_path: Path, case: str) -> None:
    corrupt, critical, warnings = WAREHOUSE_FAILS[case]
    assert health(qa, wh, tmp_path).passed  # the copy was healthy
    corrupt(wh)
    result = health(qa, wh, tmp_path)
    assert (names(result.failed_critical), names(result.warnings)) == (critical, warnings), [
        (c.name, c.observed, c.threshold, c.error) for c in result.checks if not c.passed
    ]
    assert result.passed is not bool(critical)
    assert all(c.error is None for c in result.checks)


def test_share_checks_tolerate_a_little(qa: Any, wh: str, tmp_path: Path) -> None:
    """0.5 % unknown consent stays under the 1 % bound; the observed value is the failing share."""
    sql(wh, "UPDATE customers SET email_opt_in = NULL WHERE customer_id % 200 = 0")
    checks = {c.name: c for c in health(qa, wh, tmp_path).checks}
    assert checks["email_consent_known"].passed
    assert checks["email_consent_known"].observed == pytest.approx(0.5)


def test_stale_contact_history_is_a_warning(qa: Any, wh: str, tmp_path: Path) -> None:
    """Checked a month after the last load: the frequency cap would be blind; a person looks."""
    result = health(qa, wh, tmp_path, as_of=AS_OF + dt.timedelta(days=30))
    assert result.passed
    assert names(result.warnings) == {"contact_history_fresh"}
    assert result.warnings[0].observed == 1
    assert result.warnings[0].threshold == "latest send within 7 days before 2031-04-02 12:00 UTC"


def test_warehouse_corruptions_alike_on_postgresql(qa: Any, pg_url: str, tmp_path: Path) -> None:
    engine = make_engine(pg_url)
    init_warehouse(engine, customers=2000, seed=3, as_of=AS_OF)
    engine.dispose()
    for corrupt in (_consent_feed_broken, _unknown_tier, _future_purchase, _suppression_channel_upper,
                    _suppressions_hashed, _inverted_offer, _future_contact, _seed_malformed):
        corrupt(pg_url)
    result = health(qa, pg_url, tmp_path)
    assert names(result.failed_critical) == {
        "email_consent_known", "suppression_channel_known", "email_suppressions_are_addresses",
        "no_future_contact_history",
    }
    assert names(result.warnings) == {
        "loyalty_tier_known", "customer_dates_not_in_future", "offer_window_ordered",
        "seed_addresses_well_formed",
    }
    assert all(c.error is None for c in result.checks)


def test_warehouse_suite_sets_match_the_code(qa: Any) -> None:
    """The allowed sets in warehouse_health.json are the ones segmentation and the generator use."""
    data = json.loads((qa.EXPECTATIONS_DIR / "warehouse_health.json").read_text())
    by_name = {e["meta"]["name"]: e for e in data["expectations"]}
    assert by_name["lifecycle_stage_known"]["kwargs"]["value_set"] == list(_STAGES)
    assert by_name["loyalty_tier_known"]["kwargs"]["value_set"] == list(_TIERS)
    assert set(by_name["suppression_reason_known"]["kwargs"]["value_set"]) == set(SUPPRESSION_REASONS)
    assert by_name["customer_emails_well_formed"]["kwargs"]["regex"] == ADDRESS_REGEX
    assert by_name["seed_addresses_well_formed"]["kwargs"]["regex"] == ADDRESS_REGEX
    assert names([qa.CheckResult(e["meta"]["name"], "", True, True, 0, "") for e in data["expectations"]]) \
        == WAREHOUSE_CHECKS
    for e in data["expectations"]:
        assert e["meta"]["table"] in qa.WAREHOUSE_TABLES


# =========================================================================== handoff file

HANDOFF_CHECKS = {
    "row_count_matches_manifest", "columns_match_manifest", "rows_have_every_column",
    "seed_flag_valid", "seed_flag_present", "customer_rows_have_id", "unique_customer_id",
    "address_present", "unique_address", "valid_address_format", "required_field_present[first_name]",
    "sha256_matches_manifest",
}


@pytest.fixture
def drop(wh: str, tmp_path: Path) -> Any:
    engine = make_engine(wh)
    result = write_file_drop(engine, RUN_ID, tmp_path / "drops", FIELDS)
    engine.dispose()
    return result


def file_qa(qa: Any, drop: Any, home: Path, **kw: Any) -> Any:
    kw.setdefault("build_docs", False)
    kw.setdefault("required_fields", FIELDS)
    return qa.run_handoff_file_qa(drop.csv_path, drop.manifest_path, home=home, **kw)


def read_rows(drop: Any) -> list[list[str]]:
    with drop.csv_path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def write_rows(drop: Any, rows: list[list[str]], fix_manifest: bool) -> None:
    """Rewrite the CSV as write_file_drop would; optionally make the manifest describe it."""
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    data = buf.getvalue().encode()
    drop.csv_path.write_bytes(data)
    if fix_manifest:
        manifest = json.loads(drop.manifest_path.read_text())
        manifest.update(rows=len(rows) - 1, sha256=hashlib.sha256(data).hexdigest())
        drop.manifest_path.write_text(json.dumps(manifest))


def first_customer(rows: list[list[str]]) -> int:
    return next(i for i, r in enumerate(rows) if i and r[4] == "false")


def test_real_file_drop_passes(qa: Any, drop: Any, tmp_path: Path) -> None:
    result = file_qa(qa, drop, tmp_path / "home", build_docs=True)
    failing = [(c.name, c.observed, c.threshold, c.error) for c in result.checks if not c.passed]
    assert failing == [] and result.passed
    assert names(result.checks) == HANDOFF_CHECKS
    checks = {c.name: c for c in result.checks}
    assert checks["row_count_matches_manifest"].observed == drop.rows > 300
    assert checks["sha256_matches_manifest"].observed == "matches"
    assert result.data_docs is not None and result.data_docs.is_file()
    # the scratch database with the file's rows is gone
    assert sorted(p.name for p in drop.csv_path.parent.iterdir()) == [
        f"{RUN_ID}.csv", f"{RUN_ID}.manifest.json"
    ]


def test_required_fields_none_skips(qa: Any, drop: Any, tmp_path: Path) -> None:
    result = file_qa(qa, drop, tmp_path, required_fields=[])
    assert result.passed and "required_field_present[first_name]" not in names(result.checks)
    assert result.skipped == ["required_field_present: no required field to check"]


def _truncated(rows: list[list[str]]) -> tuple[list[list[str]], bool]:
    return rows[:-1], False


def _appended_duplicate(rows: list[list[str]]) -> tuple[list[list[str]], bool]:
    return [*rows, rows[first_customer(rows)]], False


def _duplicate_row(rows: list[list[str]]) -> tuple[list[list[str]], bool]:
    i = first_customer(rows)
    return [*rows[: i + 1], rows[i], *rows[i + 1 :]], True


def _address_in_other_case(rows: list[list[str]]) -> tuple[list[list[str]], bool]:
    i = first_customer(rows)
    rows[i + 1][1] = rows[i][1].upper()
    return rows, True


def _invalid_address(rows: list[list[str]]) -> tuple[list[list[str]], bool]:
    i = first_customer(rows)
    rows[i][1] = rows[i][1].replace("@", "@@")
    return rows, True


def _missing_address(rows: list[list[str]]) -> tuple[list[list[str]], bool]:
    rows[first_customer(rows)][1] = ""
    return rows, True


def _null_required_field(rows: list[list[str]]) -> tuple[list[list[str]], bool]:
    i = first_customer(rows)
    rows[i][5] = ""
    rows[i + 1][5] = "  "
    return rows, True


def _missing_customer_id(rows: list[list[str]]) -> tuple[list[list[str]], bool]:
    rows[first_customer(rows)][0] = ""
    return rows, True


def _ragged_row(rows: list[list[str]]) -> tuple[list[list[str]], bool]:
    rows[first_customer(rows)].append("extra")
    return rows, True


def _seed_flag_garbled(rows: list[list[str]]) -> tuple[list[list[str]], bool]:
    rows[first_customer(rows)][4] = "yes"
    return rows, True


def _columns_swapped(rows: list[list[str]]) -> tuple[list[list[str]], bool]:
    return [[r[0], r[1], r[3], r[2], *r[4:]] for r in rows], True


def _tampered(rows: list[list[str]]) -> tuple[list[list[str]], bool]:
    i = first_customer(rows)
    rows[i][2] = "fifteen_off" if rows[i][2] == "ten_off" else "ten_off"
    return rows, False


FILE_FAILS: dict[str, tuple[Callable[[list[list[str]]], tuple[list[list[str]], bool]], set[str]]] = {
    "truncated file": (_truncated, {"row_count_matches_manifest", "sha256_matches_manifest"}),
    "row appended after the manifest": (_appended_duplicate, {
        "row_count_matches_manifest", "sha256_matches_manifest", "unique_customer_id", "unique_address"}),
    "duplicate row": (_duplicate_row, {"unique_customer_id", "unique_address"}),
    "address twice in other case": (_address_in_other_case, {"unique_address"}),
    "invalid address": (_invalid_address, {"valid_address_format"}),
    "missing address": (_missing_address, {"address_present"}),
    "null required field": (_null_required_field, {"required_field_present[first_name]"}),
    "customer row without id": (_missing_customer_id, {"customer_rows_have_id"}),
    "ragged row": (_ragged_row, {"rows_have_every_column"}),
    "seed flag garbled": (_seed_flag_garbled, {"seed_flag_valid"}),
    "columns out of order": (_columns_swapped, {"columns_match_manifest"}),
    "tampered after the manifest": (_tampered, {"sha256_matches_manifest"}),
}


@pytest.mark.parametrize("case", list(FILE_FAILS))
def test_each_file_corruption_fails_its_check(qa: Any, drop: Any, tmp_path: Path, case: str) -> None:
    corrupt, expected = FILE_FAILS[case]
    rows, fix_manifest = corrupt(read_rows(drop))
    write_rows(drop, rows, fix_manifest)
    result = file_qa(qa, drop, tmp_path)
    assert names(result.failed_critical) == expected, [
        (c.name, c.observed, c.threshold, c.error) for c in result.failed_critical
    ]
    assert not result.passed and not result.warnings
    assert all(c.error is None for c in result.checks)


def test_header_renamed_fails_closed(qa: Any, drop: Any, tmp_path: Path) -> None:
    """A required column missing from the file: its check errors, which fails it."""
    rows = read_rows(drop)
    rows[0][5] = "firstname"
    write_rows(drop, rows, fix_manifest=True)
    result = file_qa(qa, drop, tmp_path)
    failed = {c.name: c for c in result.failed_critical}
    assert set(failed) == {"columns_match_manifest", "required_field_present[first_name]"}
    assert failed["required_field_present[first_name]"].error


def test_unusable_inputs_raise(qa: Any, drop: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a personalisation field"):
        file_qa(qa, drop, tmp_path, required_fields=["email; DROP TABLE x"])
    drop.manifest_path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        file_qa(qa, drop, tmp_path)
    drop.manifest_path.write_text(json.dumps({"rows": "many"}))
    with pytest.raises(ValueError, match="needs rows"):
        file_qa(qa, drop, tmp_path)
    drop.manifest_path.write_text(json.dumps({"rows": 1, "columns": ["a"], "sha256": "x"}))
    drop.csv_path.write_text('a,"b c"\n1,2\n')
    with pytest.raises(ValueError, match="header"):
        file_qa(qa, drop, tmp_path)


# =========================================================================== audience, real data

def audience_qa(qa: Any, url: str, home: Path, brief: Brief | None = None, run_id: str = RUN_ID,
                **kw: Any) -> Any:
    kw.setdefault("build_docs", False)
    return qa.run_audience_qa(warehouse_for(url), run_id, brief or winback(), send_at=SEND_AT, home=home, **kw)


def a_recipient(url: str) -> int:
    return int(scalar(url, "SELECT MIN(customer_id) FROM co_audience WHERE run_id = :r "
                           "AND outcome = 'send'", r=RUN_ID))


def _suppress_address(url: str) -> None:
    email = scalar(url, "SELECT email FROM co_audience WHERE run_id = :r AND customer_id = :c",
                   r=RUN_ID, c=a_recipient(url))
    sql(url, "INSERT INTO suppressions (channel, address, reason, created_at) "
             "VALUES ('email', :a, 'complaint', '2031-03-02 00:00:00.000000')", a=email.upper())


def _duplicate_audience_row(url: str) -> None:
    sql(url, "INSERT INTO co_audience (run_id, customer_id, email, address_key, first_name, last_name, "
             "language, country, loyalty_tier, outcome, reason, cell, offer_code, is_seed) "
             "SELECT run_id, customer_id, email, address_key, first_name, last_name, language, country, "
             "loyalty_tier, outcome, reason, cell, offer_code, is_seed FROM co_audience "
             "WHERE run_id = :r AND customer_id = :c", r=RUN_ID, c=a_recipient(url))


def _null_first_name(url: str) -> None:
    sql(url, "UPDATE co_audience SET first_name = NULL WHERE run_id = :r AND customer_id = :c",
        r=RUN_ID, c=a_recipient(url))


def _expire_offer(url: str) -> None:  # SPRING15 ended the day before the send
    sql(url, "UPDATE offers SET valid_to = '2031-03-02 00:00:00.000000' WHERE offer_code = 'SPRING15'")


def _shift_control(url: str) -> None:  # half the control group is sent to
    sql(url, "UPDATE co_audience SET outcome = 'send', cell = 'ten_off', offer_code = 'WELCOME10' "
             "WHERE run_id = :r AND outcome = 'control' AND customer_id % 2 = 0", r=RUN_ID)


AUDIENCE_FAILS: dict[str, tuple[Callable[[str], None], set[str]]] = {
    "suppressed address": (_suppress_address, {"no_suppressed_recipient"}),
    "duplicate row": (_duplicate_audience_row, {"unique_customer_among_recipients",
                                                "unique_address_among_recipients"}),
    "null required field": (_null_first_name, {"required_field_present[first_name]"}),
    "expired offer": (_expire_offer, {"offer_valid_at_send_time"}),
    "shifted control share": (_shift_control, {"control_share"}),
}


def test_segmented_audience_passes(qa: Any, wh: str, tmp_path: Path) -> None:
    result = audience_qa(qa, wh, tmp_path)
    assert result.passed and not result.warnings, [
        (c.name, c.observed, c.threshold) for c in result.checks if not c.passed
    ]


@pytest.mark.parametrize("case", list(AUDIENCE_FAILS))
def test_segmented_audience_corruption_fails(qa: Any, wh: str, tmp_path: Path, case: str) -> None:
    corrupt, expected = AUDIENCE_FAILS[case]
    corrupt(wh)
    result = audience_qa(qa, wh, tmp_path)
    assert names(result.failed_critical) == expected, [
        (c.name, c.observed, c.threshold) for c in result.failed_critical
    ]
    assert not result.passed and all(c.error is None for c in result.checks)


def _sent_run(url: str, brief: Brief, run_id: str) -> int:
    """Segment run_id and record it as a completed send (what recent_sizes reads)."""
    engine = make_engine(url)
    runs.register_run(engine, run_id, brief, "weekly-newsletter.yaml", AS_OF)
    waterfall = segment(Warehouse(engine), brief, run_id, AS_OF)
    runs.set_status(engine, run_id, runs.SENT, recipients=waterfall.recipients)
    engine.dispose()
    return int(sum(waterfall.cells.values()))  # sends: what the drift check compares


@pytest.mark.parametrize("shrink_percent, drifts", [(0, False), (10, False), (30, True)])
def test_recurring_brief_drift_after_the_warehouse_shrinks(
    qa: Any, wh: str, tmp_path: Path, shrink_percent: int, drifts: bool
) -> None:
    """Two runs of the weekly newsletter; between them the warehouse loses shrink_percent of its
    customers. Only the 30 % loss is beyond the brief's 15 % drift tolerance: a warning (the
    standing approval pauses for a person), not a block."""
    brief = newsletter()
    first = _sent_run(wh, brief, "a" * 32)
    if shrink_percent:
        sql(wh, "DELETE FROM customers WHERE customer_id % 10 < :k", k=shrink_percent // 10)
    engine = make_engine(wh)
    migrations.upgrade(engine)
    runs.register_run(engine, "b" * 32, brief, "weekly-newsletter.yaml", AS_OF)
    segment(Warehouse(engine), brief, "b" * 32, AS_OF)
    recent = runs.recent_sizes(engine, brief.campaign_id, "b" * 32)
    engine.dispose()
    assert recent == [first]
    result = audience_qa(qa, wh, tmp_path, brief=brief, run_id="b" * 32, recent_sizes=recent)
    assert result.passed and not result.failed_critical
    drift = {c.name: c for c in result.checks}["size_within_drift_of_recent_runs"]
    assert drift.passed is not drifts and not drift.critical
    assert names(result.warnings) == ({"size_within_drift_of_recent_runs"} if drifts else set())
    assert isinstance(drift.observed, int)
    assert drift.threshold.endswith(f"(median {first} ± 15%)")
    if drifts:
        assert drift.observed < 0.8 * first


# =========================================================================== personal data


def _tokens(blob: bytes) -> set[str]:
    return {t.decode("utf-8", "replace") for t in
            re.findall(rb"[A-Za-z0-9._%+'-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}", blob)}


def test_no_personal_data_in_warehouse_or_file_outputs(qa: Any, wh: str, drop: Any, tmp_path: Path) -> None:
    """With many checks failing on both suites, no address or name reaches any output."""
    for corrupt in (_malformed_emails, _unknown_tier, _suppressions_hashed, _seed_malformed):
        corrupt(wh)
    rows = read_rows(drop)
    for corrupt_file in (_duplicate_row, _invalid_address, _address_in_other_case, _null_required_field):
        rows, _ = corrupt_file(rows)
    write_rows(drop, rows, fix_manifest=True)
    home = tmp_path / "home"
    results = [health(qa, wh, home, build_docs=True), file_qa(qa, drop, home, build_docs=True)]
    assert all(not r.passed or r.warnings for r in results)
    engine = make_engine(wh)
    with engine.connect() as conn:
        people = conn.execute(sa.text("SELECT email, first_name, last_name FROM customers")).all()
    engine.dispose()
    addresses = {e.strip().lower() for e, _, _ in people if e}
    addresses |= {r[1].strip().lower() for r in rows[1:] if r[1].strip()}
    outputs = [r.to_json().encode() for r in results]
    outputs += [json.dumps(dataclasses.asdict(r), default=str).encode() for r in results]
    outputs += [qa_markdown(r).encode() for r in results]
    files = [p for p in (home / "gx").rglob("*") if p.is_file()]
    assert len([p for p in files if p.name == "index.html"]) == 2
    outputs += [p.read_bytes() for p in files]
    for blob in outputs:
        found = {t.strip().lower() for t in _tokens(blob)}
        assert not found & addresses
        assert b"example.com" not in blob.lower() and b"example.net" not in blob.lower()


def test_leak_guards_fail_closed(qa: Any, wh: str, drop: Any, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With GX's full result format and no scrubbing, addresses would leak: each guard removes
    the output and fails instead."""
    _malformed_emails(wh)
    rows, _ = _invalid_address(read_rows(drop))
    write_rows(drop, rows, fix_manifest=True)
    monkeypatch.setattr(qa_gx, "RESULT_FORMAT", {"result_format": "COMPLETE"})
    monkeypatch.setattr(qa_gx, "scrub", lambda value: value)
    monkeypatch.setattr(qa_gx, "scrub_validation_result", lambda result: None)
    with pytest.raises(RuntimeError, match="warehouse addresses"):
        health(qa, wh, tmp_path, build_docs=True)
    with pytest.raises(RuntimeError, match="handoff addresses"):
        file_qa(qa, drop, tmp_path, build_docs=True)
    assert not list((tmp_path / "gx" / "results").glob("*.json"))
    assert not list((tmp_path / "gx" / "data_docs").glob("*/index.html"))


def test_new_suites_load_whole(qa: Any) -> None:
    for name in ("warehouse_health", "handoff_file"):
        data = json.loads((qa.EXPECTATIONS_DIR / f"{name}.json").read_text())
        assert len(qa.load_suite(name).expectations) == len(data["expectations"])
        for exp in data["expectations"]:
            assert isinstance(exp["meta"]["critical"], bool) and exp["meta"]["name"]
    data = json.loads((qa.EXPECTATIONS_DIR / "handoff_file.json").read_text())
    regex = next(e for e in data["expectations"] if e["meta"]["name"] == "valid_address_format")
    assert regex["kwargs"]["regex"] == ADDRESS_REGEX
