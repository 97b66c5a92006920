"""Running Great Expectations: one ephemeral context per validation, results scrubbed and stored.

GX is imported lazily (it costs about 3 s) and is not thread-safe even with one context per
validation (its suite-parameter parser is a shared pyparsing grammar and get_context() sets
a process-wide current context), so validations in one process take turns. GX opens its own
connection pool from the warehouse's URL (its SQL data source takes a connection string,
not an engine) and closes it when the validation ends.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from campaignops.qa.data_docs import localise
from campaignops.qa.results import (
    RESULT_FORMAT,
    CheckResult,
    QAResult,
    check_results,
    scrub,
    scrub_validation_result,
)
from campaignops.qa.suites import build_suite, count_only, register_count_only

log = logging.getLogger(__name__)

DOCS_SITE = "campaignops"


# GX is not thread-safe even with one context per validation: its suite-parameter parser is a
# shared pyparsing grammar (concurrent runs fail with "push_first() missing ... 'toks'") and
# get_context() sets a process-wide current context. Validations in one process take turns.
_GX_LOCK = threading.Lock()


@contextmanager
def _gx_context(docs_dir: Path | None) -> Iterator[Any]:
    """A fresh ephemeral context: in-memory stores, no progress bars, one local docs site."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites: dict[str, Any] = {}
    if docs_dir is not None:
        sites[DOCS_SITE] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder", "show_cta_footer": False},
        }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites=sites,
        progress_bars=ProgressBarsConfig(globally=False),
        analytics_enabled=False,
    )
    yield gx.get_context(mode="ephemeral", project_config=config)


# GX materialises the run's batch once as a temporary table inside the warehouse and runs every
# metric against it. Without it, GX re-executes the whole batch query to learn its columns
# (column_reflection_fallback), and psycopg fetches every row of it into the client each time:
# at 100,000 rows on PostgreSQL 6.5 s instead of 3.4 s, and personal data pulled into memory.
# Needs the TEMP privilege (PostgreSQL's default for every role; not on a read-only standby).
USE_TEMP_TABLE = True


# Every check reads the run's rows (and a warehouse table) whole, so hash joins are right
# whatever the row estimates say. Straight after a bulk load the warehouse has no planner
# statistics and PostgreSQL may pick nested loops that repeat a scan per row (measured at
# 100,000 customers: QA 37 s instead of 0.4 s). The settings hold for QA's own sessions only.
PG_SESSION_OPTIONS = "-c enable_nestloop=off -c jit=off"


def qa_url(url: sa.engine.URL) -> sa.engine.URL:
    """The warehouse address QA's sessions use: on PostgreSQL with plans that need no statistics."""
    if url.get_backend_name() != "postgresql":
        return url
    given = url.query.get("options")
    given_text = " ".join(given) if isinstance(given, tuple) else (given or "")
    return url.update_query_dict({"options": f"{given_text} {PG_SESSION_OPTIONS}".strip()})


def _add_datasource(context: Any, url: sa.engine.URL) -> Any:
    dialect = url.get_backend_name()
    kw = {"connection_string": qa_url(url).render_as_string(hide_password=False),
          "create_temp_table": USE_TEMP_TABLE}
    if dialect == "sqlite":
        return context.data_sources.add_sqlite("warehouse", **kw)
    if dialect == "postgresql":
        return context.data_sources.add_postgres("warehouse", **kw)
    return context.data_sources.add_sql("warehouse", **kw)


def _close_engine(datasource: Any) -> None:
    """Close GX's connections now (and with them the temporary table), not at garbage collection."""
    try:
        execution_engine = datasource.get_execution_engine()
        connection = getattr(execution_engine, "_connection", None)
        if connection is not None:
            connection.close()
        execution_engine.close()
        execution_engine.engine.dispose()
        datasource.get_engine().dispose()  # the engine GX opened to test the connection
    except Exception:  # pragma: no cover - best effort
        log.debug("could not close the GX engine", exc_info=True)


