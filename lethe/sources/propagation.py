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
  UPDATE per table for the whole batch, never a statement per subject, all in one
  data-modifying WITH statement (the source checks its foreign keys at its end); the
  statements are SQLGlot expressions rendered for PostgreSQL;
- source keys: the source's own constraints are read once per source. A key the plan
  would set to NULL gets a surrogate (as the `surrogate` strategy makes) already in the
  plan; a key whose source type cannot hold a surrogate stays as it is. A foreign key
  column at the source never takes its planned value: it follows its parent's new key, or
  stays. The ledger says which. The policy erasing a column the source holds NOT NULL is
  refused, naming it, before any statement runs;
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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import psycopg
import pyarrow.csv as pacsv
from sqlglot import exp

from lethe.declaration.policy import Policy
from lethe.declaration.schema import Table
from lethe.declaration.strategies import Surrogate, literal, quote
from lethe.engine.audit import LedgerEntry, append
from lethe.engine.ddl import ensure_schemas
from lethe.engine.enforcement import stage_tokens
from lethe.engine.keyhash import vault_attached
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
    Constraints,
    SourceError,
    column_types,
    connection,
    constraints,
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
    plan: SourcePlan | None = None  # how the changes met the source's constraints

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
    con: duckdb.DuckDBPyConnection, policy: Policy, as_of: dt.date, vault: Path | None = None
) -> int:
    """Plan the source changes of registered, pending erasure requests not planned yet
    (after `apply_pending` registered them, before the enforcement rewrite), from the same
    plan the rewrite runs; returns how many change rows were planned.

    The pseudonymized values get their tokens from the `vault` file now (or from the vault
    attached already: a PostgreSQL warehouse's mirror), so the rewrite finds the same ones.
    Also drops the planned changes of rectifications refused since.
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
        with _vault(con, vault):
            stage_tokens(con, policy)
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
    _surrogate_keys(con, policy)
    _mark_planned(con, policy, _now())
    return n


def _surrogate_keys(con: duckdb.DuckDBPyConnection, policy: Policy) -> None:
    """Give every source key the plan sets to NULL (an anonymized row whose key the policy
    erases) a surrogate instead: a key column cannot hold NULL at the source. Also fixes
    change sets planned before keys got one (idempotent: only NULL keys change)."""
    spec = policy.data_schema.tables
    headers = {t: spec[t].column(spec[t].key).header for t in _source_of(policy)}
    keys = " OR ".join(
        f"(table_name = {literal(t)} AND column_name = {literal(h)})" for t, h in headers.items()
    )
    con.execute(
        f"UPDATE requests.source_changes SET value = {Surrogate().sql('', 'VARCHAR')}"
        f" WHERE value IS NULL AND action NOT IN ('delete', 'restrict') AND ({keys})"
    )


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
    vault: Path | None,
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
    with _vault(con, vault, read_only=True):
        return _preview(con, policy, sources, type_, subject_key, changes, as_of)


def _preview(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    sources: dict[str, list[Table]],
    type_: str,
    subject_key: str,
    changes: dict[str, str] | None,
    as_of: dt.date,
) -> list[SourceOutcome]:
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


@contextmanager
def _vault(
    con: duckdb.DuckDBPyConnection, vault: Path | None, read_only: bool = False
) -> Iterator[None]:
    """The vault attached to `con` AS vault while planning: the one attached already (a
    PostgreSQL warehouse's mirror), else the `vault` file, detached afterwards."""
    if vault_attached(con):
        yield
        return
    assert vault is not None, "no vault attached and no vault file given"
    attach(con, vault, read_only=read_only)
    try:
        yield
    finally:
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


# Surrogates are 'anon-' and 32 hex digits (lethe.declaration.strategies.Surrogate).
SURROGATE_LENGTH = 37
_SURROGATE_TYPES = {"text", "character varying", "citext"}


@dataclass
class SourcePlan:
    """How one source's change set meets the source's own constraints ("source keys" in
    the module docstring): the declared tables whose key stays as it is at the source, per
    table the foreign key columns that never take their planned value, the ones of those
    that follow their parent's new key (column, parent table), and per table and column
    what happens there instead of the plan, in words (names only)."""

    kept_keys: set[str] = field(default_factory=set)
    fixed: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    follows: dict[str, list[tuple[str, Table]]] = field(default_factory=lambda: defaultdict(list))
    notes: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))


