"""The lifecycle scoring model: validation (every problem at once), its schema, the reference."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from campaignops.errors import LifecycleModelError
from campaignops.lifecycle.model import (
    DEFAULT_MODEL,
    load_model,
    model_json_schema,
    next_stage,
    score_of,
    validate_model,
)

ROOT = Path(__file__).resolve().parents[1]
AS_OF = dt.datetime(2026, 11, 1, 12, 0, 0)


def _raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEFAULT_MODEL.read_text())
    return data


@pytest.mark.unit
def test_default_model_loads() -> None:
    model = load_model()
    assert model.version == "2026.12-1"
    assert model.manual_stages == ["sql", "opportunity"]
    assert model.score_stages == [(3, 60.0), (2, 30.0), (1, 10.0)]


@pytest.mark.unit
def test_every_problem_at_once() -> None:
    raw = copy.deepcopy(_raw())
    raw["stages"][2]["min_score"] = 5
    raw["recycle"][0]["to"] = "sql"
    raw["fit"][0]["rule"]["field"] = "emial_opt_in"
    with pytest.raises(LifecycleModelError) as err:
        validate_model(raw, "bad.yaml")
    assert err.value.exit_code == 16
    assert err.value.count == 4
    text = str(err.value)
    assert "stages[2].min_score" in text and "did you mean email_opt_in" in text
    assert "recycle[0].to: sql is a manual stage" in text


@pytest.mark.unit
def test_type_problems_name_the_field() -> None:
    raw = copy.deepcopy(_raw())
    raw["sla"] = {"mql_accept_hrs": 4}
    raw["engagement"]["half_life_days"] = -1
    with pytest.raises(LifecycleModelError) as err:
        validate_model(raw, "bad.yaml")
    assert {p.split(":")[0] for p in err.value.problems} == {
        "sla.mql_accept_hours", "sla.mql_accept_hrs", "engagement.half_life_days"}


@pytest.mark.unit
def test_published_schema_is_current() -> None:
    published = json.loads((ROOT / "docs" / "lifecycle.schema.json").read_text())
    assert published == model_json_schema(), "run `campaignops lifecycle schema > docs/lifecycle.schema.json`"


@pytest.mark.unit
def test_reference_decays_by_half_life() -> None:
    model = load_model()
    row = {"email_opt_in": False, "country": "FR", "lifetime_value": 0, "last_open_at": None,
           "last_purchase_at": None}
    assert score_of(model, row, [("form_submit", AS_OF - dt.timedelta(days=14))], AS_OF) == pytest.approx(7.5)
    assert score_of(model, row, [("form_submit", AS_OF - dt.timedelta(days=181))], AS_OF) == 0.0
    assert score_of(model, row | {"last_open_at": AS_OF - dt.timedelta(days=28)}, None, AS_OF) == \
        pytest.approx(25 / 4)


@pytest.mark.unit
def test_moves_forward_by_score_backward_only_by_recycle() -> None:
    model = load_model()
    assert next_stage(model, 3, 65, "lead").stage == "mql"
    assert next_stage(model, 1, 15, "mql") == next_stage(model, 1, 15, "sql")
    assert next_stage(model, 1, 15, "mql").reason == "score_decayed"
    assert next_stage(model, 2, 45, "mql").reason is None  # above the recycle floor: stays
    assert next_stage(model, 0, 0, "lead").stage == "lead"  # no backward move without a rule
    assert next_stage(model, 0, 0, None).reason == "initial"
