"""One typed settings object, read when code runs (never at import)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
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
    def prefect_home(self) -> Path:
        """Prefect's own state for runs started by campaignops."""
        return (self.home / "prefect").resolve()


class EspCredentials(BaseSettings):
    """The ESP token: a secret with no default, read only at handoff."""

    model_config = SettingsConfigDict(env_prefix="CAMPAIGNOPS_ESP_", extra="ignore",
                                      env_ignore_empty=True)

    token: SecretStr


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


# -- the ESP token ------------------------------------------------------------
BLOCK_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,126}[a-z0-9])?$")
HOW_TO_SAVE = "campaignops esp-token save --block {name}"


def esp_token_from_env() -> SecretStr | None:
    """CAMPAIGNOPS_ESP_TOKEN when it is set and not blank, else None."""
    try:
        token = EspCredentials().token  # type: ignore[call-arg]
    except ValidationError:  # missing (empty counts as missing)
        return None
    return token if token.get_secret_value().strip() else None


def _check_block_name(name: str) -> str:
    if not BLOCK_NAME_RE.match(name):
        raise CampaignOpsError(
            f"Secret block name {name!r} is not valid: use lower-case letters, digits and "
            "dashes (e.g. esp-token)"
        )
    return name


def _prefect_api() -> str:
    """Which Prefect API this process talks to, for messages (never carries a secret)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    url = PREFECT_API_URL.value()
    if not url:
        return f"the ephemeral Prefect API of PREFECT_HOME {PREFECT_HOME.value()} (no PREFECT_API_URL)"
    return re.sub(r"//[^/@]*@", "//", str(url))  # no user:password from the URL


def esp_token_from_block(name: str) -> SecretStr:
    """The token held by the Prefect Secret block ``name``; one-line error when it is missing."""
    from prefect.blocks.system import Secret

    _check_block_name(name)
    try:
        block = Secret.load(name)
    except Exception as exc:  # missing, the API unreachable, or a block that does not parse
        if isinstance(exc, ValueError) and "Unable to find block document" in str(exc):
            raise CampaignOpsError(
                f"Secret block {name!r} (CAMPAIGNOPS_ESP_TOKEN_BLOCK) does not exist on "
                f"{_prefect_api()}: create it with `{HOW_TO_SAVE.format(name=name)}` "
                "against that API, or export CAMPAIGNOPS_ESP_TOKEN"
            ) from None
        # The exception's text is left out: a block that does not parse may quote its value.
        raise CampaignOpsError(
            f"Secret block {name!r} (CAMPAIGNOPS_ESP_TOKEN_BLOCK) could not be loaded from "
            f"{_prefect_api()}: {type(exc).__name__}; check PREFECT_API_URL, that the server "
            f"runs, and the block (`{HOW_TO_SAVE.format(name=name)}` replaces it)"
        ) from None
    value = getattr(block, "value", None)  # not .get(): it would turn "12345" into an int
    secret = value.get_secret_value() if value is not None else None
    if not isinstance(secret, str) or not secret.strip():
        raise CampaignOpsError(
            f"Secret block {name!r} (CAMPAIGNOPS_ESP_TOKEN_BLOCK) does not hold a text token: "
            f"save it again with `{HOW_TO_SAVE.format(name=name)}`"
        )
    return SecretStr(secret.strip())


def save_esp_token_block(name: str, token: SecretStr) -> str:
    """Store the token in the Prefect Secret block ``name`` (overwriting it); the API used."""
    from prefect.blocks.system import Secret

    _check_block_name(name)
    if not token.get_secret_value().strip():
        raise CampaignOpsError("the ESP token is empty: give the token the ESP issued")
    try:
        Secret(value=SecretStr(token.get_secret_value().strip())).save(name, overwrite=True)
    except Exception as exc:  # the API is unreachable or refused the request
        raise CampaignOpsError(
            f"Secret block {name!r} could not be saved on {_prefect_api()}: "
            f"{type(exc).__name__}; check PREFECT_API_URL and that the server runs"
        ) from None
    return _prefect_api()


def load_esp_token(settings: Settings | None = None) -> SecretStr:
    """The ESP token: CAMPAIGNOPS_ESP_TOKEN, else the Secret block CAMPAIGNOPS_ESP_TOKEN_BLOCK."""
    token = esp_token_from_env()
    if token is not None:
        return token
    block = (settings or load_settings()).esp_token_block
    if block:
        return esp_token_from_block(block)
    raise CampaignOpsError(
        "CAMPAIGNOPS_ESP_TOKEN is not set and CAMPAIGNOPS_ESP_TOKEN_BLOCK names no Secret block: "
        "export the ESP API token, or store it with `campaignops esp-token save --block NAME` "
        "and set CAMPAIGNOPS_ESP_TOKEN_BLOCK=NAME"
    )
