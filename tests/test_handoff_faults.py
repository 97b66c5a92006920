"""Exactly-once under crashes: the sending process is SIGKILLed at random points and rerun.

For every fault type of the sandbox, their mix, and a mix with 413 splits, and
for several seeds: a child process opens the SQLite warehouse file and runs
``send_audience`` against the sandbox (running in this process); the test kills
it with SIGKILL at a random moment (a random delay after start, after a random
number of requests reached the ESP, or after a random number of ledger rows),
reruns it, and so on until a run completes. Then the sandbox must have
recorded every approved recipient exactly once (zero duplicates, zero missing),
the ledger must hold every batch and the counts must reconcile.

Children come from a multiprocessing fork server that has already imported
campaignops, so a rerun starts in milliseconds instead of a second: each child
is still a separate process with its own engine, HTTP client and threads, and
``Process.kill()`` is a real SIGKILL.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import random
import signal
import sqlite3
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from campaignops.esp import EspClient, EspSandbox, Faults
from campaignops.handoff.http import reconcile, send_audience
from campaignops.schema import ledger
from campaignops.warehouse import make_engine
from tests.test_handoff import (
    CAMPAIGN,
    FALLBACKS,
    FIELDS,
    N_SEEDS,
    SEND_AT,
    TOKEN,
    expected_deliveries,
    populate,
    prepare,
)

pytestmark = pytest.mark.unit

RUN = "r-kill"
RECIPIENTS = 3000  # plus N_SEEDS seeds; customer 17's address is rejected by the ESP
BATCH_SIZE = 100
BATCHES = -(-(RECIPIENTS + N_SEEDS) // BATCH_SIZE)  # 31
CHILD_TIMEOUT = 60.0

MIX = {"rate_limit": 0.12, "error_before_store": 0.12, "error_after_store": 0.12,
       "drop_connection": 0.12, "latency_ms": 2}
KINDS = {  # fault counters of the sandbox, by kind
    "rate_limit": ("fault_rate_limit",),
    "error_before_store": ("fault_error_before_store",),
    "error_after_store": ("fault_error_after_store",),
    "drop_connection": ("fault_drop_stored", "fault_drop_not_stored"),
}
# mode -> (fault settings, sandbox max_batch, kinds of fault that must have fired)
MODES: dict[str, tuple[dict[str, Any], int, int]] = {
    "kill-only": ({}, 1000, 0),
    "rate_limit": ({"rate_limit": 0.3}, 1000, 1),
    "error_before_store": ({"error_before_store": 0.3}, 1000, 1),
    "error_after_store": ({"error_after_store": 0.3}, 1000, 1),
    "drop_connection": ({"drop_connection": 0.3}, 1000, 1),
    "latency": ({"latency_ms": 8}, 1000, 0),
    # each kind at 12% of some 40-50 requests: at least three of the four show up
    "mix": (MIX, 1000, 3),
    "mix+split": (MIX, 60, 3),  # 100-recipient batches, 413, halves of 50
}
CASES = [(mode, seed) for mode in MODES for seed in (1, 2)] + [("mix", s) for s in (3, 4, 5, 6)]


# -- the child --------------------------------------------------------------------------
def child_send(
    warehouse_url: str, esp_url: str, token: str, max_in_flight: int, report_path: str
) -> None:
    """What one sending process does: send the run, reconcile, write a report."""
    logging.getLogger("campaignops").setLevel(logging.ERROR)  # retries are expected here
    try:
        engine = make_engine(warehouse_url)
        with EspClient(
            esp_url, SecretStr(token), timeout=5.0, max_attempts=60, backoff_base=0.001,
            backoff_cap=0.01, max_retry_after=0.02,
        ) as client:
            report = send_audience(
                engine, client, campaign_id=CAMPAIGN, run_id=RUN, template_id="winback-v2",
                send_at=SEND_AT, batch_size=BATCH_SIZE, fields=FIELDS, fallbacks=FALLBACKS,
                max_in_flight=max_in_flight,
            )
            rec = reconcile(engine, client, CAMPAIGN, RUN)
        out: dict[str, Any] = {"report": report.as_dict(), "matches": rec.matches}
    except BaseException as exc:  # the parent shows it; exit 1 says the child failed
        out = {"error": "".join(traceback.format_exception(exc))[-3000:]}
    write_report(report_path, out)


def write_report(report_path: str, out: dict[str, Any]) -> None:
    """The child's report, written whole; a failed child exits 1."""
    tmp = f"{report_path}.tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, report_path)
    if "error" in out:
        os._exit(1)


