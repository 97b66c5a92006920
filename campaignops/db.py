"""Warehouse and project tables, engines, and the portable bucket hash."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from campaignops.errors import WarehouseError

# The warehouse data model (PRODUCT.md, the input contract): never changed by us.
warehouse_metadata = sa.MetaData()

customers = sa.Table(
    "customers",
    warehouse_metadata,
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(254)),
    sa.Column("phone", sa.String(32)),
    sa.Column("first_name", sa.String(100)),
    sa.Column("last_name", sa.String(100)),
    sa.Column("country", sa.String(2)),
    sa.Column("region", sa.String(64)),
    sa.Column("language", sa.String(8)),
    sa.Column("signup_date", sa.Date),
    sa.Column("lifecycle_stage", sa.String(16)),
    sa.Column("lead_score", sa.Integer),
    sa.Column("loyalty_tier", sa.String(16)),
    sa.Column("lifetime_value", sa.Numeric(12, 2)),
    sa.Column("last_purchase_at", sa.DateTime),
    sa.Column("last_open_at", sa.DateTime),
    sa.Column("household_id", sa.BigInteger),
    sa.Column("email_opt_in", sa.Boolean),
    sa.Column("sms_opt_in", sa.Boolean),
)

suppressions = sa.Table(
    "suppressions",
    warehouse_metadata,
    sa.Column("channel", sa.String(8), nullable=False),
    sa.Column("address", sa.String(254), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Index("ix_suppressions_channel_address", "channel", "address"),
)

contact_history = sa.Table(
    "contact_history",
    warehouse_metadata,
    sa.Column("customer_id", sa.BigInteger, nullable=False),
    sa.Column("campaign_id", sa.String(128), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("channel", sa.String(8), nullable=False),
    sa.Column("cell", sa.String(64)),
    sa.Column("offer_code", sa.String(64)),
    sa.Column("sent_at", sa.DateTime, nullable=False),
    sa.Index("ix_contact_history_customer_sent", "customer_id", "sent_at"),
)

offers = sa.Table(
    "offers",
    warehouse_metadata,
    sa.Column("offer_code", sa.String(64), primary_key=True),
    sa.Column("description", sa.String(256)),
    sa.Column("valid_from", sa.DateTime, nullable=False),
    sa.Column("valid_to", sa.DateTime, nullable=False),
)

seed_recipients = sa.Table(
    "seed_recipients",
    warehouse_metadata,
    sa.Column("email", sa.String(254), nullable=False),
    sa.Column("label", sa.String(128)),
)

# The project's own tables, beside the warehouse's (prefix co_).
project_metadata = sa.MetaData()

runs = sa.Table(
    "co_runs",
    project_metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("campaign_id", sa.String(128), nullable=False),
    sa.Column("brief_digest", sa.String(64), nullable=False),
    sa.Column("brief_json", sa.Text, nullable=False),  # the brief as accepted at intake
    sa.Column("brief_source", sa.String(512)),
    sa.Column("dry_run", sa.Boolean, nullable=False, default=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("as_of", sa.DateTime, nullable=False),
    sa.Column("audience_digest", sa.String(64)),
    sa.Column("recipients", sa.Integer),
    sa.Column("waiting_stage", sa.String(64)),
    sa.Column("waiting_since", sa.DateTime),
    sa.Column("contact_history_written", sa.Boolean, nullable=False, default=False),
    # Fixed at the first handoff attempt so every rerun cuts the same batches.
    sa.Column("batch_size", sa.Integer),
)

audience = sa.Table(
    "co_audience",
    project_metadata,
    sa.Column("row_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("customer_id", sa.BigInteger),  # null for seed recipients
    sa.Column("email", sa.String(254)),
    sa.Column("address_key", sa.String(254)),  # lower(trim(email))
    sa.Column("first_name", sa.String(100)),
    sa.Column("last_name", sa.String(100)),
    sa.Column("language", sa.String(8)),
    sa.Column("country", sa.String(2)),
    sa.Column("loyalty_tier", sa.String(16)),
    # outcome: send | control | excluded | seed
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(64)),  # why excluded, null otherwise
    sa.Column("cell", sa.String(64)),
    sa.Column("offer_code", sa.String(64)),
    sa.Column("is_seed", sa.Boolean, nullable=False, default=False),
    # One index, on the run: a segmentation's rows arrive in address order, and an index
    # keyed on anything else takes them in random order. Every reader selects one run's
    # rows (and most of them) anyway. At 10M customers (1.1M rows a run) the two indexes
    # this replaces, (run_id, outcome, customer_id) and (run_id, address_key), cost
    # PostgreSQL ~12 s of a 28 s INSERT; this one ~1 s (docs/segmentation.md).
    sa.Index("ix_co_audience_run", "run_id"),
)
# Indexes earlier versions created and this one drops (ensure_project_tables).
RETIRED_INDEXES = {
    "co_audience": ("ix_co_audience_run_outcome_customer", "ix_co_audience_run_address"),
}

audit_log = sa.Table(
    "co_audit",
    project_metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("run_id", sa.String(64)),
    sa.Column("step", sa.String(64), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(254), nullable=False),
    sa.Column("details", sa.Text, nullable=False),  # canonical JSON
    sa.Column("created_at", sa.String(32), nullable=False),  # ISO-8601 UTC
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("ix_co_audit_run", "run_id"),
    # One successor per record: two writers racing on the same tail cannot fork the chain.
    sa.UniqueConstraint("prev_hash", name="uq_co_audit_prev_hash"),
)

ledger = sa.Table(
    "co_ledger",
    project_metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("batch_seq", sa.Integer, primary_key=True),
    sa.Column("idempotency_key", sa.String(160), nullable=False),
    sa.Column("batch_digest", sa.String(64), nullable=False),
    sa.Column("recipients", sa.Integer, nullable=False),
    sa.Column("accepted", sa.Integer, nullable=False),
    sa.Column("rejected", sa.Integer, nullable=False),
    sa.Column("esp_batch_id", sa.String(128)),
    sa.Column("acked_at", sa.DateTime, nullable=False),
)

approvers = sa.Table(
    "co_approvers",
    project_metadata,
    sa.Column("name", sa.String(254), primary_key=True),
    sa.Column("key_salt", sa.String(64), nullable=False),
    sa.Column("key_hash", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False, default="person"),  # person | demo
    sa.Column("created_at", sa.DateTime, nullable=False),
)

approvals = sa.Table(
    "co_approvals",
    project_metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("stage", sa.String(64), primary_key=True),
    sa.Column("approver", sa.String(254), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("packet_digest", sa.String(64), nullable=False),
    sa.Column("decided_at", sa.DateTime, nullable=False),
)

standing_approvals = sa.Table(
    "co_standing_approvals",
    project_metadata,
    sa.Column("grant_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("campaign_id", sa.String(128), nullable=False),
    sa.Column("stage", sa.String(64), nullable=False),
    sa.Column("granted_by", sa.String(254), nullable=False),
    sa.Column("granted_in_run", sa.String(64), nullable=False),
    sa.Column("granted_at", sa.DateTime, nullable=False),
    sa.Column("revoked_by", sa.String(254)),
    sa.Column("revoked_at", sa.DateTime),
    sa.Index("ix_co_standing_campaign_stage", "campaign_id", "stage"),
)


# The address check QA applies (expectations/audience.json must use the same pattern).
ADDRESS_REGEX = (
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"\.[A-Za-z]{2,63}$"
)
# The same pattern as evaluated in SQL: identical language, groups made non-capturing
# (the class has no "(", so every "(" opens a group). PostgreSQL's regex engine runs
# it ~1.5x faster without captures; QA and the expectation suites keep ADDRESS_REGEX.
_ADDRESS_REGEX_SQL = ADDRESS_REGEX.replace("(", "(?:")
_ADDRESS_REGEX_PG = _ADDRESS_REGEX_SQL.replace(r"\.[A-Za-z]{2,63}$", r"\.[A-Za-z]{2,}$")


class valid_address(FunctionElement[bool]):
    """SQL expression: the address matches ADDRESS_REGEX, evaluated inside the database."""

    type = sa.Boolean()
    inherit_cache = True
    name = "co_valid_address"


@compiles(valid_address, "postgresql")
def _valid_address_pg(element: valid_address, compiler: Any, **kw: Any) -> str:
    # PostgreSQL's regex engine spends ~1.7 us a row on the top-level domain's bounded
    # repetition {2,63} (at 10M customers 1.8 s of a 1.8 s check): the pattern runs with
    # {2,} and the upper bound is checked apart. Given the {2,} match the address ends in
    # "." and letters only, so the domain is over 63 letters exactly when its last 64
    # characters are all letters. Same language as ADDRESS_REGEX (tests pin edge cases).
    (address,) = list(element.clauses)
    a = compiler.process(address, **kw)
    pattern = compiler.process(sa.literal(_ADDRESS_REGEX_PG, sa.String), **kw)
    letters = compiler.process(sa.literal("[^A-Za-z]", sa.String), **kw)
    return f"({a} ~ {pattern} AND right({a}, 64) ~ {letters})"


@compiles(valid_address)
def _valid_address_default(element: valid_address, compiler: Any, **kw: Any) -> str:
    (address,) = list(element.clauses)
    return f"co_valid_address({compiler.process(address, **kw)})"


_ADDRESS_MATCH = re.compile(_ADDRESS_REGEX_SQL).fullmatch  # "$" as in SQL: no final newline


def _sqlite_valid_address(address: str | None) -> int | None:
    # A UDF with the pattern compiled once (SQLAlchemy's REGEXP looks it up per row).
    if address is None:
        return None
    return 1 if _ADDRESS_MATCH(address) is not None else 0


def bucket_of(address: str, salt: str) -> int:
    """A stable 0-9999 draw from an address and a salt (same value as in SQL)."""
    digest = hashlib.md5(f"{salt}:{address}".encode(), usedforsecurity=False).hexdigest()
    return int(digest[:8], 16) % 10000


class bucket(FunctionElement[int]):
    """SQL expression: bucket_of(address, salt) computed inside the database."""

    type = sa.Integer()
    inherit_cache = True
    name = "co_bucket"


@compiles(bucket, "postgresql")
def _bucket_pg(element: bucket, compiler: Any, **kw: Any) -> str:
    address, salt = list(element.clauses)
    a = compiler.process(address, **kw)
    s = compiler.process(salt, **kw)
    return (
        f"mod(('x' || substr(md5({s} || ':' || {a}), 1, 8))::bit(32)::bigint, 10000)"
    )


@compiles(bucket)
def _bucket_default(element: bucket, compiler: Any, **kw: Any) -> str:
    address, salt = list(element.clauses)
    return f"co_bucket({compiler.process(address, **kw)}, {compiler.process(salt, **kw)})"


def _sqlite_bucket(address: str | None, salt: str | None) -> int | None:
    if address is None or salt is None:
        return None
    return bucket_of(address, salt)


def make_engine(url: str) -> Engine:
    """An engine for the warehouse URL, checked to be reachable."""
    try:
        engine = sa.create_engine(url, future=True, pool_pre_ping=True)
    except Exception as exc:
        raise WarehouseError(
            f"CAMPAIGNOPS_WAREHOUSE_URL is not a valid SQLAlchemy URL ({type(exc).__name__}): "
            "use e.g. sqlite:///path/warehouse.db or postgresql+psycopg://host/db"
        ) from None
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.create_function("co_bucket", 2, _sqlite_bucket, deterministic=True)
            dbapi_conn.create_function("co_valid_address", 1, _sqlite_valid_address, deterministic=True)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        raise WarehouseError(
            f"warehouse at {engine.url.render_as_string(hide_password=True)} is unreachable "
            f"({type(exc).__name__}): check CAMPAIGNOPS_WAREHOUSE_URL or run "
            "`campaignops warehouse init`"
        ) from None
    return engine


def require_warehouse(engine: Engine) -> None:
    """Fail clearly when the warehouse tables are missing."""
    present = set(sa.inspect(engine).get_table_names())
    missing = [t for t in warehouse_metadata.tables if t not in present]
    if missing:
        raise WarehouseError(
            f"warehouse is missing tables {', '.join(sorted(missing))}: "
            "run `campaignops warehouse init` or point CAMPAIGNOPS_WAREHOUSE_URL at a warehouse"
        )


_AUDIT_GUARDS = {
    "sqlite": [
        "CREATE TRIGGER IF NOT EXISTS co_audit_no_update BEFORE UPDATE ON co_audit "
        "BEGIN SELECT RAISE(ABORT, 'co_audit is append-only'); END",
        "CREATE TRIGGER IF NOT EXISTS co_audit_no_delete BEFORE DELETE ON co_audit "
        "BEGIN SELECT RAISE(ABORT, 'co_audit is append-only'); END",
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION co_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'co_audit is append-only'; END $$",
        "DROP TRIGGER IF EXISTS co_audit_append_only ON co_audit",
        "CREATE TRIGGER co_audit_append_only BEFORE UPDATE OR DELETE ON co_audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION co_audit_append_only()",
    ],
}


def _add_missing_columns(engine: Engine) -> None:
    """Additive migration: columns a newer campaignops added to its own tables (nullable only)."""
    inspector = sa.inspect(engine)
    with engine.begin() as conn:
        for table in project_metadata.sorted_tables:
            present = {c["name"] for c in inspector.get_columns(table.name)}
            for col in table.columns:
                if col.name in present:
                    continue
                if not col.nullable:
                    raise WarehouseError(
                        f"table {table.name} predates column {col.name}: rename the old table "
                        "or point CAMPAIGNOPS_WAREHOUSE_URL at a fresh database"
                    )
                ddl = col.type.compile(dialect=engine.dialect)
                conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {ddl}')


def _sync_indexes(engine: Engine) -> None:
    """Create indexes a newer campaignops added to its tables; drop the ones it retired."""
    inspector = sa.inspect(engine)
    with engine.begin() as conn:
        for table in project_metadata.sorted_tables:
            present = {i["name"] for i in inspector.get_indexes(table.name)}
            for index in table.indexes:
                if index.name not in present:
                    index.create(conn)
            for name in set(RETIRED_INDEXES.get(table.name, ())) & present:
                conn.exec_driver_sql(f"DROP INDEX {name}")


def ensure_project_tables(engine: Engine) -> None:
    """Create campaignops' own tables (and the audit's append-only guard) if missing."""
    project_metadata.create_all(engine)
    _add_missing_columns(engine)
    _sync_indexes(engine)
    with engine.begin() as conn:
        for stmt in _AUDIT_GUARDS.get(engine.dialect.name, []):
            conn.exec_driver_sql(stmt)
