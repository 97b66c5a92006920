"""The synthetic warehouse generator: counts, determinism, realism, replace, both databases."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops import synthetic
from campaignops.errors import WarehouseError
from campaignops.schema import (
    contact_history,
    customers,
    offers,
    seed_recipients,
    suppressions,
    warehouse_metadata,
)
from campaignops.synthetic import WarehouseSummary, init_warehouse, warehouse_exists
from campaignops.warehouse import make_engine

pytestmark = pytest.mark.unit

AS_OF = dt.datetime(2026, 3, 1, 12, 0, 0)
N = 5000
TABLES = (customers, suppressions, contact_history, offers, seed_recipients)


@contextmanager
def engine_for(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def count(engine: Engine, query: sa.Select[tuple[int]]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def rows_in(engine: Engine, table: sa.Table) -> int:
    return count(engine, sa.select(sa.func.count()).select_from(table))


def stored_digest(engine: Engine, table: sa.Table) -> str:
    """SQLite only: the raw stored values (storage classes included) in insertion order,
    streamed, so 'identical' means byte for byte."""
    digest = hashlib.sha256()
    with engine.connect() as conn:
        query = sa.select(sa.text("*")).select_from(table).order_by(sa.text("rowid"))
        result = conn.execute(query)
        while batch := result.fetchmany(2000):
            for row in batch:
                digest.update(repr(tuple(row)).encode())
    return digest.hexdigest()


def content_digest(engine: Engine, table: sa.Table) -> int:
    """Any database: the typed values as a multiset (order-free), streamed."""
    columns = [sa.cast(c, sa.Float) if type(c.type) is sa.Numeric else c for c in table.columns]
    total = 0
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=2000).execute(sa.select(*columns))
        for row in result:
            total += int.from_bytes(hashlib.sha256(repr(tuple(row)).encode()).digest())
    return total % 2**256


def build(url: str, n: int = N, seed: int = 42, **kwargs: object) -> WarehouseSummary:
    with engine_for(url) as engine:
        return init_warehouse(engine, customers=n, seed=seed, as_of=AS_OF, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- both databases


def test_builds_the_five_tables_with_plausible_counts(db_url: str) -> None:
    with engine_for(db_url) as engine:
        assert not warehouse_exists(engine)
        summary = init_warehouse(engine, customers=N, seed=7, as_of=AS_OF)
        assert warehouse_exists(engine)

        assert summary.customers == N
        assert (summary.seed, summary.as_of) == (7, AS_OF)
        assert summary.seconds > 0
        for table in TABLES:
            assert rows_in(engine, table) == getattr(summary, table.name), table.name
        assert summary.offers == 4
        assert summary.seed_recipients == 3
        assert 0.02 * N < summary.suppressions < 0.05 * N
        assert 0.45 * N < summary.contact_history < 0.75 * N

        ids = sa.select(
            sa.func.min(customers.c.customer_id),
            sa.func.max(customers.c.customer_id),
            sa.func.count(sa.distinct(customers.c.customer_id)),
        )
        households = (
            sa.select(customers.c.household_id, sa.func.count().label("members"))
            .group_by(customers.c.household_id)
            .subquery()
        )
        with engine.connect() as conn:
            assert tuple(conn.execute(ids).one()) == (1, N, N)
            sizes = conn.execute(
                sa.select(sa.func.min(households.c.members), sa.func.max(households.c.members))
            ).one()
        assert tuple(sizes) == (1, 4)

        inspector = sa.inspect(engine)
        for table in (suppressions, contact_history):
            present = {ix["name"] for ix in inspector.get_indexes(table.name)}
            assert {str(ix.name) for ix in table.indexes} <= present


def test_carries_the_defects_campaigns_must_handle(db_url: str) -> None:
    build(db_url)
    c = customers.c
    key = sa.func.lower(sa.func.trim(c.email))
    with engine_for(db_url) as engine:

        def customers_where(*conditions: sa.ColumnElement[bool]) -> int:
            return count(engine, sa.select(sa.func.count()).where(*conditions))

        # household members sharing an address, some only differing by case or spaces
        shared = (
            sa.select(key)
            .where(c.email.is_not(None))
            .group_by(key)
            .having(sa.func.count() > 1)
            .subquery()
        )
        assert count(engine, sa.select(sa.func.count()).select_from(shared)) > 0.01 * N
        assert customers_where(c.email != key) > 0
        # missing and invalid addresses, missing and empty first names, missing last names
        assert customers_where(c.email.is_(None)) > 0
        assert (
            customers_where(sa.or_(~c.email.contains("@"), sa.func.trim(c.email).contains(" "))) > 0
        )
        assert customers_where(c.first_name.is_(None)) > 0
        assert customers_where(c.first_name == "") > 0
        assert customers_where(c.last_name.is_(None)) > 0
        # only reserved domains
        reserved = sa.or_(*(key.endswith(f"example.{tld}") for tld in ("com", "org", "net")))
        assert customers_where(c.email.is_not(None), ~reserved) == 0
        # plausible values, all dated relative to as_of
        assert customers_where(c.lifecycle_stage == "customer") > 0.25 * N
        assert customers_where(c.loyalty_tier == "staff") > 0
        assert customers_where(sa.or_(c.lead_score < 0, c.lead_score > 100)) == 0
        assert customers_where(c.last_purchase_at.is_(None)) > 0.3 * N
        assert customers_where(c.last_purchase_at < AS_OF - dt.timedelta(days=90)) > 0.3 * N
        assert customers_where(c.last_purchase_at > AS_OF) == 0
        assert customers_where(c.last_open_at > AS_OF) == 0
        assert customers_where(c.signup_date > AS_OF.date()) == 0
        assert customers_where(c.signup_date < (AS_OF - dt.timedelta(days=2923)).date()) == 0
        assert customers_where(c.last_purchase_at.is_(None), c.lifetime_value != 0) == 0

        # suppressions: some in another letter case, matching customers once normalised
        s = suppressions.c
        assert (
            count(engine, sa.select(sa.func.count()).where(s.address != sa.func.lower(s.address)))
            > 0
        )
        matched = sa.select(sa.func.count(sa.distinct(c.customer_id))).select_from(
            customers.join(
                suppressions,
                sa.and_(s.channel == "email", sa.func.lower(sa.func.trim(s.address)) == key),
            )
        )
        assert 0.015 * N < count(engine, matched) < 0.05 * N
        assert count(engine, sa.select(sa.func.count()).where(s.created_at >= AS_OF)) == 0

        # a frequency cap of 2 per 7 days bites on a few percent
        h = contact_history.c
        recent = sa.select(h.customer_id).where(h.sent_at >= AS_OF - dt.timedelta(days=7))
        capped = recent.group_by(h.customer_id).having(sa.func.count() >= 2).subquery()
        assert 0.01 * N < count(engine, sa.select(sa.func.count()).select_from(capped)) < 0.1 * N
        window = sa.select(sa.func.min(h.sent_at), sa.func.max(h.sent_at))
        with engine.connect() as conn:
            first, last = conn.execute(window).one()
            windows = conn.execute(
                sa.select(offers.c.offer_code, offers.c.valid_from, offers.c.valid_to)
            ).all()
            starts = {code: start for code, start, _ in windows}
            valid = {code: end for code, _, end in windows}
            seeds = conn.execute(sa.select(seed_recipients.c.email)).scalars().all()
        assert AS_OF - dt.timedelta(days=14) <= first <= last < AS_OF

        # offers: two valid at as_of, one expired, one not yet valid
        assert valid["EXPIRED5"] < AS_OF
        assert starts["WELCOME10"] <= AS_OF < valid["WELCOME10"]
        assert starts["SPRING15"] <= AS_OF < valid["SPRING15"]
        assert starts["FUTURE20"] > AS_OF
        assert sorted(seeds) == [f"seed+{i}@example.com" for i in (1, 2, 3)]


def test_refuses_to_overwrite_without_replace(db_url: str) -> None:
    build(db_url, n=500)
    with engine_for(db_url) as engine:
        with pytest.raises(
            WarehouseError, match="already has 500 customers: pass --replace"
        ) as err:
            init_warehouse(engine, customers=800, as_of=AS_OF)
        assert "\n" not in str(err.value)
        assert rows_in(engine, customers) == 500


def test_replace_rebuilds_and_leaves_project_tables_alone(db_url: str) -> None:
    build(db_url, n=500, seed=1)
    with engine_for(db_url) as engine:
        foo = sa.Table("co_foo", sa.MetaData(), sa.Column("x", sa.Integer))
        foo.create(engine)
        with engine.begin() as conn:
            conn.execute(foo.insert(), [{"x": 1}, {"x": 2}])

        summary = init_warehouse(engine, customers=700, seed=2, as_of=AS_OF, replace=True)

        assert summary.customers == rows_in(engine, customers) == 700
        with engine.connect() as conn:
            assert conn.execute(sa.select(foo.c.x).order_by(foo.c.x)).scalars().all() == [1, 2]


# --------------------------------------------------------------------------- determinism


def test_same_inputs_give_identical_tables(tmp_path: Path) -> None:
    # 12,345 customers: one full generation block and a partial one, loaded in
    # different chunk sizes: the content depends only on (customers, seed, as_of).
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    build(a, n=12_345)
    build(b, n=12_345, chunk_size=3000)
    with engine_for(a) as ea, engine_for(b) as eb:
        for table in TABLES:
            assert stored_digest(ea, table) == stored_digest(eb, table), table.name


def test_another_seed_or_as_of_gives_other_data(tmp_path: Path) -> None:
    urls = [f"sqlite:///{tmp_path / f'{name}.db'}" for name in ("base", "seed", "as_of")]
    build(urls[0], n=1000, seed=1)
    build(urls[1], n=1000, seed=2)
    with engine_for(urls[2]) as engine:
        init_warehouse(engine, customers=1000, seed=1, as_of=AS_OF + dt.timedelta(days=1))
    digests = []
    for url in urls:
        with engine_for(url) as engine:
            digests.append(stored_digest(engine, customers))
    assert len(set(digests)) == 3


def test_fast_path_stores_what_sqlalchemy_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dates, timestamps, decimals and booleans written through the driver's bulk path are
    stored exactly as SQLAlchemy's own inserts store them."""
    fast, generic = f"sqlite:///{tmp_path / 'fast.db'}", f"sqlite:///{tmp_path / 'generic.db'}"
    build(fast, n=2000)
    monkeypatch.setattr(
        synthetic,
        "_loader_for",
        lambda engine: lambda group: synthetic._load_generic(engine, group),
    )
    build(generic, n=2000)
    with engine_for(fast) as ef, engine_for(generic) as eg:
        for table in TABLES:
            assert stored_digest(ef, table) == stored_digest(eg, table), table.name


