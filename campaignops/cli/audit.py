"""`campaignops audit`: a run's trail, and the chain's verification."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from campaignops.cli.common import (
    console,
    prefect_env,
    settings_of,
    table,
    user_errors,
    warehouse_of,
)
from campaignops.errors import AuditBroken, CampaignOpsError

SUMMARY_WIDTH = 160


def _full_summary(details: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in details.items() if v not in (None, ""))


def _summary(details: dict[str, Any]) -> str:
    keys = {k: v for k, v in details.items() if not isinstance(v, dict | list) or k in ("cells",)}
    return ", ".join(f"{k}={v}" for k, v in keys.items() if v not in (None, ""))[:SUMMARY_WIDTH]


@click.group("audit")
def audit_group() -> None:
    """The tamper-evident audit trail."""


@audit_group.command("show")
@click.argument("run_id")
@click.option("--full", is_flag=True,
              help=f"Every record's details whole, as JSON (the table cuts them at {SUMMARY_WIDTH} "
                   "characters and leaves nested values out).")
@click.pass_context
@user_errors
def audit_show(ctx: click.Context, run_id: str, full: bool) -> None:
    """A run's audit trail."""
    from campaignops import audit

    records = audit.trail(warehouse_of(ctx).engine, run_id)
    if not records:
        raise CampaignOpsError(f"no audit records for run {run_id}")
    if full:
        for r in records:
            signed = "signed" if r.mac else "unsigned"
            click.echo(f"{r.seq:>6} {r.created_at[:19]} {r.step} {r.action} by {r.actor} ({signed})")
            click.echo("       " + json.dumps(r.details, sort_keys=True, ensure_ascii=False, default=str))
        return
    rows = [{"seq": r.seq, "at (UTC)": r.created_at[:19], "step": r.step, "action": r.action,
             "actor": r.actor, "details": _summary(r.details)} for r in records]
    console().print(table(rows, left=("at (UTC)", "step", "action", "actor", "details")))
    if any(_summary(r.details) != _full_summary(r.details) for r in records):
        click.echo(f"details cut at {SUMMARY_WIDTH} characters: "
                   f"`campaignops audit show {run_id} --full` shows them whole")


@audit_group.command("verify")
@click.pass_context
@user_errors
def audit_verify(ctx: click.Context) -> None:
    """Check the whole chain: numbering, links, hashes, every record's MAC, every anchor."""
    from campaignops import audit

    settings = settings_of(ctx)
    v = audit.verify(warehouse_of(ctx).engine, settings.resolved_anchor_file)
    if not v.ok:
        for problem in v.problems[1:20]:
            click.echo(f"  - {problem}", err=True)
        raise AuditBroken(f"audit chain broken ({len(v.problems)} problem(s)): {v.problem}")
    signed = v.records - v.unsigned
    extra = f", {v.unsigned} unsigned from before signing began" if v.unsigned else ""
    click.echo(f"audit chain intact: {v.records} records ({signed} signed{extra}), "
               f"{v.anchors} anchor(s) checked in {settings.resolved_anchor_file}")


@audit_group.command("anchor")
@click.pass_context
@user_errors
def audit_anchor(ctx: click.Context) -> None:
    """Publish the verified chain's head to the anchor file (runs do this after every run)."""
    from campaignops import audit

    settings = settings_of(ctx)
    a = audit.anchor(warehouse_of(ctx).engine, settings.resolved_anchor_file)
    if a is None:
        click.echo("the audit chain has no signed record yet: nothing to anchor")
        return
    click.echo(f"anchored record {a.n} ({a.hash[:16]}...) in {settings.resolved_anchor_file}")


@audit_group.command("init-key")
@click.pass_context
@user_errors
def audit_init_key(ctx: click.Context) -> None:
    """Make a local audit signing key (home/audit.key, mode 600), outside the warehouse."""
    from campaignops.secrets import init_audit_key_file

    path = init_audit_key_file(settings_of(ctx))
    click.echo(f"audit signing key written to {path} (mode 600); keep it off the warehouse's "
               "storage, or move it to a Prefect Secret block with `campaignops audit save-key`")


@audit_group.command("save-key")
@click.option("--block", "block", envvar="CAMPAIGNOPS_AUDIT_KEY_BLOCK", required=True,
              help="Secret block name, e.g. audit-key [env CAMPAIGNOPS_AUDIT_KEY_BLOCK].")
