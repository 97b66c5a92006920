"""Send handoff against the real ESP sandbox on loopback and a real warehouse."""

from __future__ import annotations

import csv
import hashlib
import json
import threading
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.engine import Engine

from campaignops import migrations
from campaignops.brief import validate_brief
from campaignops.contact_history import write_contact_history
from campaignops.errors import HandoffError
from campaignops.esp import BatchAck, EspClient, EspSandbox, Faults
from campaignops.handoff import batches, http, send_time
from campaignops.handoff import file as drop_module
from campaignops.handoff.batches import iter_batches
from campaignops.handoff.file import write_file_drop
from campaignops.handoff.http import reconcile, send_audience
from campaignops.handoff.outbox import Outbox, stage
from campaignops.schema import audience, contact_history, ledger, runs, warehouse_metadata
from campaignops.warehouse import make_engine
from tests.factories import brief_dict

pytestmark = pytest.mark.unit

TOKEN = "handoff-token-3b7d0a"
CAMPAIGN = "spring-winback"
FIELDS = ["first_name", "language"]
FALLBACKS = {"first_name": "Friend"}
SEND_AT = datetime(2027, 3, 1, 14, 0, tzinfo=UTC)
N_SEEDS = 3
INVALID = (17, 4242)  # customer ids whose address the ESP rejects


# -- fixtures and helpers -------------------------------------------------------------
def populate(engine: Engine, run_id: str, n: int = 5000) -> None:
    """n 'send' recipients, seeds, plus control and excluded rows that must not go out."""
    rows: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        email = f"user{i}@example.com" if i not in INVALID else f"broken-{i}-at-example.com"
        rows.append(
            {
                "run_id": run_id, "customer_id": i, "email": email, "address_key": email.lower(),
                "first_name": None if i % 10 == 0 else ("" if i % 10 == 1 else f"Name{i}"),
                "last_name": "Lovelace", "language": "en", "country": "GB",
                "loyalty_tier": "gold", "outcome": "send", "reason": None,
                "cell": "A" if i % 2 else "B", "offer_code": "WELCOME10", "is_seed": False,
            }
        )
    for i in range(n + 1, n + 101):
        outcome, reason = ("control", None) if i % 2 else ("excluded", "suppressed")
        email = f"user{i}@example.com"
        rows.append(
            {
                "run_id": run_id, "customer_id": i, "email": email, "address_key": email,
                "first_name": "X", "last_name": "Y", "language": "en", "country": "GB",
                "loyalty_tier": "none", "outcome": outcome, "reason": reason, "cell": None,
                "offer_code": None, "is_seed": False,
            }
        )
    for j in range(N_SEEDS):
        email = f"seed{j}@proof.example"
        rows.append(
            {
                "run_id": run_id, "customer_id": None, "email": email, "address_key": email,
                "first_name": "Seed", "last_name": None, "language": None, "country": None,
                "loyalty_tier": None, "outcome": "seed", "reason": None, "cell": "A",
                "offer_code": "WELCOME10", "is_seed": True,
            }
        )
    with engine.begin() as conn:
        conn.execute(audience.insert(), rows)


def expected_deliveries(n: int = 5000) -> dict[str, int]:
    keys = {str(i) for i in range(1, n + 1) if i not in INVALID}
    keys |= {f"seed{j}@proof.example" for j in range(N_SEEDS)}
    return dict.fromkeys(sorted(keys), 1)


def add_run(engine: Engine, run_id: str) -> None:
    """A co_runs row, filling whatever NOT NULL columns the table has today."""
    now = datetime(2027, 2, 1, 9, 0)
    values: dict[str, Any] = {"run_id": run_id, "campaign_id": CAMPAIGN}
    for col in runs.columns:
        if col.name in values or col.nullable or col.default is not None:
            continue
        py = col.type.python_type
        values[col.name] = (
            now if py is datetime else date(2027, 2, 1) if py is date else False
            if py is bool else 0 if py is int else "{}" if col.name.endswith("_json") else "x"
        )
    with engine.begin() as conn:
        conn.execute(runs.insert().values(**values))


