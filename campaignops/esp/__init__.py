"""The ESP handoff over HTTP: the client and a loopback sandbox (docs/esp-contract.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from campaignops.esp.client import BatchAck, BatchTooLarge, EspClient, idempotency_key

if TYPE_CHECKING:
    from campaignops.esp.sandbox import EspSandbox, Faults

__all__ = ["BatchAck", "BatchTooLarge", "EspClient", "EspSandbox", "Faults", "idempotency_key"]


def __getattr__(name: str) -> Any:
    # The sandbox (http.server) loads only when asked for, so that
    # `python -m campaignops.esp.sandbox` runs it cleanly.
    if name in ("EspSandbox", "Faults"):
        from campaignops.esp import sandbox

        return getattr(sandbox, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
