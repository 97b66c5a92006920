"""The watch: a weekly newsletter's data changes under it, within its size tolerance, and is caught."""

from __future__ import annotations

import datetime as dt
import random
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
from campaignops.schema import audience, customers, run_churn, run_composition, suppressions
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


def _moved_history(url: str) -> tuple[Engine, list[str]]:
    """Three steady weeks, then Germany's consent flips under the fourth, which is sent too."""
    engine, brief = newsletter(url)
    ids = history(engine, brief)
    flip_de_consent(engine)
    return engine, [*ids, run_week(engine, brief, 3)]


@pytest.mark.unit
def test_the_watch_command_flags_the_run_that_moved(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from campaignops.cli import main

    _, ids = _moved_history(sqlite_url)
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", sqlite_url)
    ok = CliRunner().invoke(main, ["watch", "--runs", "3"])
    assert ok.exit_code == 0, ok.output
    assert "weekly-newsletter: the last 3 run(s)" in ok.output and "1 of 3 run(s) moved" in ok.output
    assert ids[-1][:12] in ok.output and ids[0][:12] not in ok.output
    assert "left no_consent 200 (DE)" in ok.output and "MOVED: left now excluded by no email consent: 200" in ok.output
    assert "@" not in ok.output
    bad = CliRunner().invoke(main, ["watch", "--campaign", "nope"])
    assert bad.exit_code != 0 and "--campaign nope: no segmented run" in bad.output


@pytest.mark.unit
def test_the_chart_draws_sends_and_every_exclusion_reason(sqlite_url: str) -> None:
    engine, _ = _moved_history(sqlite_url)
    points = watch.campaign_history(engine, "weekly-newsletter")
    svg = watch.chart_svg("weekly-newsletter", points)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 3  # sends, no_consent, suppressed_unsubscribe
    assert ">no_consent<" in svg and ">suppressed_unsubscribe<" in svg and svg.count(">moved<") == 1
    assert [p.exclusions.get("no_consent", 0) for p in points] == [0, 0, 0, 200]


@pytest.mark.flow
def test_the_daily_watch_publishes_a_table_a_chart_and_the_event(
        prefect_api: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    import tasks.watch
    from campaignops.deploy import load_spec, runner_deployments
    from flows.watch import watch_campaigns

    _, ids = _moved_history(sqlite_url)
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks.watch, "emit_event", lambda **kw: events.append(kw))
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", sqlite_url)
    assert watch_campaigns(runs=8) == {"campaigns": 1, "flagged": 1}
    assert (tmp_path / "home" / "watch" / "weekly-newsletter.svg").read_text().startswith("<svg")
    (event,) = events
    assert event["event"] == "campaignops.watch.flagged"
    assert event["resource"]["prefect.resource.id"] == f"campaignops.run.{ids[-1]}"
    assert event["payload"]["checks"] == [watch.CHURN_CHECK, watch.PSI_CHECK]
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["weekly-newsletter-watch"])))
    assert arts and "no_consent" in str(arts[0].data) and "@" not in str(arts[0].data)
    assert "watch-campaigns" in {d.name for d in runner_deployments(load_spec())}


def _reference(engine: Engine, run_id: str, base_run_id: str, base_as_of: dt.datetime
               ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str, str], int]]:
    """Composition and churn computed the plain way: every row read, counted in Python (test scale)."""
    a = audience.c
    with engine.connect() as conn:
        stage: dict[int, Any] = {r[0]: r[1] for r in conn.execute(sa.select(customers.c.customer_id, customers.c.lifecycle_stage))}
        cust = {r.customer_id: r for r in conn.execute(sa.select(customers))}
        rows = {rid: conn.execute(sa.select(audience).where(a.run_id == rid)).all()
                for rid in (run_id, base_run_id)}
    comp: dict[tuple[str, str], int] = {}

    def add(key: tuple[str, Any]) -> None:
        k = (key[0], watch.NONE if key[1] is None else str(key[1]))
        comp[k] = comp.get(k, 0) + 1

    for r in rows[run_id]:
        add(("outcome", r.outcome))
        if r.is_seed:
            continue
        if r.outcome == "excluded":
            add(("excluded", r.reason))
        if r.outcome == "send":
            for d in watch.DIMENSIONS:
                add((d, stage.get(r.customer_id) if d == "lifecycle_stage" else getattr(r, d)))
    now = {r.customer_id: r for r in rows[run_id] if not r.is_seed}
    was = {r.customer_id: r for r in rows[base_run_id] if not r.is_seed}
    inside = ("send", "control")
    churn: dict[tuple[str, str, str], int] = {}
    for cid in set(now) | set(was):
        n, w, c = now.get(cid), was.get(cid), cust.get(cid)
        now_in, was_in = n is not None and n.outcome in inside, w is not None and w.outcome in inside
        if was_in and not now_in:
            cause = n.reason if n is not None else ("removed_customer" if c is None else "rule")
            country = next((x for x in (n and n.country, c and c.country, w and w.country) if x), None)
            key = ("left", cause, country or watch.NONE)
        elif now_in and not was_in:
            assert n is not None and c is not None
            cause = w.reason if w is not None else (
                "new_customer" if c.signup_date > base_as_of.date() else "rule")
            key = ("entered", cause, n.country or watch.NONE)
        else:
            continue
        churn[key] = churn.get(key, 0) + 1
    return comp, churn