@pytest.mark.integration
def test_sqlite_and_postgresql_hold_the_same_content(sqlite_url: str, pg_url: str) -> None:
    build(sqlite_url, n=3000)
    build(pg_url, n=3000)
    with engine_for(sqlite_url) as lite, engine_for(pg_url) as pg:
        for table in TABLES:
            assert content_digest(lite, table) == content_digest(pg, table), table.name


# --------------------------------------------------------------------------- edges


def test_as_of_defaults_to_now_in_utc_to_the_second(sqlite_url: str) -> None:
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    with engine_for(sqlite_url) as engine:
        summary = init_warehouse(engine, customers=50)
    after = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    assert summary.as_of.tzinfo is None
    assert summary.as_of.microsecond == 0
    assert before <= summary.as_of <= after


def test_aware_as_of_is_taken_as_utc(tmp_path: Path) -> None:
    a, b = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    aware = dt.datetime(2026, 3, 1, 13, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    with engine_for(a) as engine:
        assert init_warehouse(engine, customers=200, as_of=aware).as_of == AS_OF
    build(b, n=200)
    with engine_for(a) as ea, engine_for(b) as eb:
        assert stored_digest(ea, customers) == stored_digest(eb, customers)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"customers": 0}, "--customers must be a whole number of at least 1"),
        ({"seed": -1}, "--seed must be a whole number of at least 0"),
        ({"chunk_size": 0}, "chunk_size must be"),
    ],
)
def test_rejects_bad_arguments(sqlite_url: str, kwargs: dict[str, int], message: str) -> None:
    with engine_for(sqlite_url) as engine:
        with pytest.raises(WarehouseError, match=message):
            init_warehouse(engine, **kwargs)  # type: ignore[arg-type]
        assert not warehouse_exists(engine)


