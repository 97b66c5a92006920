"""The handoff on a sandbox warehouse: only to the ESP sandbox or a file drop, else refused."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from campaignops import audit
from campaignops.errors import SandboxHandoffRefused
from campaignops.sandbox.marker import is_sandbox
from campaignops.settings import Settings
from campaignops.warehouse import Warehouse

SYSTEM = "campaignops"


def _normal(url: str) -> tuple[str, str, int | None, str]:
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port or default,
            parts.path.rstrip("/"))


def is_loopback(url: str) -> bool:
    """Whether the URL's host is this machine (localhost, 127.0.0.0/8, ::1)."""
    host = _normal(url)[1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sandbox_esp_allowed(settings: Settings) -> bool:
    """Whether the configured ESP is an ESP sandbox: on loopback, or CAMPAIGNOPS_ESP_SANDBOX_URL."""
    if is_loopback(settings.esp_url):
        return True
    return bool(settings.esp_sandbox_url) and _normal(settings.esp_url) == _normal(
        str(settings.esp_sandbox_url))


def refuse_real_esp(wh: Warehouse, settings: Settings, run_id: str) -> bool:
    """On a sandbox warehouse refuse (audited) any handoff but the ESP sandbox or a file drop.

    Returns whether the warehouse is a sandbox. Called before the token is read or
    anything is staged, so nothing is sent.
    """
    if not is_sandbox(wh.engine):
        return False
    if settings.handoff_mode == "file" or sandbox_esp_allowed(settings):
        return True
    host = _normal(settings.esp_url)[1] or "(no host)"
    why = (f"this warehouse is a sandbox (masked copy) and CAMPAIGNOPS_ESP_URL points at {host}, "
           "which is not the ESP sandbox: use a loopback ESP sandbox, CAMPAIGNOPS_ESP_SANDBOX_URL, "
           "or --handoff file")
    audit.append(wh.engine, run_id=run_id, step="handoff", action="refused", actor=SYSTEM,
                 details={"why": why[:300], "esp_host": host[:200]})
    raise SandboxHandoffRefused(f"run {run_id}: {why}; nothing was sent")
