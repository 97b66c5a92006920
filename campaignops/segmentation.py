"""Segmentation: the brief's rules and exclusion waterfall as one SQL statement.

Everything runs inside the warehouse. One ``INSERT ... SELECT`` materialises
every customer that matches the brief's rules into ``co_audience`` with its
outcome: ``send`` (with its cell), ``control``, or ``excluded`` with the first
reason that applies, in waterfall order:

    no_consent -> invalid_address -> suppressed_<reason> -> frequency_cap
    -> missing_<field> -> duplicate_address

then the control draw and the cell split, both from a hash of the address and
the brief's salt. Seed recipients are added last. Counts come from one
``GROUP BY`` over the run's rows.

An SMS brief runs the same statement keyed by the phone number in E.164 instead
of the address: consent is ``sms_opt_in``, ``invalid_phone`` replaces
``invalid_address`` and ``duplicate_phone`` ``duplicate_address``. The numbers are
normalised in Python (phonenumbers) into ``co_sms_phones`` first, page by page,
and the statement joins them (docs/sms.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from campaignops import audit, corrections, runs, watch
from campaignops.brief import Brief
from campaignops.errors import CampaignOpsError
from campaignops.lifecycle import trigger
from campaignops.rules import compile_rule
from campaignops.schema import (
    audience,
    contact_history,
    customers,
    holdout_contacts,
    seed_recipients,
    sms_phones,
    suppressions,
)
from campaignops.sms import e164
from campaignops.sql import bucket, sqlite_cache, valid_address
from campaignops.warehouse import Warehouse

SYSTEM = "campaignops"

# Suppression reasons in waterfall order (the first that applies is recorded).
SUPPRESSION_REASONS = ("legal_hold", "do_not_contact", "complaint", "hard_bounce", "unsubscribe")
CELL_SALT_SUFFIX = ":cells"
ALREADY_CORRECTED = "already_corrected"
BUCKETS = 10000

WATERFALL_STEPS = (
    ("no_consent", "no email consent"),
    ("invalid_address", "missing or invalid address"),
    *((f"suppressed_{r}", f"suppression list: {r.replace('_', ' ')}") for r in SUPPRESSION_REASONS),
    ("frequency_cap", "over the frequency cap"),
)
SMS_WATERFALL_STEPS = (
    ("no_consent", "no sms consent"),
    ("invalid_phone", "missing phone, or not a valid number for the customer's country"),
    *WATERFALL_STEPS[2:],
)
DUPLICATE_STEP = {"email": ("duplicate_address", "duplicate address (lowest customer_id kept)"),
                  "sms": ("duplicate_phone", "duplicate phone number (lowest customer_id kept)")}
# Customers (and suppression addresses) normalised per page when staging an SMS run's phones.
PHONE_PAGE = 10_000


@dataclass
class Waterfall:
    """The counts of one segmentation, step by step (no personal data)."""

    run_id: str
    campaign_id: str
    matched: int
    steps: list[dict[str, Any]] = field(default_factory=list)
    eligible: int = 0
    control: int = 0
    cells: dict[str, int] = field(default_factory=dict)
    seeds: int = 0
    recipients: int = 0
    seconds: float = 0.0
    audience_digest: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)



def _address_key(col: Any) -> Any:
    return sa.func.lower(sa.func.trim(col))


def rule_filter(brief: Brief, as_of: dt.datetime) -> Any:
    """The WHERE clause of the brief's include and exclude rules over customers."""
    include = brief.include_rule
    where = sa.true() if include is None else compile_rule(include, as_of)
    if brief.exclude_rule is not None:
        where = sa.and_(where, sa.not_(compile_rule(brief.exclude_rule, as_of)))
    source = corrections.source_filter(brief)  # a correction: from_run or missed_by
    if source is None:
        source = trigger.entry_filter(brief)  # a stage-triggered campaign: each entry once
    return where if source is None else sa.and_(where, source)


def _priority(reason: Any) -> Any:
    """A suppression reason's index in the waterfall (unknown reasons rank last)."""
    return sa.case(
        *((reason == r, i) for i, r in enumerate(SUPPRESSION_REASONS)),
        else_=len(SUPPRESSION_REASONS) - 1,
    )


def suppression_priority(channel: str) -> Any:
    """Subquery (k, p): each suppressed address key and its highest-priority reason's index."""
    prio = _priority(suppressions.c.reason)
    return (
        sa.select(_address_key(suppressions.c.address).label("k"), sa.func.min(prio).label("p"))
        .where(suppressions.c.channel == channel)
        .group_by(_address_key(suppressions.c.address))
        .subquery("supp")
    )