@dataclass
class Job:
    """One batch to validate: a query or a table of the database, and the suite part for it."""

    asset: str
    suite_json: dict[str, Any]
    query: str | None = None
    table: str | None = None


@dataclass
class Output:
    validations: list[Any]
    written: list[Path]  # every file QA wrote (stored results, Data Docs pages)
    stored: Path
    docs_dir: Path | None
    data_docs: Path | None


def validate(
    url: sa.engine.URL,
    jobs: list[Job],
    parameters: dict[str, Any],
    *,
    label: str,
    home: Path,
    build_docs: bool,
) -> Output:
    """Validate every job in one fresh GX context; scrub, store and (optionally) render the results.

    The stored result is ``home/gx/results/<label>.json`` (one validation: its result; several:
    a list); Data Docs go to ``home/gx/data_docs/<label>/index.html``.
    """
    import great_expectations as gx

    gx_home = Path(home) / "gx"
    docs_dir = gx_home / "data_docs" / label if build_docs else None
    results_dir = gx_home / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    data_docs: Path | None = None
    validations: list[Any] = []
    register_count_only()
    with _GX_LOCK, _gx_context(docs_dir) as context:
        datasource = _add_datasource(context, url)
        try:
            for job in jobs:
                suite = build_suite(count_only(job.suite_json), f"{job.suite_json['name']} (expanded)")
                suite = context.suites.add(suite)
                if job.query is not None:
                    asset = datasource.add_query_asset(job.asset, query=job.query)
                else:
                    asset = datasource.add_table_asset(job.asset, table_name=job.table)
                batch_definition = asset.add_batch_definition_whole_table("run")
                validation_definition = context.validation_definitions.add(
                    gx.ValidationDefinition(name=suite.name, data=batch_definition, suite=suite)
                )
                validations.append(
                    validation_definition.run(
                        expectation_parameters=parameters, result_format=RESULT_FORMAT
                    )
                )
        finally:
            _close_engine(datasource)

        for validation in validations:
            scrub_validation_result(validation)
        store = context.validation_results_store
        for key in store.list_keys():  # what Data Docs render from: scrubbed too
            stored = store.get(key)
            scrub_validation_result(stored)
            store.set(key, stored)

        stored_path = results_dir / f"{label}.json"
        payload: Any = [scrub(v.to_json_dict()) for v in validations]
        stored_path.write_text(
            json.dumps(payload[0] if len(payload) == 1 else payload, indent=1, sort_keys=True, default=str),
            encoding="utf-8",
        )
        written = [stored_path]
        if docs_dir is not None:
            if docs_dir.exists():
                shutil.rmtree(docs_dir)
            context.build_data_docs(site_names=[DOCS_SITE])
            external = localise(docs_dir)  # offline: the CDN assets from campaignops' copies
            if external:
                log.warning("Data Docs still load %d resource(s) from outside: %s", len(external),
                            ", ".join(external[:3]))
            data_docs = docs_dir / "index.html"
            written += [p for p in docs_dir.rglob("*") if p.suffix in (".html", ".json")]
    return Output(validations, written, stored_path, docs_dir, data_docs)


def remove_output(output: Output) -> None:
    output.stored.unlink(missing_ok=True)
    if output.docs_dir is not None:
        shutil.rmtree(output.docs_dir, ignore_errors=True)


def qa_result(
    suite: str,
    output: Output,
    critical: dict[str, bool],
    thresholds: dict[str, str],
    started: float,
    skipped: list[str],
    extra: list[CheckResult] | None = None,
) -> QAResult:
    checks = check_results(output.validations, critical, thresholds) + list(extra or [])
    failed_critical = [c for c in checks if c.critical and not c.passed]
    warnings = [c for c in checks if not c.critical and not c.passed]
    return QAResult(
        suite=suite,
        passed=not failed_critical,
        checks=checks,
        warnings=warnings,
        failed_critical=failed_critical,
        seconds=round(time.perf_counter() - started, 3),
        data_docs=output.data_docs,
        skipped=skipped,
    )