def _random_history(url: str, seed: int) -> tuple[Engine, str, str]:
    """Two runs of the newsletter over a random warehouse, random changes between them."""
    rng = random.Random(seed)
    stages = ["customer", "lead", "mql", "sql", "opportunity", "churned", None]
    rows = [customer(i, country=rng.choice(["US", "GB", "FR", "DE", None]),
                     lifecycle_stage=rng.choice(stages), language=rng.choice(["en", "de", "fr", None]),
                     loyalty_tier=rng.choice(["gold", "silver", None]),
                     email_opt_in=rng.random() > 0.1,
                     last_open_at=AS_OF - dt.timedelta(days=rng.choice([10, 100, 400])))
            for i in range(1, 1201)]
    supp = [{"address": f"person{i}@example.com", "reason": rng.choice(["unsubscribe", "bounce"])}
            for i in rng.sample(range(1, 1201), 80)]
    engine, brief = build_warehouse(url, rows, supp=supp), load_brief(NEWSLETTER)
    base = run_week(engine, brief, 0)
    with engine.begin() as conn:
        k = customers.c
        for i in rng.sample(range(1, 1201), 150):
            conn.execute(sa.update(customers).where(k.customer_id == i).values(
                email_opt_in=rng.random() > 0.5, lifecycle_stage=rng.choice(stages),
                country=rng.choice(["US", "DE", None])))
        conn.execute(sa.delete(customers).where(k.customer_id.in_(rng.sample(range(1, 1201), 40))))
        conn.execute(sa.insert(customers), [
            customer(i, signup_date=(AS_OF + dt.timedelta(days=3)).date(), country=rng.choice(["GB", None]),
                     last_open_at=AS_OF + dt.timedelta(days=4)) for i in range(2001, 2061)])
        conn.execute(sa.insert(suppressions), [
            {"channel": "email", "created_at": AS_OF, "address": f"person{i}@example.com",
             "reason": "unsubscribe"} for i in rng.sample(range(1, 1201), 40)])
    return engine, base, run_week(engine, brief, 1, sent=False)


def _check_against_reference(url: str, seed: int) -> None:
    engine, base, run_id = _random_history(url, seed)
    comp, churn = _reference(engine, run_id, base, AS_OF)
    with engine.connect() as conn:
        t, ch = run_composition.c, run_churn.c
        got_comp = {(d, v): n for d, v, n in conn.execute(
            sa.select(t.dimension, t.value, t.count).where(t.run_id == run_id))}
        got_churn = {(d, c, k): n for d, c, k, n in conn.execute(
            sa.select(ch.direction, ch.cause, ch.country, ch.count).where(ch.run_id == run_id, ch.base_run_id == base))}
    assert got_comp == comp
    assert got_churn == churn
    causes = {c for _, c, _ in churn}
    assert {"removed_customer", "new_customer", "no_consent", "rule"} <= causes  # the case moves every way


@pytest.mark.unit
@pytest.mark.parametrize("seed", [1, 2])
def test_the_queries_match_a_plain_computation_on_a_random_case(sqlite_url: str, seed: int) -> None:
    _check_against_reference(sqlite_url, seed)


@pytest.mark.integration
def test_the_queries_match_a_plain_computation_on_postgresql(pg_url: str) -> None:
    _check_against_reference(pg_url, 3)


@pytest.mark.unit
def test_the_watch_benchmark_measures_every_step_on_a_small_warehouse(sqlite_url: str) -> None:
    from campaignops import migrations
    from campaignops.bench import watch as bench
    from campaignops.synthetic import init_warehouse
    from campaignops.warehouse import make_engine

    engine = make_engine(sqlite_url)
    init_warehouse(engine, customers=5_000, seed=42, as_of=AS_OF, progress=False, replace=True)
    migrations.upgrade(engine)
    out = bench.child_measure({"url": sqlite_url, "as_of": AS_OF.isoformat()})
    assert set(out["times"]) == set(bench.STEPS)
    assert all(len(v) == bench.REPEATS and min(v) >= 0 for v in out["times"].values())
    assert min(out["times"]["segment"]) > 0
    assert out["rows"]["send"] > 0 and out["moved"] > 0  # a week later, some lapsed and some came back
