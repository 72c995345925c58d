"""Erasure, rectification and restriction carried back to writable PostgreSQL sources.

Erasing a subject in Lethe's copy while the shop's own database still holds them is no
erasure. So for every table whose declared source is a writable PostgreSQL table, a
request's effect is planned in the warehouse from the same policy decisions enforcement
makes (`lethe.engine.retention`: the action of each row, its values afterwards, vault
tokens included), kept as a change set (`requests.source_changes`: row keys, source
columns and the values after the policy, never the values replaced), and carried to the
source:

- one transaction per source (a database, named by its DSN variable) and run;
- the change set loaded with one COPY into a temporary table, then one DELETE and one
  UPDATE per table for the whole batch, never a statement per subject; the statements are
  SQLGlot expressions rendered for PostgreSQL;
- a source that is down or refuses (permissions, a trigger, a lock timeout) is rolled back
  as a whole; its requests stay pending with the reason and the next run retries;
- each change is recorded in the audit ledger (table, columns, keys and counts; no value);
- a dry run does the same and rolls back, so it shows how many rows each statement would
  change (and whether the source would refuse) without changing anything.

Erasure requests stay pending until every source has their changes; rectification and
restriction change the warehouse at once and their sources as soon as they can.
Rectification carries the subject table's corrected columns (not copies of the old value
in other tables); restriction sets a source table's declared `restrict_column`.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import psycopg
import pyarrow.csv as pacsv
from sqlglot import exp

from lethe.declaration.policy import Policy
from lethe.declaration.schema import Table
from lethe.declaration.strategies import literal, quote
from lethe.engine.audit import LedgerEntry, append
from lethe.engine.ddl import ensure_schemas
from lethe.engine.enforcement import stage_tokens
from lethe.engine.reach import reach
from lethe.engine.retention import (
    TOKENS,
    enforcement_plan,
    request_changes_select,
    wanted_tokens_select,
)
from lethe.engine.states import RowState
from lethe.engine.tagging import tagged_tables
from lethe.engine.vault import attach
from lethe.engine.warehouse import has_table, table_columns, transaction
from lethe.rights.subjects import resolve_subject
from lethe.sources.postgres import (
    SourceError,
    column_types,
    connection,
    reason,
    source_table,
)

CHANGES = "_lethe_changes"  # the change set at the source (a temporary table)


def lock_timeout() -> float:
    """Seconds a source statement waits for a lock before the source counts as refusing
    (LETHE_SOURCE_LOCK_TIMEOUT, default 10)."""
    return float(os.environ.get("LETHE_SOURCE_LOCK_TIMEOUT", "10"))


_CHANGE_COLUMNS = "request_id, table_name, row_key, action, column_name, value"


@dataclass
class TableChange:
    """One action on one source table: rows and source columns planned, and how many rows
    the statement changed at the source (None until it ran)."""

    table: str
    source_table: str
    action: str
    rows: int
    columns: list[str]
    at_source: int | None = None


@dataclass
class SourceOutcome:
    """What one source got (or would get, in a dry run)."""

    source: str
    requests: list[str]
    changes: list[TableChange] = field(default_factory=list)
    reason: str | None = None
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return self.reason is None


def writable_sources(policy: Policy) -> dict[str, list[Table]]:
    """The writable PostgreSQL source tables, by source (their DSN variable)."""
    out: dict[str, list[Table]] = defaultdict(list)
    for table in policy.data_schema.tables.values():
        pg = table.source.postgres
        if pg and pg.writable and table.name != policy.hold_table:
            out[pg.dsn_env].append(table)
    return dict(out)


def _source_of(policy: Policy) -> dict[str, str]:
    """Declared table -> its source, for the writable ones."""
    return {t.name: s for s, tables in writable_sources(policy).items() for t in tables}


def _unplanned(type_: str) -> str:
    return (
        f"SELECT request_id, subject_key, changes FROM requests.requests r WHERE status = 'pending'"
        f" AND type = {literal(type_)} AND NOT EXISTS (SELECT 1 FROM requests.propagations p"
        " WHERE p.request_id = r.request_id)"
    )


def _mark_planned(con: duckdb.DuckDBPyConnection, policy: Policy, now: dt.datetime) -> None:
    """A propagation row per request and source for every change set just planned."""
    sources = _source_of(policy)
    if not sources:
        return
    cases = " ".join(f"WHEN {literal(t)} THEN {literal(s)}" for t, s in sources.items())
    con.execute(
        f"INSERT INTO requests.propagations (request_id, source, status, planned_at)"
        f" SELECT DISTINCT c.request_id, CASE c.table_name {cases} END, 'pending', ?"
        " FROM requests.source_changes c WHERE NOT EXISTS (SELECT 1 FROM requests.propagations p"
        " WHERE p.request_id = c.request_id)",
        [now],
    )


def plan_rectifications_and_restrictions(con: duckdb.DuckDBPyConnection, policy: Policy) -> int:
    """Plan the source changes of pending rectification and restriction requests (before
    `apply_pending` carries them out, while the corrections are still recorded); returns
    how many change rows were planned."""
    if not _source_of(policy):
        return 0
    ensure_schemas(con, policy.data_schema)
    with transaction(con):
        return _insert_rectifications_and_restrictions(con, policy)


def _insert_rectifications_and_restrictions(con: duckdb.DuckDBPyConnection, policy: Policy) -> int:
    sources = _source_of(policy)
    schema = policy.data_schema
    subject = schema.subject_table
    parts = []
    if subject.name in sources:
        headers = ", ".join(f"({literal(c.name)}, {literal(c.header)})" for c in subject.columns)
        parts.append(
            f"SELECT r.request_id, {literal(subject.name)}, r.subject_key, 'rectify', m.header,"
            " json_extract_string(r.changes, '$.' || r.name) FROM (SELECT request_id,"
            " subject_key, changes, unnest(json_keys(changes)) AS name"
            f" FROM ({_unplanned('rectification')})) r JOIN (VALUES {headers}) m(name, header)"
            " USING (name)"
        )
    for name in sources:
        restrict = schema.tables[name].source.postgres.restrict_column  # type: ignore[union-attr]
        if restrict:
            r = reach(schema, name, "c")
            parts.append(
                f"SELECT q.request_id, {literal(name)},"
                f" CAST(c.{quote(schema.tables[name].key)} AS VARCHAR), 'restrict',"
                f" {literal(restrict)}, 'true' FROM core.{quote(name)} c{r.joins}"
                f" JOIN ({_unplanned('restriction')}) q ON q.subject_key = CAST({r.subject} AS"
                f" VARCHAR) WHERE c._state <> {RowState.ANONYMIZED.sql}"
            )
    if not parts:
        return 0
    n = con.execute(
        f"INSERT INTO requests.source_changes ({_CHANGE_COLUMNS}) {' UNION ALL '.join(parts)}"
    ).fetchone()[0]
    _mark_planned(con, policy, _now())
    return n


def plan_erasures(
    con: duckdb.DuckDBPyConnection, policy: Policy, as_of: dt.date, vault: Path
) -> int:
    """Plan the source changes of registered, pending erasure requests not planned yet
    (after `apply_pending` registered them, before the enforcement rewrite), from the same
    plan the rewrite runs; returns how many change rows were planned.

    The pseudonymized values get their tokens from the `vault` file now, so the rewrite
    finds the same ones. Also drops the planned changes of rectifications refused since.
    """
    if not _source_of(policy):
        return 0
    ensure_schemas(con, policy.data_schema)
    with transaction(con):
        for table in ("source_changes", "propagations"):
            con.execute(
                f"DELETE FROM requests.{table} WHERE request_id IN (SELECT request_id"
                " FROM requests.requests WHERE status = 'refused')"
            )
    try:
        if not _stage_erasures(con, policy, as_of):
            return 0
        attach(con, vault)
        try:
            stage_tokens(con, policy)
        finally:
            con.execute("DETACH vault")
        with transaction(con):
            return _insert_erasures(con, policy)
    finally:
        _drop_erasure_stage(con, policy)


def _stage_erasures(con: duckdb.DuckDBPyConnection, policy: Policy, as_of: dt.date) -> bool:
    """Stage `_planned` (the erasure requests to plan) and, if there are any, every tagged
    table's `_act_<table>` as enforcement stages it; whether there are any."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _planned AS SELECT DISTINCT e.request_id"
        f" FROM requests.erasures e JOIN ({_unplanned('erasure')}) r USING (request_id)"
    )
    if not con.execute("SELECT count(*) FROM _planned").fetchone()[0]:
        return False
    for table in tagged_tables(policy):
        columns = table_columns(con, "core", table)
        con.execute(enforcement_plan(policy, table, columns, as_of).statements[0])
    return True


