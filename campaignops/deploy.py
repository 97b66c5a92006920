"""Deployments from deployments/prefect.yaml: load, check against briefs, serve locally."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import yaml

from campaignops.brief import load_brief
from campaignops.errors import CampaignOpsError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = PROJECT_ROOT / "deployments" / "prefect.yaml"
CAMPAIGN_ENTRYPOINT = "flows/campaign.py:campaign_run"
RESULTS_ENTRYPOINT = "flows/results.py:refresh_results"  # the daily results refresh, not a campaign
WATCH_ENTRYPOINT = "flows/watch.py:watch_campaigns"  # the daily watch (docs/watch.md), not a campaign
LIFECYCLE_ENTRYPOINT = "flows/lifecycle.py:lifecycle_scoring"  # the hourly scoring (docs/lifecycle.md)
SERVICE_ENTRYPOINTS = (RESULTS_ENTRYPOINT, WATCH_ENTRYPOINT, LIFECYCLE_ENTRYPOINT)


def load_spec(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The deployments declared in prefect.yaml, each checked against the brief it names."""
    if not path.is_file():
        raise CampaignOpsError(f"no deployments file at {path}")
    spec = yaml.safe_load(path.read_text())
    deployments: list[dict[str, Any]] = spec.get("deployments") or []
    for dep in deployments:
        if dep.get("entrypoint") in SERVICE_ENTRYPOINTS:
            continue
        brief_path = (PROJECT_ROOT / dep["parameters"]["brief_path"]).resolve()
        brief = load_brief(brief_path)
        if dep.get("triggers") and brief.audience.entered_stage is None:
            raise CampaignOpsError(f"deployment {dep['name']}: a triggered run reaches people by its audience "
                                   f"alone; give brief {brief_path.name} audience.entered_stage")
        schedules = dep.get("schedules") or []
        if brief.schedule is not None and not schedules:
            raise CampaignOpsError(f"deployment {dep['name']}: brief {brief_path.name} has a schedule; "
                                   "declare it under schedules")
        for s in schedules:
            if brief.schedule is None or s.get("cron") != brief.schedule.cron or \
                    s.get("timezone") != brief.schedule.timezone:
                raise CampaignOpsError(f"deployment {dep['name']}: schedule differs from brief "
                                       f"{brief_path.name}; make them the same")
    return deployments


def runner_deployments(deployments: list[dict[str, Any]], interval: dt.timedelta | None = None,
                       names: list[str] | None = None, mode: str | None = None) -> list[Any]:
    """RunnerDeployments of the campaign flow (brief paths made absolute).

    `interval` replaces every schedule (for trying a schedule out in seconds, not days).
    """
    from prefect.schedules import Cron, Interval

    from flows.campaign import campaign_run
    from flows.lifecycle import lifecycle_scoring
    from flows.results import refresh_results
    from flows.watch import watch_campaigns

    services: dict[str, Any] = {RESULTS_ENTRYPOINT: refresh_results, WATCH_ENTRYPOINT: watch_campaigns,
                               LIFECYCLE_ENTRYPOINT: lifecycle_scoring}
    out = []
    for dep in deployments:
        if names and dep["name"] not in names:
            continue
        if dep.get("entrypoint") in services:
            out.append(services[dep["entrypoint"]].to_deployment(
                name=dep["name"], parameters=dict(dep["parameters"]), tags=dep.get("tags"),
                description=dep.get("description"),
                schedules=[Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
                           for s in dep.get("schedules") or []]))
            continue
        params = dict(dep["parameters"])
        params["brief_path"] = str((PROJECT_ROOT / params["brief_path"]).resolve())
        if mode is not None:
            params["mode"] = mode
        if interval is not None:
            schedules = [Interval(interval)]
        else:
            schedules = [Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
                         for s in dep.get("schedules") or []]
        out.append(campaign_run.to_deployment(
            name=dep["name"], parameters=params, schedules=schedules, tags=dep.get("tags"),
            description=dep.get("description"), triggers=deployment_triggers(dep),
        ))
    if not out:
        raise CampaignOpsError("no deployment matched; see deployments/prefect.yaml for the names")
    return out


def deployment_triggers(dep: dict[str, Any]) -> list[Any]:
    """The deployment's event triggers from prefect.yaml, as Prefect's own models (checked by them)."""
    from prefect.events import DeploymentEventTrigger

    return [DeploymentEventTrigger(**{k: v for k, v in t.items() if k != "type"})
            for t in dep.get("triggers") or []]


def serve(names: list[str] | None = None, interval_seconds: float | None = None,
          mode: str | None = None) -> None:
    """Serve the deployments in this process so their schedules fire (Ctrl-C stops)."""
    from prefect import serve as prefect_serve

    interval = dt.timedelta(seconds=interval_seconds) if interval_seconds else None
    prefect_serve(*runner_deployments(load_spec(), interval, names, mode))