def prepare(url: str) -> Engine:
    engine = make_engine(url)
    migrations.upgrade(engine)
    warehouse_metadata.create_all(engine, tables=[contact_history])
    return engine


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    eng = prepare(sqlite_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def start_sandbox() -> Iterator[Callable[..., EspSandbox]]:
    started: list[EspSandbox] = []

    def start(**kw: Any) -> EspSandbox:
        sb = EspSandbox(TOKEN, **kw).start()
        started.append(sb)
        return sb

    yield start
    for sb in started:
        sb.stop()


@pytest.fixture
def make_client() -> Iterator[Callable[..., EspClient]]:
    clients: list[EspClient] = []

    def make(sb: EspSandbox, **kw: Any) -> EspClient:
        opts: dict[str, Any] = {
            "backoff_base": 0.001, "backoff_cap": 0.01, "max_retry_after": 0.05,
            "max_attempts": 30,
        }
        opts.update(kw)
        c = EspClient(sb.url, SecretStr(opts.pop("token", TOKEN)), **opts)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def send(engine: Engine, client: Any, run_id: str, **kw: Any) -> http.HandoffReport:
    opts: dict[str, Any] = {
        "campaign_id": CAMPAIGN, "run_id": run_id, "template_id": "winback-v2",
        "send_at": SEND_AT, "batch_size": 250, "fields": FIELDS, "fallbacks": FALLBACKS,
    }
    opts.update(kw)
    return send_audience(engine, client, **opts)


def ledger_rows(engine: Engine, run_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(ledger).where(ledger.c.run_id == run_id).order_by(ledger.c.batch_seq)
            )
        )


class SimulatedCrash(RuntimeError):
    pass


class CrashAfter:
    """A client whose process 'dies' on the (n+1)-th post: before it, or after its 202."""

    def __init__(self, inner: EspClient, n: int, after_ack: bool = False) -> None:
        self.inner, self.n, self.after_ack = inner, n, after_ack
        self.calls = 0
        self._lock = threading.Lock()

    def post_batch(self, *args: Any, **kw: Any) -> BatchAck:
        with self._lock:
            self.calls += 1
            mine = self.calls
        if mine > self.n and not self.after_ack:
            raise SimulatedCrash("crash before posting")
        ack = self.inner.post_batch(*args, **kw)
        if mine > self.n:
            raise SimulatedCrash("crash after the 202, before the ledger")
        return ack


# -- batches -------------------------------------------------------------------------
def test_iter_batches_is_deterministic_and_follows_the_contract(engine: Engine) -> None:
    populate(engine, "r1", n=1000)
    batches = list(iter_batches(engine, "r1", 300, FIELDS, FALLBACKS))
    assert [seq for seq, _ in batches] == [0, 1, 2, 3]
    assert [len(b) for _, b in batches] == [300, 300, 300, 103]
    flat = [r for _, b in batches for r in b]
    assert [r["customer_id"] for r in flat[:1000]] == list(range(1, 1001))
    assert [r["seed"] for r in flat[1000:]] == [True] * N_SEEDS  # seeds last
    assert all(r["customer_id"] is None for r in flat[1000:])
    assert flat[0] == {
        "customer_id": 1, "address": "user1@example.com", "cell": "A",
        "offer_code": "WELCOME10", "fields": {"first_name": "Friend", "language": "en"},
        "seed": False,
    }  # "" takes the fallback
    assert flat[9]["fields"]["first_name"] == "Friend"  # null takes the fallback
    assert flat[1]["fields"] == {"first_name": "Name2", "language": "en"}
    assert list(iter_batches(engine, "r1", 300, FIELDS, FALLBACKS)) == batches
    assert list(iter_batches(engine, "other-run", 300)) == []
    with pytest.raises(HandoffError, match="unknown personalisation field"):
        list(iter_batches(engine, "r1", 300, ["email"]))


