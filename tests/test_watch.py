"""The watch: a weekly newsletter's data changes under it, within its size tolerance, and is caught."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops import approval, audit, qa, runs, watch
from campaignops.brief import Brief, Watch, load_brief
from campaignops.errors import QAFailed
from campaignops.schema import customers, suppressions
from campaignops.segmentation import segment_audience
from campaignops.settings import load_settings
from campaignops.warehouse import Warehouse
from tasks.markdown import packet_markdown
from tests.factories import AS_OF, build_warehouse, customer

NEWSLETTER = Path(__file__).resolve().parents[1] / "examples" / "briefs" / "weekly-newsletter.yaml"
WEEK = dt.timedelta(days=7)
# 2,000 subscribers: 1,000 US, 500 GB, 300 FR, 200 DE; four lifecycle stages; 100 unsubscribed.
COUNTRIES = ["US"] * 10 + ["GB"] * 5 + ["FR"] * 3 + ["DE"] * 2
# By customer_id % 20: mql is 10 % (all US or GB), DE is sql or lead, the unsubscribed are customers.
STAGES = ["customer", "customer", "lead", "mql", "sql", "customer", "customer", "lead", "sql", "opportunity",
          "customer", "customer", "lead", "mql", "sql", "customer", "customer", "opportunity", "sql", "lead"]


def newsletter_rows(n: int = 2000) -> list[dict[str, Any]]:
    """The newsletter's subscribers: every share exact (countries by tens, stages by twenties)."""
    return [customer(i, country=COUNTRIES[i % 20], lifecycle_stage=STAGES[i % 20],
                     language="de" if COUNTRIES[i % 20] == "DE" else "en",
                     loyalty_tier="gold" if i % 4 == 0 else "silver",
                     last_open_at=AS_OF + dt.timedelta(days=60))
            for i in range(1, n + 1)]


def unsubscribed(start: int, count: int) -> list[dict[str, Any]]:
    """Unsubscribe rows for count customers from start on, every fifth (start a multiple of 5)."""
    return [{"address": f"person{start + 5 * k}@example.com", "reason": "unsubscribe"} for k in range(count)]


def newsletter(url: str) -> tuple[Engine, Brief]:
    """The warehouse and the weekly newsletter's brief."""
    return build_warehouse(url, newsletter_rows(), supp=unsubscribed(5, 100)), load_brief(NEWSLETTER)


def run_week(engine: Engine, brief: Brief, week: int, sent: bool = True) -> str:
    """One weekly run: registered, segmented (composition and churn recorded), marked sent."""
    run_id = uuid.uuid4().hex
    runs.register_run(engine, run_id, brief, "test", AS_OF + week * WEEK)
    segment_audience(Warehouse(engine), run_id)
    if sent:
        runs.set_status(engine, run_id, runs.SENT)
    return run_id


def history(engine: Engine, brief: Brief, weeks: int = 3) -> list[str]:
    """Weeks 0 .. weeks-1 of the newsletter, each sent."""
    return [run_week(engine, brief, w) for w in range(weeks)]


def flip_de_consent(engine: Engine) -> None:
    """A feed stops carrying Germany's email consent."""
    with engine.begin() as conn:
        conn.execute(sa.update(customers).where(customers.c.country == "DE").values(email_opt_in=False))


def double_suppressions(engine: Engine) -> None:
    """The unsubscribe load doubles: 100 more addresses."""
    with engine.begin() as conn:
        conn.execute(sa.insert(suppressions), [
            {"channel": "email", "created_at": AS_OF} | s for s in unsubscribed(505, 100)])


def relabel_mql(engine: Engine) -> None:
    """A CRM change renames the stage mql, which the newsletter's rule names."""
    with engine.begin() as conn:
        conn.execute(sa.update(customers).where(customers.c.lifecycle_stage == "mql")
                     .values(lifecycle_stage="marketing_q"))


def _by_cause(c: watch.Comparison) -> dict[tuple[str, str], int]:
    return {(x.direction, x.cause): x.count for x in c.churn}


@pytest.mark.unit
def test_unchanged_warehouse_gives_no_flag_over_ten_runs(sqlite_url: str) -> None:
    engine, brief = newsletter(sqlite_url)
    ids = history(engine, brief, 10)
    for run_id in ids[1:]:
        c = watch.compare(engine, run_id)
        assert c.base_run_id is not None and not c.flagged
        assert c.churn == () and all(s.psi == 0 for s in c.shifts)
    first = watch.compare(engine, ids[0])
    assert first.base_run_id is None and not first.flagged


def _within_size_tolerance(engine: Engine, brief: Brief, before: list[str], after: str) -> None:
    sizes = runs.recent_sizes(engine, brief.campaign_id, after)
    now = watch.compare(engine, after).sends
    assert brief.drift_tolerance_percent is not None
    assert all(abs(now - s) / s * 100 < brief.drift_tolerance_percent for s in sizes), (now, sizes)
    assert len(sizes) == len(before)