def history_probe(wh: Warehouse) -> bool:
    """Whether the cap should probe contact history per customer (see frequency_cap_check)."""
    return wh.dialect == "sqlite" and wh.has_index_led_by(contact_history.name, "customer_id")


def frequency_cap_check(brief: Brief, as_of: dt.datetime, probe: bool) -> tuple[Any, list[Any]]:
    """The over-the-cap condition for a customers row, plus the joins it needs.

    A contact is a send in contact_history or a holdout's would-be send in
    co_holdout_contacts: the holdout is capped exactly as the treated are, so the two stay
    comparable across recurring runs (and the control share holds).
    """
    cap = brief.effective_frequency_cap
    assert cap is not None
    c = customers
    h = holdout_contacts
    since = as_of - dt.timedelta(days=cap.per_days)
    in_window = sa.and_(contact_history.c.channel == brief.channel, contact_history.c.sent_at >= since)
    held_in_window = sa.and_(h.c.channel == brief.channel, h.c.contacted_at >= since)
    if probe:
        # SQLite with an index led by contact_history.customer_id: a correlated count
        # probing it, evaluated only for rows that reach this step. Customers are scanned
        # in customer_id order, so the probes walk the index forwards: at 10M customers
        # 0.8 s against 3.4 s for aggregating the window (3.2M rows) and probing an
        # automatic index built on it. Without such an index each probe would be a scan.
        # co_holdout_contacts has its own index led by customer_id.
        sent = (
            sa.select(sa.func.count())
            .where(contact_history.c.customer_id == c.c.customer_id, in_window)
            .scalar_subquery()
        )
        held = (
            sa.select(sa.func.count())
            .where(h.c.customer_id == c.c.customer_id, held_in_window)
            .scalar_subquery()
        )
        return sent + held >= cap.max_messages, []
    # PostgreSQL (and others): one aggregate over the window, hash-joined; a probe per
    # customer was 7 % slower on PostgreSQL once the index outgrew shared buffers.
    # SQLite without the index: the same aggregate, with an automatic index on it.
    contacts = sa.union_all(
        sa.select(contact_history.c.customer_id.label("cid")).where(in_window),
        sa.select(h.c.customer_id.label("cid")).where(held_in_window),
    ).subquery("contacts")
    hist = (
        sa.select(contacts.c.cid, sa.func.count().label("n"))
        .group_by(contacts.c.cid)
        .subquery("hist")
    )
    return sa.func.coalesce(hist.c.n, 0) >= cap.max_messages, [(hist, hist.c.cid == c.c.customer_id)]


@dataclass(frozen=True)
class ChannelKey:
    """What a channel keys its audience on: the recipient's key, consent, validity, suppressions."""

    key: Any  # address_key: lower(trim(email)), or the staged E.164 number
    email: Any  # what lands in co_audience.email (null for SMS)
    consent: Any  # the opt-in column
    invalid: tuple[Any, str]  # (condition, reason)
    supp: Any  # subquery (k, p) of suppressed keys
    joins: list[Any]  # (subquery, on) to outer-join before the suppressions
    steps: tuple[tuple[str, str], ...]


def channel_key(brief: Brief, run_id: str) -> ChannelKey:
    """The channel's key and checks, as SQL over customers."""
    c = customers
    if brief.channel == "sms":
        ph = (sa.select(sms_phones.c.customer_id, sms_phones.c.e164)
              .where(sms_phones.c.run_id == run_id, sms_phones.c.customer_id.is_not(None))
              .subquery("ph"))
        staged = (sa.select(sms_phones.c.e164.label("k"), sa.func.min(_priority(sms_phones.c.reason)).label("p"))
                  .where(sms_phones.c.run_id == run_id, sms_phones.c.customer_id.is_(None),
                         sms_phones.c.e164.is_not(None))
                  .group_by(sms_phones.c.e164)
                  .subquery("supp"))
        return ChannelKey(ph.c.e164, sa.null(), c.c.sms_opt_in, (ph.c.e164.is_(None), "invalid_phone"),
                          staged, [(ph, ph.c.customer_id == c.c.customer_id)], SMS_WATERFALL_STEPS)
    key = _address_key(c.c.email)
    return ChannelKey(key, sa.func.trim(c.c.email), c.c.email_opt_in,
                      (sa.or_(key.is_(None), sa.not_(valid_address(key))), "invalid_address"),
                      suppression_priority(brief.channel), [], WATERFALL_STEPS)