# -- the parent -------------------------------------------------------------------------
@dataclass
class Attempt:
    trigger: str
    exitcode: int | None = None
    ledger_before: int = 0
    ledger_after: int = 0
    requests_at_kill: int = 0


@dataclass
class Outcome:
    attempts: list[Attempt] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)

    @property
    def kills(self) -> int:
        return sum(1 for a in self.attempts if a.exitcode == -signal.SIGKILL)


@pytest.fixture(scope="module")
def forkserver() -> multiprocessing.context.ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    # campaignops, sqlalchemy, httpx and httpcore (which httpx loads lazily), imported once
    ctx.set_forkserver_preload([__name__, "httpcore"])
    return ctx


def ledger_count(db_file: Path) -> int:
    conn = sqlite3.connect(db_file, timeout=10)
    try:
        return int(
            conn.execute("SELECT COUNT(*) FROM co_ledger WHERE run_id = ?", (RUN,)).fetchone()[0]
        )
    finally:
        conn.close()


def ledger_reached(db_file: Path, target: int) -> bool:
    return ledger_count(db_file) >= target


def time_or_ledger(until: float, db_file: Path, target: int) -> bool:
    return time.monotonic() >= until or ledger_count(db_file) >= target


def requests_reached(sb: EspSandbox, target: int) -> bool:
    return sb.stats(RUN).get("requests", 0) >= target


def wait_until(proc: Any, condition: Callable[[], bool], deadline: float) -> bool:
    """Poll until condition() holds (True) or the process ended or time ran out (False)."""
    while proc.is_alive() and time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.001)
    return False


