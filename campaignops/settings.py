"""One typed settings object, read when code runs (never at import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from campaignops.errors import CampaignOpsError


class Settings(BaseSettings):
    """Where campaignops keeps state and which systems it talks to."""

    # An empty variable counts as unset: a deployment's job variables template an
    # unset variable as "".
    model_config = SettingsConfigDict(env_prefix="CAMPAIGNOPS_", extra="ignore",
                                      env_ignore_empty=True)

    home: Path = Field(default=Path(".campaignops"), description="local state folder")
    warehouse_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in home"
    )
    esp_url: str = Field(default="http://127.0.0.1:8765", description="ESP base URL")
    esp_sandbox_url: str | None = Field(
        default=None, description="an ESP sandbox that is not on loopback: a sandbox warehouse may hand off to it"
    )
    prefect_port: int = Field(
        default=4200, ge=1, le=65535,
        description="port of the local Prefect server (server start, demo) that runs use when "
                    "PREFECT_API_URL is unset",
    )
    prefect_server: Literal["auto", "temporary"] = Field(
        default="auto",
        description="auto: a command that needs Prefect and finds no server (and no "
                    "PREFECT_API_URL) starts the local one in the background and leaves it "
                    "running for the next; temporary: Prefect's own throwaway server per command",
    )
    esp_batch_size: int = Field(default=1000, ge=1, le=1000)
    esp_timeout_seconds: float = Field(default=10.0, gt=0)
    esp_max_attempts: int = Field(
        default=8, ge=1, le=20, description="POSTs of one batch at most (the one retry layer for 5xx/429)"
    )
    esp_backoff_seconds: float = Field(
        default=0.5, gt=0, le=30, description="first backoff after a 5xx or a timeout; doubles, full jitter"
    )
    send_grace_minutes: float = Field(
        default=15, ge=0, description="how late past send_at a handoff may still start"
    )
    esp_token_block: str | None = Field(
        default=None, description="Prefect Secret block holding the ESP token (when no env token)"
    )
    handoff_mode: Literal["http", "file"] = Field(
        default="http", description="http: batches to the ESP API; file: a CSV + manifest drop"
    )
    audit_key_block: str | None = Field(
        default=None, description="Prefect Secret block holding the audit signing key (when no env key)"
    )
    audit_anchor_file: Path | None = Field(
        default=None, description="append-only file of published audit heads; default: home/audit-anchors.jsonl"
    )
    incident_legal_kinds: str = Field(
        default="wrong_offer,wrong_audience",
        description="incident kinds that are routed to the legal contact too (comma-separated)",
    )
    file_drop_dir: Path | None = Field(
        default=None, description="where file-mode handoffs are released; default: home/drops"
    )

    @property
    def resolved_warehouse_url(self) -> str:
        """The warehouse URL, defaulting to a SQLite file under home."""
        if self.warehouse_url:
            return self.warehouse_url
        return f"sqlite:///{(self.home / 'warehouse.db').resolve()}"

    @property
    def resolved_file_drop_dir(self) -> Path:
        """The file-drop folder, defaulting to drops/ under home."""
        return (self.file_drop_dir or self.home / "drops").resolve()

    @property
    def resolved_anchor_file(self) -> Path:
        """The audit anchor file, defaulting to audit-anchors.jsonl under home."""
        return (self.audit_anchor_file or self.home / "audit-anchors.jsonl").resolve()

    @property
    def legal_kinds(self) -> frozenset[str]:
        """The incident kinds routed to legal as well as to the brief's owner."""
        return frozenset(k.strip() for k in self.incident_legal_kinds.split(",") if k.strip())

    @property
    def prefect_home(self) -> Path:
        """Prefect's own state for runs started by campaignops."""
        return (self.home / "prefect").resolve()


def load_settings(**overrides: Any) -> Settings:
    """Settings from flags (overrides) over environment over defaults; one-line error when invalid."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = f"CAMPAIGNOPS_{str(first['loc'][0]).upper()}" if first["loc"] else "a setting"
        raise CampaignOpsError(
            f"{name} is invalid: {first['msg']}; fix or unset it"
        ) from None
