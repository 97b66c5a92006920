"""Campaign results: a planted lift is measured, no lift covers zero, notes appear when they should."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from click.testing import CliRunner

from campaignops import runs
from campaignops.brief import validate_brief
from campaignops.cli import main
from campaignops.errors import BriefError, ResultsUnavailable
from campaignops.results import chart_svg, power_warning, recent_sent_runs, run_results
from campaignops.schema import audience, contact_history
from campaignops.warehouse import Warehouse
from tests.factories import AS_OF, brief_dict, build_warehouse, customer

pytestmark = pytest.mark.unit
SENT = AS_OF + dt.timedelta(days=1)
NOW = SENT + dt.timedelta(days=14)
RUN = "run-results-1"


def _brief(**kw: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"kpi": {"metric": "purchase_after_send", "target": 0.05},
                              "control_group": {"percent": 50, "salt": "s1"},
                              "cells": [{"name": "a", "percent": 50}, {"name": "b", "percent": 50}]}
    return brief_dict(**(fields | kw))


def sent_run(url: str, treated: int, control: int, p_treated: float, p_control: float, *,
             seed: int = 7, status: str = runs.SENT, cell_gap: dt.timedelta = dt.timedelta(0),
             brief: dict[str, Any] | None = None) -> Warehouse:
    """A warehouse with one run sent at SENT: converters bought 3 days after the send."""
    rnd = random.Random(seed)
    rows, aud, hist = [], [], []
    for i in range(treated + control):
        cid = i + 1
        is_control = i >= treated
        p = p_control if is_control else p_treated
        bought = SENT + dt.timedelta(days=3) if rnd.random() < p else SENT - dt.timedelta(days=200)
        rows.append(customer(cid, last_purchase_at=bought))
        cell = None if is_control else ("a" if i % 2 == 0 else "b")
        aud.append({"run_id": RUN, "customer_id": cid, "address_key": f"person{cid}@example.com",
                    "outcome": "control" if is_control else "send", "cell": cell, "is_seed": False})
        if not is_control:
            hist.append({"customer_id": cid, "campaign_id": "test-campaign", "run_id": RUN,
                         "cell": cell, "sent_at": SENT + (cell_gap if cell == "b" else dt.timedelta(0))})
    engine = build_warehouse(url, rows, history=hist)
    wh = Warehouse(engine)
    runs.register_run(engine, RUN, validate_brief(brief or _brief()), "b.yaml", AS_OF)
    with engine.begin() as conn:
        conn.execute(sa.insert(audience), aud)
    runs.set_status(engine, RUN, status)
    return wh


def test_a_planted_lift_is_measured_with_an_interval_covering_it(db_url: str) -> None:
    wh = sent_run(db_url, 3000, 3000, 0.20, 0.10, seed=3)
    res = run_results(wh, RUN, now=NOW)
    t = res.total
    assert (t.treated, t.control) == (3000, 3000)
    assert t.lift_low is not None and t.lift_high is not None and t.p_value is not None
    assert t.lift_low < 0.10 < t.lift_high
    assert t.lift_low > 0 and t.p_value < 0.001 and t.significant
    for cell in res.cells:
        assert cell.lift_low is not None and cell.lift_high is not None
        assert cell.lift_low < 0.10 < cell.lift_high and cell.treated == 1500
    assert t.incremental is not None and 200 < t.incremental < 400
    assert t.relative_low is not None and t.relative_high is not None
    assert t.relative_low < 1.0 < t.relative_high  # planted: twice the holdout's rate
    assert res.progress is not None and res.progress > 1  # target: a five-point lift
    assert res.notes == () and res.valid
    assert res.curve["holdout"][0] == (1, 0.0) and res.curve["holdout"][3][1] == t.control_rate


def test_no_planted_effect_gives_an_interval_covering_zero(db_url: str) -> None:
    wh = sent_run(db_url, 3000, 3000, 0.10, 0.10, seed=11)
    t = run_results(wh, RUN, now=NOW).total
    assert t.lift_low is not None and t.lift_high is not None and t.p_value is not None
    assert t.lift_low < 0 < t.lift_high and t.p_value > 0.05 and not t.significant


def test_conversions_after_the_window_do_not_count(sqlite_url: str) -> None:
    wh = sent_run(sqlite_url, 200, 200, 0.5, 0.5)
    res = run_results(wh, RUN, now=NOW, window_days=2)  # purchases came on day 3
    assert res.total.treated_conversions == 0 and res.total.control_conversions == 0
    assert res.total.p_value == 1.0


def test_a_small_holdout_is_noted(sqlite_url: str) -> None:
    wh = sent_run(sqlite_url, 1000, 40, 0.12, 0.10)
    res = run_results(wh, RUN, now=NOW)
    assert any(n.startswith("holdout too small") for n in res.notes), res.notes
    assert not res.valid


def test_unequal_contact_pressure_and_send_times_are_noted(sqlite_url: str) -> None:
    wh = sent_run(sqlite_url, 400, 400, 0.2, 0.1, cell_gap=dt.timedelta(hours=5))
    with wh.engine.begin() as conn:  # another campaign mailed only the treated, twice
        conn.execute(sa.insert(contact_history), [
            {"customer_id": cid, "campaign_id": "other", "run_id": "r-other", "channel": "email",
             "sent_at": SENT + dt.timedelta(days=d)} for cid in range(1, 401) for d in (1, 2)])
    notes = run_results(wh, RUN, now=NOW).notes
    assert any(n.startswith("unequal contact pressure") for n in notes), notes
    assert any(n.startswith("arms sent at different times: the cells' first sends are 5.0 h") for n in notes)


def test_no_holdout_is_noted(sqlite_url: str) -> None:
    wh = sent_run(sqlite_url, 100, 0, 0.2, 0.1)
    res = run_results(wh, RUN, now=NOW)
    assert res.total.lift is None and res.notes[0].startswith("no holdout")


def test_unknown_and_unsent_runs_are_refused(sqlite_url: str) -> None:
    wh = sent_run(sqlite_url, 10, 10, 0.2, 0.1, status=runs.APPROVED)
    with pytest.raises(ResultsUnavailable, match="no run nope"):
        run_results(wh, "nope")
    with pytest.raises(ResultsUnavailable, match="never sent"):
        run_results(wh, RUN)
    runs.set_status(wh.engine, RUN, runs.SENT)
    with pytest.raises(ResultsUnavailable, match="measure later"):
        run_results(wh, RUN, now=SENT - dt.timedelta(hours=1))


def test_recent_runs_and_the_chart(sqlite_url: str) -> None:
    wh = sent_run(sqlite_url, 100, 100, 0.3, 0.1)
    assert recent_sent_runs(wh, days=30) == [RUN]
    assert recent_sent_runs(wh, days=30, now=runs.utcnow() + dt.timedelta(days=40)) == []
    svg = chart_svg(run_results(wh, RUN, now=NOW))
    assert svg.startswith("<svg") and svg.count("<polyline") == 4 and "@" not in svg


def test_cli_prints_the_table_and_one_line_errors(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sent_run(sqlite_url, 300, 300, 0.3, 0.1)
    monkeypatch.setenv("CAMPAIGNOPS_WAREHOUSE_URL", sqlite_url)
    ok = CliRunner().invoke(main, ["results", RUN])
    assert ok.exit_code == 0, ok.output
    assert "all cells" in ok.output and "95% CI" in ok.output and "purchase_after_send" in ok.output
    assert "@" not in ok.output
    bad = CliRunner().invoke(main, ["results", "nope"])
    assert bad.exit_code == ResultsUnavailable.exit_code
    assert bad.output.count("\n") == 1 and bad.output.startswith("error: no run nope")


def test_the_metric_vocabulary_is_closed_at_intake() -> None:
    with pytest.raises(BriefError, match=r"kpi.metric: unknown metric .*did you mean purchase_after_send"):
        validate_brief(brief_dict(kpi={"metric": "purchase_aftr_send", "target": 1.0}))
    assert validate_brief(brief_dict(kpi={"metric": "repeat_purchases", "target": 1500.0})).kpi.target == 1500


def test_power_warning_states_the_calculation() -> None:
    small = validate_brief(_brief(control_group={"percent": 1.0, "salt": "s"},
                                  expected_audience={"min": 2000, "max": 10000}))
    line = power_warning(small)
    assert line is not None and "\n" not in line
    assert line.startswith("control_group.percent 1 is too small") and "80% power" in line
    big = validate_brief(_brief(control_group={"percent": 20.0, "salt": "s"},
                                expected_audience={"min": 100_000, "max": 200_000}))
    assert power_warning(big) is None
    none = validate_brief(_brief(control_group={"percent": 0.0, "salt": "s"}))
    assert (power_warning(none) or "").startswith("control_group.percent is 0")


def _small_holdout_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(_brief(control_group={"percent": 1.0, "salt": "s"},
                                          expected_audience={"min": 2000, "max": 10000})))
    return path


def test_intake_warns_once_and_accepts(sqlite_url: str, tmp_path: Path) -> None:
    from campaignops import audit
    from campaignops.intake import accept_brief

    wh = Warehouse(build_warehouse(sqlite_url, [customer(1)]))
    accepted = accept_brief(wh, "run-w", str(_small_holdout_file(tmp_path)))
    (warning,) = accepted.warnings
    assert warning.startswith("control_group.percent 1 is too small")
    rec = audit.latest(wh.engine, "run-w", "intake", ("accepted",))
    assert rec is not None and rec.details["warnings"] == [warning]
    fine = tmp_path / "fine.yaml"
    fine.write_text(yaml.safe_dump(_brief(expected_audience={"min": 100_000, "max": 200_000})))
    assert accept_brief(wh, "run-f", str(fine)).warnings == ()


def test_brief_check_prints_the_power_warning_and_passes(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["brief", "check", "--offline", str(_small_holdout_file(tmp_path))])
    assert result.exit_code == 0
    assert "is valid" in result.stdout and "warning:" not in result.stdout
    assert result.stderr.startswith("warning: control_group.percent 1 is too small")
    assert result.stderr.count("\n") == 1
