"""`campaignops sandbox check`: the proof that a sandbox counts like production and holds nobody.

Every figure is computed inside each database (counts, GROUP BYs, ordered streams); the
search for production values merges two sorted streams (production's e-mails, phones and
names; every text value of the sandbox) so memory stays flat. Nothing printed names a value.

- each input table's row count equal;
- each kept customers column: nulls equal and, for categories, every value's frequency
  equal (for dates and numbers: distinct count, minimum, maximum); the other tables' kept
  category columns likewise; masked columns keep their null and empty counts;
- no production e-mail, phone or name (exact, case-insensitive) anywhere in the sandbox's
  text columns;
- k-anonymity over the quasi-identifiers, reported (not enforced): the smallest group of
  customers sharing country, region, language, signup_date, lifecycle_stage, loyalty_tier.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops.errors import SandboxError
from campaignops.sandbox.create import TABLES, row_counts
from campaignops.sandbox.marker import SandboxMarker, read_marker
from campaignops.schema import contact_history, customers, seed_recipients, suppressions
from campaignops.warehouse import make_engine, require_inputs

CATEGORIES = {
    customers.name: ("country", "region", "language", "lifecycle_stage", "loyalty_tier",
                     "email_opt_in", "sms_opt_in"),
    suppressions.name: ("channel", "reason"),
    contact_history.name: ("campaign_id", "run_id", "channel", "cell", "offer_code"),
}
RANGES = {
    customers.name: ("signup_date", "lead_score", "lifetime_value", "last_purchase_at", "last_open_at"),
    suppressions.name: ("created_at",),
    contact_history.name: ("sent_at",),
}
MASKED_PRESENCE = (("customers", "email"), ("customers", "phone"), ("customers", "first_name"),
                   ("customers", "last_name"), ("customers", "household_id"))
QUASI_IDENTIFIERS = ("country", "region", "language", "signup_date", "lifecycle_stage", "loyalty_tier")
K_SMALL = 5  # groups smaller than this are reported


@dataclass(frozen=True)
class Finding:
    """One comparison: what it measures, the two figures, and whether they agree."""

    check: str
    production: str
    sandbox: str
    ok: bool


@dataclass
class CheckReport:
    """The whole proof (counts only, never a value of a person)."""

    marker: SandboxMarker
    findings: list[Finding] = field(default_factory=list)
    leaks: dict[str, int] = field(default_factory=dict)  # kind -> production values found in the sandbox
    k_anonymity: int = 0
    groups: int = 0
    customers_in_small_groups: int = 0

    @property
    def ok(self) -> bool:
        """Every comparison agrees and no production value was found."""
        return all(f.ok for f in self.findings) and not any(self.leaks.values())

    @property
    def failed(self) -> list[Finding]:
        """The comparisons that disagree."""
        return [f for f in self.findings if not f.ok]


def _frequencies(engine: Engine, table: sa.Table, column: str) -> dict[Any, int]:
    col = table.c[column]
    with engine.connect() as conn:
        return {v: int(n) for v, n in conn.execute(sa.select(col, sa.func.count()).group_by(col))}


def _range(engine: Engine, table: sa.Table, column: str) -> tuple[Any, ...]:
    col = table.c[column]
    q = sa.select(sa.func.count(col), sa.func.count(sa.distinct(col)), sa.func.min(col), sa.func.max(col))
    with engine.connect() as conn:
        return tuple(conn.execute(q).one())


def _presence(engine: Engine, table: sa.Table, column: str) -> tuple[int, int]:
    col = table.c[column]
    blank = sa.func.trim(col) == "" if isinstance(col.type, sa.String) else sa.false()
    q = sa.select(sa.func.count().filter(col.is_(None)), sa.func.count().filter(blank))
    with engine.connect() as conn:
        nulls, blanks = conn.execute(q).one()
    return int(nulls), int(blanks or 0)


def _production_parts() -> list[Any]:
    s = suppressions
    return [
        sa.select(customers.c.email.label("v"), sa.literal("email").label("tag")),
        sa.select(s.c.address.label("v"), sa.literal("email").label("tag")).where(s.c.channel == "email"),
        sa.select(s.c.address.label("v"), sa.literal("phone").label("tag")).where(s.c.channel != "email"),
        sa.select(seed_recipients.c.email.label("v"), sa.literal("email").label("tag")),
        sa.select(customers.c.phone.label("v"), sa.literal("phone").label("tag")),
        sa.select(customers.c.first_name.label("v"), sa.literal("name").label("tag")),
        sa.select(customers.c.last_name.label("v"), sa.literal("name").label("tag")),
    ]


def _sandbox_parts() -> list[Any]:
    parts = []
    for t in TABLES:
        for c in t.columns:
            if isinstance(c.type, sa.String):
                parts.append(sa.select(c.label("v"), sa.literal(f"{t.name}.{c.name}").label("tag")))
    return parts


def _stream(engine: Engine, parts: list[Any]) -> Iterator[tuple[str, str]]:
    every = sa.union_all(*parts).subquery("vals")
    v = sa.func.lower(sa.func.trim(every.c.v))
    # code-point order in both (PostgreSQL's default collation is the locale's)
    k = (v.collate("C") if engine.dialect.name == "postgresql" else v).label("k")
    q = sa.select(k, every.c.tag).where(every.c.v.is_not(None), v != "").distinct().order_by(k)
    with engine.connect() as conn:
        for k, tag in conn.execution_options(stream_results=True, yield_per=20_000).execute(q):
            yield str(k), str(tag)


def find_production_values(prod: Engine, sandbox: Engine) -> dict[str, int]:
    """How many distinct production e-mails, phones and names occur in the sandbox's text columns."""
    hits = {"email": 0, "phone": 0, "name": 0}
    merged = heapq.merge(((k, 0, tag) for k, tag in _stream(prod, _production_parts())),
                         ((k, 1, tag) for k, tag in _stream(sandbox, _sandbox_parts())))
    current: str | None = None
    kinds: set[str] = set()
    in_sandbox = False
    for k, side, tag in merged:
        if k != current:
            if in_sandbox:
                for kind in kinds:
                    hits[kind] += 1
            current, kinds, in_sandbox = k, set(), False
        if side == 0:
            kinds.add(tag)
        else:
            in_sandbox = True
    if in_sandbox:
        for kind in kinds:
            hits[kind] += 1
    return hits


