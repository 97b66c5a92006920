"""`campaignops sandbox create`: a masked copy of a warehouse, streamed in chunks.

The five input tables are read a chunk at a time (a server-side cursor on PostgreSQL),
masked in Python (``campaignops.sandbox.masking``) and written with the target driver's
bulk path (``executemany`` on SQLite, ``COPY`` on PostgreSQL) into session-private
staging tables; each table is then written once into its final place ordered by its
masked key, so not even the physical row order follows production's ids. One chunk is in
memory at a time, with at most two more read and masked ahead by a thread while the
previous ones are written. The sandbox is marked (``co_sandbox``) before the first row goes in.

After the load: no two distinct valid addresses may have become one (checked by distinct
counts in both databases; a collision is a clear error and the tables are dropped), the
data model's indexes are built and the marker gets the row counts.
"""

from __future__ import annotations

import datetime as dt
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateTable

from campaignops import migrations
from campaignops.bulk import BulkInsert
from campaignops.errors import SandboxError, WarehouseError
from campaignops.sandbox.marker import SandboxMarker, read_marker, write_marker
from campaignops.sandbox.masking import MASKING_VERSION, Masker, address_domain
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
T = TypeVar("T")


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


Columns = list[list[Any]]
Transform = Callable[[Columns], Columns]  # a chunk's columns in, masked columns out


def _each(fn: Callable[[Any], Any]) -> Callable[[list[Any]], list[Any]]:
    return lambda values: [fn(v) for v in values]


def _mapper(table: sa.Table, functions: dict[str, Callable[[list[Any]], list[Any]]]) -> Transform:
    masked = [(i, functions[name]) for i, name in enumerate(_columns(table)) if name in functions]

    def transform(cols: Columns) -> Columns:
        out = list(cols)
        for i, fn in masked:
            out[i] = fn(cols[i])
        return out

    return transform


def transforms(m: Masker) -> dict[str, Transform]:
    """The masking of each table, a chunk's columns at a time (columns not named are kept)."""
    ids, email = m.identifiers, _each(m.email)
    channel_at = _columns(suppressions).index("channel")
    address_at = _columns(suppressions).index("address")

    def suppression(cols: Columns) -> Columns:
        out = list(cols)
        out[address_at] = [m.phone(a) if c == "sms" else m.email(a)
                           for c, a in zip(cols[channel_at], cols[address_at], strict=True)]
        return out

    masked = _mapper(customers, {
        "customer_id": ids, "email": email, "first_name": _each(m.first_name),
        "last_name": _each(m.last_name), "household_id": ids})
    phone_at, country_at = _columns(customers).index("phone"), _columns(customers).index("country")

    def customer(cols: Columns) -> Columns:
        out = masked(cols)
        out[phone_at] = [m.phone(p, c) for p, c in zip(cols[phone_at], cols[country_at], strict=True)]
        return out

    return {
        customers.name: customer,
        suppressions.name: suppression,
        contact_history.name: _mapper(contact_history, {"customer_id": ids}),
        offers.name: lambda cols: cols,
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
    """The e-mail domains at least ``min_count`` customers' addresses share (one GROUP BY).

    Counted over every address with an ``@`` (a malformed address still says which domain
    its owner uses); only domains a valid address can have are returned.
    """
    key = _address_key(customers.c.email)
    at = sa.func.strpos(key, "@") if engine.dialect.name == "postgresql" else sa.func.instr(key, "@")
    domain = sa.func.substr(key, at + 1)
    q = (sa.select(domain).where(at > 0).group_by(domain).having(sa.func.count() >= min_count))
    with engine.connect() as conn:
        found = {str(d) for (d,) in conn.execute(q)}
    return {d for d in found if address_domain(f"a@{d}") == d}


def _addresses(normalise: bool) -> Any:
    """Every e-mail address of customers, e-mail suppressions and seed recipients (one column a)."""
    def key(col: Any) -> Any:
        return _address_key(col) if normalise else col

    return sa.union_all(
        sa.select(key(customers.c.email).label("a")),
        sa.select(key(suppressions.c.address).label("a")).where(suppressions.c.channel == "email"),
        sa.select(key(seed_recipients.c.email).label("a")),
    ).subquery("addresses")


def distinct_addresses(engine: Engine, *, masked: bool, valid_only: bool) -> int:
    """Distinct address keys (non-empty; with ``valid_only`` only valid ones) in the database.

    A masked address is valid exactly when it has an ``@`` and is already its own key, so
    the sandbox side needs no address check.
    """
    every = _addresses(normalise=not masked)
    a = every.c.a
    where = (a.like("%@%") if masked else valid_address(a)) if valid_only else sa.and_(a.is_not(None), a != "")
    q = sa.select(sa.func.count(sa.distinct(a))).where(where)
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one())


def _exact(src: Engine) -> bool:
    # SQLite's lower() folds ASCII only, as the masking does, so every non-empty address
    # key is compared; PostgreSQL's folds all of Unicode, so there valid (ASCII) ones are.
    return src.dialect.name == "sqlite"


def distinct_phones(engine: Engine) -> int:
    """Distinct (phone, country) of customers and SMS suppression numbers, as stored.

    The phone masking is one-to-one for each country (a number written with ``+`` is read
    without one), so a sandbox has exactly its source's count unless two numbers collided.
    """
    every = sa.union(
        sa.select(customers.c.phone.label("p"), customers.c.country.label("c")).where(
            customers.c.phone.is_not(None)),
        sa.select(suppressions.c.address.label("p"), sa.null().label("c")).where(
            suppressions.c.channel == "sms"),
    ).subquery("phones")
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(every)).scalar_one())