def test_a_failed_load_leaves_no_half_built_warehouse(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = synthetic._generate_block

    def failing(v: object, seed: int, index: int, start: int, n: int) -> object:
        if index == 1:
            raise RuntimeError("disk full")
        return real(v, seed, index, start, n)  # type: ignore[arg-type]

    monkeypatch.setattr(synthetic, "_generate_block", failing)
    with engine_for(sqlite_url) as engine:
        with pytest.raises(RuntimeError, match="disk full"):
            init_warehouse(engine, customers=25_000, as_of=AS_OF, chunk_size=10_000)
        present = set(sa.inspect(engine).get_table_names())
        assert not present & set(warehouse_metadata.tables)
        assert not warehouse_exists(engine)


def test_progress_goes_to_stderr(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    build(sqlite_url, n=300, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays free for the command's result
    assert "300/300" in captured.err and "done" in captured.err  # the bar, finished, on stderr
    build(f"{sqlite_url}.quiet", n=300, progress=False)
    assert capsys.readouterr().err == ""


def test_phones_are_valid_for_each_customers_country_with_a_few_defects(sqlite_url: str) -> None:
    from campaignops.sms import e164

    build(sqlite_url, n=20_000, seed=7)
    with engine_for(sqlite_url) as engine, engine.connect() as conn:
        rows = conn.execute(sa.select(customers.c.phone, customers.c.country, customers.c.sms_opt_in)).all()
        sms = conn.execute(sa.select(suppressions.c.address).where(suppressions.c.channel == "sms")).scalars().all()
    with_phone = [(p, c) for p, c, _ in rows if p is not None]
    assert 0.88 * len(rows) < len(with_phone) < 0.92 * len(rows)
    numbers = {(p, c): e164(p, c) for p, c in set(with_phone)}
    for country in ("US", "GB", "CA", "DE", "FR", "ES", "IT", "NL", "AU", "BR"):
        mine = [numbers[(p, c)] for p, c in with_phone if c == country]
        valid = sum(n is not None for n in mine) / len(mine)
        assert 0.95 < valid < 0.995, country  # valid for the country, a few percent not
    written = [p for p, _ in with_phone]
    assert sum(p.startswith("+") and " " not in p for p in written) > 0.75 * len(written)  # mostly E.164
    assert sum(" " in p and p.startswith("+") for p in written) > 0.05 * len(written)  # spaced international
    assert sum(not p.startswith("+") for p in written) > 0.08 * len(written)  # national format, local, ...
    e164s = [numbers[(p, c)] for p, c in with_phone if numbers[(p, c)]]
    shared = len(e164s) - len(set(e164s))
    assert 0.03 * len(rows) < shared < 0.09 * len(rows)  # household members sharing a number
    assert sms and all(a is not None for a in sms)
    assert sum(e164(a, None) == a for a in sms) > 0.9 * len(sms)  # an ESP reports STOPs in E.164
    # deterministic for the seed: the same numbers again
    other = sqlite_url.replace(".db", "-again.db")
    build(other, n=20_000, seed=7)
    with engine_for(other) as engine, engine.connect() as conn:
        again = conn.execute(sa.select(customers.c.phone, customers.c.country, customers.c.sms_opt_in)).all()
    assert again == rows