# -- send ----------------------------------------------------------------------------
def test_send_audience_delivers_everyone_exactly_once_and_reconciles(
    engine: Engine, start_sandbox: Callable[..., EspSandbox],
    make_client: Callable[..., EspClient],
) -> None:
    populate(engine, "r1")
    sb = start_sandbox()
    client = make_client(sb)
    report = send(engine, client, "r1")
    assert sb.deliveries(CAMPAIGN, "r1") == expected_deliveries()
    approved = 5000 + N_SEEDS
    assert (report.batches, report.sent, report.skipped) == (21, 21, 0)
    assert report.recipients == approved
    assert (report.accepted, report.rejected) == (approved - 2, 2)
    assert report.rejected_reasons == {"invalid_address": 2}
    assert "example" not in json.dumps(report.as_dict())
    rec = reconcile(engine, client, CAMPAIGN, "r1")
    assert rec.matches and (rec.approved, rec.accepted, rec.rejected) == (approved, approved - 2, 2)
    assert rec.ledger_batches == rec.esp_batches == 21
    rows = ledger_rows(engine, "r1")
    assert [r.batch_seq for r in rows] == list(range(21))
    assert rows[0].idempotency_key == "r1:batch-0" and len(rows[0].batch_digest) == 64

    # A second call finds everything in the ledger and posts nothing.
    requests_before = sb.stats("r1")["requests"]
    again = send(engine, client, "r1")
    assert (again.sent, again.skipped, again.accepted) == (0, 21, approved - 2)
    assert sb.stats("r1")["requests"] == requests_before
    assert sb.deliveries(CAMPAIGN, "r1") == expected_deliveries()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_send_audience_exactly_once_under_faults(
    engine: Engine, start_sandbox: Callable[..., EspSandbox],
    make_client: Callable[..., EspClient], seed: int,
) -> None:
    populate(engine, "r1")
    faults = Faults(
        rate_limit=0.2, error_before_store=0.15, error_after_store=0.15, drop_connection=0.15,
        latency_ms=1, seed=seed,
    )
    sb = start_sandbox(faults=faults)
    client = make_client(sb)
    report = send(engine, client, "r1", batch_size=100, max_in_flight=4)
    assert report.batches == 51
    assert sb.deliveries(CAMPAIGN, "r1") == expected_deliveries()
    stats = sb.stats("r1")
    # Threads interleave the seeded draws, so only the mix is asserted, not exact counts.
    drops = stats.get("fault_drop_stored", 0) + stats.get("fault_drop_not_stored", 0)
    assert stats["fault_rate_limit"] and stats["fault_error_before_store"] and drops
    assert stats["fault_error_after_store"]
    assert report.replayed >= 1  # stored-then-failed batches came back as replays
    assert reconcile(engine, client, CAMPAIGN, "r1").matches


def test_batches_too_large_are_split_with_deterministic_keys(
    engine: Engine, start_sandbox: Callable[..., EspSandbox],
    make_client: Callable[..., EspClient],
) -> None:
    populate(engine, "r1", n=1000)
    sb = start_sandbox(max_batch=120)
    client = make_client(sb)
    report = send(engine, client, "r1", batch_size=500)
    assert sb.deliveries(CAMPAIGN, "r1") == expected_deliveries(1000)
    assert report.split == 2 and report.batches == 3  # the seeds-only batch 2 fits
    keys = {r["key"] for r in sb.delivery_rows(CAMPAIGN, "r1")}
    # 500 -> 250 (413) -> 125 (413) -> 63/62: three levels of halves, keys .{a}.{b}.{c}
    parts = {f"r1:batch-{s}.{a}.{b}.{c}" for s in (0, 1) for a in (0, 1) for b in (0, 1) for c in (0, 1)}
    assert keys == parts | {"r1:batch-2"}
    rows = ledger_rows(engine, "r1")
    assert [(r.batch_seq, r.idempotency_key, r.recipients) for r in rows] == [
        (0, "r1:batch-0.*", 500), (1, "r1:batch-1.*", 500), (2, "r1:batch-2", N_SEEDS)
    ]
    assert sum(r.accepted + r.rejected for r in rows) == 1000 + N_SEEDS
    assert reconcile(engine, client, CAMPAIGN, "r1").matches
    assert send(engine, client, "r1", batch_size=500).skipped == 3