def source_addresses(src: Engine) -> tuple[int, int]:
    """The source side of the collision check, addresses and phones (run beside the copy)."""
    return distinct_addresses(src, masked=False, valid_only=not _exact(src)), distinct_phones(src)


def check_no_collision(src: Engine, dst: Engine, before: tuple[int, int]) -> None:
    """Refuse when two distinct addresses or phones became one (``before``: source_addresses)."""
    after = distinct_addresses(dst, masked=True, valid_only=not _exact(src))
    if before[0] != after:
        raise SandboxError(
            f"masking would merge distinct addresses ({before[0]:,} distinct addresses became "
            f"{after:,}); nothing was kept: build again with another key")
    phones = distinct_phones(dst)
    if before[1] != phones:
        raise SandboxError(
            f"masking would merge distinct phone numbers ({before[1]:,} distinct numbers became "
            f"{phones:,}); nothing was kept: build again with another key")


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows of each of the five input tables."""
    with engine.connect() as conn:
        return {t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for t in TABLES}


# -- writing ----------------------------------------------------------------------------
def _stage_table(table: sa.Table) -> sa.Table:
    return sa.Table(f"co_stage_{table.name}", sa.MetaData(),
                    *(sa.Column(c.name, c.type) for c in table.columns), prefixes=["TEMPORARY"])


def _read(src: Engine, table: sa.Table, chunk: int) -> Iterator[list[Row]]:
    """The table's rows as the driver returns them (no type processing), a chunk at a time."""
    sql = str(sa.select(table).compile(dialect=src.dialect))
    with src.connect() as conn:
        result = conn.execution_options(stream_results=True, max_row_buffer=chunk).exec_driver_sql(sql)
        while True:  # the Result's own fetch: a server-side cursor has rows buffered already
            rows = result.fetchmany(chunk)
            if not rows:
                break
            yield [tuple(r) for r in rows]
        result.close()


# SQLite page cache while a staged table is sorted into place, in KiB (as segmentation's).
SQLITE_SORT_CACHE_KIB = 32 * 1024


def _chunks(src: Engine, maps: dict[str, Transform] | None, chunk: int) -> Iterator[tuple[str, list[Row]]]:
    """Every table's rows, read and masked a chunk at a time; an empty chunk ends a table."""
    for table in TABLES:
        transform = maps[table.name] if maps is not None else None
        for rows in _read(src, table, chunk):
            if transform is not None:
                rows = list(zip(*transform([list(c) for c in zip(*rows, strict=True)]), strict=True))
            yield table.name, rows
        yield table.name, []


_DONE = object()


def _ahead(items: Iterator[T], depth: int = 2) -> Generator[T, None, None]:
    """The items in order, produced by a thread at most ``depth`` ahead of the caller.

    Reading and masking (Python) overlap the writes and the ordering into place (SQLite's
    C code, which lets go of the GIL; PostgreSQL's server). An error in the thread is raised
    here; when the caller stops early the thread stops at its next item.
    """
    out: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    break
            put(_DONE)
        except BaseException as exc:  # handed to the caller, raised there
            put(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="sandbox-read-mask", daemon=True)
    worker.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def _copy_table(conn: Connection, table: sa.Table, chunks: Iterator[tuple[str, list[Row]]],
                masked: bool, processed: bool, advance: Callable[[int, str], None] | None) -> int:
    """Write one table's chunks (masked ones staged, then ordered into place); rows written."""
    into = _stage_table(table) if masked else table
    if masked:
        into.create(conn)
        conn.commit()
    # values arrive as the source's driver returned them: SQLite to SQLite written as stored
    # (the text of dates and timestamps kept exactly), from elsewhere through bind processing
    writer = BulkInsert(conn, into, processed=processed)
    written = 0
    for name, rows in chunks:
        if name != table.name:
            raise SandboxError(f"internal: rows of {name} arrived while copying {table.name}")
        if not rows:
            break
        writer.write(rows)
        conn.commit()
        written += len(rows)
        if advance is not None:
            advance(len(rows), f"{'masking' if masked else 'copying'} {table.name}")
    if masked:
        if advance is not None:
            advance(0, f"ordering {table.name} by its masked key")
        order = [into.c[name] for name in _ORDER[table.name]]
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(f"PRAGMA cache_size = -{SQLITE_SORT_CACHE_KIB}")
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
                # The source's distinct addresses are counted beside the copy (another core).
                pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
                source_count = pool.submit(source_addresses, src) if masker is not None else None
                total = sum(row_counts(src).values()) if progress else 0
                advance = progress_bar(stack, total) if progress else None
                chunks = stack.enter_context(closing(_ahead(_chunks(src, maps, chunk))))
                with dst.connect() as conn:
                    for table in TABLES:
                        rows[table.name] = _copy_table(conn, table, chunks, masker is not None,
                                                       src.dialect.name != "sqlite", advance)
                if masker is not None:
                    if advance is not None:
                        advance(0, "checking for address and phone collisions")
                    check_no_collision(src, dst, source_count.result() if source_count else (0, 0))
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
