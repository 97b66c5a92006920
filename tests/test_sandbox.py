"""The sandbox (issue 15): production's waterfall without production's people, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import shutil
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from campaignops.brief import load_brief
from campaignops.cli import main
from campaignops.errors import SandboxError, SandboxHandoffRefused
from campaignops.lifecycle.model import DEFAULT_MODEL, LifecycleModel, validate_model
from campaignops.lifecycle.scoring import score_customers
from campaignops.sandbox.create import TABLES, copy_warehouse, create_sandbox
from campaignops.sandbox.guard import is_loopback, sandbox_esp_allowed
from campaignops.sandbox.marker import is_sandbox, read_marker
from campaignops.sandbox.masking import DICTIONARY_SIZE, ID_BITS, RESERVED_DOMAIN, Masker
from campaignops.sandbox.phones import PhoneMasker, kind, parse
from campaignops.schema import customers, ledger
from campaignops.segmentation import Waterfall, segment
from campaignops.settings import Settings
from campaignops.sms import e164
from campaignops.sql import sqlite_valid_address
from campaignops.warehouse import open_warehouse
from tests.conftest import scratch_database

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
BRIEFS = sorted((ROOT / "examples" / "briefs").glob("*.yaml"))
KEY = b"sandbox-test-key-0123456789abcdef-0123456789"
OTHER_KEY = b"another-sandbox-key-0123456789abcdef-012345"
SHARE_TOLERANCE = 0.03  # control and cell shares: the draws hash masked addresses


@pytest.fixture
def prod_url(warehouse_template: Path, tmp_path: Path) -> str:
    """A copy of the 20,000-customer synthetic warehouse: the 'production' being masked."""
    path = tmp_path / "production.db"
    shutil.copy(warehouse_template, path)
    return f"sqlite:///{path}"


def _columns_model() -> LifecycleModel:
    """The default model with MQL at 40: a sandbox has no engagement_events (not copied), and from the
    customers' columns alone the default model makes nobody an MQL (only a purchase scores past 45,
    and a purchase makes a customer); at 40 an opted-in, recent opener in a core market is one."""
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_MODEL.read_text())
    raw["version"] = "sandbox-test"
    raw["stages"][3]["min_score"] = 40
    raw["recycle"][0]["below_score"] = 35
    return validate_model(raw, "sandbox-test")


def _waterfall(url: str, brief_path: Path, as_of: dt.datetime) -> Waterfall:
    brief = load_brief(brief_path)
    wh = open_warehouse(url)
    try:
        if brief.audience.entered_stage is not None:  # a stage-triggered brief needs a lifecycle scoring first
            score_customers(wh.engine, _columns_model(), as_of - dt.timedelta(minutes=1))
        return segment(wh, brief, f"wf-{brief_path.stem}", as_of)
    finally:
        wh.dispose()


def _assert_same_waterfalls(prod: str, sandbox: str) -> None:
    as_of = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    for brief_path in BRIEFS:
        a, b = _waterfall(prod, brief_path, as_of), _waterfall(sandbox, brief_path, as_of)
        assert a.matched == b.matched > 0
        assert [(s["reason"], s["removed"], s["remaining"]) for s in a.steps] == [
            (s["reason"], s["removed"], s["remaining"]) for s in b.steps]
        assert a.eligible == b.eligible > 0
        assert a.seeds == b.seeds == (0 if brief_path.stem.startswith("sms") else 3)  # SMS: no seeds yet
        assert abs(a.control / a.eligible - b.control / b.eligible) <= SHARE_TOLERANCE
        for cell in a.cells:
            assert abs(a.cells[cell] / a.eligible - b.cells[cell] / b.eligible) <= SHARE_TOLERANCE


def _text_values(url: str) -> set[str]:
    """Every text value anywhere in the database (every table), lower-cased and trimmed."""
    engine = sa.create_engine(url)
    values: set[str] = set()
    try:
        with engine.connect() as conn:
            meta = sa.MetaData()
            meta.reflect(conn)
            for t in meta.tables.values():
                cols = [c for c in t.columns if isinstance(c.type, sa.String | sa.Text)]
                if not cols:
                    continue
                for row in conn.execute(sa.select(*cols)):
                    values.update(str(v).strip().lower() for v in row if v is not None)
    finally:
        engine.dispose()
    return values


def _sampled_people(url: str, n: int = 2000) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            ids = [r[0] for r in conn.execute(sa.select(customers.c.customer_id))]
            chosen = random.Random(15).sample(ids, n)
            rows = conn.execute(sa.select(customers.c.email, customers.c.first_name, customers.c.last_name,
                                          customers.c.phone).where(customers.c.customer_id.in_(chosen)))
            out = [str(v).strip().lower() for row in rows for v in row if v is not None and str(v).strip()]
    finally:
        engine.dispose()
    return out


def _assert_nobody_left(prod: str, sandbox: str) -> None:
    sampled = _sampled_people(prod)
    assert len(sampled) > 6000  # 2,000 customers' addresses, names and phones (a few are missing)
    found = set(sampled) & _text_values(sandbox)
    assert not found, f"{len(found)} production values in the sandbox"


def _dump(url: str) -> str:
    """A digest of every table's rows in stored order (what 'byte-identical' compares)."""
    engine = sa.create_engine(url)
    h = hashlib.sha256()
    try:
        with engine.connect() as conn:
            for t in TABLES:
                for row in conn.execute(sa.select(t)):
                    h.update(repr(tuple(row)).encode())
    finally:
        engine.dispose()
    return h.hexdigest()