@pytest.mark.parametrize(("after_ack", "in_flight"), [(False, 1), (True, 1), (True, 4)])
def test_rerun_after_a_crash_resumes_exactly_once(
    engine: Engine, start_sandbox: Callable[..., EspSandbox],
    make_client: Callable[..., EspClient], after_ack: bool, in_flight: int,
) -> None:
    populate(engine, "r1")
    sb = start_sandbox(faults=Faults(rate_limit=0.1, error_after_store=0.1, seed=9))
    client = make_client(sb)
    crashing = CrashAfter(client, n=7, after_ack=after_ack)
    with pytest.raises(SimulatedCrash):
        send(engine, crashing, "r1", max_in_flight=in_flight)
    done = len(ledger_rows(engine, "r1"))
    assert 7 <= done < 21
    if in_flight == 1:
        assert done == 7
    report = send(engine, client, "r1", max_in_flight=in_flight)
    assert report.skipped == done and report.sent == 21 - done
    if after_ack:
        assert report.replayed >= 1  # acknowledged before the crash, not ledgered
    assert sb.deliveries(CAMPAIGN, "r1") == expected_deliveries()
    assert reconcile(engine, client, CAMPAIGN, "r1").matches


def test_changed_audience_after_a_partial_send_fails_loudly(
    engine: Engine, start_sandbox: Callable[..., EspSandbox],
    make_client: Callable[..., EspClient],
) -> None:
    populate(engine, "r1")
    sb = start_sandbox()
    client = make_client(sb)
    with pytest.raises(SimulatedCrash):
        send(engine, CrashAfter(client, n=3), "r1", max_in_flight=1)
    sent = sb.deliveries(CAMPAIGN, "r1")
    assert len(sent) == 749  # 3 batches of 250, customer 17 rejected
    with engine.begin() as conn:  # customer 300 sits in batch 1, already acknowledged
        conn.execute(
            audience.update().where(audience.c.run_id == "r1", audience.c.customer_id == 300)
            .values(cell="C")
        )
    with pytest.raises(HandoffError, match="batch 1: acknowledged with digest .* audience changed"):
        send(engine, client, "r1")
    # The audience shrinking below the ledgered batches is caught too.
    with engine.begin() as conn:
        conn.execute(audience.delete().where(audience.c.run_id == "r1", audience.c.customer_id > 400))
    with pytest.raises(HandoffError, match="ledger has batch 2 but the audience now makes only 2"):
        send(engine, client, "r1")
    assert sb.deliveries(CAMPAIGN, "r1") == sent  # nothing more went out


def test_changed_batch_that_was_acknowledged_but_not_ledgered_is_refused_by_the_esp(
    engine: Engine, start_sandbox: Callable[..., EspSandbox],
    make_client: Callable[..., EspClient],
) -> None:
    populate(engine, "r1", n=1000)
    sb = start_sandbox()
    client = make_client(sb)
    with pytest.raises(SimulatedCrash):
        send(engine, CrashAfter(client, n=1, after_ack=True), "r1", max_in_flight=1)
    # batch 0 ledgered; batch 1 acknowledged (250 more) but the crash beat the ledger;
    # the failure stopped batch 2 from starting
    assert len(ledger_rows(engine, "r1")) == 1 and len(sb.deliveries(CAMPAIGN, "r1")) == 499
    with engine.begin() as conn:  # customer 300 sits in batch 1: at the ESP, not in the ledger
        conn.execute(
            audience.update().where(audience.c.run_id == "r1", audience.c.customer_id == 300)
            .values(offer_code="OTHER")
        )
    with pytest.raises(HandoffError, match="422"):
        send(engine, client, "r1", max_in_flight=1)
    assert len(sb.deliveries(CAMPAIGN, "r1")) == 499