def _reason_case(
    brief: Brief, as_of: dt.datetime, probe_history: bool, ck: ChannelKey,
    correcting: tuple[str, str] | None = None
) -> tuple[Any, list[tuple[str, str]], list[Any]]:
    """The CASE expression giving the first exclusion reason (or NULL), plus joins;
    correcting: (incident, run) of a correction run, whose earlier corrections are left out."""
    c = customers
    whens: list[tuple[Any, str]] = []
    steps: list[tuple[str, str]] = []
    if correcting is not None:
        whens.append((corrections.already_corrected(*correcting), ALREADY_CORRECTED))
        steps.append((ALREADY_CORRECTED, "already reached by an earlier correction of the incident"))
    whens += [
        (sa.not_(sa.func.coalesce(ck.consent, sa.false())), "no_consent"),
        ck.invalid,
    ]
    steps += list(ck.steps)
    supp = ck.supp
    for i, r in enumerate(SUPPRESSION_REASONS):
        whens.append((supp.c.p == i, f"suppressed_{r}"))
    joins: list[Any] = [*ck.joins, (supp, supp.c.k == ck.key)]
    if brief.effective_frequency_cap is not None:
        over_cap, cap_joins = frequency_cap_check(brief, as_of, probe_history)
        whens.append((over_cap, "frequency_cap"))
        joins += cap_joins
    for f in brief.content.required_fields:
        if f in brief.content.fallbacks:
            continue
        col = c.c[f]
        whens.append((sa.or_(col.is_(None), sa.func.trim(col) == ""), f"missing_{f}"))
        steps.append((f"missing_{f}", f"missing personalisation field {f}"))
    return sa.case(*whens, else_=sa.null()), steps, joins


AUDIENCE_COLUMNS = (
    "run_id", "customer_id", "email", "address_key", "first_name", "last_name", "language",
    "country", "loyalty_tier", "outcome", "reason", "cell", "offer_code", "is_seed", "lifecycle_stage",
)


@dataclass(frozen=True)
class AudienceQuery:
    """The segmentation SQL in its stages (the benchmark times them one by one)."""

    considered: Any  # every rule match with its first exclusion reason (or NULL)
    ranked: Any  # plus the de-dup rank and the two draws
    rows: Any  # the co_audience rows, in AUDIENCE_COLUMNS order
    steps: list[tuple[str, str]]