# -- the masking functions -------------------------------------------------------------------
def test_addresses_keep_validity_and_match_through_case_and_spaces() -> None:
    m = Masker(KEY, {"example.com"})
    a = m.email("Ada.Lovelace@Example.com")
    assert a == m.email("  ada.lovelace@example.com ") == m.email("ADA.LOVELACE@EXAMPLE.COM")
    assert a is not None and a.endswith("@example.com") and sqlite_valid_address(a)
    rare = m.email("ada@tiny-company.io")
    assert rare is not None and rare.endswith("@" + RESERVED_DOMAIN) and sqlite_valid_address(rare)
    for bad in ("ada lovelace@example.com", "adaexample.com", "ada@@example.com", "ada@example"):
        masked = m.email(bad)
        assert masked is not None and not sqlite_valid_address(masked) and "ada" not in masked
    assert m.email(None) is None and m.email("") == "" and m.email("   ") == "   "
    assert m.email("a@example.com") != m.email("b@example.com")


def test_one_key_one_mapping_another_key_another() -> None:
    a, b, c = Masker(KEY, ()), Masker(KEY, ()), Masker(OTHER_KEY, ())
    for fn in ("email", "phone", "first_name", "last_name"):
        value = {"email": "x@example.com", "phone": "+15550001234"}.get(fn, "Mary")
        assert getattr(a, fn)(value) == getattr(b, fn)(value) != getattr(c, fn)(value)
    assert a.identifier(42) == b.identifier(42) != c.identifier(42)


def test_names_come_from_the_dictionary_and_missing_stays_missing() -> None:
    m = Masker(KEY, ())
    assert m.first_name("Mary") == m.first_name(" mary ") != "Mary"
    assert m.first_name(None) is None and m.first_name("") == "" and m.last_name("  ") == "  "
    names = {m.last_name(f"Name{i}") for i in range(2000)}
    assert len(names) > 1900 and DICTIONARY_SIZE > 100_000  # few collisions; names are invented


def test_phones_keep_their_shape_their_range_and_their_validity() -> None:
    m = Masker(KEY, ())
    for phone, country in (("+14155550123", "US"), ("+44 7123 456789", "GB"), ("(415) 555-0123", "US"),
                           ("07123 456789", "GB"), ("0151 23456789", "DE"), ("06 12 34 56 78", "FR"),
                           ("555-0123", "US"), ("+4471234", "GB"), ("0000000000", "NL"), (" +33612345678 ", None)):
        out = m.phone(phone, country)
        assert out is not None and len(out) == len(phone) and out != phone
        assert [c.isdigit() for c in out] == [c.isdigit() for c in phone]
        assert [c for c in out if not c.isdigit()] == [c for c in phone if not c.isdigit()]
        before, after = e164(phone, country), e164(out, country)
        assert (before is None) == (after is None)
        if before is not None and after is not None:
            assert after[:-7] == before[:-7] and after != before  # calling code and leading digits kept
    assert m.phone(None) is None and m.phone("") == "" and m.phone("  ", "US") == "  "
    assert m.phone("+447123456789") == m.phone("+447123456789", "US") == m.phone("+447123456789", "GB")
    national = str(m.phone("07123 456789", "GB"))
    assert m.phone("+44 7123 456789", "GB") == f"+44 {national[1:5]} {national[-6:]}"  # however it is written