def test_wrong_token_fails_the_handoff_without_leaking_it(
    engine: Engine, start_sandbox: Callable[..., EspSandbox],
    make_client: Callable[..., EspClient],
) -> None:
    populate(engine, "r1", n=300)
    secret = "sk-live-DO-NOT-LEAK-9931"
    sb = start_sandbox()
    with pytest.raises(HandoffError) as err:
        send(engine, make_client(sb, token=secret), "r1")
    text = "".join(traceback.format_exception(err.value)) + repr(err.value)
    assert "401" in str(err.value) and secret not in text
    assert ledger_rows(engine, "r1") == [] and sb.deliveries(CAMPAIGN, "r1") == {}


# -- send time ------------------------------------------------------------------------
def test_future_send_at_travels_in_every_batch(
    engine: Engine, start_sandbox: Callable[..., EspSandbox],
    make_client: Callable[..., EspClient],
) -> None:
    populate(engine, "r1", n=1000)
    sb = start_sandbox(max_batch=120)  # split parts carry it too
    client = make_client(sb)
    future = datetime(2031, 5, 17, 9, 30, tzinfo=UTC)
    send_time.check_send_time(future, datetime.now(UTC), timedelta(minutes=15))
    send(engine, client, "r1", send_at=future, batch_size=200)
    batches = sb.batches(CAMPAIGN, "r1")
    assert len(batches) == 5 * 2 + 1  # five batches of 200 halved to 100, plus the seeds
    assert {b["send_at"] for b in batches} == {"2031-05-17T09:30:00Z"}
    assert {b["template_id"] for b in batches} == {"winback-v2"}
    assert sum(b["accepted"] + b["rejected"] for b in batches) == 1000 + N_SEEDS

    # A naive send_at is UTC, another zone is converted; None (as soon as approved) is null.
    for run_id, when in [
        ("r2", datetime(2031, 5, 17, 9, 30)),
        ("r3", datetime.fromisoformat("2031-05-17T11:30:00+02:00")),
        ("r4", None),
    ]:
        populate(engine, run_id, n=10)
        send(engine, client, run_id, send_at=when)
        expected = None if when is None else "2031-05-17T09:30:00Z"
        assert [b["send_at"] for b in sb.batches(CAMPAIGN, run_id)] == [expected]


@pytest.mark.parametrize(
    ("send_at", "now", "grace", "ok"),
    [
        (None, datetime(2027, 3, 1, 14, 0, tzinfo=UTC), timedelta(0), True),
        (SEND_AT, SEND_AT - timedelta(days=3), timedelta(0), True),  # in the future
        (SEND_AT, SEND_AT, timedelta(0), True),  # exactly now
        (SEND_AT, SEND_AT + timedelta(minutes=15), timedelta(minutes=15), True),  # at the grace
        (SEND_AT, SEND_AT + timedelta(minutes=15, seconds=1), timedelta(minutes=15), False),
        (SEND_AT, SEND_AT + timedelta(days=2), timedelta(hours=1), False),
        # naive times are UTC, whichever side is naive
        (datetime(2027, 3, 1, 14, 0), SEND_AT + timedelta(minutes=5), timedelta(minutes=10), True),
        (SEND_AT, datetime(2027, 3, 1, 14, 11), timedelta(minutes=10), False),
        # another zone: 15:00+01:00 is 14:00Z
        (
            datetime.fromisoformat("2027-03-01T15:00:00+01:00"),
            SEND_AT + timedelta(minutes=30), timedelta(minutes=20), False,
        ),
    ],
)
def test_check_send_time_refuses_a_stale_send(
    send_at: datetime | None, now: datetime, grace: timedelta, ok: bool
) -> None:
    if ok:
        send_time.check_send_time(send_at, now, grace)
        return
    with pytest.raises(HandoffError) as err:
        send_time.check_send_time(send_at, now, grace)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("send_at 2027-03-01T14:00:00Z passed ")
    assert "set a future send_at" in msg and "CAMPAIGNOPS_SEND_GRACE_MINUTES" in msg


