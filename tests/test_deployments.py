"""deployments/prefect.yaml: every deployment points at a real flow and a valid brief."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from campaignops.brief import load_brief
from campaignops.deploy import deployment_triggers, load_spec, runner_deployments
from tasks.lifecycle import TRANSITIONED

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]


def test_every_deployment_matches_its_brief() -> None:
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    names = set()
    for dep in spec["deployments"]:
        module_path, func = dep["entrypoint"].split(":")
        module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, func)
        if dep["name"] == "refresh-results":  # not a campaign: the daily results refresh
            assert flow.name == "refresh-results" and dep["parameters"] == {"days": 30}
            (sched,) = dep["schedules"]
            assert sched["cron"] == "0 6 * * *" and sched["active"]
            continue
        if dep["name"] == "watch-campaigns":  # not a campaign: the daily watch (docs/watch.md)
            assert flow.name == "watch-campaigns" and dep["parameters"] == {"runs": 8}
            (sched,) = dep["schedules"]
            assert sched["cron"] == "0 7 * * *" and sched["active"]
            continue
        if dep["name"] == "lifecycle-scoring":  # not a campaign: the hourly scoring (docs/lifecycle.md)
            assert flow.name == "lifecycle-scoring"
            assert (ROOT / dep["parameters"]["model_path"]).is_file()
            (sched,) = dep["schedules"]
            assert sched["cron"] == "0 * * * *" and sched["active"]
            continue
        assert flow.name == "campaign-run"
        brief = load_brief(ROOT / dep["parameters"]["brief_path"])
        assert dep["name"] == brief.campaign_id
        names.add(dep["name"])
        if brief.schedule is None:
            assert not dep["schedules"], f"{dep['name']}: a brief without schedule has no schedule"
        else:
            (sched,) = dep["schedules"]
            assert sched["cron"] == brief.schedule.cron
            assert sched["timezone"] == brief.schedule.timezone
        env = dep["work_pool"]["job_variables"]["env"]
        assert "CAMPAIGNOPS_ESP_TOKEN" in env
        assert env["CAMPAIGNOPS_ESP_TOKEN_BLOCK"] == "esp-token"  # the Secret block, by name
        assert "CAMPAIGNOPS_HANDOFF_MODE" in env
        if brief.audience.entered_stage is not None:  # a stage-triggered campaign: its trigger
            (trig,) = deployment_triggers(dep)
            assert trig.expect == {TRANSITIONED}
            assert trig.match.model_dump() == {
                "prefect.resource.id": f"campaignops.lifecycle.stage.{brief.audience.entered_stage}"}
            assert trig.posture == "Reactive" and trig.threshold == 1 and trig.enabled
            assert trig.parameters is None  # the deployment's own: its brief, mode full
        else:
            assert not dep.get("triggers")
    assert names == {"weekly-newsletter", "winback-lapsed-customers", "mql-nurture"}
    text = (ROOT / "deployments" / "prefect.yaml").read_text()
    assert "token:" not in text.lower().replace("campaignops_esp_token:", "")


def test_the_triggered_deployment_carries_its_trigger_to_prefect() -> None:
    (dep,) = runner_deployments(load_spec(), names=["mql-nurture"])
    (trig,) = dep.triggers
    assert trig.expect == {TRANSITIONED} and dep.parameters["brief_path"].endswith("mql-nurture.yaml")
    assert dep.parameters["mode"] == "full" and not dep.schedules
