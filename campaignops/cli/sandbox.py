"""`campaignops sandbox`: a masked copy of a warehouse (create), its proof (check), its marker (info)."""

from __future__ import annotations

import sys

import click

from campaignops.cli.common import console, prefect_env, settings_of, table, user_errors
from campaignops.errors import SandboxCheckFailed, SandboxError


@click.group("sandbox")
def sandbox_group() -> None:
    """An obfuscated copy of a warehouse: production's counts without production's people."""


@sandbox_group.command("create")
@click.option("--from", "source", required=True, help="SQLAlchemy URL of the production warehouse.")
@click.option("--to", "target", required=True, help="SQLAlchemy URL of the (empty) sandbox database.")
@click.option("--key-env", default=None,
              help="Environment variable holding the masking key [default CAMPAIGNOPS_SANDBOX_KEY].")
@click.option("--key-block", default=None, help="Prefect Secret block holding the masking key.")
@click.option("--min-domain-count", default=100, show_default=True, type=click.IntRange(1, None),
              help="Keep an e-mail domain only when at least this many customers share it.")
@click.option("--chunk-rows", default=50_000, show_default=True, type=click.IntRange(100, 1_000_000),
              help="Rows read, masked and written at a time.")
@click.option("--replace", is_flag=True, help="Rebuild a sandbox that already has data.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@user_errors
def sandbox_create(ctx: click.Context, source: str, target: str, key_env: str | None,
                   key_block: str | None, min_domain_count: int, chunk_rows: int, replace: bool,
                   quiet: bool) -> None:
    """Copy the five warehouse tables into TO, every direct identifier masked with a keyed mapping."""
    from campaignops.sandbox.create import create_sandbox
    from campaignops.secrets import sandbox_key

    if key_env and key_block:
        raise SandboxError("--key-env and --key-block both given: name one place the masking key comes from")
    if key_block:
        prefect_env(settings_of(ctx))
    key = sandbox_key(key_env, key_block)
    s = create_sandbox(source, target, key, min_domain_count=min_domain_count, chunk=chunk_rows,
                       progress=not quiet and sys.stderr.isatty(), replace=replace)
    rows = ", ".join(f"{n:,} {t}" for t, n in s.rows.items())
    click.echo(f"sandbox ready at {s.target}: {rows}; {s.kept_domains} e-mail domain(s) kept "
               f"(>= {min_domain_count} customers), key {s.key_id}, in {s.seconds:.1f} s")


@sandbox_group.command("check")
@click.option("--from", "source", required=True, help="SQLAlchemy URL of the production warehouse.")
@click.option("--to", "target", required=True, help="SQLAlchemy URL of its sandbox.")
@click.pass_context
@user_errors
def sandbox_check(ctx: click.Context, source: str, target: str) -> None:
    """Prove the sandbox: equal row counts and kept-column frequencies, no production value, k-anonymity."""
    from campaignops.sandbox.check import K_SMALL, QUASI_IDENTIFIERS, check_sandbox

    r = check_sandbox(source, target)
    rows = [{"verdict": "ok" if f.ok else "DIFFERS", "check": f.check, "production": f.production,
             "sandbox": f.sandbox} for f in r.findings]
    rows += [{"verdict": "ok" if not n else "FOUND", "check": f"production {kind}s in the sandbox",
              "production": "-", "sandbox": f"{n:,}"} for kind, n in r.leaks.items()]
    console().print(table(rows, left=("verdict", "check", "production", "sandbox")))
    click.echo(f"k-anonymity over {', '.join(QUASI_IDENTIFIERS)}: k = {r.k_anonymity} "
               f"({r.groups:,} groups; {r.customers_in_small_groups:,} customers in groups under "
               f"{K_SMALL}); reported, not enforced")
    if not r.ok:
        what = [f.check for f in r.failed] + [f"production {k}s found" for k, n in r.leaks.items() if n]
        raise SandboxCheckFailed(f"sandbox check failed: {', '.join(what[:6])}"
                                 + (f" and {len(what) - 6} more" if len(what) > 6 else ""))
    click.echo(f"sandbox check: passed ({len(r.findings)} comparisons, no production e-mail, phone or name)")


@sandbox_group.command("info")
@click.argument("url")
@user_errors
def sandbox_info(url: str) -> None:
    """Whether the warehouse at URL is a sandbox, and from which source, when and how it was masked."""
    from campaignops.sandbox.marker import read_marker
    from campaignops.warehouse import make_engine

    engine = make_engine(url)
    try:
        marker = read_marker(engine)
        shown = engine.url.render_as_string(hide_password=True)
    finally:
        engine.dispose()
    if marker is None:
        raise SandboxError(f"{shown} is not a sandbox (no co_sandbox marker)")
    shown_fields = marker.as_dict()
    shown_fields["kept_columns"] = ", ".join(marker.kept_columns)
    shown_fields["row_counts"] = ", ".join(f"{t} {n:,}" for t, n in marker.row_counts.items())
    rows = [{"field": k, "value": v} for k, v in shown_fields.items()]
    click.echo(f"{shown} is a sandbox")
    console().print(table(rows, left=("field", "value")))


@sandbox_group.command("save-key")
@click.option("--block", required=True, help="Secret block name, e.g. sandbox-key.")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the key from standard input.")
@click.pass_context
@user_errors
def sandbox_save_key(ctx: click.Context, block: str, from_stdin: bool) -> None:
    """Store the masking key in a Prefect Secret block (for `create --key-block`)."""
    from pydantic import SecretStr

    from campaignops.secrets import MIN_SANDBOX_KEY_CHARS, save_block

    prefect_env(settings_of(ctx))
    value = sys.stdin.read().strip() if from_stdin else str(
        click.prompt("masking key", hide_input=True, confirmation_prompt=True)).strip()
    if len(value) < MIN_SANDBOX_KEY_CHARS:
        raise SandboxError(f"the masking key is shorter than {MIN_SANDBOX_KEY_CHARS} characters: "
                           "use a long random value")
    where = save_block(block, SecretStr(value), "masking key")
    click.echo(f"masking key saved in Secret block {block} on {where}; use it with "
               f"`campaignops sandbox create --key-block {block}`")