def _synthetic_phones(n: int = 8_000) -> list[tuple[str, str]]:
    from campaignops.synthetic import _generate_block, _Vocab

    block = _generate_block(_Vocab(dt.datetime(2026, 1, 1)), 11, 0, 0, n)
    cols = block.tables["customers"]
    return [(p, c) for p, c in zip(cols["phone"].tolist(), cols["country"].tolist(), strict=True) if p]


def test_phone_masking_keeps_validity_per_region_is_one_to_one_and_keyed() -> None:
    phones = _synthetic_phones()
    a, b, other = Masker(KEY, ()), Masker(KEY, ()), Masker(OTHER_KEY, ())
    masked = [a.phone(p, c) for p, c in phones]
    assert masked == [b.phone(p, c) for p, c in phones]  # deterministic for the key
    others = [other.phone(p, c) for p, c in phones]
    assert sum(x == y for x, y in zip(masked, others, strict=True)) < len(phones) // 100  # key-dependent
    numbers: dict[str, str] = {}
    for (phone, country), out in zip(phones, masked, strict=True):
        assert out is not None and out != phone and len(out) == len(phone)
        before, after = e164(phone, country), e164(out, country)
        assert (before is None) == (after is None), (country, len(phone))
        if before is not None and after is not None:
            assert phonenumbers.region_code_for_number(phonenumbers.parse(after)) == \
                phonenumbers.region_code_for_number(phonenumbers.parse(before))
            assert numbers.setdefault(before, after) == after  # one number, one masked number
    assert len(set(numbers.values())) == len(numbers) > 6_000  # one-to-one (thousands of numbers)
    by_kind = PhoneMasker(KEY)
    for number in list(numbers)[:500]:  # the fast reading of E.164 agrees with phonenumbers
        cc, nsn, _ = parse(number, None) or (0, "", ("", 0))
        real = phonenumbers.parse(number)
        assert (cc, nsn) == (real.country_code, phonenumbers.national_significant_number(real))
        assert by_kind.masked_number(cc, nsn, kind(cc, nsn) or ("", 0)) != nsn


def test_kind_agrees_with_phonenumbers_on_random_numbers() -> None:
    rng = random.Random(18)
    for _ in range(3_000):
        cc = rng.choice((1, 44, 49, 33, 34, 39, 31, 61, 55, 7, 86, 91, 352))
        nsn = str(rng.randrange(10**5, 10**11))
        number = phonenumbers.PhoneNumber(country_code=cc, national_number=int(nsn))
        found = kind(cc, nsn)
        assert (found is not None) == phonenumbers.is_valid_number(number)
        if found is not None:
            assert found == (phonenumbers.region_code_for_number(number), int(phonenumbers.number_type(number)))


def test_ids_are_a_keyed_permutation() -> None:
    m = Masker(KEY, ())
    out = [m.identifier(i) for i in range(50_000)]
    assert len(set(out)) == 50_000
    assert all(o is not None and 0 <= o < 2**ID_BITS for o in out)
    assert sum(1 for i, o in enumerate(out) if i == o) == 0
    with pytest.raises(SandboxError, match="outside"):
        m.identifier(-1)


# -- the copy, end to end ------------------------------------------------------------------
def test_sqlite_sandbox_counts_like_production_and_holds_nobody(prod_url: str, tmp_path: Path) -> None:
    sandbox = f"sqlite:///{tmp_path / 'sandbox.db'}"
    summary = create_sandbox(prod_url, sandbox, KEY)
    assert summary.rows["customers"] == 20_000 and summary.kept_domains == 3
    _assert_same_waterfalls(prod_url, sandbox)
    _assert_nobody_left(prod_url, sandbox)
    engine = sa.create_engine(sandbox)
    marker = read_marker(engine)
    engine.dispose()
    assert marker is not None and marker.source == prod_url and marker.row_counts == summary.rows
    assert KEY.decode() not in _text_values(sandbox) | {marker.key_id}