def _insert_erasures(con: duckdb.DuckDBPyConnection, policy: Policy) -> int:
    spec = policy.data_schema.tables
    parts = [
        _erasure_changes(policy, spec[t], table_columns(con, "core", t)) for t in _source_of(policy)
    ]
    n = con.execute(
        f"INSERT INTO requests.source_changes ({_CHANGE_COLUMNS}) {' UNION ALL '.join(parts)}"
    ).fetchone()[0]
    _mark_planned(con, policy, _now())
    return n


def _drop_erasure_stage(con: duckdb.DuckDBPyConnection, policy: Policy) -> None:
    for table in tagged_tables(policy):
        con.execute(f"DROP TABLE IF EXISTS _act_{table}")
    con.execute(f"DROP TABLE IF EXISTS {TOKENS}")
    con.execute("DROP TABLE IF EXISTS _planned")


PREVIEW = "R-0-dry-run"  # sorts before every real request id (R-<hex>), so a subject's
# erasure plan names it even when an erasure of theirs is already pending


def preview_request(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    vault: Path,
    type_: str,
    subject: str,
    changes: dict[str, str] | None,
    as_of: dt.date,
) -> list[SourceOutcome]:
    """What a request would change at every writable source, as a dry run: planned in a
    warehouse transaction that is rolled back, carried to each source in a transaction
    that is rolled back; nothing is recorded or changed anywhere."""
    sources = writable_sources(policy)
    if not sources or type_ not in ("erasure", "rectification", "restriction"):
        return []
    ensure_schemas(con, policy.data_schema)
    subject_key = resolve_subject(con, policy.data_schema, subject)
    attach(con, vault, read_only=True)
    con.execute("BEGIN TRANSACTION")
    try:
        now = _now()
        con.execute(
            "INSERT INTO requests.requests (request_id, type, subject_key, received_at, deadline,"
            " status, changes) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
            [PREVIEW, type_, subject_key, now, now, json.dumps(changes) if changes else None],
        )
        if type_ == "erasure":
            con.execute(
                "INSERT INTO requests.erasures VALUES (?, ?, ?)", [PREVIEW, subject_key, now]
            )
            if _stage_erasures(con, policy, as_of):
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE {TOKENS} AS SELECT kind, value, token"
                    " FROM vault.tokens UNION ALL SELECT DISTINCT kind, value, 'token'"
                    f" FROM ({wanted_tokens_select(policy)})"
                )
                _insert_erasures(con, policy)
        else:
            _insert_rectifications_and_restrictions(con, policy)
        return [
            _carry(con, policy, source, tables, [PREVIEW], dry_run=True)
            for source, tables in sources.items()
        ]
    finally:
        con.execute("ROLLBACK")
        con.execute("DETACH vault")


