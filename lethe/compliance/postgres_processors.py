"""Processors and breaches on a PostgreSQL warehouse (`LETHE_WAREHOUSE=postgresql://…`).

The rules stay in `lethe.compliance.processors` and `lethe.compliance.breaches`, written
once: each command runs their own function on an in-memory DuckDB mirroring what it reads
of the database, by the pattern of `lethe.rights.postgres_requests` (`mirrored_step`):
under Lethe's advisory lock and in one transaction, and what the function wrote goes back
set-based (new processor events, breach records, export log entries and ledger entries
appended, the ledger's continuing the database's chain; a changed breach record replaced by
its id). Reading commands (`processor list`, `breach list`) read a copy and lock nothing.

An export to a processor mirrors only the rows it may receive (the condition of
`export_where`, rendered for PostgreSQL and evaluated there), their key and shared columns,
streamed by COPY; the export file is written by `export_to_processor` itself, so it is the
same as on DuckDB. A refused export commits its breach record and refusal before the
refusal is raised, as on DuckDB; an export whose records do not commit leaves no file.

`review` is what a run does after enforcement, as the DuckDB pipeline's processors asset:
export files past the export retention, or holding a row erased since, are deleted
(`review_processors`, on a mirror of the processor events, the breach register and, for the
export files still present, their export log and ledger entries and the later ledger
entries that may invalidate them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb
from psycopg import sql as pgsql

from lethe.compliance.breaches import (
    Breach,
    Party,
    close_breach,
    list_breaches,
    mark_notified,
    overdue_breaches,
    record_breach,
)
from lethe.compliance.processors import (
    INVALIDATING,
    Access,
    ExportRefusedError,
    ProcessorExport,
    ProcessorReport,
    export_to_processor,
    export_where,
    find_processor,
    processor_access,
    review_processors,
    revoke,
)
from lethe.declaration.policy import Policy
from lethe.engine.ddl import ensure_breaches, ensure_events, ensure_schemas
from lethe.engine.engines import PostgresEngine
from lethe.engine.postgres_warehouse import pull
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from lethe.rights.postgres_requests import (
    EXPORT_LOG,
    LEDGER,
    Mirror,
    Name,
    mirrored_step,
    rendered_condition,
)

EVENTS: Name = ("audit", "processor_events")
BREACHES: Name = ("audit", "breaches")
_NONE = pgsql.SQL("false")
_EVERY = pgsql.SQL("true")
_REVOKED = pgsql.SQL("event = 'revoked'")  # all `access_of` reads of the event log


def _registers(mem: duckdb.DuckDBPyConnection) -> None:
    """The processor event log and the breach register in the mirror (the functions create
    them on first use; the mirror needs them to pull into)."""
    ensure_events(mem)
    ensure_breaches(mem)


@contextmanager
def _step(engine: PostgresEngine, policy: Policy) -> Iterator[Mirror]:
    """A `mirrored_step` whose mirror has the two registers."""
    with mirrored_step(engine, policy.data_schema) as mirror:
        _registers(mirror.mem)
        yield mirror


@contextmanager
def _copy(
    engine: PostgresEngine, pulls: list[tuple[Name, pgsql.Composable]]
) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with the rows `pulls` name, read in one transaction (one
    snapshot); nothing is locked or written, a table not created yet reads as empty."""
    mem = connect(":memory:")
    try:
        ensure_schemas(mem)
        _registers(mem)
        with engine.transaction():
            for name, where in pulls:
                if _exists(engine, name):
                    pull(engine.con, mem, ".".join(name), where)
        yield mem
    finally:
        mem.close()


def _exists(engine: PostgresEngine, name: Name) -> bool:
    (found,) = engine.con.execute("SELECT to_regclass(%s)", [".".join(name)]).fetchone()
    return found is not None


# --- processors -----------------------------------------------------------------------------


def access(engine: PostgresEngine, policy: Policy, now: dt.datetime) -> list[Access]:
    """`lethe processor list`: `processor_access` on the PostgreSQL warehouse."""
    with _copy(engine, [(EVENTS, _REVOKED)]) as mem:
        return processor_access(mem, policy, now)


def revoke_access(
    engine: PostgresEngine, policy: Policy, name: str, reason: str, now: dt.datetime
) -> Access:
    """`lethe processor revoke`: `revoke` on the PostgreSQL warehouse."""
    with _step(engine, policy) as mirror:
        mirror.pull(EVENTS, _REVOKED, appended=True)
        mirror.freeze()
        return revoke(mirror.mem, policy, name, reason, now)