def _holds_surrogate(types: dict[str, tuple[str, str]], facts: Constraints, at: tuple) -> bool:
    length = facts.lengths.get(at)
    return types[at[1]][0] in _SURROGATE_TYPES and (length is None or length >= SURROGATE_LENGTH)


def _meet_constraints(
    who: str,
    tables: list[Table],
    planned: dict[str, set[str]],
    types: dict[str, dict[str, tuple[str, str]]],
    facts: Constraints,
    nulls: set[tuple[str, str]],
) -> SourcePlan:
    """Decide how the planned changes (`planned`: update columns per table; `nulls`: the
    (table, column) pairs planned NULL somewhere) keep the source's constraints.

    A key whose type cannot hold a surrogate stays; a foreign key column follows its
    parent's new key, or stays when the parent's key does not change. Raises SourceError
    when the policy erases a column the source holds NOT NULL.
    """
    plan = SourcePlan()
    by_source = {t.source.postgres.table: t for t in tables}  # type: ignore[union-attr]
    changed: set[str] = set()
    for table in tables:
        key = table.column(table.key).header
        if key not in planned.get(table.name, set()):
            continue
        at = (table.source.postgres.table, key)  # type: ignore[union-attr]
        if _holds_surrogate(types[table.name], facts, at):
            changed.add(table.name)
        else:
            plan.kept_keys.add(table.name)
            plan.notes[table.name][key] = (
                f"kept at the source ({types[table.name][key][1]} cannot hold a surrogate)"
            )
    for fk in facts.foreign_keys:
        child, parent = by_source.get(fk.table), by_source.get(fk.parent)
        if child is None:
            continue
        if (
            parent is not None
            and parent.name in changed
            and fk.parent_column == parent.column(parent.key).header
        ):
            plan.fixed[child.name].add(fk.column)
            plan.follows[child.name].append((fk.column, parent))
            plan.notes[child.name][fk.column] = (
                f"follows the new key of {fk.parent} (foreign key {fk.name})"
            )
        elif fk.column in planned.get(child.name, set()):
            plan.fixed[child.name].add(fk.column)
            plan.notes[child.name][fk.column] = (
                f"kept at the source (foreign key {fk.name} to {fk.parent})"
            )
    for table in tables:
        pg_table = table.source.postgres.table  # type: ignore[union-attr]
        for name, column in sorted(nulls):
            if (
                name == table.name
                and (pg_table, column) in facts.not_null
                and column not in plan.fixed[table.name]
            ):
                raise SourceError(
                    f"{who}: {pg_table}.{column} is NOT NULL at the source but the policy"
                    " erases it; nothing changed there (allow NULL there or keep the column)"
                )
    return plan


