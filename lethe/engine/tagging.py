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


def _window(purpose: Purpose, as_of: str, alias: str) -> tuple[str, str, str]:
    """(end, open, applies) of the purpose's window over a row `alias` of its anchor table."""
    ret = purpose.retention

    def col(name: str) -> str:
        return f"{alias}.{quote(name)}"

    starts = [col(a.column) + (f" + {a.plus.sql()}" if a.plus else "") for a in ret.anchors]
    start = starts[0] if len(starts) == 1 else f"coalesce({', '.join(starts)})"
    end = f"{start} + {ret.keep.sql()}"
    if ret.ends_early_at:
        end = f"least({end}, {col(ret.ends_early_at.column)})"
    is_open = f"({start}) IS NULL" if ret.open_while_null else "false"
    conditions = [
        f"CAST({col(ref.split('.', 1)[1])} AS VARCHAR) = {literal(value)}"
        for ref, value in ret.only_where.items()
    ]
    if ret.starts_at:
        conditions.append(f"{col(ret.starts_at.column)} <= {as_of}")
    return f"CAST({end} AS TIMESTAMP)", is_open, " AND ".join(conditions) or "true"


def _anchor_status(schema: Schema, purpose: Purpose, as_of: str) -> str:
    """(_k, _end, _open, _active) for each row of the purpose's anchor table."""
    table = schema.tables[purpose.retention.table]
    end, is_open, where = _window(purpose, as_of, "a")
    # Foreign keys ride along, so the step up to a parent needs no join back to this table.
    fks = "".join(f", a.{quote(fk.column)} AS {_carried(fk.column)}" for fk in table.foreign_keys)
    return (
        f"SELECT a.{quote(table.key)} AS _k, {end} AS _end, {is_open} AS _open"
        f"{fks} FROM core.{quote(table.name)} a WHERE {where}"
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


def _status_along(
    schema: Schema, purpose: Purpose, steps: list[tuple[str, str]], as_of: str
) -> str:
    """(_k, _end, _open, _active) of `purpose` carried from its anchor table along `steps`."""
    anchor = purpose.retention.table
    anchored = _anchor_status(schema, purpose, as_of)
    status = f"SELECT *, (_open OR {as_of} < _end) AS _active FROM ({anchored})"
    current = anchor
    for nxt, direction in steps:
        status = _step(schema, status, current, nxt, direction, from_anchor=current == anchor)
        current = nxt
    return status


def purpose_status_sql(schema: Schema, purpose: Purpose, table: str, as_of: str) -> str:
    """(_k, _end, _open, _active) of `purpose` for the rows of `table` it reaches."""
    return _status_along(schema, purpose, _path(schema, purpose.retention.table, table), as_of)


def purpose_join(schema: Schema, purpose: Purpose, table: str, as_of: str) -> tuple[str, str]:
    """The status of `purpose` to join to the rows of `table` (as `purpose_status_sql`), and
    the column of `table` it is keyed by.

    A row whose window comes down from its parent takes the parent's status by its foreign
    key: the last step, a join of the whole table to that status, is left to the caller's
    join of the same rows.
    """
    steps = _path(schema, purpose.retention.table, table)
    if steps and steps[-1][1] == "child":
        parent = steps[-2][0] if len(steps) > 1 else purpose.retention.table
        fk = next(f for f in schema.tables[table].foreign_keys if f.ref_table == parent)
        return _status_along(schema, purpose, steps[:-1], as_of), fk.column
    return _status_along(schema, purpose, steps, as_of), schema.tables[table].key


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


MASK = "_mask"  # bit i set: the table's i-th purpose (`purposes_for`) keeps the row
_MASK_TABLE_PURPOSES = 6  # up to this many purposes, lists are looked up per mask value


def purpose_bits(policy: Policy, table: str, names: list[str] | None = None) -> int:
    """The mask bits of these purposes of `table` (default: all of them)."""
    return sum(
        1 << i for i, p in enumerate(policy.purposes_for(table)) if names is None or p.name in names
    )


def _literal_list(items: list[str]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]" if items else _EMPTY


def mask_lists(policy: Policy, table: str, mask: str) -> tuple[str, str]:
    """SQL of `_purposes` and `_legal_bases` rendered from a purpose mask (`MASK`).

    With few purposes, one CASE over the mask values picks constant lists: far cheaper per
    row than concatenating one list per purpose.
    """
    purposes = policy.purposes_for(table)
    bases: dict[str, int] = {}
    for i, p in enumerate(purposes):
        bases[p.legal_basis] = bases.get(p.legal_basis, 0) | 1 << i
    if not purposes:
        return _EMPTY, _EMPTY
    if len(purposes) <= _MASK_TABLE_PURPOSES:
        masks = range(1, 1 << len(purposes))
        names = " ".join(
            f"WHEN {m} THEN {_literal_list([p.name for i, p in enumerate(purposes) if m >> i & 1])}"
            for m in masks
        )
        basis_lists = " ".join(
            f"WHEN {m} THEN {_literal_list([b for b, bits in bases.items() if m & bits])}"
            for m in masks
        )
        return (
            f"CASE {mask} {names} ELSE {_EMPTY} END",
            f"CASE {mask} {basis_lists} ELSE {_EMPTY} END",
        )
    names = " || ".join(
        f"CASE WHEN ({mask} & {1 << i}) <> 0 THEN ['{p.name}'] ELSE {_EMPTY} END"
        for i, p in enumerate(purposes)
    )
    basis_items = " || ".join(
        f"CASE WHEN ({mask} & {bits}) <> 0 THEN ['{basis}'] ELSE {_EMPTY} END"
        for basis, bits in bases.items()
    )
    return names, basis_items


def tag_select(
    policy: Policy,
    table: str,
    as_of: dt.date | dt.datetime,
    columns: list[str],
    row_id: str | None = None,
    request: str | None = None,
    mask: bool = False,
    previous: bool = False,
) -> str:
    """SELECT of `core.<table>` with fresh `_purposes`, `_legal_bases`, `_retain_until`, `_state`.

    `columns` are the columns copied along (contract, carried extras and tag columns);
    `row_id` names an extra output column holding each row's DuckDB rowid, `request` one
    holding the open erasure request of the row's subject (or NULL); with `mask`, the
    purposes come as their mask (`MASK`, see `mask_lists`) instead of the two lists; with
    `previous`, the row's stored tags come along too, as `_was<tag>` (`_was_state`, ...). A
    subject with an erasure request keeps only the purposes that survive erasure, and what
    they keep is `restricted`.
    """
    t = timestamp_literal(as_of)
    schema = policy.data_schema
    purposes = policy.purposes_for(table)
    # A window anchored on this table's own rows is read from the row itself; only windows
    # carried along foreign keys need a join.
    status: list[tuple[str, str, str]] = []  # (_end, _open, _active) per purpose
    joins = ""
    for i, p in enumerate(purposes):
        if p.retention.table == table:
            end, is_open, applies = _window(p, t, "x")
            status.append(
                (
                    f"CASE WHEN {applies} THEN {end} END",
                    f"CASE WHEN {applies} THEN {is_open} END",
                    f"CASE WHEN {applies} THEN ({is_open} OR {t} < {end}) END",
                )
            )
        else:
            status_sql, on = purpose_join(schema, p, table, t)
            joins += f" LEFT JOIN ({status_sql}) p{i} ON p{i}._k = x.{quote(on)}"
            status.append((f"p{i}._end", f"p{i}._open", f"p{i}._active"))
    joins += erasure_join(schema, table)
    allowed = {
        p.name: "true" if survives_erasure(p) else "_er.request_id IS NULL" for p in purposes
    }
    active = {
        p.name: f"(coalesce({status[i][2]}, false) AND {allowed[p.name]})"
        for i, p in enumerate(purposes)
    }
    bits = " + ".join(
        f"CASE WHEN {active[p.name]} THEN {1 << i} ELSE 0 END" for i, p in enumerate(purposes)
    )
    any_open = " OR ".join(f"({active[p.name]} AND {status[i][1]})" for i, p in enumerate(purposes))
    ends = ", ".join(
        f"CASE WHEN {allowed[p.name]} THEN {status[i][0]} END" for i, p in enumerate(purposes)
    )
    # An anonymized row is no longer personal data: no purpose, no retention date (a date
    # derived from the original values would reveal what generalization removed).
    anon = f"x._state = {RowState.ANONYMIZED.sql}"
    tags = (
        f"CASE WHEN {anon} THEN 0 ELSE {bits or '0'} END AS {MASK},"
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
    copied = [quote(c) for c in columns if c not in FRESH_TAGS]
    inner = [f"x.{c}" for c in copied]
    if row_id:
        inner.insert(0, f"x.rowid AS {quote(row_id)}")
        copied.insert(0, quote(row_id))
    if request:
        inner.append(f"_er.request_id AS {quote(request)}")
        copied.append(quote(request))
    if previous:
        inner += [f"x.{tag} AS _was{tag}" for tag in FRESH_TAGS]
        copied += [f"_was{tag}" for tag in FRESH_TAGS]
    if mask:
        rendered = MASK
    else:
        names, bases = mask_lists(policy, table, MASK)
        rendered = f"{names} AS _purposes, {bases} AS _legal_bases"
    return (
        f"SELECT {', '.join([*copied, rendered])}, _retain_until, _state FROM"
        f" (SELECT {', '.join([*inner, tags, state])} FROM core.{quote(table)} x{joins})"
    )


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
