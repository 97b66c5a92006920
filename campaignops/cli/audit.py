"""`campaignops audit`: a run's trail, and the chain's verification."""

from __future__ import annotations

from typing import Any

import click

from campaignops.cli.common import console, table, user_errors, warehouse_of
from campaignops.errors import CampaignOpsError

SUMMARY_WIDTH = 160


def _summary(details: dict[str, Any]) -> str:
    keys = {k: v for k, v in details.items() if not isinstance(v, dict | list) or k in ("cells",)}
    return ", ".join(f"{k}={v}" for k, v in keys.items() if v not in (None, ""))[:SUMMARY_WIDTH]


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident audit trail."""


@audit_group.command("show")
@click.argument("run_id")
@click.pass_context
@user_errors
def audit_show(ctx: click.Context, run_id: str) -> None:
    """A run's audit trail."""
    from campaignops import audit

    records = audit.trail(warehouse_of(ctx).engine, run_id)
    if not records:
        raise CampaignOpsError(f"no audit records for run {run_id}")
    rows = [{"seq": r.seq, "at (UTC)": r.created_at[:19], "step": r.step, "action": r.action,
             "actor": r.actor, "details": _summary(r.details)} for r in records]
    console().print(table(rows, left=("at (UTC)", "step", "action", "actor", "details")))


@audit_group.command("verify")
@click.pass_context
@user_errors
def audit_verify(ctx: click.Context) -> None:
    """Re-compute the whole hash chain; exit 1 at the first record that does not hold."""
    from campaignops import audit

    v = audit.verify(warehouse_of(ctx).engine)
    if not v.ok:
        raise CampaignOpsError(f"audit chain broken at record {v.first_bad_seq}: {v.problem}")
    click.echo(f"audit chain intact: {v.records} records")