def _statements(
    table: Table,
    types: dict[str, str],
    actions: Iterable[str],
    columns: list[str],
    follows: list[tuple[str, Table]],
) -> list[tuple[str, exp.Delete | exp.Update]]:
    """(kind, SQLGlot statement) applying `CHANGES` to the source table: a DELETE of the
    deleted rows and an UPDATE of `columns` of the others, each one statement for all; the
    UPDATE also sets each foreign key column of `follows` to its parent's new key, on every
    row that is not deleted and references a parent whose key changes."""
    pg = table.source.postgres
    assert pg is not None
    key = table.column(table.key).header
    own = exp.Literal.string(table.name)
    text = exp.DataType.build("text")

    def typed(value: exp.Expression, column: str) -> exp.Expression:
        target = exp.DataType.build(types[column], dialect="postgres")
        if target.is_type(*exp.DataType.TEMPORAL_TYPES) and not target.is_type("date"):
            value = exp.cast(value, exp.DataType.build("timestamptz"))
        return exp.cast(value, target)

    def changes(alias: str, action: exp.Expression) -> exp.Condition:
        return exp.column("table_name", alias).eq(own).and_(action)

    deleted = exp.column("action", "d").eq(exp.Literal.string("delete"))
    match = exp.column(key, "t", quoted=True).eq(typed(exp.column("row_key", "v"), key))
    out: list[tuple[str, exp.Delete | exp.Update]] = []
    if "delete" in actions:
        keys = exp.select("row_key").distinct().from_(exp.alias_(CHANGES, "d"))
        delete = exp.delete(source_table(pg, "t"), where=match)
        delete.set("using", [exp.alias_(keys.where(changes("d", deleted)).subquery(), "v")])
        out.append(("delete", delete))
    if not columns and not follows:
        return out
    nothing = [exp.alias_(exp.cast(exp.null(), text), f"f{j}") for j in range(len(follows))]
    planned = (
        exp.select("row_key", "column_name", "value", *nothing)
        .from_(exp.alias_(CHANGES, "d"))
        .where(changes("d", exp.not_(deleted)))
    )
    parts: list[exp.Select] = [planned]
    for j, (column, parent) in enumerate(follows):
        parent_key = parent.column(parent.key).header
        new_keys = (
            exp.column("table_name", "p")
            .eq(exp.Literal.string(parent.name))
            .and_(exp.column("column_name", "p").eq(exp.Literal.string(parent_key)))
            .and_(exp.column("action", "p").neq(exp.Literal.string("delete")))
            .and_(
                exp.column(column, "c", quoted=True).eq(typed(exp.column("row_key", "p"), column))
            )
        )
        gone = (
            exp.select("1")
            .from_(exp.alias_(CHANGES, "d"))
            .where(
                changes("d", deleted).and_(
                    exp.column("row_key", "d").eq(exp.cast(exp.column(key, "c", quoted=True), text))
                )
            )
        )
        items = [exp.null()] * len(follows)
        items[j] = exp.column("value", "p")
        parts.append(
            exp.select(
                exp.cast(exp.column(key, "c", quoted=True), text),
                exp.cast(exp.null(), text),
                exp.cast(exp.null(), text),
                *items,
            )
            .from_(source_table(pg, "c"))
            .join(exp.alias_(CHANGES, "p"), on=new_keys)
            .where(exp.not_(exp.Exists(this=gone)))
        )
    union: exp.Expression = parts[0]
    for part in parts[1:]:
        union = exp.union(union, part, distinct=False)
    items: list[exp.Expression] = [exp.column("row_key")]
    assignments = {}
    for i, column in enumerate(columns):
        named = exp.column("column_name").eq(exp.Literal.string(column))
        items.append(exp.alias_(exp.func("bool_or", named), f"s{i}"))
        value = exp.Filter(this=exp.Max(this=exp.column("value")), expression=exp.Where(this=named))
        items.append(exp.alias_(value, f"v{i}"))
        assignments[column] = (
            exp.Case()
            .when(exp.column(f"s{i}", "v"), typed(exp.column(f"v{i}", "v"), column))
            .else_(exp.column(column, "t", quoted=True))
        )
    for j, (column, _) in enumerate(follows):
        items.append(exp.alias_(exp.Max(this=exp.column(f"f{j}")), f"f{j}"))
        assignments[column] = (
            exp.Case()
            .when(
                exp.column(f"f{j}", "v").is_(exp.null()).not_(),
                typed(exp.column(f"f{j}", "v"), column),
            )
            .else_(exp.column(column, "t", quoted=True))
        )
    rows = exp.select(*items).from_(exp.alias_(union.subquery(), "u")).group_by("row_key")
    update = exp.update(source_table(pg, "t"), where=match)
    update.set(
        "expressions",
        [exp.EQ(this=exp.column(c, quoted=True), expression=v) for c, v in assignments.items()],
    )
    update.set("from_", exp.From(this=exp.alias_(rows.subquery(), "v")))
    out.append(("update", update))
    return out


