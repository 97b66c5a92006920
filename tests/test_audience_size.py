"""A count outside the brief's expected_audience is said at once: `brief check --count`, the dry run."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from campaignops import runs
from campaignops.brief import Brief, load_brief
from campaignops.cli import main
from campaignops.resources import warehouse_for
from campaignops.segmentation import count_sends, segment_audience, size_warning
from tests.factories import AS_OF, brief_dict, build_warehouse, customer

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
WINBACK = ROOT / "examples" / "briefs" / "winback.yaml"


def nowhere_brief(tmp_path: Path) -> Path:
    """winback.yaml aimed at a valid country no customer lives in (AQ: Antarctica)."""
    data = yaml.safe_load(WINBACK.read_text(encoding="utf-8"))
    data["audience"]["include"]["all"][2] = {"field": "country", "op": "in", "value": ["AQ"]}
    path = tmp_path / "nowhere.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_count_sends_equals_what_segmentation_materialises(db_url: str) -> None:
    """The count is the segmentation's own SQL: the same number of sends, nothing stored."""
    rows = [customer(i, email=f"p{i}@example.com") for i in range(1, 301)]
    rows += [customer(301, email="p1@example.com"), customer(302, email_opt_in=False)]
    build_warehouse(db_url, rows).dispose()
    wh = warehouse_for(db_url)
    brief = Brief.model_validate(brief_dict(control_group={"percent": 10, "salt": "s"},
                                            expected_audience={"min": 1, "max": 1000}))
    counted = count_sends(wh, brief, AS_OF)
    run_id = str(uuid.uuid4())
    runs.register_run(wh.engine, run_id, brief, "t.yaml", AS_OF)
    wf = segment_audience(wh, run_id)
    assert counted == sum(wf.cells.values()) and 240 < counted < 300
    assert count_sends(wh, brief, AS_OF) == counted  # counting stored nothing


def test_size_warning_only_outside_the_range() -> None:
    """Inside the range nothing; below or above one line naming the range and where to read."""
    brief = Brief.model_validate(brief_dict(expected_audience={"min": 100, "max": 5000}))
    assert size_warning(brief, 100) is None and size_warning(brief, 5000) is None
    zero = size_warning(brief, 0)
    assert zero is not None and zero.startswith("warning: 0 send recipients is below the brief's "
                                                "expected_audience 100..5,000")
    assert "misspelt" in zero and "docs/segmentation.md#" in zero and "\n" not in zero
    above = size_warning(brief, 6000)
    assert above is not None and "6,000 send recipients is above" in above and "misspelt" not in above


def test_brief_check_count_says_the_count_and_warns_outside_the_range(tmp_path: Path) -> None:
    """`brief check --count`: the count against expected_audience; a warning, exit 0."""
    runner = CliRunner()
    home = ["--home", str(tmp_path / "home")]
    assert runner.invoke(main, [*home, "warehouse", "init", "--customers", "3000", "--quiet"]).exit_code == 0
    ok = runner.invoke(main, [*home, "brief", "check", "--count", str(WINBACK)])
    assert ok.exit_code == 0, ok.output
    assert "is valid" in ok.output and "send recipients now: " in ok.output
    assert "(expected_audience 1,000..2,000,000)" in ok.output
    empty = runner.invoke(main, [*home, "brief", "check", "--count", str(nowhere_brief(tmp_path))])
    assert empty.exit_code == 0, empty.output
    assert "send recipients now: 0 (expected_audience 1,000..2,000,000)" in empty.output
    assert "warning: 0 send recipients is below the brief's expected_audience" in empty.output
    both = runner.invoke(main, [*home, "brief", "check", "--count", "--offline", str(WINBACK)])
    assert both.exit_code == 1 and "drop --offline" in both.output


def test_old_behaviour_is_gone_a_typo_is_refused_before_any_count(tmp_path: Path) -> None:
    """country: Germany never reaches a count: intake names DE."""
    data = yaml.safe_load(WINBACK.read_text(encoding="utf-8"))
    data["audience"]["include"]["all"][2] = {"field": "country", "op": "eq", "value": "Germany"}
    path = tmp_path / "germany.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = CliRunner().invoke(main, ["brief", "check", "--offline", str(path)])
    assert result.exit_code == 2 and "did you mean DE (Germany)?" in result.output
    assert load_brief(nowhere_brief(tmp_path)).campaign_id == "winback-lapsed-customers"
