"""Preflight: everything the handoff will need, checked after QA and before anyone is asked.

A run that would only fail at its handoff (no ESP token, an ESP that does not answer or
refuses the token, a send time already past, a drop folder that cannot be written) fails
here instead, with one line naming what to fix, before the first approval wait: nobody
approves a run that cannot go out. The handoff checks the same again when it starts (the
wait can be long); ``campaignops resume RUN`` continues a run that failed after its
approvals once the cause is fixed.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from campaignops import audit, runs
from campaignops.errors import CampaignOpsError, PreflightFailed
from campaignops.handoff.send_time import stale_send_time
from campaignops.secrets import load_esp_token
from campaignops.settings import Settings
from campaignops.warehouse import Warehouse

SYSTEM = "campaignops"
ESP_PROBE_TIMEOUT = 5.0  # seconds for the one GET that proves the ESP answers and takes the token


@dataclass(frozen=True)
class Preflight:
    """What the preflight checked for a run (no secrets, no personal data)."""

    run_id: str
    mode: str  # http | file
    checks: tuple[str, ...]


def _fail(wh: Warehouse, run_id: str, check: str, why: str) -> PreflightFailed:
    audit.append(wh.engine, run_id=run_id, step="preflight", action="failed", actor=SYSTEM,
                 details={"check": check, "why": why[:300]})
    return PreflightFailed(f"preflight for run {run_id}: {why}; no approver was asked, nothing was sent")


def _esp_answers(settings: Settings, token: SecretStr, campaign_id: str, run_id: str) -> str | None:
    """None when the ESP answers an authenticated GET with the token, else why not."""
    from campaignops.esp.client import EspClient

    try:
        with EspClient(settings.esp_url, token, timeout=min(settings.esp_timeout_seconds, ESP_PROBE_TIMEOUT),
                       max_attempts=1) as client:
            client.run_summary(campaign_id, run_id)
    except CampaignOpsError as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        return f"the ESP at {settings.esp_url} did not take the probe ({first}); start it or fix " \
               "CAMPAIGNOPS_ESP_URL / CAMPAIGNOPS_ESP_TOKEN"
    return None


def _folder_writable(folder: Path) -> str | None:
    """None when a file can be created (and removed) in the folder, else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".preflight-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        return (f"the drop folder {folder} is not writable ({exc.strerror or type(exc).__name__}); "
                "fix CAMPAIGNOPS_FILE_DROP_DIR or the folder's permissions")
    return None


def check_handoff_ready(wh: Warehouse, settings: Settings, run_id: str,
                        now: dt.datetime | None = None) -> Preflight:
    """The preflight step: PreflightFailed (one line, audited) unless the handoff could start."""
    run = runs.get_run(wh.engine, run_id)
    mode = settings.handoff_mode
    checks = ["send_time"]
    try:
        stale = stale_send_time(run.brief.send_at, now or dt.datetime.now(dt.UTC),
                                dt.timedelta(minutes=settings.send_grace_minutes))
    except CampaignOpsError as exc:  # a negative grace setting
        raise _fail(wh, run_id, "send_time", str(exc)) from None
    if stale is not None:
        raise _fail(wh, run_id, "send_time", "; ".join(stale))
    if mode == "http":
        checks += ["esp_token", "esp_reachable"]
        try:
            token = load_esp_token(settings)
        except CampaignOpsError as exc:
            raise _fail(wh, run_id, "esp_token", str(exc)) from None
        unreachable = _esp_answers(settings, token, run.campaign_id, run_id)
        if unreachable is not None:
            raise _fail(wh, run_id, "esp_reachable", unreachable)
    else:
        checks.append("drop_folder_writable")
        unwritable = _folder_writable(settings.resolved_file_drop_dir)
        if unwritable is not None:
            raise _fail(wh, run_id, "drop_folder_writable", unwritable)
    audit.append(wh.engine, run_id=run_id, step="preflight", action="passed", actor=SYSTEM,
                 details={"mode": mode, "checks": checks})
    return Preflight(run_id, mode, tuple(checks))
