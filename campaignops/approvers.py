"""Approvers and their personal keys (shown once, stored as a salted PBKDF2 hash)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops.errors import CampaignOpsError
from campaignops.runs import utcnow
from campaignops.schema import approvers

KDF_ITERATIONS = 200_000


def _hash_key(key: str, salt: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", key.encode(), bytes.fromhex(salt), KDF_ITERATIONS).hex()


def add_approver(engine: Engine, name: str, kind: str = "person", replace: bool = False) -> str:
    """Register an approver and return their new personal key (shown once, stored hashed)."""
    name = name.strip()
    if not name:
        raise CampaignOpsError("approver NAME is empty: give the name the brief lists")
    key = secrets.token_urlsafe(24)
    salt = secrets.token_hex(16)
    row = {"name": name, "key_salt": salt, "key_hash": _hash_key(key, salt), "kind": kind,
           "created_at": utcnow()}
    with engine.begin() as conn:
        exists = conn.execute(sa.select(approvers.c.name).where(approvers.c.name == name)).first()
        if exists and not replace:
            raise CampaignOpsError(
                f"approver {name} already has a key: pass --rotate to issue a new one"
            )
        if exists:
            conn.execute(sa.update(approvers).where(approvers.c.name == name).values(**row))
        else:
            conn.execute(sa.insert(approvers).values(**row))
    return key


def approver_kind(engine: Engine, name: str) -> str | None:
    """person, demo, or None when not registered."""
    with engine.connect() as conn:
        return conn.execute(sa.select(approvers.c.kind).where(approvers.c.name == name)).scalar()


def verify_key(engine: Engine, name: str, key: str) -> bool:
    """True when the key is the approver's registered key (constant-time compare)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(approvers.c.key_salt, approvers.c.key_hash).where(approvers.c.name == name)
        ).first()
    if row is None or not key:
        return False
    return hmac.compare_digest(_hash_key(key, row.key_salt), row.key_hash)


def list_approvers(engine: Engine) -> list[dict[str, object]]:
    """Every registered approver: name, kind and when the key was issued (never a key or hash)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(approvers.c.name, approvers.c.kind, approvers.c.created_at)
                            .order_by(approvers.c.name)).all()
    return [{"name": r.name, "kind": r.kind, "key issued (UTC)": f"{r.created_at:%Y-%m-%d %H:%M}"}
            for r in rows]
