"""The handoff's batches: a pure function of the approved audience, streamed from the warehouse.

Recipients of a run (``co_audience.outcome IN ('send', 'seed')``) ordered by
``(is_seed, customer_id, address_key)`` and cut every ``batch_size`` rows, so a rerun
rebuilds the same batches, the same idempotency keys and the same bodies. Both handoff
modes (ESP batches, file drop) read the audience through ``iter_batches``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops.brief import PERSONALISATION_FIELDS, Brief
from campaignops.errors import HandoffError
from campaignops.schema import audience
from campaignops.sms import placeholders, render, segments

RECIPIENT_OUTCOMES = ("send", "seed")


@dataclass(frozen=True)
class SmsMessage:
    """What makes a run's recipients SMS recipients: the text, its segment limit, and the
    send times of the countries whose quiet hours defer them (ISO-8601 UTC, by country)."""

    text: str
    max_segments: int
    deferred: Mapping[str, str] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """What an SMS batch carries besides the recipients and the batch's send time."""
        return {"text": self.text, "max_segments": self.max_segments}


# -- batches ------------------------------------------------------------------
def _check_fields(fields: Sequence[str]) -> list[str]:
    unknown = [f for f in fields if f not in PERSONALISATION_FIELDS]
    if unknown:
        raise HandoffError(
            f"unknown personalisation field(s) {', '.join(unknown)}: "
            f"use {', '.join(PERSONALISATION_FIELDS)}"
        )
    return list(dict.fromkeys(fields))


def _recipients_query(run_id: str, fields: Sequence[str], sms: bool = False) -> sa.Select[Any]:
    a = audience.c
    return (
        sa.select(
            a.customer_id, a.email, a.address_key, a.cell, a.offer_code, a.is_seed,
            *([a.country] if sms else []), *[a[f] for f in fields],
        )
        .where(a.run_id == run_id, a.outcome.in_(RECIPIENT_OUTCOMES))
        .order_by(a.is_seed, a.customer_id.is_(None), a.customer_id, a.address_key, a.row_id)
    )


def _to_recipients(
    rows: Sequence[Any], fields: Sequence[str], fallbacks: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Rows of _recipients_query as contract recipients (positional: this is the hot loop)."""
    names = tuple(fields)
    filled = [(i, fallbacks[f]) for i, f in enumerate(names) if fallbacks.get(f) is not None]
    out: list[dict[str, Any]] = []
    append = out.append
    for customer_id, email, address_key, cell, offer_code, is_seed, *values in rows:
        for i, fallback in filled:
            v = values[i]
            if v is None or (isinstance(v, str) and not v.strip()):
                values[i] = fallback
        append(
            {
                "customer_id": None if customer_id is None else int(customer_id),
                "address": email or address_key or "",
                "cell": cell,
                "offer_code": offer_code,
                "fields": dict(zip(names, values, strict=True)),
                "seed": bool(is_seed),
            }
        )
    return out


def _to_sms_recipients(
    rows: Sequence[Any], fields: Sequence[str], fallbacks: Mapping[str, str], sms: SmsMessage
) -> list[dict[str, Any]]:
    """Rows of _recipients_query(sms=True) as SMS recipients: the E.164 number, the segments of
    the message as rendered for them, and their own send time when quiet hours defer them."""
    names = tuple(fields)
    out: list[dict[str, Any]] = []
    for customer_id, _email, phone, cell, offer_code, is_seed, country, *raw in rows:
        values = [fallbacks[f] if fallbacks.get(f) is not None and (v is None or (isinstance(v, str)
                  and not v.strip())) else v for f, v in zip(names, raw, strict=True)]
        filled = {f: "" if v is None else str(v) for f, v in zip(names, values, strict=True)}
        r: dict[str, Any] = {
            "customer_id": None if customer_id is None else int(customer_id), "phone": phone or "",
            "cell": cell, "offer_code": offer_code, "fields": dict(zip(names, values, strict=True)),
            "seed": bool(is_seed), "segments": segments(render(sms.text, filled)),
        }
        if country in sms.deferred:
            r["send_at"] = sms.deferred[country]
        out.append(r)
    return out


def iter_batches(
    engine: Engine,
    run_id: str,
    batch_size: int,
    fields: Sequence[str] = (),
    fallbacks: Mapping[str, str] | None = None,
    sms: SmsMessage | None = None,
) -> Generator[tuple[int, list[dict[str, Any]]], None, None]:
    """``(batch_seq, recipients)`` for a run, streamed from the database.

    Order ``(is_seed, customer_id, address_key)`` makes the cut deterministic;
    rows are fetched ``batch_size`` at a time from one streaming cursor, so
    memory holds one batch, never the whole audience.
    """
    if batch_size < 1:
        raise HandoffError(f"batch_size must be at least 1 (got {batch_size})")
    cols = _check_fields(fields)
    fb = dict(fallbacks or {})
    stmt = _recipients_query(run_id, cols, sms is not None)
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=batch_size).execute(stmt)
        for seq, rows in enumerate(result.partitions(batch_size)):
            yield seq, (_to_recipients(rows, cols, fb) if sms is None
                        else _to_sms_recipients(rows, cols, fb, sms))


def batch_digest(recipients: list[dict[str, Any]]) -> str:
    """sha256 of the canonical JSON of a batch's recipients (sorted keys, no spaces, UTF-8).

    orjson gives, for the strings, integers, booleans and nulls of a batch, the
    bytes of ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
    (the digests in existing ledgers stay valid) about ten times faster.
    """
    return hashlib.sha256(orjson.dumps(recipients, option=orjson.OPT_SORT_KEYS)).hexdigest()


def count_recipients(engine: Engine, run_id: str) -> int:
    """How many approved recipients (send and seed rows) the run has."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(audience).where(
                    audience.c.run_id == run_id, audience.c.outcome.in_(RECIPIENT_OUTCOMES)
                )
            ).scalar_one()
        )


def personalisation(b: Brief) -> tuple[list[str], dict[str, str]]:
    """The brief's required personalisation fields (an SMS text's placeholders too) and their
    fallbacks, as the batches take them."""
    fields = [str(f) for f in b.content.required_fields]
    if b.channel == "sms" and b.content.text:
        fields = list(dict.fromkeys([*fields, *placeholders(b.content.text)]))
    return fields, {str(k): v for k, v in b.content.fallbacks.items()}
