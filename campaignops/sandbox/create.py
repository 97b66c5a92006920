"""`campaignops sandbox create`: a masked copy of a warehouse, streamed in chunks.

The five input tables are read a chunk at a time (a server-side cursor on PostgreSQL),
masked in Python (``campaignops.sandbox.masking``) and written with the target driver's
bulk path (``executemany`` on SQLite, ``COPY`` on PostgreSQL) into session-private
staging tables; each table is then written once into its final place ordered by its
masked key, so not even the physical row order follows production's ids. One chunk is in
memory at a time. The sandbox is marked (``co_sandbox``) before the first row goes in.

After the load: no two distinct valid addresses may have become one (checked by distinct
counts in both databases; a collision is a clear error and the tables are dropped), the
data model's indexes are built and the marker gets the row counts.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateTable

from campaignops import migrations
from campaignops.errors import SandboxError, WarehouseError
from campaignops.sandbox.marker import SandboxMarker, read_marker, write_marker
from campaignops.sandbox.masking import MASKING_VERSION, Masker
from campaignops.schema import contact_history, customers, offers, seed_recipients, suppressions
from campaignops.secrets import sandbox_key_id
from campaignops.sql import valid_address
from campaignops.synthetic import create_indexes, drop_tables, prepare_tables, progress_bar
from campaignops.warehouse import make_engine, require_inputs

TABLES = (customers, suppressions, contact_history, offers, seed_recipients)
MASKED_COLUMNS = {"customer_id", "email", "phone", "first_name", "last_name", "household_id"}
KEPT_COLUMNS = [c.name for c in customers.columns if c.name not in MASKED_COLUMNS]
DEFAULT_MIN_DOMAIN_COUNT = 100
CHUNK_ROWS = 50_000
# The order each table is finally written in: its masked key first, every column after
# (a total order, so two builds with one key write the same rows in the same order).
_ORDER = {
    customers.name: ("customer_id",),
    suppressions.name: ("channel", "address", "reason", "created_at"),
    contact_history.name: ("customer_id", "sent_at", "campaign_id", "run_id", "channel", "cell",
                           "offer_code"),
    offers.name: ("offer_code",),
    seed_recipients.name: ("email", "label"),
}

Row = Sequence[Any]
Transform = Callable[[Row], Row]


@dataclass(frozen=True)
class CopySummary:
    """What a copy wrote: rows per table, kept e-mail domains, and how long it took."""

    source: str
    target: str
    rows: dict[str, int]
    kept_domains: int
    key_id: str | None
    seconds: float


# -- what is masked, table by table -------------------------------------------------------
def _columns(table: sa.Table) -> list[str]:
    return [c.name for c in table.columns]


def _mapper(table: sa.Table, functions: dict[str, Callable[[Any], Any]]) -> Transform:
    masked = [(i, functions[name]) for i, name in enumerate(_columns(table)) if name in functions]

    def transform(row: Row) -> Row:
        out = list(row)
        for i, fn in masked:
            out[i] = fn(out[i])
        return out

    return transform


def transforms(m: Masker) -> dict[str, Transform]:
    """The masking of each table's rows (columns not named are kept as they are)."""
    ident, email = m.identifier, m.email
    channel_at = _columns(suppressions).index("channel")
    address_at = _columns(suppressions).index("address")

    def suppression(row: Row) -> Row:
        out = list(row)
        out[address_at] = (m.phone if out[channel_at] == "sms" else email)(out[address_at])
        return out

    return {
        customers.name: _mapper(customers, {
            "customer_id": ident, "email": email, "phone": m.phone, "first_name": m.first_name,
            "last_name": m.last_name, "household_id": ident}),
        suppressions.name: suppression,
        contact_history.name: _mapper(contact_history, {"customer_id": ident}),
        offers.name: lambda row: row,
        seed_recipients.name: _mapper(seed_recipients, {"email": email}),
    }


# -- the databases ----------------------------------------------------------------------
def _same_database(a: Engine, b: Engine) -> bool:
    if a.dialect.name == "sqlite" and b.dialect.name == "sqlite":
        pa, pb = a.url.database or "", b.url.database or ""
        if not pa or pa == ":memory:" or not pb or pb == ":memory:":
            return False
        return Path(pa).resolve() == Path(pb).resolve()
    return (a.dialect.name, a.url.host, a.url.port, a.url.database) == (
        b.dialect.name, b.url.host, b.url.port, b.url.database)