def audience_query(
    brief: Brief, run_id: str, as_of: dt.datetime, probe_history: bool = False,
    incident_id: str | None = None,
) -> AudienceQuery:
    """Build (not run) the INSERT ... SELECT source of a segmentation (of a correction of
    the incident when given)."""
    c = customers
    ck = channel_key(brief, run_id)
    key = ck.key
    reason_expr, steps, joins = _reason_case(
        brief, as_of, probe_history, ck, None if incident_id is None else (incident_id, run_id))

    where = rule_filter(brief, as_of)

    src: Any = c
    for sub, on in joins:
        src = src.outerjoin(sub, on)
    considered = (
        sa.select(
            c.c.customer_id,
            ck.email.label("email"),
            key.label("address_key"),
            c.c.first_name,
            c.c.last_name,
            c.c.language,
            c.c.country,
            c.c.loyalty_tier,
            c.c.lifecycle_stage,
            reason_expr.label("reason"),
        )
        .select_from(src)
        .where(where)
        # OFFSET 0 keeps this a separate step: SQLite would otherwise flatten it into
        # the window query and evaluate the reason CASE (address regexp and all) twice.
        .offset(0)
        .subquery("considered")
    )
    k = considered.c
    # De-duplication by address: among eligible customers sharing an address the
    # lowest customer_id (the longest-standing record) wins, stable across runs.
    rank = sa.func.row_number().over(
        partition_by=(k.address_key, k.reason.is_(None)), order_by=k.customer_id
    )
    # The two draws are computed here, once per row and only for rows not already
    # excluded: this level holds the window function, so neither database inlines
    # its columns into the outer CASEs (which would hash each address up to 7 times).
    salt = brief.control_group.salt
    ranked = sa.select(
        *k,
        rank.label("rn"),
        sa.case((k.reason.is_(None), bucket(k.address_key, sa.literal(salt))), else_=sa.null())
        .label("control_draw"),
        sa.case((k.reason.is_(None), bucket(k.address_key, sa.literal(salt + CELL_SALT_SUFFIX))),
                else_=sa.null()).label("cell_draw"),
    ).subquery("ranked")
    r = ranked.c
    final_reason = sa.case(
        (r.reason.is_not(None), r.reason),
        (r.rn > 1, DUPLICATE_STEP[brief.channel][0]),
        else_=sa.null(),
    )
    control_cut = round(brief.control_group.percent * BUCKETS / 100)
    control_draw = r.control_draw
    cell_draw = r.cell_draw
    bounds: list[tuple[int, str, str | None]] = []
    acc = 0.0
    for cell in brief.cells:
        acc += cell.percent
        bounds.append((round(acc * BUCKETS / 100), cell.name, cell.offer_code))
    bounds[-1] = (BUCKETS, bounds[-1][1], bounds[-1][2])
    eligible = sa.and_(r.reason.is_(None), r.rn == 1)
    is_control = sa.and_(eligible, control_draw < control_cut)
    is_send = sa.and_(eligible, control_draw >= control_cut)
    cell_name = sa.case(*((cell_draw < b, name) for b, name, _ in bounds), else_=sa.null())
    cell_offer = sa.case(
        *((cell_draw < b, sa.literal(offer, sa.String)) for b, _, offer in bounds), else_=sa.null()
    )
    outcome = sa.case((is_send, "send"), (is_control, "control"), else_="excluded")
    insert_rows = sa.select(
        sa.literal(run_id).label("run_id"),
        r.customer_id,
        r.email,
        r.address_key,
        r.first_name,
        r.last_name,
        r.language,
        r.country,
        r.loyalty_tier,
        outcome.label("outcome"),
        final_reason.label("reason"),
        sa.case((is_send, cell_name), else_=sa.null()).label("cell"),
        sa.case((is_send, cell_offer), else_=sa.null()).label("offer_code"),
        sa.false().label("is_seed"),
        r.lifecycle_stage,
    )
    return AudienceQuery(considered, ranked, insert_rows, steps)


# SQLite page cache (and so sorter memory) for the segmentation's connection while it
# runs, in KiB. With the default 2 MB, once a run's rows outgrow it every insert into
# co_audience's second index and the window sort go through the file: at 10M customers
# 51 s of CPU; 41 s with 32 MB (peak RSS 152 MB); 64 and 128 MB were no faster.
SQLITE_CACHE_KIB = 32 * 1024


@contextmanager
def one_pass_settings(conn: Connection) -> Iterator[None]:
    """Session settings for one big INSERT ... SELECT, restored afterwards."""
    if conn.dialect.name == "postgresql":
        # JIT compiles for ~1 s and then buys nothing measurable for this one pass
        # (measured at 1M and 10M customers); SET LOCAL ends with the transaction.
        conn.exec_driver_sql("SET LOCAL jit = off")
        # Straight after a bulk load the warehouse has no planner statistics: PostgreSQL then
        # guesses one matching customer and may repeat the frequency-cap aggregate for each
        # of them (measured: 35 s instead of 0.16 s at 100,000 customers). Every join here
        # reads its whole input once, so hash joins are right whatever the estimates say.
        conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
        yield
    elif conn.dialect.name == "sqlite":
        with sqlite_cache(conn, SQLITE_CACHE_KIB):
            yield
    else:
        yield


def segment(wh: Warehouse, brief: Brief, run_id: str, as_of: dt.datetime,
            incident_id: str | None = None) -> Waterfall:
    """Materialise the run's audience in co_audience and return its waterfall."""
    started = time.perf_counter()
    query = audience_query(brief, run_id, as_of, history_probe(wh), incident_id)
    cols = list(AUDIENCE_COLUMNS)
    seeds = sa.select(
        sa.literal(run_id),
        sa.null(),
        seed_recipients.c.email,
        _address_key(seed_recipients.c.email),
        sa.null(), sa.null(), sa.null(), sa.null(), sa.null(),
        sa.literal("seed"),
        sa.null(),
        sa.null(),
        sa.null(),
        sa.true(),
        sa.null(),
    )
    trigger.prepare(wh.engine, brief)
    with wh.engine.begin() as conn, one_pass_settings(conn):
        trigger.serialise(conn, brief, run_id)  # one segmentation of a stage-triggered campaign at a time
        conn.execute(sa.delete(audience).where(audience.c.run_id == run_id))
        if brief.channel == "sms":
            stage_phones(conn, brief, run_id, as_of)
        conn.execute(sa.insert(audience).from_select(cols, query.rows))
        if brief.channel == "email":  # seed recipients are addresses: an SMS run has none yet
            conn.execute(sa.insert(audience).from_select(cols, seeds))
        counts = conn.execute(
            sa.select(audience.c.outcome, audience.c.reason, audience.c.cell, sa.func.count())
            .where(audience.c.run_id == run_id)
            .group_by(audience.c.outcome, audience.c.reason, audience.c.cell)
        ).all()
    return _waterfall(brief, run_id, counts, query.steps, time.perf_counter() - started)


