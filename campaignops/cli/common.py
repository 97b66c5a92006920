"""What every command shares: one-line user errors, the settings, the warehouse, rich tables."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from campaignops.errors import BriefError, CampaignOpsError
from campaignops.settings import Settings
from campaignops.warehouse import Warehouse

F = TypeVar("F", bound=Callable[..., Any])
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Piped output (scripts, tests) is not wrapped at 80 columns: tables keep whole values.
PIPE_WIDTH = 240


def user_errors(fn: F) -> F:
    """Turn CampaignOpsError into a clean message and the error's exit code (no traceback)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BriefError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except CampaignOpsError as exc:
            lines = str(exc).splitlines()
            click.echo(f"error: {lines[0] if lines else type(exc).__name__}", err=True)
            sys.exit(exc.exit_code)

    return wrapper  # type: ignore[return-value]


def settings_of(ctx: click.Context) -> Settings:
    """The settings the main group read (flags over environment)."""
    settings: Settings = ctx.obj["settings"]
    return settings


def warehouse_of(ctx: click.Context) -> Warehouse:
    """The warehouse of the settings in force, opened (checked, migrated) once per command."""
    from campaignops.resources import open_resources

    return open_resources(settings_of(ctx)).warehouse


def export_setting(name: str, value: object) -> None:
    """A flag's value exported as CAMPAIGNOPS_<NAME>, so the flow's tasks read the same."""
    if value is not None:
        os.environ[f"CAMPAIGNOPS_{name}"] = str(value)


def console() -> Console:
    """A console on standard output: the terminal's width, or wide when piped."""
    return Console(width=None if sys.stdout.isatty() else PIPE_WIDTH, highlight=False,
                   soft_wrap=False)


def table(rows: Sequence[dict[str, Any]], *, left: Iterable[str] = (), title: str | None = None) -> Table:
    """A rich table of dict rows: columns in the first row's order, numbers right-aligned."""
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    left = set(left)
    for col in rows[0] if rows else []:
        t.add_column(col, justify="left" if col in left else "right", no_wrap=True)
    for r in rows:
        t.add_row(*(str(v) for v in r.values()))
    return t


def prefect_env(settings: Settings) -> None:
    """Prefect's environment for a command that talks to the Prefect API (home made first)."""
    from campaignops.local import apply_prefect_environment

    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    apply_prefect_environment(settings)