def _erasure_changes(policy: Policy, table: Table, columns: list[str]) -> str:
    """SELECT of the change rows (`_CHANGE_COLUMNS`) of `table` for the requests in `_planned`:
    a delete per deleted row, a value per changed contract column of every other row, and
    the restrict column of rows left restricted."""
    pg = table.source.postgres
    assert pg is not None
    changes = (
        f"SELECT * FROM ({request_changes_select(policy, table.name, columns)})"
        " WHERE _request IN (SELECT request_id FROM _planned)"
    )
    action = "CASE _action WHEN 'retain' THEN 'erase' ELSE _action END"
    name = literal(table.name)
    parts = [
        f"SELECT _request, {name}, _old_key, 'delete', NULL, NULL FROM ch WHERE _action = 'delete'"
    ]
    for col in table.columns:
        if col.name not in columns:
            continue
        value = f"CAST({quote('_new_' + col.name)} AS VARCHAR)"
        if col.type == "timestamp":
            value += " || '+00'"  # warehouse timestamps are UTC; the source may be local
        parts.append(
            f"SELECT _request, {name}, _old_key, {action}, {literal(col.header)}, {value}"
            f" FROM ch WHERE _action <> 'delete' AND {quote('_changes_' + col.name)}"
        )
    if pg.restrict_column:
        parts.append(
            f"SELECT _request, {name}, _old_key, 'restrict', {literal(pg.restrict_column)},"
            f" 'true' FROM ch WHERE _action <> 'delete'"
            f" AND _new_state = {RowState.RESTRICTED.sql}"
        )
    return f"(WITH ch AS ({changes}) {' UNION ALL '.join(parts)})"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def awaiting_sources(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Ids of requests whose changes some source has not got yet."""
    if not has_table(con, "requests", "propagations"):
        return set()
    return {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT request_id FROM requests.propagations WHERE status = 'pending'"
        ).fetchall()
    }


def _summary(
    con: duckdb.DuckDBPyConnection, policy: Policy, tables: list[Table], requests: list[str]
) -> list[TableChange]:
    """Rows and columns per table and action of the change set of `requests`."""
    rows = con.execute(
        "SELECT table_name, action, count(DISTINCT row_key),"
        " list(DISTINCT column_name ORDER BY column_name) FILTER (column_name IS NOT NULL)"
        " FROM requests.source_changes WHERE request_id IN (SELECT unnest(CAST(? AS VARCHAR[])))"
        " AND table_name IN (SELECT unnest(CAST(? AS VARCHAR[]))) GROUP BY ALL ORDER BY 1, 2",
        [requests, [t.name for t in tables]],
    ).fetchall()
    spec = policy.data_schema.tables
    return [
        TableChange(t, spec[t].source.postgres.table, a, n, list(c or []))  # type: ignore[union-attr]
        for t, a, n, c in rows
    ]


def _statements(table: Table, types: dict[str, str], actions: Iterable[str], columns: list[str]):
    """(kind, SQLGlot statement) applying `CHANGES` to the source table: a DELETE of the
    deleted rows and an UPDATE of `columns` of the others, each one statement for all."""
    pg = table.source.postgres
    assert pg is not None
    key = table.column(table.key).header
    own = exp.Literal.string(table.name)

    def typed(value: exp.Expression, column: str) -> exp.Expression:
        target = exp.DataType.build(types[column], dialect="postgres")
        if target.is_type(*exp.DataType.TEMPORAL_TYPES) and not target.is_type("date"):
            value = exp.cast(value, exp.DataType.build("timestamptz"))
        return exp.cast(value, target)

    match = exp.column(key, "t", quoted=True).eq(typed(exp.column("row_key", "v"), key))
    out = []
    if "delete" in actions:
        keys = (
            exp.select("row_key")
            .distinct()
            .from_(CHANGES)
            .where(
                exp.column("table_name")
                .eq(own)
                .and_(exp.column("action").eq(exp.Literal.string("delete")))
            )
        )
        delete = exp.delete(source_table(pg, "t"), where=match)
        delete.set("using", [exp.alias_(keys.subquery(), "v")])
        out.append(("delete", delete))
    if columns:
        items: list[exp.Expression] = [exp.column("row_key")]
        assignments = {}
        for i, column in enumerate(columns):
            named = exp.column("column_name").eq(exp.Literal.string(column))
            items.append(exp.alias_(exp.func("bool_or", named), f"s{i}"))
            value = exp.Filter(
                this=exp.Max(this=exp.column("value")), expression=exp.Where(this=named)
            )
            items.append(exp.alias_(value, f"v{i}"))
            assignments[exp.column(column, quoted=True)] = (
                exp.Case()
                .when(exp.column(f"s{i}", "v"), typed(exp.column(f"v{i}", "v"), column))
                .else_(exp.column(column, "t", quoted=True))
            )
        rows = (
            exp.select(*items)
            .from_(CHANGES)
            .where(
                exp.column("table_name")
                .eq(own)
                .and_(exp.column("action").neq(exp.Literal.string("delete")))
            )
            .group_by("row_key")
        )
        update = exp.update(source_table(pg, "t"), where=match)
        update.set("expressions", [exp.EQ(this=c, expression=v) for c, v in assignments.items()])
        update.set("from_", exp.From(this=exp.alias_(rows.subquery(), "v")))
        out.append(("update", update))
    return out


def _carry(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    source: str,
    tables: list[Table],
    requests: list[str],
    dry_run: bool,
) -> SourceOutcome:
    """Carry the change set of `requests` to one source in one transaction (rolled back in
    a dry run, or when anything fails)."""
    outcome = SourceOutcome(
        source, requests, _summary(con, policy, tables, requests), None, dry_run
    )
    if not outcome.changes:
        return outcome
    change_set = con.sql(
        "SELECT table_name, row_key, action, column_name, value FROM requests.source_changes"
        " WHERE request_id IN (SELECT unnest(CAST($requests AS VARCHAR[])))"
        " AND table_name IN (SELECT unnest(CAST($tables AS VARCHAR[])))",
        params={"requests": requests, "tables": [t.name for t in tables]},
    ).to_arrow_table()
    csv = io.BytesIO()
    pacsv.write_csv(
        change_set, csv, pacsv.WriteOptions(include_header=False, quoting_style="needed")
    )
    pg = tables[0].source.postgres
    assert pg is not None
    who = f"source ${source}"
    counted: dict[tuple[str, str], int] = {}
    try:
        with connection(pg, who) as pcon:
            pcon.execute(
                "SELECT set_config('TimeZone', %s, true), set_config('lock_timeout', %s, true)",
                [policy.data_schema.timezone, f"{int(lock_timeout() * 1000)}ms"],
            )
            pcon.execute(
                f"CREATE TEMP TABLE {CHANGES} (table_name text, row_key text, action text,"
                " column_name text, value text) ON COMMIT DROP"
            )
            with pcon.cursor().copy(f"COPY {CHANGES} FROM STDIN (FORMAT csv)") as copy:
                copy.write(csv.getvalue())
            # Temporary tables get no statistics from autovacuum: without them the planner
            # guesses the change set's size and distinct keys, and picks worse joins.
            pcon.execute(f"ANALYZE {CHANGES}")
            for table in tables:
                mine = [c for c in outcome.changes if c.table == table.name]
                if not mine:
                    continue
                types = {
                    n: full for n, (_, full) in column_types(pcon, table.source.postgres).items()
                }  # type: ignore[arg-type]
                columns = sorted({col for c in mine if c.action != "delete" for col in c.columns})
                missing = [c for c in [table.column(table.key).header, *columns] if c not in types]
                if missing:
                    raise SourceError(
                        f"{who}: {table.source.postgres.table} has no column {missing[0]!r}"
                    )  # type: ignore[union-attr]
                for kind, statement in _statements(table, types, {c.action for c in mine}, columns):
                    cur = pcon.execute(statement.sql("postgres", identify=True))
                    counted[(table.name, kind)] = cur.rowcount
            if dry_run:
                pcon.rollback()
            else:
                pcon.commit()
    except SourceError as exc:
        outcome.reason = str(exc)
    except psycopg.Error as exc:
        outcome.reason = f"{who}: {reason(exc)}; rolled back, nothing changed there"
    if outcome.ok:
        for change in outcome.changes:
            kind = "delete" if change.action == "delete" else "update"
            change.at_source = counted.get((change.table, kind))
    return outcome


def propagate(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    run_id: str,
    as_of: dt.date,
    dry_run: bool = False,
) -> list[SourceOutcome]:
    """Carry every pending change set to its source, one transaction per source.

    A source that succeeds has its change set removed from the warehouse and recorded in
    the ledger; one that fails keeps it, with the reason, for the next run. A dry run
    changes nothing, at the sources or here.
    """
    outcomes: list[SourceOutcome] = []
    if not writable_sources(policy):
        return outcomes
    ensure_schemas(con, policy.data_schema)
    now = _now()
    for source, tables in writable_sources(policy).items():
        requests = [
            r[0]
            for r in con.execute(
                "SELECT request_id FROM requests.propagations WHERE source = ?"
                " AND status = 'pending' ORDER BY planned_at, request_id",
                [source],
            ).fetchall()
        ]
        if not requests:
            continue
        outcome = _carry(con, policy, source, tables, requests, dry_run)
        outcomes.append(outcome)
        if dry_run:
            continue
        with transaction(con):
            if outcome.ok:
                append(con, _ledger(con, policy, outcome, tables, run_id, as_of))
                for table in tables:
                    # The next read skips them: the warehouse has its own anonymized copy.
                    con.execute(
                        "INSERT INTO core.source_anonymized SELECT table_name, value"
                        " FROM requests.source_changes WHERE table_name = ?"
                        " AND action = 'anonymize' AND column_name = ? AND value IS NOT NULL"
                        " AND request_id IN (SELECT unnest(CAST(? AS VARCHAR[])))",
                        [table.name, table.column(table.key).header, requests],
                    )
                con.execute(
                    "DELETE FROM requests.source_changes WHERE request_id IN"
                    " (SELECT unnest(CAST(? AS VARCHAR[]))) AND table_name IN"
                    " (SELECT unnest(CAST(? AS VARCHAR[])))",
                    [requests, [t.name for t in tables]],
                )
            con.execute(
                "UPDATE requests.propagations SET status = ?, reason = ?, attempted_at = ?,"
                " done_at = ? WHERE source = ? AND request_id IN"
                " (SELECT unnest(CAST(? AS VARCHAR[])))",
                [
                    "done" if outcome.ok else "pending",
                    outcome.reason,
                    now,
                    now if outcome.ok else None,
                    source,
                    requests,
                ],
            )
    return outcomes


def _ledger(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    outcome: SourceOutcome,
    tables: list[Table],
    run_id: str,
    as_of: dt.date,
) -> list[LedgerEntry]:
    """One entry per request, source table and action: keys, source columns, row count."""
    spec = policy.data_schema.tables
    rows = con.execute(
        "SELECT request_id, table_name, action, list(DISTINCT row_key ORDER BY row_key),"
        " list(DISTINCT column_name ORDER BY column_name) FILTER (column_name IS NOT NULL)"
        " FROM requests.source_changes WHERE request_id IN (SELECT unnest(CAST(? AS VARCHAR[])))"
        " AND table_name IN (SELECT unnest(CAST(? AS VARCHAR[]))) GROUP BY ALL ORDER BY 1, 2, 3",
        [outcome.requests, [t.name for t in tables]],
    ).fetchall()
    return [
        LedgerEntry(
            run_id=run_id,
            as_of=as_of,
            action=action,
            table_name=f"postgres:{spec[table].source.postgres.table}",  # type: ignore[union-attr]
            columns=list(columns or []),
            keys=list(keys),
            reason=f"{request}: carried back to source ${outcome.source}",
            strategy=action,
            details={"rows": len(keys)},
        )
        for request, table, action, keys, columns in rows
    ]