def public_url(engine: Engine) -> str:
    """The engine's URL without user, password or query parameters (for the marker)."""
    return engine.url.set(username=None, password=None, query={}).render_as_string(hide_password=False)


def _address_key(col: Any) -> Any:
    return sa.func.lower(sa.func.trim(col))


def kept_domains(engine: Engine, min_count: int) -> set[str]:
    """The domains of valid addresses at least ``min_count`` customers share (one GROUP BY)."""
    key = _address_key(customers.c.email)
    at = sa.func.strpos(key, "@") if engine.dialect.name == "postgresql" else sa.func.instr(key, "@")
    domain = sa.func.substr(key, at + 1)
    q = (sa.select(domain).where(valid_address(key)).group_by(domain)
         .having(sa.func.count() >= min_count))
    with engine.connect() as conn:
        return {str(d) for (d,) in conn.execute(q)}


def distinct_valid_addresses(engine: Engine) -> int:
    """Distinct valid address keys over customers, e-mail suppressions and seed recipients."""
    parts = [
        sa.select(_address_key(customers.c.email).label("a")),
        sa.select(_address_key(suppressions.c.address).label("a")).where(suppressions.c.channel == "email"),
        sa.select(_address_key(seed_recipients.c.email).label("a")),
    ]
    every = sa.union_all(*parts).subquery("addresses")
    q = sa.select(sa.func.count(sa.distinct(every.c.a))).where(valid_address(every.c.a))
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows of each of the five input tables."""
    with engine.connect() as conn:
        return {t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in TABLES}


# -- writing ----------------------------------------------------------------------------
class _Writer:
    """Bulk-writes rows (column order of the table) into one table on one connection."""

    def __init__(self, conn: Connection, table: sa.Table) -> None:
        self.conn, self.table = conn, table
        dialect = conn.dialect
        self.kind = ("sqlite" if dialect.name == "sqlite" else
                     "copy" if dialect.name == "postgresql" and dialect.driver == "psycopg" else "generic")
        self.names = _columns(table)
        self.processors = [c.type.dialect_impl(dialect).bind_processor(dialect) for c in table.columns]
        self.insert = str(table.insert().compile(dialect=dialect))

    def write(self, rows: list[Row]) -> None:
        if not rows:
            return
        if self.kind == "sqlite":
            procs = list(enumerate(self.processors))
            todo = [(i, p) for i, p in procs if p is not None]
            prepared = []
            for row in rows:
                out = list(row)
                for i, p in todo:
                    out[i] = p(out[i])
                prepared.append(out)
            cursor: Any = self.conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.executemany(self.insert, prepared)
            finally:
                cursor.close()
        elif self.kind == "copy":
            cursor = self.conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            try:
                with cursor.copy(f"COPY {self.table.name} ({', '.join(self.names)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            finally:
                cursor.close()
        else:
            self.conn.execute(self.table.insert(), [dict(zip(self.names, r, strict=True)) for r in rows])


def _stage_table(table: sa.Table) -> sa.Table:
    return sa.Table(f"co_stage_{table.name}", sa.MetaData(),
                    *(sa.Column(c.name, c.type) for c in table.columns), prefixes=["TEMPORARY"])


def _read(src: Engine, table: sa.Table, chunk: int) -> Iterator[list[Row]]:
    with src.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk).execute(sa.select(table))
        for part in result.partitions():
            yield [tuple(r) for r in part]


def _copy_table(src: Engine, conn: Connection, table: sa.Table, transform: Transform | None,
                chunk: int, advance: Callable[[int, str], None] | None) -> int:
    """Stream one table across (masked and reordered when a transform is given); rows written."""
    into = table if transform is None else _stage_table(table)
    if transform is not None:
        into.create(conn)
        conn.commit()
    writer = _Writer(conn, into)
    written = 0
    for rows in _read(src, table, chunk):
        writer.write(rows if transform is None else [transform(r) for r in rows])
        conn.commit()
        written += len(rows)
        if advance is not None:
            advance(len(rows), f"{'masking' if transform else 'copying'} {table.name}")
    if transform is not None:
        order = [into.c[name] for name in _ORDER[table.name]]
        conn.execute(sa.insert(table).from_select(_columns(table), sa.select(*into.c).order_by(*order)))
        into.drop(conn)
        conn.commit()
    return written


def _prepare_target(dst: Engine, replace: bool) -> None:
    present = set(sa.inspect(dst).get_table_names())
    if replace and present & {t.name for t in TABLES} and read_marker(dst) is None:
        raise SandboxError(
            f"--replace refused: {dst.url.render_as_string(hide_password=True)} holds warehouse tables "
            "and is not a sandbox (no co_sandbox marker); point --to at an empty database or a sandbox")
    try:
        prepare_tables(dst, replace)
    except WarehouseError as exc:  # data already there: the same fix, the sandbox's exit code
        raise SandboxError(str(exc)) from None
    with dst.begin() as conn:
        for table in TABLES:
            conn.execute(CreateTable(table))  # secondary indexes after the load


def copy_warehouse(source_url: str, target_url: str, masker: Masker | None, *, key_id: str | None = None,
                   min_domain_count: int = DEFAULT_MIN_DOMAIN_COUNT, chunk: int = CHUNK_ROWS,
                   progress: bool = False, replace: bool = False) -> CopySummary:
    """Copy the five tables from source to target, masked by ``masker`` (None: a plain copy)."""
    started = time.perf_counter()
    src = make_engine(source_url)
    dst = make_engine(target_url)
    try:
        require_inputs(src)
        if _same_database(src, dst):
            raise SandboxError("--from and --to are the same database: the sandbox goes into another one")
        _prepare_target(dst, replace)
        rows = dict.fromkeys((t.name for t in TABLES), 0)
        marker = None
        if masker is not None:
            migrations.upgrade(dst)
            marker = SandboxMarker(source=public_url(src), created_at=dt.datetime.now(dt.UTC).replace(
                tzinfo=None, microsecond=0), masking_version=MASKING_VERSION, key_id=key_id or "",
                min_domain_count=min_domain_count, kept_columns=KEPT_COLUMNS, row_counts={})
            write_marker(dst, marker)  # marked before the first row goes in
        maps = transforms(masker) if masker is not None else None
        try:
            with ExitStack() as stack:
                total = sum(row_counts(src).values()) if progress else 0
                advance = progress_bar(stack, total) if progress else None
                with dst.connect() as conn:
                    for table in TABLES:
                        rows[table.name] = _copy_table(src, conn, table, maps[table.name] if maps else None,
                                                       chunk, advance)
                        if masker is not None:
                            masker.forget_ids()
                if masker is not None:
                    if advance is not None:
                        advance(0, "checking for address collisions")
                    before, after = distinct_valid_addresses(src), distinct_valid_addresses(dst)
                    if before != after:
                        raise SandboxError(
                            f"masking would merge distinct addresses ({before:,} valid addresses became "
                            f"{after:,}); nothing was kept: build again with another key")
                if advance is not None:
                    advance(0, "indexing")
                create_indexes(dst)
        except BaseException:
            drop_tables(dst)
            raise
        if marker is not None:
            write_marker(dst, SandboxMarker(**{**marker.__dict__, "row_counts": rows}))
        return CopySummary(source=public_url(src), target=dst.url.render_as_string(hide_password=True),
                           rows=rows, kept_domains=len(masker.kept_domains) if masker else 0,
                           key_id=key_id, seconds=round(time.perf_counter() - started, 3))
    finally:
        src.dispose()
        dst.dispose()


def create_sandbox(source_url: str, target_url: str, key: bytes, *,
                   min_domain_count: int = DEFAULT_MIN_DOMAIN_COUNT, chunk: int = CHUNK_ROWS,
                   progress: bool = False, replace: bool = False) -> CopySummary:
    """Build the sandbox: the source's five tables masked with ``key`` into the target."""
    if min_domain_count < 1:
        raise SandboxError("--min-domain-count must be at least 1 (default 100)")
    src = make_engine(source_url)
    try:
        require_inputs(src)
        domains = kept_domains(src, min_domain_count)
    finally:
        src.dispose()
    return copy_warehouse(source_url, target_url, Masker(key, domains), key_id=sandbox_key_id(key),
                          min_domain_count=min_domain_count, chunk=chunk, progress=progress,
                          replace=replace)
