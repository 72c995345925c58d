"""Purpose tagging: which purposes keep each row, on which legal basis, until when.

For every purpose the policy anchors a retention window on rows of one table
(`retention.from`). The window's state (active, open-ended, end) is computed there
and carried along foreign keys to every table the purpose keeps: up to a parent
(any active child keeps it; it ends when the last child ends) and down to children
(they follow their parent). All of it is one SQL SELECT per table.
"""

from __future__ import annotations

import datetime as dt
from collections import deque

import duckdb

from lethe.declaration.policy import HOLD_PURPOSE, Policy, Purpose
from lethe.declaration.schema import Schema
from lethe.declaration.strategies import literal, quote
from lethe.engine.plan import Plan, timestamp_literal
from lethe.engine.reach import reach
from lethe.engine.states import RowState
from lethe.engine.warehouse import table_columns, transaction

# Row states (SPEC "Warehouse"); `expired` marks a row no purpose keeps, until
# enforcement deletes or anonymizes it in the same run.
STATES_KEPT_AS_IS = (RowState.RESTRICTED, RowState.PSEUDONYMIZED)
# The columns `tag_select` computes afresh (the rest are copied).
FRESH_TAGS = ("_purposes", "_legal_bases", "_retain_until", "_state")
_EMPTY = "CAST([] AS VARCHAR[])"


def tagged_tables(policy: Policy) -> tuple[str, ...]:
    """The tables tagged and enforced: every declared table except the litigation holds
    (which say what is frozen, and are no one's data kept for a purpose), in load order."""
    return tuple(t for t in policy.data_schema.tables if t != policy.hold_table)


def _edges(schema: Schema, table: str) -> list[tuple[str, str]]:
    """Neighbours of a table along foreign keys: (neighbour, 'parent' | 'child')."""
    tables = schema.tables
    out = [(fk.ref_table, "parent") for fk in tables[table].foreign_keys]
    out += [
        (t.name, "child") for t in tables.values() for fk in t.foreign_keys if fk.ref_table == table
    ]
    return out