def export(
    engine: PostgresEngine,
    home: Home,
    policy: Policy,
    name: str,
    now: dt.datetime,
    run_id: str,
) -> ProcessorExport:
    """`lethe processor export`: `export_to_processor` on the PostgreSQL warehouse (module
    notes); a refusal is committed (breach record, refusal event), then raised."""
    processor = find_processor(policy, name)
    refused: ExportRefusedError | None = None
    made: ProcessorExport | None = None
    try:
        with _step(engine, policy) as mirror:
            mirror.pull(EVENTS, _REVOKED, appended=True)
            mirror.pull(BREACHES, _NONE, appended=True)
            mirror.pull(EXPORT_LOG, _NONE, appended=True)
            allowed = any(
                a.allowed and a.processor.name == name
                for a in processor_access(mirror.mem, policy, now)
            )
            for table in sorted(processor.data_shared) if allowed else ():
                key = policy.data_schema.tables[table].key
                shared = processor.data_shared[table]
                columns = list(dict.fromkeys([key, *shared, "_purposes", "_state"]))
                where = rendered_condition(export_where(policy, processor, table))
                mirror.pull(("core", table), where, columns=columns)
            mirror.freeze()
            try:
                made = export_to_processor(mirror.mem, home, policy, name, now, run_id)
            except ExportRefusedError as exc:
                refused = exc
    except BaseException:
        if made is not None:
            made.path.unlink(missing_ok=True)  # an export not recorded must not exist
        raise
    if refused is not None:
        raise refused
    assert made is not None
    return made


# --- breaches -------------------------------------------------------------------------------


def record(
    engine: PostgresEngine,
    policy: Policy,
    description: str,
    aware_at: dt.datetime,
    now: dt.datetime,
    **details: Any,
) -> Breach:
    """`lethe breach record`: `record_breach` (with its keyword `details`) on the
    PostgreSQL warehouse."""
    with _step(engine, policy) as mirror:
        mirror.pull(BREACHES, _NONE, appended=True)
        mirror.freeze()
        return record_breach(mirror.mem, policy, description, aware_at, now, **details)


@contextmanager
def _one_breach(engine: PostgresEngine, policy: Policy, breach_id: str) -> Iterator[Mirror]:
    with _step(engine, policy) as mirror:
        one = pgsql.SQL("breach_id = {}").format(pgsql.Literal(breach_id))
        mirror.pull(BREACHES, one, key="breach_id")
        mirror.freeze()
        yield mirror


def notified(
    engine: PostgresEngine,
    policy: Policy,
    breach_id: str,
    party: Party,
    at: dt.datetime,
    now: dt.datetime,
) -> Breach:
    """`lethe breach notified`: `mark_notified` on the PostgreSQL warehouse."""
    with _one_breach(engine, policy, breach_id) as mirror:
        return mark_notified(mirror.mem, breach_id, party, at, now)


def close(
    engine: PostgresEngine, policy: Policy, breach_id: str, reason: str, now: dt.datetime
) -> Breach:
    """`lethe breach close`: `close_breach` on the PostgreSQL warehouse."""
    with _one_breach(engine, policy, breach_id) as mirror:
        return close_breach(mirror.mem, breach_id, reason, now)


def register(engine: PostgresEngine) -> list[Breach]:
    """`lethe breach list`: `list_breaches` on the PostgreSQL warehouse."""
    with _copy(engine, [(BREACHES, _EVERY)]) as mem:
        return list_breaches(mem)


# --- a run ----------------------------------------------------------------------------------


def review(
    engine: PostgresEngine, home: Home, policy: Policy, now: dt.datetime
) -> tuple[ProcessorReport, list[tuple[Breach, list[str]]]]:
    """What a run does after enforcement (module notes): `review_processors`, and the
    breaches whose notification is overdue (`overdue_breaches`)."""
    live = sorted({p.name for p in (home.exports / "processors").glob("*/*.zip")})
    pulls: list[tuple[Name, pgsql.Composable]] = [(EVENTS, _EVERY), (BREACHES, _EVERY)]
    if live and _exists(engine, EXPORT_LOG):
        files = pgsql.SQL("kind = 'processor' AND file_name = ANY({})").format(pgsql.Literal(live))
        # The export entries of those files, and the later entries on their tables that
        # may invalidate them: what `expire_processor_exports` joins.
        exports = pgsql.SQL(
            "SELECT l.seq, l.table_name FROM audit.ledger l JOIN audit.export_log x"
            " ON l.action = 'export' AND starts_with(l.reason, 'export ' || x.export_id || ' ')"
            " WHERE {files}"
        ).format(files=files)
        entries = pgsql.SQL(
            "seq IN (SELECT seq FROM ({e}) e) OR (action = ANY({actions})"
            " AND seq > (SELECT min(seq) FROM ({e}) e)"
            " AND table_name IN (SELECT table_name FROM ({e}) e))"
        ).format(e=exports, actions=pgsql.Literal(list(INVALIDATING)))
        pulls += [(EXPORT_LOG, files), (LEDGER, entries)]
    with _copy(engine, pulls) as mem:
        return review_processors(mem, home, policy, now), overdue_breaches(mem, now)