@click.pass_context
@user_errors
def audit_save_key(ctx: click.Context, block: str) -> None:
    """Store the audit key in use (env or key file) in a Prefect Secret block."""
    from pydantic import SecretStr

    from campaignops.secrets import audit_key, save_block

    settings = settings_of(ctx)
    prefect_env(settings)
    where = save_block(block, SecretStr(audit_key(settings).decode()), "audit key")
    click.echo(f"audit key saved in Secret block {block} on {where}; runs read it with "
               f"CAMPAIGNOPS_AUDIT_KEY_BLOCK={block} when CAMPAIGNOPS_AUDIT_KEY is unset")


def _actor(name: str | None) -> str:
    """Who makes an export: --as, else the operating-system user."""
    import getpass

    return (name or getpass.getuser()).strip()[:254] or "unknown"


def _export(engine: Any, f: Any, out: Path, actor: str | None, what: str) -> None:
    """Write the addresses to the new file, audited; say how many (never which)."""
    from campaignops.deliveries import export

    n = export(engine, f, out, _actor(actor), what)
    click.echo(f"exported {n:,} rows to {out} (mode 600); the export is in the audit trail")


def print_counts(rows: Any, count_only: bool, by_run: bool = False) -> None:
    """Recipient counts as a table (or the total alone); never an address."""
    from campaignops.deliveries import total

    customers, seeds = total(rows)
    if count_only:
        click.echo(str(customers))
        return
    if not rows:
        click.echo("no recipients match")
        return
    out = []
    for r in rows:
        row: dict[str, Any] = {}
        if by_run:
            row |= {"campaign": r.campaign_id, "run": r.run_id}
        row |= {"outcome": r.outcome, "cell": r.cell or "-", "offer": r.offer_code or "-",
                "customers": f"{r.customers:,}", "seeds": f"{r.seeds:,}"}
        out.append(row)
    console().print(table(out, left=("campaign", "run", "outcome", "cell", "offer")))
    click.echo(f"total: {customers:,} customers, {seeds:,} seed addresses")


def listing_options(fn: Any) -> Any:
    """--count, --out FILE, --as NAME, the context and one-line errors."""
    fn = user_errors(fn)
    fn = click.pass_context(fn)
    fn = click.option("--as", "actor", default=None, help="Who exports (default: the OS user).")(fn)
    fn = click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                      help="Write the addresses to this new CSV file (mode 600); the export is "
                           "audited.")(fn)
    return click.option("--count", "count_only", is_flag=True,
                        help="Print the number of customers only.")(fn)


@audit_group.command("recipients")
@click.argument("run_id")
@click.option("--cell", default=None, help="Only this cell of the run.")
@click.option("--offer", "offer_code", default=None, help="Only recipients of this offer.")
@click.option("--outcome", type=click.Choice(["accepted", "rejected", "control"]), default=None,
              help="accepted or rejected by the ESP, or held out (control).")
@listing_options
def audit_recipients(ctx: click.Context, run_id: str, cell: str | None, offer_code: str | None,
                     outcome: str | None, count_only: bool, out: Path | None, actor: str | None) -> None:
    """Who a run reached, from the permanent delivery record: counts, or an audited export."""
    from campaignops.deliveries import Filter, check_run_filter, recipient_counts

    engine = warehouse_of(ctx).engine
    if out is not None:
        check_run_filter(engine, run_id, cell, offer_code, outcome)
        _export(engine, Filter(run_id=run_id, cell=cell, offer_code=offer_code, outcome=outcome),
                out, actor, "recipients")
        return
    print_counts(recipient_counts(engine, run_id, cell, offer_code, outcome), count_only)


@audit_group.command("who-received")
@click.option("--offer", "offer_code", required=True, help="The offer code.")
@click.option("--campaign", "campaign_id", default=None, help="Only this campaign's runs.")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), default=None,
              help="Only batches the ESP acknowledged on or after this UTC date.")
@listing_options
def audit_who_received(ctx: click.Context, offer_code: str, campaign_id: str | None,
                       since: dt.datetime | None, count_only: bool, out: Path | None,
                       actor: str | None) -> None:
    """Everyone the ESP accepted an offer for, across runs: counts, or an audited export."""
    from campaignops.deliveries import Filter, require_offer, who_received

    engine = warehouse_of(ctx).engine
    if out is not None:
        require_offer(engine, offer_code)
        _export(engine, Filter(offer_code=offer_code, outcome="accepted", campaign_id=campaign_id,
                               since=since), out, actor, "who-received")
        return
    print_counts(who_received(engine, offer_code, campaign_id, since), count_only, by_run=True)