def _path(schema: Schema, start: str, goal: str) -> list[tuple[str, str]]:
    """Shortest FK path from `start` to `goal` as steps (table, direction)."""
    prev: dict[str, tuple[str, str] | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt, direction in _edges(schema, node):
            if nxt not in prev:
                prev[nxt] = (node, direction)
                queue.append(nxt)
    if goal not in prev:
        raise ValueError(f"no foreign-key path from {start} to {goal}")
    steps: list[tuple[str, str]] = []
    node = goal
    while prev[node] is not None:
        parent_node, direction = prev[node]  # type: ignore[misc]
        steps.append((node, direction))
        node = parent_node
    return list(reversed(steps))


def _anchor_status(schema: Schema, purpose: Purpose, as_of: str) -> str:
    """(_k, _end, _open, _active) for each row of the purpose's anchor table."""
    ret = purpose.retention
    table = schema.tables[ret.table]
    starts = [f"{quote(a.column)}" + (f" + {a.plus.sql()}" if a.plus else "") for a in ret.anchors]
    start = starts[0] if len(starts) == 1 else f"coalesce({', '.join(starts)})"
    end = f"{start} + {ret.keep.sql()}"
    if ret.ends_early_at:
        end = f"least({end}, {quote(ret.ends_early_at.column)})"
    is_open = f"({start}) IS NULL" if ret.open_while_null else "false"
    conditions = [
        f"CAST({quote(ref.split('.', 1)[1])} AS VARCHAR) = {literal(value)}"
        for ref, value in ret.only_where.items()
    ]
    if ret.starts_at:
        conditions.append(f"{quote(ret.starts_at.column)} <= {as_of}")
    where = " AND ".join(conditions) or "true"
    # Foreign keys ride along, so the step up to a parent needs no join back to this table.
    fks = "".join(f", {quote(fk.column)} AS {_carried(fk.column)}" for fk in table.foreign_keys)
    return (
        f"SELECT {quote(table.key)} AS _k, CAST({end} AS TIMESTAMP) AS _end, {is_open} AS _open"
        f"{fks} FROM core.{quote(table.name)} WHERE {where}"
    )


def _carried(fk_column: str) -> str:
    """The name under which the anchor status carries one of its table's foreign keys."""
    return quote("_fk_" + fk_column)


def _step(
    schema: Schema, status: str, src: str, dst: str, direction: str, from_anchor: bool
) -> str:
    """Carry a status relation from table `src` to its neighbour `dst`."""
    tables = schema.tables
    if direction == "parent":  # dst is referenced by src: aggregate src's rows per dst key
        fk = next(f for f in tables[src].foreign_keys if f.ref_table == dst)
        if from_anchor:
            return (
                f"SELECT s.{_carried(fk.column)} AS _k, max(s._end) AS _end,"
                f" bool_or(s._open) AS _open, bool_or(s._active) AS _active FROM ({status}) s"
                f" WHERE s.{_carried(fk.column)} IS NOT NULL GROUP BY s.{_carried(fk.column)}"
            )
        return (
            f"SELECT t.{quote(fk.column)} AS _k, max(s._end) AS _end, bool_or(s._open) AS _open,"
            f" bool_or(s._active) AS _active FROM ({status}) s"
            f" JOIN core.{quote(src)} t ON t.{quote(tables[src].key)} = s._k"
            f" GROUP BY t.{quote(fk.column)}"
        )
    fk = next(f for f in tables[dst].foreign_keys if f.ref_table == src)
    return (
        f"SELECT t.{quote(tables[dst].key)} AS _k, s._end, s._open, s._active"
        f" FROM core.{quote(dst)} t JOIN ({status}) s ON t.{quote(fk.column)} = s._k"
    )


def purpose_status_sql(schema: Schema, purpose: Purpose, table: str, as_of: str) -> str:
    """(_k, _end, _open, _active) of `purpose` for the rows of `table` it reaches."""
    anchor = purpose.retention.table
    anchored = _anchor_status(schema, purpose, as_of)
    status = f"SELECT *, (_open OR {as_of} < _end) AS _active FROM ({anchored})"
    current = anchor
    for nxt, direction in _path(schema, anchor, table):
        status = _step(schema, status, current, nxt, direction, from_anchor=current == anchor)
        current = nxt
    return status


def erasure_join(schema: Schema, table: str) -> str:
    """LEFT JOINs giving `_er.request_id`: the open erasure request of the row's subject
    (alias `x`), reached along the table's references."""
    r = reach(schema, table, "x")
    return (
        f"{r.joins} LEFT JOIN (SELECT subject_key, min(request_id) AS request_id"
        f" FROM requests.erasures GROUP BY subject_key) _er"
        f" ON _er.subject_key = CAST({r.subject} AS VARCHAR)"
    )


def survives_erasure(purpose: Purpose) -> bool:
    """GDPR Art. 17(3): a legal obligation (b) or legal claims (e) outlast an erasure request."""
    return purpose.legal_basis == "legal_obligation" or purpose.name == HOLD_PURPOSE


def tag_select(
    policy: Policy,
    table: str,
    as_of: dt.date | dt.datetime,
    columns: list[str],
    row_id: str | None = None,
) -> str:
    """SELECT of `core.<table>` with fresh `_purposes`, `_legal_bases`, `_retain_until`, `_state`.

    `columns` are the columns copied along (contract, carried extras and tag columns);
    `row_id` names an extra output column holding each row's DuckDB rowid. A subject with
    an erasure request keeps only the purposes that survive erasure, and what they keep
    is `restricted`.
    """
    t = timestamp_literal(as_of)
    schema = policy.data_schema
    purposes = policy.purposes_for(table)
    key = quote(schema.tables[table].key)
    joins = "".join(
        f" LEFT JOIN ({purpose_status_sql(schema, p, table, t)}) p{i} ON p{i}._k = x.{key}"
        for i, p in enumerate(purposes)
    ) + erasure_join(schema, table)
    allowed = {
        p.name: "true" if survives_erasure(p) else "_er.request_id IS NULL" for p in purposes
    }
    active = {
        p.name: f"(coalesce(p{i}._active, false) AND {allowed[p.name]})"
        for i, p in enumerate(purposes)
    }
    names = " || ".join(
        f"CASE WHEN {active[p.name]} THEN ['{p.name}'] ELSE {_EMPTY} END" for p in purposes
    )
    bases: dict[str, list[str]] = {}
    for p in purposes:
        bases.setdefault(p.legal_basis, []).append(active[p.name])
    basis_items = " || ".join(
        f"CASE WHEN {' OR '.join(conds)} THEN ['{basis}'] ELSE {_EMPTY} END"
        for basis, conds in bases.items()
    )
    any_open = " OR ".join(f"({active[p.name]} AND p{i}._open)" for i, p in enumerate(purposes))
    ends = ", ".join(
        f"CASE WHEN {allowed[p.name]} THEN p{i}._end END" for i, p in enumerate(purposes)
    )
    # An anonymized row is no longer personal data: no purpose, no retention date (a date
    # derived from the original values would reveal what generalization removed).
    anon = f"x._state = {RowState.ANONYMIZED.sql}"
    tags = (
        f"CASE WHEN {anon} THEN {_EMPTY} ELSE {names or _EMPTY} END AS _purposes,"
        f" CASE WHEN {anon} THEN {_EMPTY} ELSE {basis_items or _EMPTY} END AS _legal_bases,"
        f" CASE WHEN {anon} OR {any_open or 'false'} THEN NULL ELSE"
        f" CAST(greatest({ends}) AS TIMESTAMP) END AS _retain_until"
    )
    kept_state = ", ".join(f"'{s}'" for s in STATES_KEPT_AS_IS)
    any_active = "(" + (" OR ".join(active.values()) or "false") + ")"
    # What an erasure request leaves (a legal obligation, a hold) is restricted, even a
    # row pseudonymized before; anonymized rows are no one's any more.
    state = (
        f"CASE WHEN {anon} THEN x._state"
        f" WHEN {any_active} AND _er.request_id IS NOT NULL THEN {RowState.RESTRICTED.sql}"
        f" WHEN x._state IN ({kept_state}) THEN x._state"
        f" WHEN {any_active} THEN {RowState.ACTIVE.sql} ELSE {RowState.EXPIRED.sql} END AS _state"
    )
    select = [f"x.{quote(c)}" for c in columns if c not in FRESH_TAGS]
    if row_id:
        select.insert(0, f"x.rowid AS {quote(row_id)}")
    return f"SELECT {', '.join(select)}, {tags}, {state} FROM core.{quote(table)} x{joins}"


def tag_plan(
    con: duckdb.DuckDBPyConnection, policy: Policy, table: str, as_of: dt.date | dt.datetime
) -> Plan:
    """The statement that rewrites `core.<table>` with fresh tags, in the table's column order."""
    columns = table_columns(con, "core", table)
    select = tag_select(policy, table, as_of, columns)
    ordered = ", ".join(quote(c) for c in columns)
    return Plan(
        f"tag {table}",
        (f"CREATE OR REPLACE TABLE core.{quote(table)} AS SELECT {ordered} FROM ({select})",),
    )


def tag_all(con: duckdb.DuckDBPyConnection, policy: Policy, as_of: dt.date | dt.datetime) -> None:
    """Re-tag every tagged table (`tagged_tables`) in one transaction."""
    plans = [tag_plan(con, policy, table, as_of) for table in tagged_tables(policy)]
    with transaction(con):
        for plan in plans:
            for sql in plan.statements:
                con.execute(sql)