def _waterfall(
    brief: Brief, run_id: str, counts: Sequence[Any], steps: list[tuple[str, str]], seconds: float
) -> Waterfall:
    by_reason: dict[str, int] = {}
    cells = {c.name: 0 for c in brief.cells}
    control = seeds = matched = 0
    for outcome, reason, cell, n in counts:
        if outcome == "seed":
            seeds += n
            continue
        matched += n
        if outcome == "excluded":
            by_reason[reason] = by_reason.get(reason, 0) + n
        elif outcome == "control":
            control += n
        elif outcome == "send":
            cells[cell] = cells.get(cell, 0) + n
    wf = Waterfall(run_id=run_id, campaign_id=brief.campaign_id, matched=matched)
    remaining = matched
    for code, label in [*steps, DUPLICATE_STEP[brief.channel]]:
        removed = by_reason.get(code, 0)
        remaining -= removed
        wf.steps.append({"reason": code, "label": label, "removed": removed, "remaining": remaining})
    wf.eligible = remaining
    wf.control = control
    wf.cells = cells
    wf.seeds = seeds
    wf.recipients = sum(cells.values()) + seeds
    wf.seconds = round(seconds, 3)
    return wf


def segment_audience(wh: Warehouse, run_id: str) -> Waterfall:
    """The segmentation step: the run's audience materialised, digested, counted and audited."""
    run = runs.get_run(wh.engine, run_id)
    incident_id = corrections.incident_of(wh.engine, run_id)
    wf = segment(wh, run.brief, run_id, run.as_of, incident_id)
    if incident_id is not None and not run.dry_run and not any(wf.cells.values()):
        already = next((s["removed"] for s in wf.steps if s["reason"] == ALREADY_CORRECTED), 0)
        raise corrections.nobody_left(wh.engine, run_id, incident_id, int(already))
    watch.record(wh.engine, run_id)  # composition and churn since the previous sent run, in SQL
    wf.audience_digest = audience_digest(wh.engine, run_id)
    runs.set_status(wh.engine, run_id, runs.SEGMENTED, audience_digest=wf.audience_digest,
                    recipients=wf.recipients)
    audit.append(wh.engine, run_id=run_id, step="segmentation", action="materialised", actor=SYSTEM,
                 details=wf.as_dict() | {"table": "co_audience"})
    return wf


def recorded_waterfall(engine: Engine, run_id: str) -> Waterfall:
    """The run's waterfall as its segmentation audit record holds it."""
    rec = audit.latest(engine, run_id, "segmentation", ("materialised",))
    if rec is None or not audit.genuine(rec):
        raise CampaignOpsError(f"run {run_id} has no signed segmentation record: segment the audience first")
    fields = {f.name for f in dataclasses.fields(Waterfall)}
    return Waterfall(**{k: v for k, v in rec.details.items() if k in fields})


def count_floor(engine: Engine, brief: Brief, as_of: dt.datetime) -> int:
    """The bare single SQL count of the brief's rules: the benchmark's floor."""
    where = rule_filter(brief, as_of)
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(customers).where(where)).scalar_one())


def count_sends(wh: Warehouse, brief: Brief, as_of: dt.datetime,
                incident_id: str | None = None) -> int:
    """How many customers the brief would send to now (the segmentation's SQL, counted in the
    warehouse, nothing materialised or registered; as a new correction of the incident when
    given); what expected_audience bounds."""
    rows = audience_query(brief, "count", as_of, history_probe(wh),
                          incident_id).rows.subquery("rows")
    with wh.engine.connect() as conn:
        if brief.channel == "sms":  # staged for the count only, then rolled back
            stage_phones(conn, brief, "count", as_of)
        n = int(conn.execute(
            sa.select(sa.func.count()).select_from(rows).where(rows.c.outcome == "send")
        ).scalar_one())
        conn.rollback()
        return n