def test_check_send_time_message_and_negative_grace() -> None:
    with pytest.raises(HandoffError, match=r"passed 2 days ago, more than the 15 min grace"):
        send_time.check_send_time(SEND_AT, SEND_AT + timedelta(days=2), timedelta(minutes=15))
    with pytest.raises(HandoffError, match=r"passed 90s ago, more than the 0s grace"):
        send_time.check_send_time(SEND_AT, SEND_AT + timedelta(seconds=90), timedelta(0))
    with pytest.raises(HandoffError, match="negative"):
        send_time.check_send_time(None, SEND_AT, timedelta(minutes=-1))


def test_batch_digest_is_the_canonical_json_of_the_recipients() -> None:
    """orjson gives the bytes json.dumps gave: digests in existing ledgers stay valid."""
    recipients: list[dict[str, Any]] = [
        {"customer_id": 2**62, "address": "zoë@exämple.com", "cell": None, "offer_code": "Ü",
         "fields": {"first_name": "Ada \"the\" \\ \n\t\u0001\u007f\u2028 😀", "language": None},
         "seed": False},
        {"customer_id": None, "address": "seed@proof.example", "cell": "A", "offer_code": None,
         "fields": {}, "seed": True},
    ]
    legacy = json.dumps(recipients, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert batches.batch_digest(recipients) == hashlib.sha256(legacy.encode()).hexdigest()


# -- contact history and file drop ------------------------------------------------------
def staged(engine: Engine, run_id: str, folder: Path) -> Outbox:
    """The run's outbox, as the handoff stages it (for a brief with no personalisation)."""
    return stage(engine, run_id, validate_brief(brief_dict()), folder / "outbox")

def test_contact_history_is_written_exactly_once(engine: Engine, tmp_path: Path) -> None:
    populate(engine, "r1", n=500)
    add_run(engine, "r1")
    sent_at = datetime(2027, 3, 1, 15, 0, tzinfo=UTC)
    assert write_contact_history(engine, staged(engine, "r1", tmp_path), CAMPAIGN, sent_at, 1000) == 500
    assert write_contact_history(engine, staged(engine, "r1", tmp_path), CAMPAIGN, sent_at, 1000) == 0
    with engine.connect() as conn:
        rows = conn.execute(sa.select(contact_history)).all()
        flag = conn.execute(sa.select(runs.c.contact_history_written)).scalar_one()
    assert len(rows) == 500 and flag is True
    assert {r.customer_id for r in rows} == set(range(1, 501))  # no seeds, no control
    assert {(r.campaign_id, r.run_id, r.channel) for r in rows} == {(CAMPAIGN, "r1", "email")}
    assert rows[0].sent_at == datetime(2027, 3, 1, 15, 0)
    with pytest.raises(HandoffError, match="not in co_runs"):
        write_contact_history(engine, staged(engine, "missing", tmp_path), CAMPAIGN, sent_at, 1000)


def test_file_drop_manifest_matches_the_csv(engine: Engine, tmp_path: Path) -> None:
    populate(engine, "r1", n=1200)
    drop = write_file_drop(engine, "r1", tmp_path / "drops", FIELDS, FALLBACKS)
    data = drop.csv_path.read_bytes()
    manifest = json.loads(drop.manifest_path.read_text())
    assert manifest["sha256"] == drop.sha256 == hashlib.sha256(data).hexdigest()
    with drop.csv_path.open(newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == manifest["columns"] == [
        "customer_id", "address", "cell", "offer_code", "seed", "first_name", "language"
    ]
    assert len(table) - 1 == manifest["rows"] == drop.rows == 1200 + N_SEEDS
    assert manifest["run_id"] == "r1" and manifest["created_at"].endswith("Z")
    assert table[1] == ["1", "user1@example.com", "A", "WELCOME10", "false", "Friend", "en"]
    assert table[-1][:5] == ["", "seed2@proof.example", "A", "WELCOME10", "true"]
    assert sorted(p.name for p in drop.csv_path.parent.iterdir()) == [
        "r1.csv", "r1.manifest.json"
    ]


def test_file_drop_failing_midway_leaves_no_partial_file(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(engine, "r1", n=600)
    folder = tmp_path / "drops"
    good = write_file_drop(engine, "r1", folder, FIELDS, FALLBACKS)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = batches.iter_batches

    def failing(*args: Any, **kw: Any) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        for seq, batch in real(*args, **kw):
            yield seq, batch
            raise OSError("disk full")

    monkeypatch.setattr(drop_module, "iter_batches", failing)
    with pytest.raises(OSError, match="disk full"):
        write_file_drop(engine, "r1", folder, FIELDS, FALLBACKS, batch_size=100)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # old drop intact
    assert good.rows == 600 + N_SEEDS
    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="disk full"):
        write_file_drop(engine, "r1", fresh, FIELDS, FALLBACKS, batch_size=100)
    assert list(fresh.iterdir()) == []


# -- PostgreSQL -------------------------------------------------------------------------
@pytest.mark.integration
def test_send_audience_on_postgresql(
    pg_url: str, start_sandbox: Callable[..., EspSandbox],
    make_client: Callable[..., EspClient], tmp_path: Path,
) -> None:
    engine = prepare(pg_url)
    try:
        populate(engine, "r1", n=2000)
        add_run(engine, "r1")
        sb = start_sandbox(faults=Faults(rate_limit=0.1, error_after_store=0.1, seed=2))
        client = make_client(sb)
        with pytest.raises(SimulatedCrash):
            send(engine, CrashAfter(client, n=3, after_ack=True), "r1")
        report = send(engine, client, "r1")
        assert report.skipped >= 3 and report.batches == 9
        assert sb.deliveries(CAMPAIGN, "r1") == expected_deliveries(2000)
        assert reconcile(engine, client, CAMPAIGN, "r1").matches
        # contact history: what the ESP accepted (the invalid address it rejected is not contacted)
        rejected = len([i for i in INVALID if i <= 2000])
        assert write_contact_history(engine, staged(engine, "r1", tmp_path), CAMPAIGN, SEND_AT,
                                     1000) == 2000 - rejected
        assert write_contact_history(engine, staged(engine, "r1", tmp_path), CAMPAIGN, SEND_AT, 1000) == 0
        with engine.connect() as conn:
            outcomes = {str(o): int(n) for o, n in conn.execute(sa.text(
                "SELECT outcome, COUNT(*) FROM co_deliveries WHERE run_id = 'r1' GROUP BY outcome"))}
        assert outcomes == {"accepted": 2003 - rejected, "rejected": rejected}  # seeds included
    finally:
        engine.dispose()


# -- benchmark harness ------------------------------------------------------------------
def test_bench_handoff_measures_both_sides_against_a_sandbox_process(tmp_path: Path) -> None:
    """A small run of the benchmark's own machinery: warehouse, sandbox process, children."""
    from campaignops.bench import handoff as bench

    url = bench.build_warehouse(tmp_path / "bench.db", 3000)
    eng = make_engine(url)
    try:
        assert batches.count_recipients(eng, bench.RUN) == 3000
    finally:
        eng.dispose()
    floor = bench.measure(url, "floor", 2)
    hand = bench.measure(url, "handoff", 2)
    assert floor["recipients"] == hand["recipients"] == 3000
    assert hand["per_second"] > 0 and hand["peak_rss_mb"] > 0
    row = {"n": 3000, "built_s": 0.1, "floor": floor, "handoff": hand, "repeats": 1}
    text = bench._render([row, row], [{"in_flight": 2, "floor": floor, "handoff": hand}], 4,
                         True, (0.5, 0.6))
    assert "| 3,000 |" in text and "within 1.5x of the floor" in text