def kill_and_rerun(
    ctx: multiprocessing.context.ForkServerContext,
    sb: EspSandbox,
    url: str,
    db_file: Path,
    tmp: Path,
    rng: random.Random,
    max_in_flight: int,
    child: Callable[[str, str, str, int, str], None] = child_send,
) -> Outcome:
    """Run children (``child``: what one sending process does) until one completes; all but
    the last are killed at a random point."""
    outcome = Outcome()
    kills_planned = rng.randint(3, 5)
    for n in range(kills_planned + 10):
        report_path = tmp / f"report-{n}.json"
        before = ledger_count(db_file)
        kill = n < kills_planned
        trigger = "none"
        if kill:
            trigger = rng.choice(["delay", "requests", "ledger"])
        attempt = Attempt(trigger=trigger, ledger_before=before)
        proc = ctx.Process(
            target=child, args=(url, sb.url, TOKEN, max_in_flight, str(report_path)),
            daemon=True,
        )
        started = time.monotonic()
        proc.start()
        deadline = started + CHILD_TIMEOUT
        if kill:
            requests = sb.stats(RUN).get("requests", 0)
            if trigger == "delay":  # anywhere from start-up to the middle of the run
                # A quiet machine sends the whole audience within the delay: stop waiting
                # at the middle of what is left, so the kill always lands mid-run.
                until = time.monotonic() + rng.uniform(0.0, 0.15)
                middle = before + max(1, (BATCHES - before) // 2)
                wait_until(proc, partial(time_or_ledger, until, db_file, middle), deadline)
            elif trigger == "requests":  # between a request reaching the ESP and its ledger row
                target = requests + rng.randint(1, 12)
                wait_until(proc, partial(requests_reached, sb, target), deadline)
            else:  # right after a ledger write, or a little later
                target = before + rng.randint(1, max(1, (BATCHES - before) // 2))
                wait_until(proc, partial(ledger_reached, db_file, target), deadline)
                time.sleep(rng.uniform(0.0, 0.01))
            attempt.requests_at_kill = sb.stats(RUN).get("requests", 0) - requests
            proc.kill()
        proc.join(timeout=max(1.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join()
            pytest.fail(f"attempt {n}: the sending process did not finish in {CHILD_TIMEOUT}s")
        attempt.exitcode = proc.exitcode
        attempt.ledger_after = ledger_count(db_file)
        outcome.attempts.append(attempt)
        if proc.exitcode == 0:
            outcome.final = json.loads(report_path.read_text())
            return outcome
        if proc.exitcode != -signal.SIGKILL:
            detail = json.loads(report_path.read_text()) if report_path.exists() else {}
            pytest.fail(f"attempt {n}: child exited {proc.exitcode}: {detail.get('error', '')}")
    pytest.fail("no attempt completed")


@pytest.mark.parametrize(("mode", "seed"), CASES, ids=[f"{m}-{s}" for m, s in CASES])
def test_killed_sender_reruns_to_exactly_once(
    forkserver: multiprocessing.context.ForkServerContext, tmp_path: Path, mode: str, seed: int
) -> None:
    settings, max_batch, kinds = MODES[mode]
    faults = Faults(seed=seed, **settings)
    db_file = tmp_path / "warehouse.db"
    url = f"sqlite:///{db_file}"
    engine = prepare(url)
    populate(engine, RUN, n=RECIPIENTS)
    rng = random.Random(f"{mode}/{seed}")
    max_in_flight = rng.choice([1, 4, 8])
    sb = EspSandbox(TOKEN, faults=faults, max_batch=max_batch).start()
    try:
        outcome = kill_and_rerun(forkserver, sb, url, db_file, tmp_path, rng, max_in_flight)

        # Every approved recipient exactly once: zero duplicates, zero missing.
        got = sb.deliveries(CAMPAIGN, RUN)
        want = expected_deliveries(RECIPIENTS)
        duplicates = {k: c for k, c in got.items() if c > 1}
        missing = sorted(set(want) - set(got))
        assert not duplicates and not missing, (duplicates, missing[:10])
        assert got == want

        # The ledger holds every batch once, and the counts reconcile (child and parent).
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(ledger.c.batch_seq, ledger.c.recipients).where(ledger.c.run_id == RUN)
            ).all()
        assert sorted(r.batch_seq for r in rows) == list(range(BATCHES))
        assert sum(r.recipients for r in rows) == RECIPIENTS + N_SEEDS
        report = outcome.final["report"]
        assert outcome.final["matches"] is True
        assert report["batches"] == BATCHES == report["sent"] + report["skipped"]
        with EspClient(sb.url, SecretStr(TOKEN)) as client:
            rec = reconcile(engine, client, CAMPAIGN, RUN)
        assert rec.matches
        assert (rec.approved, rec.accepted, rec.rejected) == (
            RECIPIENTS + N_SEEDS, RECIPIENTS + N_SEEDS - 1, 1
        )

        # The crashes and the faults really happened.
        assert outcome.kills >= 1
        stats = sb.stats(RUN)
        fired = {kind for kind, counters in KINDS.items()
                 if any(stats.get(c, 0) for c in counters)}
        assert len(fired) >= kinds, stats
        if kinds == 1:
            assert fired == {mode}, stats
        if mode == "mix+split":
            assert stats.get("status_413", 0) >= BATCHES - 1
            keys = [b["key"] for b in sb.batches(CAMPAIGN, RUN)]
            assert keys == sorted(
                [f"{RUN}:batch-{s}.{p}" for s in range(BATCHES - 1) for p in (0, 1)]
                + [f"{RUN}:batch-{BATCHES - 1}"],
                key=lambda k: (int(k.split("-")[-1].split(".")[0]), k),
            )
        print(
            f"{mode}-{seed}: in_flight={max_in_flight} kills={outcome.kills} "
            f"ledger={[a.ledger_after for a in outcome.attempts]} "
            f"triggers={[a.trigger for a in outcome.attempts]} "
            f"replays={stats.get('replays', 0)} 409s={stats.get('status_409', 0)} "
            f"requests={stats.get('requests', 0)}"
        )
    finally:
        sb.stop()
        engine.dispose()


def test_the_suite_kills_mid_send(
    forkserver: multiprocessing.context.ForkServerContext, tmp_path: Path
) -> None:
    """A kill after some batches leaves a partial ledger, and the rerun finishes the rest."""
    db_file = tmp_path / "warehouse.db"
    url = f"sqlite:///{db_file}"
    engine = prepare(url)
    populate(engine, RUN, n=RECIPIENTS)
    sb = EspSandbox(TOKEN, faults=Faults(latency_ms=5, seed=7)).start()
    try:
        proc = forkserver.Process(
            target=child_send, args=(url, sb.url, TOKEN, 1, str(tmp_path / "a.json")), daemon=True
        )
        proc.start()
        assert wait_until(proc, lambda: ledger_count(db_file) >= 5, time.monotonic() + 30)
        proc.kill()
        proc.join()
        assert proc.exitcode == -signal.SIGKILL
        partial = ledger_count(db_file)
        assert 5 <= partial < BATCHES
        assert len(sb.deliveries(CAMPAIGN, RUN)) < RECIPIENTS
        proc = forkserver.Process(
            target=child_send, args=(url, sb.url, TOKEN, 4, str(tmp_path / "b.json")), daemon=True
        )
        proc.start()
        proc.join(timeout=CHILD_TIMEOUT)
        assert proc.exitcode == 0
        final = json.loads((tmp_path / "b.json").read_text())
        assert final["report"]["skipped"] == partial and final["matches"] is True
        assert sb.deliveries(CAMPAIGN, RUN) == expected_deliveries(RECIPIENTS)
    finally:
        sb.stop()
        engine.dispose()


def test_rerun_while_the_killed_requests_are_still_processing_gets_409_then_replays(
    forkserver: multiprocessing.context.ForkServerContext, tmp_path: Path
) -> None:
    """The crash leaves batches inside the ESP; the rerun's same keys wait (409), then replay."""
    db_file = tmp_path / "warehouse.db"
    url = f"sqlite:///{db_file}"
    engine = prepare(url)
    populate(engine, RUN, n=300)  # four batches, all in flight at once
    sb = EspSandbox(TOKEN, faults=Faults(latency_ms=600, seed=3)).start()
    try:
        proc = forkserver.Process(
            target=child_send, args=(url, sb.url, TOKEN, 4, str(tmp_path / "a.json")), daemon=True
        )
        proc.start()
        assert wait_until(proc, partial(requests_reached, sb, 4), time.monotonic() + 30)
        proc.kill()
        proc.join()
        assert ledger_count(db_file) == 0 and sb.deliveries(CAMPAIGN, RUN) == {}
        proc = forkserver.Process(
            target=child_send, args=(url, sb.url, TOKEN, 4, str(tmp_path / "b.json")), daemon=True
        )
        proc.start()
        proc.join(timeout=CHILD_TIMEOUT)
        assert proc.exitcode == 0, (tmp_path / "b.json").read_text()
        final = json.loads((tmp_path / "b.json").read_text())
        assert final["matches"] is True and final["report"]["replayed"] >= 1
        stats = sb.stats(RUN)
        assert stats.get("status_409", 0) >= 1 and stats.get("replays", 0) >= 1
        assert sb.deliveries(CAMPAIGN, RUN) == expected_deliveries(300)
    finally:
        sb.stop()
        engine.dispose()


@pytest.fixture(autouse=True)
def _no_stray_children() -> Iterator[None]:
    yield
    for child in multiprocessing.active_children():
        child.kill()
        child.join()
