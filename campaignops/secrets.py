"""Secrets, behind one small resource: the ESP token and the audit signing key.

Each secret comes from an environment variable, else a Prefect Secret block named by a
setting, else (the audit key only) a key file in the home folder made by
`campaignops audit init-key`. None of them is ever written to the warehouse, a log, an
artifact or an error message; `SecretStr` keeps them out of reprs.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
from pathlib import Path

from pydantic import SecretStr

from campaignops.errors import CampaignOpsError
from campaignops.settings import Settings, load_settings

BLOCK_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,126}[a-z0-9])?$")
ESP_TOKEN_ENV = "CAMPAIGNOPS_ESP_TOKEN"
AUDIT_KEY_ENV = "CAMPAIGNOPS_AUDIT_KEY"
AUDIT_KEY_FILE = "audit.key"
MIN_AUDIT_KEY_CHARS = 32


class SecretMissing(CampaignOpsError):
    """A secret the step needs is not set anywhere it may come from."""


def _env(name: str) -> SecretStr | None:
    value = os.environ.get(name, "")
    return SecretStr(value.strip()) if value.strip() else None


def _check_block_name(name: str) -> str:
    if not BLOCK_NAME_RE.match(name):
        raise CampaignOpsError(
            f"Secret block name {name!r} is not valid: use lower-case letters, digits and "
            "dashes (e.g. esp-token)"
        )
    return name


def prefect_api() -> str:
    """Which Prefect API this process talks to, for messages (never carries a secret)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    url = PREFECT_API_URL.value()
    if not url:
        return f"the ephemeral Prefect API of PREFECT_HOME {PREFECT_HOME.value()} (no PREFECT_API_URL)"
    return re.sub(r"//[^/@]*@", "//", str(url))  # no user:password from the URL


def from_block(name: str, setting: str, how_to_save: str) -> SecretStr:
    """The text held by the Prefect Secret block ``name``; one line naming ``setting`` when not."""
    from prefect import get_client
    from prefect.blocks.system import Secret
    from prefect.exceptions import ObjectNotFound

    _check_block_name(name)
    save = how_to_save.format(name=name)
    try:
        with get_client(sync_client=True) as client:
            client.read_block_document_by_name(name, block_type_slug="secret")
        block = Secret.load(name)
    except ObjectNotFound:
        raise SecretMissing(
            f"Secret block {name!r} ({setting}) does not exist on {prefect_api()}: create it "
            f"with `{save}` against that API"
        ) from None
    except Exception as exc:  # the API unreachable, or a block that does not parse
        # The exception's text is left out: a block that does not parse may quote its value.
        raise CampaignOpsError(
            f"Secret block {name!r} ({setting}) could not be loaded from {prefect_api()}: "
            f"{type(exc).__name__}; check PREFECT_API_URL, that the server runs, and the block "
            f"(`{save}` replaces it)"
        ) from None
    value = getattr(block, "value", None)  # not .get(): it would turn "12345" into an int
    secret = value.get_secret_value() if value is not None else None
    if not isinstance(secret, str) or not secret.strip():
        raise CampaignOpsError(
            f"Secret block {name!r} ({setting}) does not hold text: save it again with `{save}`")
    return SecretStr(secret.strip())


def save_block(name: str, value: SecretStr, what: str) -> str:
    """Store ``value`` in the Prefect Secret block ``name`` (overwriting it); the API used."""
    from prefect.blocks.system import Secret

    _check_block_name(name)
    if not value.get_secret_value().strip():
        raise CampaignOpsError(f"the {what} is empty: give the {what} to store")
    try:
        Secret(value=SecretStr(value.get_secret_value().strip())).save(name, overwrite=True)
    except Exception as exc:  # the API is unreachable or refused the request
        raise CampaignOpsError(
            f"Secret block {name!r} could not be saved on {prefect_api()}: "
            f"{type(exc).__name__}; check PREFECT_API_URL and that the server runs"
        ) from None
    return prefect_api()


# -- the ESP token --------------------------------------------------------------------
HOW_TO_SAVE_ESP_TOKEN = "campaignops esp-token save --block {name}"


def esp_token_from_env() -> SecretStr | None:
    """CAMPAIGNOPS_ESP_TOKEN when it is set and not blank, else None."""
    return _env(ESP_TOKEN_ENV)