def k_anonymity(engine: Engine) -> tuple[int, int, int]:
    """(smallest group, groups, customers in groups under K_SMALL) over the quasi-identifiers."""
    cols = [customers.c[c] for c in QUASI_IDENTIFIERS]
    groups = sa.select(sa.func.count().label("n")).select_from(customers).group_by(*cols).subquery("g")
    q = sa.select(sa.func.min(groups.c.n), sa.func.count(),
                  sa.func.coalesce(sa.func.sum(sa.case((groups.c.n < K_SMALL, groups.c.n), else_=0)), 0))
    with engine.connect() as conn:
        smallest, count, small = conn.execute(q).one()
    return int(smallest or 0), int(count), int(small)


def _fmt(value: Any) -> str:
    return str(value) if not isinstance(value, tuple) else ", ".join(str(v) for v in value)


def check_sandbox(source_url: str, target_url: str) -> CheckReport:
    """Compare production and its sandbox; the report says what agrees (nothing is enforced here)."""
    prod, sand = make_engine(source_url), make_engine(target_url)
    try:
        require_inputs(prod)
        require_inputs(sand)
        marker = read_marker(sand)
        if marker is None:
            raise SandboxError(
                f"{sand.url.render_as_string(hide_password=True)} is not a sandbox (no co_sandbox "
                "marker): build one with `campaignops sandbox create`")
        report = CheckReport(marker=marker)
        add = report.findings.append
        a, b = row_counts(prod), row_counts(sand)
        for t in TABLES:
            add(Finding(f"rows {t.name}", f"{a[t.name]:,}", f"{b[t.name]:,}", a[t.name] == b[t.name]))
        by_name = {t.name: t for t in TABLES}
        for tname, cols in CATEGORIES.items():
            for c in cols:
                fa, fb = _frequencies(prod, by_name[tname], c), _frequencies(sand, by_name[tname], c)
                same = fa == fb
                add(Finding(f"frequencies {tname}.{c}", f"{len(fa)} values, {fa.get(None, 0):,} null",
                            f"{len(fb)} values, {fb.get(None, 0):,} null", same))
        for tname, cols in RANGES.items():
            for c in cols:
                ra, rb = _range(prod, by_name[tname], c), _range(sand, by_name[tname], c)
                add(Finding(f"non-null, distinct, min, max {tname}.{c}", _fmt(ra), _fmt(rb), ra == rb))
        for tname, c in MASKED_PRESENCE:
            pa, pb = _presence(prod, by_name[tname], c), _presence(sand, by_name[tname], c)
            add(Finding(f"null, blank {tname}.{c} (masked)", _fmt(pa), _fmt(pb), pa == pb))
        report.leaks = find_production_values(prod, sand)
        report.k_anonymity, report.groups, report.customers_in_small_groups = k_anonymity(sand)
        return report
    finally:
        prod.dispose()
        sand.dispose()