def test_two_builds_with_one_key_are_identical_and_another_key_differs(prod_url: str, tmp_path: Path) -> None:
    urls = [f"sqlite:///{tmp_path / f'sandbox{i}.db'}" for i in range(3)]
    for url, key in zip(urls, (KEY, KEY, OTHER_KEY), strict=True):
        create_sandbox(prod_url, url, key, chunk=3_000)  # chunking does not change the result
    dumps = [_dump(u) for u in urls]
    assert dumps[0] == dumps[1] != dumps[2]
    emails = []
    for url in (urls[0], urls[2]):
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            emails.append({r[0] for r in conn.execute(sa.select(customers.c.email))})
        engine.dispose()
    assert len(emails[0] & emails[1]) <= 1  # only the null: no address maps alike under two keys


def test_physical_order_does_not_follow_production_ids(prod_url: str, tmp_path: Path) -> None:
    sandbox = f"sqlite:///{tmp_path / 'sandbox.db'}"
    create_sandbox(prod_url, sandbox, KEY)
    engine = sa.create_engine(sandbox)
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(sa.text("SELECT customer_id FROM customers ORDER BY rowid"))]
    engine.dispose()
    assert ids == sorted(ids)  # stored in masked-id order, which says nothing of production's


def test_a_collision_is_refused_and_nothing_is_kept(prod_url: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Masker, "email", lambda self, v: None if v is None else "same@example.com")
    sandbox = f"sqlite:///{tmp_path / 'sandbox.db'}"
    with pytest.raises(SandboxError, match="merge distinct addresses"):
        create_sandbox(prod_url, sandbox, KEY)
    engine = sa.create_engine(sandbox)
    assert "customers" not in sa.inspect(engine).get_table_names()
    engine.dispose()


def test_targets_that_are_production_or_the_source_are_refused(prod_url: str, tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="same database"):
        create_sandbox(prod_url, prod_url, KEY)
    other = tmp_path / "other.db"
    shutil.copy(prod_url.removeprefix("sqlite:///"), other)
    with pytest.raises(SandboxError, match="not a sandbox"):
        create_sandbox(prod_url, f"sqlite:///{other}", KEY, replace=True)
    with pytest.raises(SandboxError, match="already has"):
        create_sandbox(prod_url, f"sqlite:///{other}", KEY)
    with pytest.raises(SandboxError, match="min-domain-count"):
        create_sandbox(prod_url, f"sqlite:///{tmp_path / 'x.db'}", KEY, min_domain_count=0)


def test_min_domain_count_maps_rare_domains_to_the_reserved_one(prod_url: str, tmp_path: Path) -> None:
    sandbox = f"sqlite:///{tmp_path / 'sandbox.db'}"
    summary = create_sandbox(prod_url, sandbox, KEY, min_domain_count=1_000_000)
    assert summary.kept_domains == 0
    engine = sa.create_engine(sandbox)
    with engine.connect() as conn:
        domains = {r[0] for r in conn.execute(sa.text(
            "SELECT DISTINCT substr(email, instr(email, '@') + 1) FROM customers WHERE email LIKE '%@%'"))}
    engine.dispose()
    assert domains == {RESERVED_DOMAIN}
    _assert_same_waterfalls(prod_url, sandbox)


def test_plain_copy_is_not_a_sandbox(prod_url: str, tmp_path: Path) -> None:
    plain = f"sqlite:///{tmp_path / 'plain.db'}"
    copy_warehouse(prod_url, plain, None)
    engine = sa.create_engine(plain)
    assert not is_sandbox(engine)
    engine.dispose()


