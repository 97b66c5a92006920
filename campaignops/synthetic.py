"""The synthetic warehouse: a deterministic, realistic training environment.

`init_warehouse` fills the five warehouse tables of the data model (docs/product.md) (customers,
suppressions, contact_history, offers, seed_recipients) with synthetic people on
reserved domains (example.com / .org / .net). It is built for scale: customers
are generated in fixed blocks of `GENERATION_BLOCK` rows, each from its own
random stream `np.random.default_rng([seed, block_index])`, and loaded a chunk at
a time (one transaction per chunk) with the driver's bulk path: `executemany`
on SQLite, `COPY` on PostgreSQL (psycopg 3), rows made one at a time as the
driver takes them. One chunk's columns at most are in memory, and the content
depends only on (customers, seed, as_of): not on `chunk_size`, the database or
the machine.

The data carries the defects real warehouses have, so that every exclusion of
the segmentation waterfall and every QA expectation has something to catch:
household members sharing an address (sometimes differing only by case or
surrounding spaces), missing and invalid addresses, missing and empty first
names, suppressed addresses in another letter case, duplicate suppressions,
recent contact history that trips a frequency cap, an expired offer; mobile phones valid
for the customer's country, some written nationally, a few invalid, some shared by a
household (campaignops.synthetic_phones).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateTable

from campaignops.errors import WarehouseError
from campaignops.schema import (
    contact_history,
    customers,
    offers,
    seed_recipients,
    suppressions,
    warehouse_metadata,
)
from campaignops.synthetic_phones import PhoneVocab, synthetic_phones

__all__ = [
    "GENERATION_BLOCK",
    "WarehouseSummary",
    "init_warehouse",
    "warehouse_exists",
]

# Customers per random stream. Fixed: changing it changes every warehouse.
GENERATION_BLOCK = 10_000
_PHONE_STREAM = 1  # a block's phones come from np.random.default_rng([seed, block, 1])

_DAY = 86_400
_SIGNUP_DAYS = 2922  # eight years
_THREE_YEARS = 1096 * _DAY
_TWO_YEARS = 730 * _DAY

# --------------------------------------------------------------------------- vocabularies

_FIRST_NAMES = (
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda",
    "William", "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph", "Jessica",
    "Thomas", "Sarah", "Charles", "Karen", "Daniel", "Lisa", "Matthew", "Nancy",
    "Anthony", "Sandra", "Mark", "Ashley", "Paul", "Emily", "Luca", "Sofia",
    "Lukas", "Emma", "Hugo", "Lea", "Mateo", "Lucia", "Noah", "Olivia",
)  # fmt: skip
_LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
    "Rodriguez", "Martinez", "Wilson", "Anderson", "Taylor", "Thomas", "Moore", "Jackson",
    "Martin", "Lee", "Thompson", "White", "Harris", "Clark", "Lewis", "Walker",
    "Muller", "Schmidt", "Bernard", "Dubois", "Rossi", "Russo", "Silva", "Santos",
    "Jansen", "DeVries", "Lopez", "Fernandez", "Evans", "Roberts", "Wright", "Hughes",
)  # fmt: skip

# country, weight, language, ((region, weight), ...)
_COUNTRIES: tuple[tuple[str, float, str, tuple[tuple[str, float], ...]], ...] = (
    ("US", 0.40, "en", (("CA", 0.22), ("TX", 0.16), ("FL", 0.12), ("NY", 0.11), ("IL", 0.08),
                        ("PA", 0.08), ("OH", 0.07), ("GA", 0.06), ("WA", 0.05), ("MA", 0.05))),
    ("GB", 0.15, "en", (("ENG", 0.84), ("SCT", 0.08), ("WLS", 0.05), ("NIR", 0.03))),
    ("CA", 0.10, "en", (("ON", 0.39), ("QC", 0.22), ("BC", 0.14), ("AB", 0.12), ("MB", 0.13))),
    ("DE", 0.08, "de", (("NW", 0.26), ("BY", 0.20), ("BW", 0.17), ("NI", 0.12), ("HE", 0.09),
                        ("BE", 0.08), ("HH", 0.08))),
    ("FR", 0.07, "fr", (("IDF", 0.28), ("ARA", 0.18), ("NAQ", 0.14), ("OCC", 0.14),
                        ("HDF", 0.14), ("PAC", 0.12))),
    ("ES", 0.05, "es", (("AN", 0.26), ("CT", 0.24), ("MD", 0.22), ("VC", 0.16), ("GA", 0.12))),
    ("IT", 0.04, "it", (("LOM", 0.30), ("LAZ", 0.19), ("CAM", 0.18), ("SIC", 0.16),
                        ("VEN", 0.17))),
    ("NL", 0.03, "nl", (("NH", 0.30), ("ZH", 0.30), ("NB", 0.22), ("UT", 0.18))),
    ("AU", 0.05, "en", (("NSW", 0.38), ("VIC", 0.30), ("QLD", 0.20), ("WA", 0.12))),
    ("BR", 0.03, "pt", (("SP", 0.45), ("RJ", 0.20), ("MG", 0.20), ("RS", 0.15))),
)  # fmt: skip
_FRENCH_REGIONS = {("CA", "QC")}  # where 80 % speak French

_STAGES = ("suspect", "prospect", "lead", "mql", "sql", "opportunity", "customer", "churned")
_STAGE_P = (0.06, 0.09, 0.14, 0.08, 0.06, 0.07, 0.35, 0.15)
_STAGE_SCORE = (5.0, 15.0, 30.0, 45.0, 60.0, 72.0, 55.0, 20.0)  # lead_score centres

_TIERS = ("none", "bronze", "silver", "gold", "platinum", "staff")
_TIER_P = (0.50, 0.25, 0.15, 0.07, 0.025, 0.005)

_HOUSEHOLD_P = (0.55, 0.25, 0.12, 0.08)  # households of 1, 2, 3, 4 customers
_MEAN_HOUSEHOLD = sum((i + 1) * p for i, p in enumerate(_HOUSEHOLD_P))
_SHARED_EMAIL = 0.03  # of all customers: the address of another household member
_SHARED_P = _SHARED_EMAIL * _MEAN_HOUSEHOLD / (_MEAN_HOUSEHOLD - 1)  # of non-first members
_SHARED_VARIANT = 1 / 6  # of those: differing only by case or surrounding spaces (~0.5 %)

_TLDS = ("com", "org", "net")
_TLD_P = (0.60, 0.25, 0.15)

_REASONS = ("unsubscribe", "hard_bounce", "complaint", "legal_hold", "do_not_contact")
_REASON_P = (0.70, 0.15, 0.07, 0.03, 0.05)

# Sends per customer in the 14 days before as_of (mean 0.60).
_SENDS_P = (0.57, 0.30, 0.09, 0.04)
_HISTORY_DAYS = 14
# campaign_id, share of sends, ((cell, offer_code), ...)
_CAMPAIGNS: tuple[tuple[str, float, tuple[tuple[str | None, str | None], ...]], ...] = (
    ("weekly-digest", 0.45, (("everyone", None),)),
    ("spring-sale", 0.20, (("ten_off", "WELCOME10"), ("fifteen_off", "SPRING15"))),
    ("product-launch", 0.15, ((None, None),)),
    ("loyalty-update", 0.10, (("gold_plus", None), ("standard", None))),
    ("cart-reminder", 0.10, ((None, None),)),
)

_SEED_RECIPIENTS = (
    ("seed+1@example.com", "QA inbox"),
    ("seed+2@example.com", "Marketing ops inbox"),
    ("seed+3@example.com", "Compliance archive"),
)

_TABLES = (customers, suppressions, contact_history, offers, seed_recipients)
_BULK_TABLES = (customers, suppressions, contact_history)

# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class WarehouseSummary:
    """What `init_warehouse` built: row counts, the inputs that fix it, and its duration."""

    customers: int
    suppressions: int
    contact_history: int
    offers: int
    seed_recipients: int
    seed: int
    as_of: dt.datetime
    seconds: float


def warehouse_exists(engine: Engine) -> bool:
    """True when the customers table exists and has at least one row."""
    if not sa.inspect(engine).has_table(customers.name):
        return False
    with engine.connect() as conn:
        return conn.execute(sa.select(customers.c.customer_id).limit(1)).first() is not None


def init_warehouse(
    engine: Engine,
    customers: int = 100_000,
    seed: int = 42,
    as_of: dt.datetime | None = None,
    chunk_size: int = 100_000,
    progress: bool = False,
    replace: bool = False,
) -> WarehouseSummary:
    """Create and fill the synthetic warehouse; the same inputs give the same rows.

    `as_of` (default: now, UTC, to the second; an aware datetime is converted to
    naive UTC, microseconds are dropped) anchors every date. `chunk_size` is the
    number of customers loaded per transaction (rounded up to whole generation
    blocks); it does not change the content. Warehouse tables that hold data are
    an error unless `replace`, which drops and recreates the five warehouse
    tables only (never the project's `co_` tables).
    """
    n_customers = customers  # the parameter shadows the table inside this function
    _check_whole("--customers", n_customers, 1)
    _check_whole("--seed", seed, 0)
    _check_whole("chunk_size", chunk_size, 1)
    as_of = _normalise_as_of(as_of)
    started = time.perf_counter()

    prepare_tables(engine, replace)
    counts = dict.fromkeys((t.name for t in _TABLES), 0)
    try:
        with ExitStack() as stack:
            advance = progress_bar(stack, n_customers) if progress else None
            with engine.begin() as conn:
                for table in _TABLES:
                    conn.execute(CreateTable(table))  # secondary indexes come after the load
                counts[offers.name] = _insert_small(conn, offers, _offer_rows(as_of))
                counts[seed_recipients.name] = _insert_small(
                    conn, seed_recipients, [{"email": e, "label": x} for e, x in _SEED_RECIPIENTS]
                )
            load = _loader_for(engine)
            for size, group in _chunks(n_customers, seed, as_of, chunk_size):
                load(group)
                for table in _BULK_TABLES:
                    counts[table.name] += _row_count(table, group)
                if advance is not None:
                    advance(size, "loading customers")
            if advance is not None:
                advance(0, "indexing")
            create_indexes(engine)
            if advance is not None:
                advance(0, "done")
    except BaseException:
        drop_tables(engine)
        raise

    return WarehouseSummary(
        customers=counts["customers"],
        suppressions=counts[suppressions.name],
        contact_history=counts[contact_history.name],
        offers=counts[offers.name],
        seed_recipients=counts[seed_recipients.name],
        seed=seed,
        as_of=as_of,
        seconds=round(time.perf_counter() - started, 3),
    )


# --------------------------------------------------------------------------- tables


def _check_whole(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise WarehouseError(f"{name} must be a whole number of at least {minimum}, not {value!r}")


def _normalise_as_of(as_of: dt.datetime | None) -> dt.datetime:
    if as_of is None:
        as_of = dt.datetime.now(dt.UTC)
    if not isinstance(as_of, dt.datetime):
        raise WarehouseError(f"as_of must be a datetime, not {as_of!r}")
    if as_of.tzinfo is not None:
        as_of = as_of.astimezone(dt.UTC).replace(tzinfo=None)
    return as_of.replace(microsecond=0)


def _url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def prepare_tables(engine: Engine, replace: bool) -> None:
    """Refuse to overwrite data unless `replace`; clear the way for fresh tables."""
    present = set(sa.inspect(engine).get_table_names())
    existing = [t for t in _TABLES if t.name in present]
    if existing and not replace:
        with engine.connect() as conn:
            rows = {
                t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in existing
            }
        if rows.get(customers.name, 0):
            raise WarehouseError(
                f"warehouse at {_url(engine)} already has {rows[customers.name]:,} customers: "
                "pass --replace to rebuild it"
            )
        filled = [f"{n:,} {name}" for name, n in rows.items() if n]
        if filled:
            raise WarehouseError(
                f"warehouse at {_url(engine)} already has data ({', '.join(filled)}): "
                "pass --replace to rebuild it"
            )
    # Empty, or to be replaced: recreated without secondary indexes, indexed after the load.
    warehouse_metadata.drop_all(engine, tables=list(_TABLES), checkfirst=True)


def create_indexes(engine: Engine) -> None:
    """The data model's secondary indexes (made after a bulk load), then ANALYZE."""
    with engine.begin() as conn:
        for table in _TABLES:
            for index in sorted(table.indexes, key=lambda i: str(i.name)):
                index.create(conn)
        if engine.dialect.name in ("sqlite", "postgresql"):
            for table in _TABLES:
                conn.exec_driver_sql(f"ANALYZE {table.name}")


def drop_tables(engine: Engine) -> None:
    """Best effort after a failed load: no half-built warehouse left behind."""
    try:
        warehouse_metadata.drop_all(engine, tables=list(_TABLES), checkfirst=True)
    except Exception:  # pragma: no cover - the original error matters more
        pass


def _insert_small(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> int:
    conn.execute(table.insert(), rows)
    return len(rows)


def _offer_rows(as_of: dt.datetime) -> list[dict[str, Any]]:
    day = dt.timedelta(days=1)
    return [
        {"offer_code": "WELCOME10", "description": "10% off the next order",
         "valid_from": as_of - 30 * day, "valid_to": as_of + 365 * day},
        {"offer_code": "SPRING15", "description": "15% off the spring collection",
         "valid_from": as_of - 30 * day, "valid_to": as_of + 365 * day},
        {"offer_code": "EXPIRED5", "description": "5% off (expired)",
         "valid_from": as_of - 120 * day, "valid_to": as_of - 10 * day},
        {"offer_code": "FUTURE20", "description": "20% off (not yet valid)",
         "valid_from": as_of + 60 * day, "valid_to": as_of + 150 * day},
    ]  # fmt: skip


# --------------------------------------------------------------------------- generation

Array = npt.NDArray[Any]
Columns = dict[str, Array]  # column name -> values; None (object) or NaT (datetime64) = null


def _p(weights: Sequence[float]) -> npt.NDArray[np.float64]:
    w: npt.NDArray[np.float64] = np.asarray(weights, dtype=np.float64)
    return w / float(w.sum())


def _objects(values: Sequence[Any]) -> Array:
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


class _Vocab:
    """Lookup arrays derived once per warehouse from the vocabularies and as_of."""

    def __init__(self, as_of: dt.datetime) -> None:
        self.as_of_s = np.datetime64(as_of, "s")
        self.as_of_day = np.datetime64(as_of.date(), "D")
        self.second_of_day = as_of.hour * 3600 + as_of.minute * 60 + as_of.second
        # Names: indexes past the list mean None (and '' for first names).
        self.n_first = len(_FIRST_NAMES)
        self.n_last = len(_LAST_NAMES)
        self.first = _objects([*_FIRST_NAMES, None, ""])
        self.last = _objects([*_LAST_NAMES, None])
        self.first_lower = _objects([n.lower() for n in _FIRST_NAMES])
        self.last_lower = _objects([n.lower() for n in _LAST_NAMES])
        self.tlds = _objects([f"@example.{t}" for t in _TLDS])
        # Geography: regions flattened, a cumulative weight table per country.
        self.country = _objects([c[0] for c in _COUNTRIES])
        self.phones = PhoneVocab([c[0] for c in _COUNTRIES])
        self.country_p = _p([c[1] for c in _COUNTRIES])
        languages = sorted({c[2] for c in _COUNTRIES} | {"fr"})
        self.language = _objects(languages)
        self.country_language = np.array([languages.index(c[2]) for c in _COUNTRIES])
        self.french = languages.index("fr")
        regions = [(c[0], r) for c in _COUNTRIES for r, _ in c[3]]
        self.region = _objects([r for _, r in regions])
        self.region_offset = np.cumsum([0] + [len(c[3]) for c in _COUNTRIES])[:-1]
        width = max(len(c[3]) for c in _COUNTRIES)
        self.region_cdf = np.ones((len(_COUNTRIES), width))
        for i, c in enumerate(_COUNTRIES):
            self.region_cdf[i, : len(c[3])] = np.cumsum(_p([w for _, w in c[3]]))
        self.region_cdf[:, -1] = 2.0  # the last bucket catches rounding
        self.region_french = np.array([cr in _FRENCH_REGIONS for cr in regions])
        self.stages = _objects(_STAGES)
        self.tiers = _objects(_TIERS)
        self.reasons = _objects(_REASONS)
        # Contact history: campaigns, their cells and offers, one run per campaign and day.
        self.campaigns = _objects([c[0] for c in _CAMPAIGNS])
        self.campaign_p = _p([c[1] for c in _CAMPAIGNS])
        self.n_cells = np.array([len(c[2]) for c in _CAMPAIGNS])
        cells = max(len(c[2]) for c in _CAMPAIGNS)
        self.cell = np.array(
            [[c[2][i % len(c[2])][0] for i in range(cells)] for c in _CAMPAIGNS], dtype=object
        )
        self.offer = np.array(
            [[c[2][i % len(c[2])][1] for i in range(cells)] for c in _CAMPAIGNS], dtype=object
        )
        # One past run per campaign and calendar day, named after its day.
        self.run_ids = _objects(
            [
                f"hist-{campaign}-{(as_of - dt.timedelta(days=d)):%Y%m%d}"
                for campaign, _, _ in _CAMPAIGNS
                for d in range(_HISTORY_DAYS + 1)
            ]
        )


@dataclass
class _Block:
    """One generation block: the columns of each bulk table."""

    customers: int
    tables: dict[str, Columns]


def _chunks(
    n: int, seed: int, as_of: dt.datetime, chunk_size: int
) -> Iterator[tuple[int, list[_Block]]]:
    """(customers, blocks) load chunks of at least `chunk_size` customers each."""
    vocab = _Vocab(as_of)
    group: list[_Block] = []
    size = 0
    for index, start in enumerate(range(0, n, GENERATION_BLOCK)):
        group.append(_generate_block(vocab, seed, index, start, min(GENERATION_BLOCK, n - start)))
        size += group[-1].customers
        if size >= chunk_size:
            yield size, group
            group, size = [], 0
    if group:
        yield size, group


def _redraw_above(
    rng: np.random.Generator, ages: npt.NDArray[np.int64], limit: npt.NDArray[np.int64]
) -> npt.NDArray[np.int64]:
    """Ages (seconds before as_of) redrawn uniformly in [0, limit] where they exceed it."""
    redraw = (rng.random(ages.size) * (limit + 1)).astype(np.int64)
    return np.where(ages > limit, redraw, ages)


def _generate_block(v: _Vocab, seed: int, index: int, start: int, n: int) -> _Block:
    """Customers start+1 .. start+n with their suppressions and contact history.

    Every draw is made for the whole block whatever the masks say, so the
    random stream (and so the data) depends only on (seed, index, n, as_of).
    """
    rng = np.random.default_rng([seed, index])
    ids = np.arange(start + 1, start + n + 1, dtype=np.int64)

    # Households: runs of 1-4 consecutive customers; the first one's id is the household's.
    sizes = rng.choice(len(_HOUSEHOLD_P), size=n, p=_p(_HOUSEHOLD_P)) + 1
    ends = np.cumsum(sizes)
    sizes = sizes[: int(np.searchsorted(ends, n)) + 1]
    head = np.repeat(ends[: sizes.size] - sizes, sizes)[:n]
    is_head = head == np.arange(n)

    # Names: household members often share the first member's last name.
    fi = rng.integers(0, v.n_first, n)
    li = rng.integers(0, v.n_last, n)
    li = np.where(~is_head & (rng.random(n) < 0.6), li[head], li)

    # Geography.
    ci = rng.choice(v.country.size, size=n, p=v.country_p)
    region_u = rng.random(n)
    ri = v.region_offset[ci] + (region_u[:, None] >= v.region_cdf[ci]).sum(axis=1)
    french = v.region_french[ri] & (rng.random(n) < 0.8)
    language = np.where(french, v.french, v.country_language[ci])

    # Email: firstname.lastname.<id>@example.<tld>, with shared, missing and invalid ones.
    tld = rng.choice(len(_TLDS), size=n, p=_p(_TLD_P))
    email = _objects(
        [
            f"{f}.{g}.{i}{t}"
            for f, g, i, t in zip(
                v.first_lower[fi].tolist(),
                v.last_lower[li].tolist(),
                ids.tolist(),
                v.tlds[tld].tolist(),
                strict=True,
            )
        ]
    )
    kind_u = rng.random(n)
    missing = kind_u < 0.01
    invalid = (kind_u >= 0.01) & (kind_u < 0.011)
    invalid_space = rng.random(n) < 0.5
    normal = ~missing & ~invalid
    shared = ~is_head & normal & normal[head] & (rng.random(n) < _SHARED_P)
    variant = shared & (rng.random(n) < _SHARED_VARIANT)
    variant_kind = rng.integers(0, 4, n)
    for i in np.flatnonzero(invalid):
        e = str(email[i])
        email[i] = e.replace(".", " ", 1) if invalid_space[i] else e.replace("@", "")
    email[shared] = email[head[shared]]
    for i in np.flatnonzero(variant):
        e = str(email[i])
        email[i] = (e.upper(), f" {e}", f"{e} ", e.capitalize())[variant_kind[i]]
    email[missing] = None

    # Phone: a mobile number valid for the customer's country (campaignops.synthetic_phones),
    # from its own stream. The draw below made the former +1555 numbers: kept, so every
    # column after it is what it was.
    rng.integers(0, 10**7, n)
    no_phone = rng.random(n) < 0.10
    phone, sms_address, _ = synthetic_phones(
        np.random.default_rng([seed, index, _PHONE_STREAM]), v.phones, ci, head, is_head, no_phone
    )

    first_u = rng.random(n)
    first = np.where(first_u < 0.03, v.n_first, np.where(first_u < 0.04, v.n_first + 1, fi))
    last = np.where(rng.random(n) < 0.02, v.n_last, li)

    # Signup in the 8 years before as_of, more of them recent (a growing business).
    signup_days = np.minimum((rng.random(n) ** 1.6 * _SIGNUP_DAYS).astype(np.int64), _SIGNUP_DAYS)
    signup_date = v.as_of_day - signup_days.astype("timedelta64[D]")
    since_signup = signup_days * _DAY + v.second_of_day  # seconds from signup day to as_of

    stage = rng.choice(len(_STAGES), size=n, p=_p(_STAGE_P))
    centre = np.array(_STAGE_SCORE)[stage]
    lead_score = np.clip(np.rint(centre + rng.normal(0.0, 15.0, n)), 0, 100).astype(np.int64)
    tier = rng.choice(len(_TIERS), size=n, p=_p(_TIER_P))

    # Purchases: customers and churned always bought, some leads to opportunities did too.
    is_customer = stage == _STAGES.index("customer")
    is_churned = stage == _STAGES.index("churned")
    in_funnel = (stage >= _STAGES.index("lead")) & (stage <= _STAGES.index("opportunity"))
    bought = is_customer | is_churned | (in_funnel & (rng.random(n) < 0.2))
    recent = rng.random(n) < 0.40
    u = rng.random(n)
    ninety = 90 * _DAY
    customer_age = np.where(recent, u * ninety, ninety + (_THREE_YEARS - ninety) * u**1.5)
    churned_age = 180 * _DAY + u * (_THREE_YEARS - 180 * _DAY)
    purchase_age = np.where(
        is_customer, customer_age, np.where(is_churned, churned_age, u * _THREE_YEARS)
    ).astype(np.int64)
    purchase_age = _redraw_above(rng, purchase_age, since_signup)
    last_purchase_at = np.where(
        bought, v.as_of_s - purchase_age.astype("timedelta64[s]"), np.datetime64("NaT", "s")
    )
    value = np.round(np.minimum(5.0 + rng.lognormal(np.log(120.0), 1.0, n), 250_000.0), 2)
    lifetime_value = np.where(bought, value, 0.0)

    # Opens: most within a year, a tail up to two years, never for a fifth (or no email).
    never_opened = (rng.random(n) < 0.20) | missing
    tail = rng.random(n) < 0.15
    recent_open = np.minimum(rng.exponential(60.0 * _DAY, n), _TWO_YEARS)
    open_age = np.where(tail, rng.random(n) * _TWO_YEARS, recent_open).astype(np.int64)
    open_age = _redraw_above(rng, open_age, since_signup)
    last_open_at = np.where(
        never_opened, np.datetime64("NaT", "s"), v.as_of_s - open_age.astype("timedelta64[s]")
    )

    email_opt_in = rng.random(n) < 0.85
    sms_opt_in = ~no_phone & (rng.random(n) < 0.40 / 0.90)

    customer_cols: Columns = {
        "customer_id": ids,
        "email": email,
        "phone": phone,
        "first_name": v.first[first],
        "last_name": v.last[last],
        "country": v.country[ci],
        "region": v.region[ri],
        "language": v.language[language],
        "signup_date": signup_date,
        "lifecycle_stage": v.stages[stage],
        "lead_score": lead_score,
        "loyalty_tier": v.tiers[tier],
        "lifetime_value": lifetime_value,
        "last_purchase_at": last_purchase_at,
        "last_open_at": last_open_at,
        "household_id": ids[head],
        "email_opt_in": email_opt_in,
        "sms_opt_in": sms_opt_in,
    }
    return _Block(
        customers=n,
        tables={
            customers.name: customer_cols,
            suppressions.name: _suppressions(
                rng, v, index, email, ~missing, sms_address, ~no_phone, since_signup
            ),
            contact_history.name: _history(rng, v, ids, missing),
        },
    )


def _suppressions(
    rng: np.random.Generator,
    v: _Vocab,
    index: int,
    email: Array,
    has_email: Array,
    phone: Array,
    has_phone: Array,
    since_signup: npt.NDArray[np.int64],
) -> Columns:
    """~3 % of customers' addresses (some in another case, some twice), and former customers'."""
    n = email.size
    chosen = rng.random(n) < 0.03
    wants_sms = rng.random(n) < 0.15
    upper = rng.random(n) < 0.15
    reason = rng.choice(len(_REASONS), size=n, p=_p(_REASON_P))
    age = 1 + (rng.random(n) * since_signup).astype(np.int64)
    twice = rng.random(n) < 0.05
    second_reason = np.where(rng.random(n) < 0.6, 1, 2)  # hard_bounce or complaint
    second_age = 1 + (rng.random(n) * since_signup).astype(np.int64)
    n_former = int(rng.binomial(n, 0.002))
    former_reason = np.where(rng.random(n_former) < 0.7, 0, 4)  # unsubscribe, do_not_contact
    former_age = 1 + (rng.random(n_former) * _SIGNUP_DAYS * _DAY).astype(np.int64)

    sms = chosen & has_phone & (wants_sms | ~has_email)
    by_email = chosen & has_email & ~sms
    channel: list[str] = []
    address: list[Any] = []
    reasons: list[int] = []
    ages: list[int] = []
    for i in np.flatnonzero(by_email | sms):
        if sms[i]:
            kind, addr = "sms", phone[i]
        else:
            kind, addr = "email", email[i].upper() if upper[i] else email[i]
        channel.append(kind)
        address.append(addr)
        reasons.append(int(reason[i]))
        ages.append(int(age[i]))
        if twice[i]:  # listed again for another reason, the address as the ESP reported it
            channel.append(kind)
            address.append(addr.strip().lower())
            reasons.append(int(second_reason[i]))
            ages.append(int(second_age[i]))
    for k in range(n_former):
        channel.append("email")
        address.append(f"former.{index}.{k}@example.net")
        reasons.append(int(former_reason[k]))
        ages.append(int(former_age[k]))
    return {
        "channel": _objects(channel),
        "address": _objects(address),
        "reason": v.reasons[np.array(reasons, dtype=np.int64)],
        "created_at": v.as_of_s - np.array(ages, dtype=np.int64).astype("timedelta64[s]"),
    }


def _history(
    rng: np.random.Generator, v: _Vocab, ids: npt.NDArray[np.int64], missing: Array
) -> Columns:
    """0-3 email sends per customer with an address, in the 14 days before as_of."""
    sends = rng.choice(len(_SENDS_P), size=ids.size, p=_p(_SENDS_P))
    sends[missing] = 0
    total = int(sends.sum())
    customer_id = np.repeat(ids, sends)
    campaign = rng.choice(v.campaigns.size, size=total, p=v.campaign_p)
    day = rng.integers(0, _HISTORY_DAYS, total)
    age = day * _DAY + rng.integers(60, _DAY, total)
    cell = rng.integers(0, 1 << 30, total) % v.n_cells[campaign]
    order = np.lexsort((-age, customer_id))  # per customer, oldest send first
    campaign, cell = campaign[order], cell[order]
    sent_at = (v.as_of_s - age.astype("timedelta64[s]"))[order]
    days_ago = (v.as_of_day - sent_at.astype("datetime64[D]")).astype(np.int64)
    return {
        "customer_id": customer_id[order],
        "campaign_id": v.campaigns[campaign],
        "run_id": v.run_ids[campaign * (_HISTORY_DAYS + 1) + days_ago],
        "channel": np.full(total, "email", dtype=object),
        "cell": v.cell[campaign, cell],
        "offer_code": v.offer[campaign, cell],
        "sent_at": sent_at,
    }


# --------------------------------------------------------------------------- loading

_DATETIME_COLUMNS = {c.name for t in _TABLES for c in t.columns if isinstance(c.type, sa.DateTime)}
_DATE_COLUMNS = {c.name for t in _TABLES for c in t.columns if isinstance(c.type, sa.Date)}

_STAMP = np.frombuffer("0000-00-00 00:00:00.000000".encode("utf-32-le"), dtype=np.uint32)
_TWO_DIGITS = np.array([[48 + d // 10, 48 + d % 10] for d in range(100)], dtype=np.uint32)


def _format_datetimes(values: Array, width: int) -> list[Any]:
    """datetime64 values as 'YYYY-MM-DD HH:MM:SS.ffffff' cut to `width` characters, None for NaT.

    Digits are written straight into a UCS-4 buffer: far faster than strftime or
    np.datetime_as_string for millions of values.
    """
    nat = np.isnat(values)
    seconds = values.astype("datetime64[s]").astype(np.int64)
    seconds[nat] = seconds[~nat].min() if not nat.all() else 0
    days = seconds // _DAY
    first = int(days.min()) if days.size else 0
    # The calendar part from a small table of the days in range, the clock part digit by digit.
    calendar = np.datetime_as_string(
        np.arange(first, int(days.max(initial=first)) + 1).astype("datetime64[D]")
    )
    buffer = np.empty((values.size, width), dtype=np.uint32)
    buffer[:] = _STAMP[:width]
    buffer[:, :10] = calendar.view(np.uint32).reshape(calendar.size, -1)[:, :10][days - first]
    if width > 10:
        second_of_day = seconds - days * _DAY
        for position, part in (
            (11, second_of_day // 3600),
            (14, second_of_day // 60 % 60),
            (17, second_of_day % 60),
        ):
            buffer[:, position : position + 2] = _TWO_DIGITS[part]
    out: list[Any] = buffer.view(f"<U{width}").reshape(-1).tolist()
    for i in np.flatnonzero(nat).tolist():
        out[i] = None
    return out


def _text_columns(table: sa.Table, cols: Columns, fraction: bool) -> list[list[Any]]:
    """A table's columns as lists of Python values for the driver: dates and timestamps
    as text, None for null.

    With `fraction`, timestamps take SQLAlchemy's SQLite storage format
    ('YYYY-MM-DD HH:MM:SS.ffffff') so that they compare correctly with values
    SQLAlchemy binds; PostgreSQL parses either form.
    """
    out: list[list[Any]] = []
    for column in table.columns:
        values = cols[column.name]
        if column.name in _DATETIME_COLUMNS:
            out.append(_format_datetimes(values, 26 if fraction else 19))
        elif column.name in _DATE_COLUMNS:
            out.append(_format_datetimes(values, 10))
        else:
            out.append(values.tolist())
    return out


def _rows_of(table: sa.Table, group: list[_Block], fraction: bool) -> Iterator[tuple[Any, ...]]:
    """A table's rows across a chunk's blocks, made one at a time as the driver takes them."""
    return chain.from_iterable(
        zip(*_text_columns(table, block.tables[table.name], fraction), strict=True)
        for block in group
    )


def _row_count(table: sa.Table, group: list[_Block]) -> int:
    first = next(iter(table.columns)).name
    return sum(len(b.tables[table.name][first]) for b in group)


Load = Callable[[list[_Block]], None]


def _loader_for(engine: Engine) -> Load:
    """How to write a chunk of blocks to this database, in one transaction."""
    if engine.dialect.name == "sqlite":
        return lambda group: _load_executemany(engine, group)
    if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        return lambda group: _load_copy(engine, group)
    return lambda group: _load_generic(engine, group)


def _load_executemany(engine: Engine, group: list[_Block]) -> None:
    with engine.begin() as conn:
        cursor: Any = conn.connection.cursor()
        try:
            for table in _BULK_TABLES:
                insert = str(table.insert().compile(dialect=engine.dialect))
                cursor.executemany(insert, _rows_of(table, group, fraction=True))
        finally:
            cursor.close()


def _load_copy(engine: Engine, group: list[_Block]) -> None:
    with engine.begin() as conn:
        cursor: Any = conn.connection.cursor()
        try:
            for table in _BULK_TABLES:
                names = ", ".join(c.name for c in table.columns)
                with cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
                    for row in _rows_of(table, group, fraction=False):
                        copy.write_row(row)
        finally:
            cursor.close()


def _load_generic(engine: Engine, group: list[_Block]) -> None:
    with engine.begin() as conn:
        for table in _BULK_TABLES:
            keys = [c.name for c in table.columns]
            rows: list[dict[str, Any]] = []
            for block in group:
                cols = block.tables[table.name]
                # datetime64 -> datetime / date objects (NaT -> None); the rest as they are
                values = [cols[k].astype(object).tolist() for k in keys]
                rows.extend(dict(zip(keys, r, strict=True)) for r in zip(*values, strict=True))
            if rows:
                conn.execute(table.insert(), rows)


def progress_bar(stack: ExitStack, total: int) -> Callable[[int, str], None]:
    """A rich progress bar on stderr for ``total`` rows; returns advance(rows done, label)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = stack.enter_context(
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
    )
    task = progress.add_task("loading customers", total=total)

    def advance(done: int, description: str) -> None:
        progress.update(task, advance=done, description=description)

    return advance
