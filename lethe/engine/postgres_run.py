"""One run of the pipeline on a PostgreSQL warehouse (`lethe run` with
`LETHE_WAREHOUSE=postgresql://…`), in the order of the DuckDB pipeline: ingest every
table's landing file or PostgreSQL source, carry out the pending requests
(`lethe.rights.postgres_requests`), apply the retention of Lethe's own logs
(`lethe.operations.postgres_logs`), enforce, carry the requests' changes to writable
sources (`lethe.sources.postgres_propagation`), answer the requests (exports under
LETHE_HOME/exports), review the processors' exports and the breach register
(`lethe.compliance.postgres_processors`), release the analysts' datasets
(`lethe.compliance.postgres_analytics`), write the record of processing and the
consent-health list from the database, then write the day's backup and delete those past
retention (`lethe.operations.postgres_backup`)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from lethe.compliance import postgres_processors
from lethe.compliance.analytics import KCheck, Release
from lethe.compliance.breaches import Breach
from lethe.compliance.consent_health import ConsentHealth, build_consent_health
from lethe.compliance.postgres_analytics import release_all
from lethe.compliance.processing_record import publish_record
from lethe.compliance.processors import ProcessorReport
from lethe.declaration.policy import Policy
from lethe.engine.enforcement import EnforcementResult
from lethe.engine.ingest import IngestError, IngestResult
from lethe.engine.postgres_warehouse import (
    Rendered,
    WarehouseError,
    create,
    describe,
    enforce,
    ingest_table,
    open_engine,
)
from lethe.operations import postgres_backup, postgres_logs
from lethe.operations.activity_logs import LogPurge
from lethe.operations.backup import Backup, expire_backups
from lethe.operations.home import Home
from lethe.rights import postgres_requests
from lethe.rights.answers import Answers
from lethe.sources import postgres_propagation
from lethe.sources.postgres import reason
from lethe.sources.propagation import SourceOutcome


@dataclass
class RunResult:
    """What one run on the PostgreSQL warehouse did."""

    run_id: str
    ingested: dict[str, IngestResult] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # table: the one-line reason
    requests: dict[str, int] = field(default_factory=dict)  # carried out per type
    enforced: EnforcementResult | None = None
    sources: list[SourceOutcome] = field(default_factory=list)  # writable sources' changes
    answers: Answers | None = None
    releases: dict[str, tuple[Release, KCheck]] = field(default_factory=dict)  # by dataset
    processors: ProcessorReport | None = None
    logs: LogPurge | None = None
    backup: Backup | None = None
    expired_backups: list[str] = field(default_factory=list)  # backup ids deleted
    record: dict[str, Path] = field(default_factory=dict)  # record of processing, by format
    consent_health: ConsentHealth | None = None
    overdue_breaches: list[tuple[Breach, list[str]]] = field(default_factory=list)


def run(dsn: str, home: Home, policy: Policy, as_of: dt.date) -> RunResult:
    """Ingest, carry out requests, enforce, answer and release the analysts' datasets,
    under Lethe's advisory lock.

    A refused landing file stays in landing/ and is reported, and the run goes on, as the
    Dagster pipeline does on DuckDB. A failure of the database (the server going away) is
    one `WarehouseError` naming the warehouse; each step is its own transaction, so what
    committed stays and the next run completes the rest (a request stays pending until its
    answer commits).
    """
    result = RunResult(uuid.uuid4().hex)
    engine = open_engine(dsn)
    try:
        with engine.lock():
            create(engine, policy.data_schema)
            for name in policy.data_schema.tables:
                try:
                    result.ingested[name] = ingest_table(engine, home.landing, name, policy)
                except IngestError as exc:
                    result.refused[name] = str(exc)
            result.requests = postgres_requests.intake(engine, policy, as_of, result.run_id)
            now = dt.datetime.now(dt.UTC)
            result.logs = postgres_logs.purge(engine, policy, now, result.run_id, as_of)
            result.enforced = enforce(engine, policy, as_of, result.run_id)
            result.sources = postgres_propagation.propagate(engine, policy, result.run_id, as_of)
            result.answers = postgres_requests.answer(engine, home, policy, as_of, result.run_id)
            # After this run's erasures, as the processors asset: exports holding erased rows go.
            result.processors, result.overdue_breaches = postgres_processors.review(
                engine, home, policy, now
            )
            # After the answers: a request's deadline does not wait on the analysts.
            result.releases = release_all(engine, home, policy, as_of)
            # The compliance documents read the database as the DuckDB assets read the file.
            rendered = Rendered(engine.con)
            _, result.record = publish_record(rendered, home, policy, as_of, now)  # type: ignore[arg-type]
            result.consent_health = build_consent_health(rendered, home, policy, as_of)  # type: ignore[arg-type]
            # Last, as the backup asset: the day's backup holds the enforced warehouse.
            result.backup = postgres_backup.backup(engine, home, policy)
            result.expired_backups = expire_backups(home, policy.operations.backups)
    except psycopg.Error as exc:
        raise WarehouseError(f"{describe(dsn)}: the run stopped: {reason(exc)}") from None
    finally:
        engine.close()
    return result