# -- the CLI -----------------------------------------------------------------------------------
def test_cli_without_a_key_is_refused_in_one_line(prod_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["sandbox", "create", "--from", prod_url, "--to", f"sqlite:///{tmp_path / 's.db'}"]
    result = runner.invoke(main, args)
    assert result.exit_code == 11
    assert result.stderr.count("\n") == 1 and "no masking key: CAMPAIGNOPS_SANDBOX_KEY is not set" in result.stderr
    short = runner.invoke(main, [*args, "--key-env", "SHORT_KEY"], env={"SHORT_KEY": "short"})
    assert short.exit_code == 1 and "shorter than 32" in short.stderr and "short\n" not in short.stderr
    both = runner.invoke(main, [*args, "--key-env", "A", "--key-block", "b"])
    assert both.exit_code == 11 and "both given" in both.stderr
    assert not (tmp_path / "s.db").exists() or not is_sandbox(sa.create_engine(f"sqlite:///{tmp_path / 's.db'}"))


def test_cli_create_check_info(prod_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    sandbox = f"sqlite:///{tmp_path / 'sandbox.db'}"
    env = {"MY_KEY": KEY.decode()}
    made = runner.invoke(main, ["sandbox", "create", "--from", prod_url, "--to", sandbox, "--key-env", "MY_KEY",
                                "--quiet"], env=env)
    assert made.exit_code == 0, made.output
    assert "sandbox ready" in made.stdout and KEY.decode() not in made.output
    checked = runner.invoke(main, ["sandbox", "check", "--from", prod_url, "--to", sandbox])
    assert checked.exit_code == 0, checked.output
    assert "sandbox check: passed" in checked.stdout and "k-anonymity" in checked.stdout
    info = runner.invoke(main, ["sandbox", "info", sandbox])
    assert info.exit_code == 0 and "is a sandbox" in info.stdout and "masking_version" in info.stdout
    assert KEY.decode() not in info.stdout
    not_one = runner.invoke(main, ["sandbox", "info", prod_url])
    assert not_one.exit_code == 11 and "is not a sandbox" in not_one.stderr


def test_check_finds_a_production_value_and_a_count_that_differs(prod_url: str, tmp_path: Path) -> None:
    sandbox = f"sqlite:///{tmp_path / 'sandbox.db'}"
    create_sandbox(prod_url, sandbox, KEY)
    prod = sa.create_engine(prod_url)
    with prod.connect() as conn:
        leaked = conn.execute(sa.select(customers.c.email).where(customers.c.email.is_not(None)).limit(1)).scalar()
    prod.dispose()
    engine = sa.create_engine(sandbox)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE offers SET description = :d WHERE offer_code = 'WELCOME10'"),
                     {"d": f" {str(leaked).upper()} "})
        conn.execute(sa.text("DELETE FROM customers WHERE customer_id = (SELECT min(customer_id) FROM customers)"))
    engine.dispose()
    result = CliRunner().invoke(main, ["sandbox", "check", "--from", prod_url, "--to", sandbox])
    assert result.exit_code == 12
    assert "FOUND" in result.stdout and "DIFFERS" in result.stdout
    assert str(leaked).lower() not in result.output.lower()
    assert result.stderr.startswith("error: sandbox check failed: rows customers")


# -- the handoff on a sandbox ---------------------------------------------------------------------
def test_guard_allows_loopback_and_the_configured_sandbox_only() -> None:
    assert is_loopback("http://127.0.0.1:8765") and is_loopback("http://localhost/x")
    assert is_loopback("http://[::1]:80") and not is_loopback("https://api.esp.example.com")
    assert sandbox_esp_allowed(Settings(esp_url="http://127.0.0.2:9"))
    assert not sandbox_esp_allowed(Settings(esp_url="https://api.esp.example.com/v1"))
    assert sandbox_esp_allowed(Settings(esp_url="https://esp-sandbox.example.com/v1/",
                                        esp_sandbox_url="https://ESP-SANDBOX.example.com:443/v1"))


def _sandbox_env(prod_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    from campaignops.approvers import add_approver
    from tests.flowkit import WINBACK_APPROVERS, warehouse

    sandbox = f"sqlite:///{tmp_path / 'sandbox.db'}"
    create_sandbox(prod_url, sandbox, KEY)
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", sandbox)
    engine = warehouse().engine
    return {name: add_approver(engine, name) for name in WINBACK_APPROVERS.values()}


def test_a_sandbox_run_to_a_real_esp_is_refused_and_nothing_is_sent(
        prod_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from campaignops import audit
    from campaignops.esp.client import EspClient
    from tests.flowkit import approved_run, hand_off, warehouse

    keys = _sandbox_env(prod_url, tmp_path, monkeypatch)
    run_id, _ = approved_run(keys)
    posted: list[Any] = []
    monkeypatch.setattr(EspClient, "post_batch", lambda *a, **k: posted.append(a))
    monkeypatch.setenv("CAMPAIGNOPS_ESP_URL", "https://api.esp.example.com")
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", "a-real-token")
    with pytest.raises(SandboxHandoffRefused) as refused:
        hand_off(run_id)
    message = str(refused.value)
    assert "\n" not in message and "is a sandbox" in message and "nothing was sent" in message
    engine = warehouse().engine
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ledger)).scalar_one() == 0
    assert posted == [] and not list((tmp_path / "home" / "outbox").glob("*"))
    records = audit.trail(engine, run_id)
    assert all(r.details.get("sandbox") is True for r in records)
    assert records[-1].step == "handoff" and records[-1].action == "refused"


def test_a_sandbox_run_may_go_to_the_esp_sandbox(prod_url: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch, sandbox: Any) -> None:
    from campaignops import audit
    from tests.conftest import TOKEN
    from tests.flowkit import approved_run, hand_off, warehouse

    keys = _sandbox_env(prod_url, tmp_path, monkeypatch)
    run_id, _ = approved_run(keys)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_URL", sandbox.url)
    monkeypatch.setenv("CAMPAIGNOPS_ESP_TOKEN", TOKEN)
    out = hand_off(run_id)
    assert out.reconciliation.matches
    assert all(r.details.get("sandbox") is True for r in audit.trail(warehouse().engine, run_id))


# -- PostgreSQL, and SQLite to PostgreSQL ------------------------------------------------------------
@pytest.mark.integration
def test_postgresql_sandbox_of_a_postgresql_warehouse(pg_url: str) -> None:
    from campaignops.synthetic import init_warehouse
    from campaignops.warehouse import make_engine

    engine = make_engine(pg_url)
    init_warehouse(engine, customers=20_000, seed=7)
    engine.dispose()
    with scratch_database("co_sbx") as target:
        sandbox = target.render_as_string(hide_password=False)
        create_sandbox(pg_url, sandbox, KEY)
        _assert_same_waterfalls(pg_url, sandbox)
        _assert_nobody_left(pg_url, sandbox)
        first = _dump(sandbox)
        create_sandbox(pg_url, sandbox, KEY, replace=True, chunk=7_000)
        assert _dump(sandbox) == first
        result = CliRunner().invoke(main, ["sandbox", "check", "--from", pg_url, "--to", sandbox])
        assert result.exit_code == 0, result.output
        wh = open_warehouse(sandbox)
        assert is_sandbox(wh.engine)
        wh.dispose()


@pytest.mark.integration
def test_sqlite_warehouse_into_a_postgresql_sandbox(prod_url: str, pg_url: str) -> None:
    create_sandbox(prod_url, pg_url, KEY)
    _assert_same_waterfalls(prod_url, pg_url)
    _assert_nobody_left(prod_url, pg_url)
    result = CliRunner().invoke(main, ["sandbox", "check", "--from", prod_url, "--to", pg_url])
    assert result.exit_code == 0, result.output


def test_the_read_ahead_keeps_order_raises_the_readers_error_and_stops_with_its_caller() -> None:
    import threading
    from collections.abc import Iterator

    from campaignops.sandbox.create import _ahead

    assert list(_ahead(iter(range(1000)))) == list(range(1000))

    def failing() -> Iterator[int]:
        yield from (1, 2, 3)
        raise SandboxError("source went away")

    got: list[int] = []
    with pytest.raises(SandboxError, match="source went away"):
        for item in _ahead(failing()):
            got.append(item)
    assert got == [1, 2, 3]

    closed: list[bool] = []

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                n += 1
                yield n
        finally:
            closed.append(True)

    ahead = _ahead(endless())
    assert [next(ahead), next(ahead)] == [1, 2]
    ahead.close()
    assert closed == [True]
    assert not [t for t in threading.enumerate() if t.name == "sandbox-read-mask"]
