"""One typed settings object, read when code runs (never at import)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from campaignops.errors import CampaignOpsError


class Settings(BaseSettings):
    """Where campaignops keeps state and which systems it talks to."""

    model_config = SettingsConfigDict(env_prefix="CAMPAIGNOPS_", extra="ignore")

    home: Path = Field(default=Path(".campaignops"), description="local state folder")
    warehouse_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in home"
    )
    esp_url: str = Field(default="http://127.0.0.1:8765", description="ESP base URL")
    esp_batch_size: int = Field(default=1000, ge=1, le=1000)
    esp_timeout_seconds: float = Field(default=10.0, gt=0)
    send_grace_minutes: float = Field(
        default=15, ge=0, description="how late past send_at a handoff may still start"
    )

    @property
    def resolved_warehouse_url(self) -> str:
        """The warehouse URL, defaulting to a SQLite file under home."""
        if self.warehouse_url:
            return self.warehouse_url
        return f"sqlite:///{(self.home / 'warehouse.db').resolve()}"

    @property
    def prefect_home(self) -> Path:
        """Prefect's own state for runs started by campaignops."""
        return (self.home / "prefect").resolve()


class EspCredentials(BaseSettings):
    """The ESP token: a secret with no default, read only at handoff."""

    model_config = SettingsConfigDict(env_prefix="CAMPAIGNOPS_ESP_", extra="ignore")

    token: SecretStr


def load_settings(**overrides: Any) -> Settings:
    """Settings from flags (overrides) over environment over defaults."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)


def load_esp_token() -> SecretStr:
    """The ESP token from CAMPAIGNOPS_ESP_TOKEN, or a clear error."""
    try:
        return EspCredentials().token  # type: ignore[call-arg]
    except Exception as exc:  # pydantic ValidationError: missing or empty
        raise CampaignOpsError(
            "CAMPAIGNOPS_ESP_TOKEN is not set: export the ESP API token "
            "(the sandbox prints its token when it starts)"
        ) from exc