def _source_statement(
    tables: list[Table],
    changes: list[TableChange],
    types: dict[str, dict[str, tuple[str, str]]],
    plan: SourcePlan,
) -> tuple[exp.Select, list[tuple[str, str]]]:
    """One statement carrying the whole change set to the source: each table's DELETE and
    UPDATE a data-modifying WITH query, the SELECT counting the rows of each. The source
    checks its foreign keys at the end of the statement, so a parent's new key and its
    children following it never break one in between, deferrable or not. Also returns
    (table, kind) of each count."""
    ctes: list[tuple[str, exp.Expression]] = []
    labels: list[tuple[str, str]] = []
    for table in tables:
        mine = [c for c in changes if c.table == table.name]
        follows = plan.follows.get(table.name, [])
        if not mine and not follows:
            continue
        skip = set(plan.fixed.get(table.name, set()))
        if table.name in plan.kept_keys:
            skip.add(table.column(table.key).header)
        columns = sorted({col for c in mine if c.action != "delete" for col in c.columns} - skip)
        full = {n: t for n, (_, t) in types[table.name].items()}
        for kind, statement in _statements(table, full, {c.action for c in mine}, columns, follows):
            statement.set("returning", exp.Returning(expressions=[exp.Literal.number(1)]))
            ctes.append((f"s{len(ctes)}", statement))
            labels.append((table.name, kind))
    counts = [exp.select(exp.func("count", exp.Star())).from_(name).subquery() for name, _ in ctes]
    select = exp.select(*counts)
    for name, statement in ctes:
        select = select.with_(name, as_=statement)
    return select, labels


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
            planned: dict[str, set[str]] = defaultdict(set)
            for c in outcome.changes:
                if c.action != "delete":
                    planned[c.table].update(c.columns)
            types = {t.name: column_types(pcon, t.source.postgres) for t in tables}  # type: ignore[arg-type]
            for table in (t for t in tables if t.name in {c.table for c in outcome.changes}):
                needed = [table.column(table.key).header, *sorted(planned[table.name])]
                missing = [c for c in needed if c not in types[table.name]]
                if missing:
                    raise SourceError(
                        f"{who}: {table.source.postgres.table} has no column {missing[0]!r}"  # type: ignore[union-attr]
                    )
            nulls = {
                (t, c)
                for t, c in pcon.execute(
                    f"SELECT DISTINCT table_name, column_name FROM {CHANGES}"
                    " WHERE action <> 'delete' AND value IS NULL AND column_name IS NOT NULL"
                ).fetchall()
            }
            facts = constraints(pcon, [t.source.postgres for t in tables])  # type: ignore[misc]
            outcome.plan = _meet_constraints(who, tables, planned, types, facts, nulls)
            statement, labels = _source_statement(tables, outcome.changes, types, outcome.plan)
            if labels:
                row = pcon.execute(statement.sql("postgres", identify=True)).fetchone()
                counted = dict(zip(labels, row or (), strict=True))
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
            change.at_source = counted.get((change.table, kind), 0)
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
    if not dry_run:
        with transaction(con):
            _surrogate_keys(con, policy)
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
                    _remember_differing(con, table, outcome, requests)
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


def _remember_differing(
    con: duckdb.DuckDBPyConnection, table: Table, outcome: SourceOutcome, requests: list[str]
) -> None:
    """Remember the source rows the next read must skip because the warehouse keeps its
    own copy of them on purpose: the rows anonymized (under their new key, or their old
    one where the key stayed), and the rows whose foreign key stayed or followed its parent
    at the source where the warehouse holds a vault token."""
    plan = outcome.plan or SourcePlan()
    key = table.column(table.key).header
    kept = table.name in plan.kept_keys
    fixed = sorted(plan.fixed.get(table.name, set()))
    con.execute(
        f"INSERT INTO core.source_anonymized SELECT DISTINCT table_name,"
        f" {'row_key' if kept else 'value'} FROM requests.source_changes WHERE table_name = ?"
        " AND action = 'anonymize' AND column_name = ? AND value IS NOT NULL"
        " AND request_id IN (SELECT unnest(CAST(? AS VARCHAR[])))"
        " UNION SELECT table_name, row_key FROM requests.source_changes WHERE table_name = ?"
        " AND action NOT IN ('delete', 'anonymize')"
        " AND column_name IN (SELECT unnest(CAST(? AS VARCHAR[])))"
        " AND request_id IN (SELECT unnest(CAST(? AS VARCHAR[])))",
        [table.name, key, requests, table.name, fixed, requests],
    )


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
    notes = outcome.plan.notes if outcome.plan else {}
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
            reason=f"{request}: carried back to source ${outcome.source}"
            + _at_source(notes.get(table, {}), columns or []),
            strategy=action,
            details={"rows": len(keys)},
        )
        for request, table, action, keys, columns in rows
    ]


def _at_source(notes: dict[str, str], columns: list[str]) -> str:
    """The ledger's word on the `columns` whose change the source's constraints altered
    (names only: its details hold counts)."""
    said = [f"{c} {notes[c]}" for c in columns if c in notes]
    return f"; at the source: {', '.join(said)}" if said else ""