def stage_phones(conn: Connection, brief: Brief, run_id: str, as_of: dt.datetime,
                 page: int = PHONE_PAGE) -> int:
    """Fill co_sms_phones for the run: rule matches' phones and sms suppressions as E.164.

    Page by page (keyset on customer_id, then on the suppression address), so no more
    than `page` numbers are in Python at once. Returns the customers staged.
    """
    c = customers
    conn.execute(sa.delete(sms_phones).where(sms_phones.c.run_id == run_id))
    where = sa.and_(rule_filter(brief, as_of), c.c.phone.is_not(None))
    last: int | None = None
    staged = 0
    while True:
        q = sa.select(c.c.customer_id, c.c.phone, c.c.country).where(where)
        if last is not None:
            q = q.where(c.c.customer_id > last)
        rows = conn.execute(q.order_by(c.c.customer_id).limit(page)).all()
        if not rows:
            break
        conn.execute(sa.insert(sms_phones), [
            {"run_id": run_id, "customer_id": cid, "e164": e164(phone, country), "reason": None}
            for cid, phone, country in rows])
        staged += len(rows)
        last = rows[-1][0]
    # Suppressions: one row per distinct trimmed address with its first reason in the waterfall;
    # a suppression written without a country code can only be read as international (+...).
    addr = sa.func.trim(suppressions.c.address)
    prio = sa.func.min(_priority(suppressions.c.reason))
    after: str | None = None
    while True:
        sq = sa.select(addr.label("a"), prio).where(suppressions.c.channel == "sms")
        if after is not None:
            sq = sq.where(addr > after)
        srows = conn.execute(sq.group_by(addr).order_by(addr).limit(page)).all()
        if not srows:
            break
        conn.execute(sa.insert(sms_phones), [
            {"run_id": run_id, "customer_id": None, "e164": e164(a, None), "reason": SUPPRESSION_REASONS[p]}
            for a, p in srows])
        after = srows[-1][0]
    return staged


def size_warning(brief: Brief, sends: int) -> str | None:
    """One line when the send count falls outside the brief's expected_audience, else None."""
    lo, hi = brief.expected_audience.min, brief.expected_audience.max
    if lo <= sends <= hi:
        return None
    side = "below" if sends < lo else "above"
    hint = (" (a value that matches no customer, e.g. a misspelt country or stage, empties it)"
            if sends == 0 else "")
    return (f"warning: {sends:,} send recipients is {side} the brief's expected_audience "
            f"{lo:,}..{hi:,}{hint}; QA would block this run: check the rules, or the expected "
            "range (docs/segmentation.md#counting-a-campaign-campaignops-run-brief---dry-run)")


def audience_digest(engine: Engine, run_id: str) -> str:
    """SHA-256 over the run's recipients in handoff order, streamed."""
    h = hashlib.sha256()
    q = (
        sa.select(audience.c.customer_id, audience.c.address_key, audience.c.cell, audience.c.offer_code)
        .where(audience.c.run_id == run_id, audience.c.outcome.in_(("send", "seed")))
        .order_by(audience.c.is_seed, audience.c.customer_id, audience.c.address_key)
    )
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=10000).execute(q):
            h.update(f"{row[0]}|{row[1]}|{row[2]}|{row[3]}\n".encode())
    return h.hexdigest()


def sample_rows(engine: Engine, run_id: str, limit: int = 5) -> list[dict[str, Any]]:
    """A few recipients with personal data masked, for the approval packet."""
    q = (
        sa.select(audience.c.customer_id, audience.c.email, audience.c.first_name, audience.c.cell,
                  audience.c.offer_code, audience.c.country)
        .where(audience.c.run_id == run_id, audience.c.outcome == "send")
        .order_by(audience.c.customer_id)
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(q).all()
    return [
        {
            "customer_id": cid,
            "address": mask_address(email),
            "first_name": mask_name(first),
            "cell": cell,
            "offer_code": offer,
            "country": country,
        }
        for cid, email, first, cell, offer, country in rows
    ]


def mask_address(address: str | None) -> str:
    """a***@e***.com: enough to recognise a pattern, not a person."""
    if not address or "@" not in address:
        return "***"
    local, _, domain = address.strip().partition("@")
    tld = domain.rsplit(".", 1)[-1] if "." in domain else ""
    return f"{local[:1]}***@{domain[:1]}***.{tld}"


def mask_name(name: str | None) -> str:
    """A***: the initial only."""
    return f"{name.strip()[:1]}***" if name and name.strip() else "(missing)"