Case = tuple[str, Callable[[Engine], None], tuple[str, str], int, str | None, frozenset[str]]
CASES: list[Case] = [
    # name, change, (direction, cause), count, country, the dimensions whose PSI moves
    ("consent", flip_de_consent, ("left", "no_consent"), 200, "DE", frozenset({"country", "language"})),
    ("suppression", double_suppressions, ("left", "suppressed_unsubscribe"), 100, None, frozenset()),
    ("relabel", relabel_mql, ("left", "rule"), 200, None, frozenset({"lifecycle_stage"})),
]


def _caught(url: str, case: Case) -> watch.Comparison:
    _, change, key, count, country, dimensions = case
    engine, brief = newsletter(url)
    before = history(engine, brief)
    change(engine)
    after = run_week(engine, brief, len(before), sent=False)
    _within_size_tolerance(engine, brief, before, after)
    c = watch.compare(engine, after)
    assert c.base_run_id == before[-1] and c.flagged
    assert _by_cause(c) == {key: count}  # nothing else moved, and exactly this many
    (flag,) = c.churn_flags
    if country is not None:
        assert flag.countries == ((country, count),)
    assert {s.dimension for s in c.psi_flags} == dimensions
    assert any(line.startswith("MOVED: ") and f"{count:,}" in line for line in c.lines())
    return c


@pytest.mark.unit
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_change_is_caught_and_attributed(sqlite_url: str, case: Case) -> None:
    c = _caught(sqlite_url, case)
    if case[0] == "consent":
        s = next(s for s in c.psi_flags if s.dimension == "country")
        # 200 of the 1,900 not unsubscribed were German: about 10.5 % of the sends, now none
        assert s.moved[0][:2] == ("DE", 0.0) and 10 < s.moved[0][2] < 11 and s.psi > 0.1


@pytest.mark.integration
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_change_is_caught_on_postgresql(pg_url: str, case: Case) -> None:
    _caught(pg_url, case)


def _grant_standing(engine: Engine, run_id: str) -> None:
    """The business approver approved run_id with a standing approval (a signed record)."""
    audit.append(engine, run_id=run_id, step="approval:business", action="approved",
                 actor="blake.director@example.com",
                 details={"campaign_id": "weekly-newsletter", "standing_granted": True})


@pytest.mark.unit
def test_qa_warns_with_the_numbers_and_a_person_decides(sqlite_url: str) -> None:
    engine, brief = newsletter(sqlite_url)
    wh, home = Warehouse(engine), load_settings().home
    before = history(engine, brief)
    _grant_standing(engine, before[-1])
    steady = run_week(engine, brief, 3, sent=False)
    verdict, _ = qa.check_audience(wh, steady, home)
    assert {watch.PSI_CHECK, watch.CHURN_CHECK} <= set(verdict.applied) and not verdict.warnings
    assert approval.decide_without_wait(wh, steady, "business", "d") == (
        "standing approval by blake.director@example.com")
    runs.set_status(engine, steady, runs.SENT)

    flip_de_consent(engine)
    moved = run_week(engine, brief, 4, sent=False)
    verdict, result = qa.check_audience(wh, moved, home)
    assert verdict.passed and set(verdict.warnings) == {watch.PSI_CHECK, watch.CHURN_CHECK}
    churn = {c.name: c for c in result.checks}[watch.CHURN_CHECK]
    assert "now excluded by no email consent: 200" in str(churn.observed) and "DE 200" in str(churn.observed)
    assert "country PSI" in str({c.name: c for c in result.checks}[watch.PSI_CHECK].observed)
    assert approval.decide_without_wait(wh, moved, "business", "d") is None  # a person decides
    bypass = audit.latest(engine, moved, "approval:business", ("standing_bypassed",))
    assert bypass is not None and watch.CHURN_CHECK in str(bypass.details["why"])
    md = packet_markdown(approval.prepare_approval(wh, moved, "business"))
    assert md.index("MOVED: left now excluded by no email consent: 200") < md.index("Open before deciding")


@pytest.mark.unit
def test_a_brief_can_make_the_watch_critical(sqlite_url: str) -> None:
    engine, brief = newsletter(sqlite_url)
    strict = brief.model_copy(update={"watch": Watch(critical=True)})
    history(engine, strict)
    double_suppressions(engine)
    run_id = run_week(engine, strict, 3, sent=False)
    with pytest.raises(QAFailed) as info:
        qa.check_audience(Warehouse(engine), run_id, load_settings().home)
    assert isinstance(info.value.verdict, qa.QAVerdict)
    assert watch.CHURN_CHECK in info.value.verdict.failed_critical
    assert "suppression: unsubscribe: 100" in str(info.value)
    assert runs.get_run(engine, run_id).status == runs.QA_BLOCKED


@pytest.mark.unit
def test_the_first_run_skips_the_watch_checks(sqlite_url: str) -> None:
    engine, brief = newsletter(sqlite_url)
    run_id = run_week(engine, brief, 0, sent=False)
    verdict, result = qa.check_audience(Warehouse(engine), run_id, load_settings().home)
    assert watch.PSI_CHECK not in verdict.applied and not verdict.warnings
    assert any(s.startswith(watch.CHURN_CHECK) for s in result.skipped)
