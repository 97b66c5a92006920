"""Small hand-made warehouses for tests: exact rows, exact expectations."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from campaignops import migrations
from campaignops.schema import (
    contact_history,
    customers,
    offers,
    seed_recipients,
    suppressions,
    warehouse_metadata,
)
from campaignops.warehouse import make_engine

AS_OF = dt.datetime(2026, 11, 1, 12, 0, 0)


def customer(cid: int, **kw: Any) -> dict[str, Any]:
    """A customer row with sensible defaults; keyword arguments override."""
    row: dict[str, Any] = {
        "customer_id": cid,
        "email": f"person{cid}@example.com",
        "phone": None,
        "first_name": f"Name{cid}",
        "last_name": "Example",
        "country": "US",
        "region": "NY",
        "language": "en",
        "signup_date": dt.date(2020, 1, 1),
        "lifecycle_stage": "customer",
        "lead_score": 50,
        "loyalty_tier": "silver",
        "lifetime_value": Decimal("100.00"),
        "last_purchase_at": AS_OF - dt.timedelta(days=200),
        "last_open_at": AS_OF - dt.timedelta(days=10),
        "household_id": cid,
        "email_opt_in": True,
        "sms_opt_in": False,
    }
    row.update(kw)
    return row


def build_warehouse(url: str, rows: list[dict[str, Any]], *, supp: list[dict[str, Any]] = (),  # type: ignore[assignment]
                    history: list[dict[str, Any]] = (), seeds: list[str] = (),  # type: ignore[assignment]
                    as_of: dt.datetime = AS_OF) -> Engine:
    """Create the warehouse tables and insert exactly these rows."""
    engine = make_engine(url)
    warehouse_metadata.create_all(engine)
    migrations.upgrade(engine)
    with engine.begin() as conn:
        if rows:
            conn.execute(sa.insert(customers), rows)
        if supp:
            conn.execute(sa.insert(suppressions), [
                {"channel": "email", "created_at": as_of - dt.timedelta(days=5)} | s for s in supp])
        if history:
            conn.execute(sa.insert(contact_history), [
                {"campaign_id": "other", "run_id": "r0", "channel": "email", "cell": None,
                 "offer_code": None} | h for h in history])
        conn.execute(sa.insert(offers), [
            {"offer_code": "WELCOME10", "description": "10 off", "valid_from": as_of - dt.timedelta(days=30),
             "valid_to": as_of + dt.timedelta(days=365)},
            {"offer_code": "SPRING15", "description": "15 off", "valid_from": as_of - dt.timedelta(days=30),
             "valid_to": as_of + dt.timedelta(days=365)},
            {"offer_code": "EXPIRED5", "description": "old", "valid_from": as_of - dt.timedelta(days=300),
             "valid_to": as_of - dt.timedelta(days=10)},
        ])
        if seeds:
            conn.execute(sa.insert(seed_recipients), [{"email": s, "label": "QA"} for s in seeds])
    return engine


def brief_dict(**overrides: Any) -> dict[str, Any]:
    """A valid brief as parsed YAML; keyword arguments replace top-level keys."""
    data: dict[str, Any] = {
        "campaign_id": "test-campaign",
        "name": "Test campaign",
        "owner": "owner@example.com",
        "objective": "Test the pipeline",
        "kpi": {"metric": "opens", "target": 0.3},
        "channel": "email",
        "send_at": None,
        "content": {"template_id": "t1", "subject": "Hello", "required_fields": []},
        "audience": {"include": {"all": [{"field": "lifecycle_stage", "op": "eq", "value": "customer"}]}},
        "control_group": {"percent": 0, "salt": "s1"},
        "cells": [{"name": "all", "percent": 100}],
        "expected_audience": {"min": 0, "max": 10_000_000},
        "approvals": [{"stage": "qa", "approvers": ["quinn@example.com"]}],
        "approval_timeout_hours": 1,
    }
    data.update(overrides)
    return data


def drop_guards(engine: Engine) -> None:
    """What an attacker with DDL rights does first: drop the audit's append-only triggers."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS co_audit_no_update")
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS co_audit_no_delete")
        else:
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS co_audit_append_only ON co_audit")