def load_esp_token(settings: Settings | None = None) -> SecretStr:
    """The ESP token: CAMPAIGNOPS_ESP_TOKEN, else the Secret block CAMPAIGNOPS_ESP_TOKEN_BLOCK."""
    token = esp_token_from_env()
    if token is not None:
        return token
    block = (settings or load_settings()).esp_token_block
    if block:
        try:
            return from_block(block, "CAMPAIGNOPS_ESP_TOKEN_BLOCK", HOW_TO_SAVE_ESP_TOKEN)
        except SecretMissing as exc:
            raise SecretMissing(f"{exc}, or export CAMPAIGNOPS_ESP_TOKEN") from None
    raise SecretMissing(
        "CAMPAIGNOPS_ESP_TOKEN is not set and CAMPAIGNOPS_ESP_TOKEN_BLOCK names no Secret block: "
        "export the ESP API token, or store it with `campaignops esp-token save --block NAME` "
        "and set CAMPAIGNOPS_ESP_TOKEN_BLOCK=NAME"
    )


# -- the audit signing key -------------------------------------------------------------
HOW_TO_SAVE_AUDIT_KEY = "campaignops audit save-key --block {name}"
_cache: dict[tuple[str, str], bytes] = {}
_lock = threading.Lock()


def audit_key_file(settings: Settings) -> Path:
    """Where `campaignops audit init-key` keeps a local key (outside the warehouse)."""
    return settings.home.resolve() / AUDIT_KEY_FILE


def _audit_key_text(settings: Settings) -> tuple[str, str]:
    """(where it came from, the key) in order: environment, Secret block, key file."""
    env = _env(AUDIT_KEY_ENV)
    if env is not None:
        return AUDIT_KEY_ENV, env.get_secret_value()
    if settings.audit_key_block:
        block = settings.audit_key_block
        value = from_block(block, "CAMPAIGNOPS_AUDIT_KEY_BLOCK", HOW_TO_SAVE_AUDIT_KEY)
        return f"Secret block {block}", value.get_secret_value()
    path = audit_key_file(settings)
    if path.is_file():
        return str(path), path.read_text(encoding="utf-8").strip()
    raise SecretMissing(
        "no audit signing key: export CAMPAIGNOPS_AUDIT_KEY, set CAMPAIGNOPS_AUDIT_KEY_BLOCK to "
        f"a Prefect Secret block, or run `campaignops audit init-key` (writes {path}, mode 600)"
    )


def audit_key(settings: Settings | None = None) -> bytes:
    """The key that signs audit records (read once per process and source)."""
    s = settings or load_settings()
    source, text = _audit_key_text(s)
    if len(text) < MIN_AUDIT_KEY_CHARS:
        raise CampaignOpsError(
            f"the audit signing key from {source} is shorter than {MIN_AUDIT_KEY_CHARS} "
            "characters: use `campaignops audit init-key` or a long random value")
    fingerprint = hashlib.sha256(text.encode()).hexdigest()
    with _lock:
        return _cache.setdefault((source, fingerprint), text.encode())


def key_id(key: bytes) -> str:
    """A public name for a key (which key signed a record), not a way to guess it."""
    return hmac.new(key, b"campaignops audit key id", hashlib.sha256).hexdigest()[:16]


def init_audit_key_file(settings: Settings) -> Path:
    """Write a new random audit key to the home folder (mode 600); refuse to replace one."""
    path = audit_key_file(settings)
    if path.exists():
        raise CampaignOpsError(f"an audit key already exists at {path}: keep it (records signed "
                               "with it verify only with it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(secrets.token_urlsafe(48) + "\n")
    return path


# -- the sandbox masking key -------------------------------------------------------------
SANDBOX_KEY_ENV = "CAMPAIGNOPS_SANDBOX_KEY"
HOW_TO_SAVE_SANDBOX_KEY = "campaignops sandbox save-key --block {name}"
MIN_SANDBOX_KEY_CHARS = 32


class SandboxKeyMissing(SecretMissing):
    """No masking key was given: a sandbox is never built without one."""

    exit_code = 11  # the code of every SandboxError


def sandbox_key(env_var: str | None = None, block: str | None = None) -> bytes:
    """The masking key: the Prefect Secret block ``block`` when given, else the variable ``env_var``."""
    if block:
        text = from_block(block, "--key-block", HOW_TO_SAVE_SANDBOX_KEY).get_secret_value()
        source = f"Secret block {block}"
    else:
        name = env_var or SANDBOX_KEY_ENV
        value = _env(name)
        if value is None:
            raise SandboxKeyMissing(
                f"no masking key: {name} is not set; export a long random key (e.g. "
                f"`export {name}=$(python -c 'import secrets; print(secrets.token_urlsafe(48))')`) "
                "or pass --key-block NAME")
        text, source = value.get_secret_value(), name
    if len(text) < MIN_SANDBOX_KEY_CHARS:
        raise CampaignOpsError(
            f"the masking key from {source} is shorter than {MIN_SANDBOX_KEY_CHARS} characters: "
            "use a long random value")
    return text.encode()


def sandbox_key_id(key: bytes) -> str:
    """A public fingerprint of a masking key (which key built a sandbox), not a way to guess it."""
    return hmac.new(key, b"campaignops sandbox key id", hashlib.sha256).hexdigest()[:16]
