"""What each core table holds now, read from the warehouse after enforcement: rows per
state, and per purpose the rows it keeps, those it stops keeping within a window and
the next date one of them expires. The UI shows it on every core table."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import duckdb

from lethe.declaration.policy import HOLD_PURPOSE, Policy
from lethe.declaration.strategies import literal, quote
from lethe.engine.plan import timestamp_literal
from lethe.engine.states import STORED_STATES
from lethe.engine.tagging import purpose_status_sql, tagged_tables

# "Rows expiring soon": within this many days after the as-of date.
EXPIRY_WINDOW = dt.timedelta(days=30)


@dataclass(frozen=True)
class PurposeCount:
    """One purpose's rows in one table now."""

    purpose: str
    rows_kept: int
    rows_expiring: int  # rows this purpose stops keeping within EXPIRY_WINDOW
    next_expiry: dt.date | None  # the earliest end of this purpose among its rows


@dataclass(frozen=True)
class TableStatus:
    """A core table after enforcement (tags and state counts only for tagged tables)."""

    table: str
    rows: int
    by_state: dict[str, int] = field(default_factory=dict)
    by_purpose: list[PurposeCount] = field(default_factory=list)


def table_status(
    con: duckdb.DuckDBPyConnection, policy: Policy, table: str, as_of: dt.date
) -> TableStatus:
    """Counts of `core.<table>` as it is now; purposes' ends are evaluated at `as_of`."""
    name = f"core.{quote(table)}"
    rows = con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    if table == policy.hold_table:  # every hold record is kept as the hold's evidence
        return TableStatus(table, rows, by_purpose=[PurposeCount(HOLD_PURPOSE, rows, 0, None)])
    if table not in tagged_tables(policy):
        return TableStatus(table, rows)
    states = dict(con.execute(f"SELECT _state, count(*) FROM {name} GROUP BY 1").fetchall())
    by_state = {s.value: states.get(s.value, 0) for s in STORED_STATES}
    return TableStatus(table, rows, by_state, _by_purpose(con, policy, table, as_of))


def _by_purpose(
    con: duckdb.DuckDBPyConnection, policy: Policy, table: str, as_of: dt.date
) -> list[PurposeCount]:
    """One pass over the table: each purpose's window joined by key, counted where the
    row's stored tags still name the purpose."""
    schema = policy.data_schema
    purposes = policy.purposes_for(table)
    if not purposes:
        return []
    start = timestamp_literal(as_of)
    horizon = timestamp_literal(as_of + EXPIRY_WINDOW)
    key = quote(schema.tables[table].key)
    joins, items = [], []
    for i, p in enumerate(purposes):
        status = purpose_status_sql(schema, p, table, start)
        joins.append(f" LEFT JOIN ({status}) p{i} ON p{i}._k = x.{key}")
        kept = f"list_contains(x._purposes, {literal(p.name)})"
        ends = f"{kept} AND NOT coalesce(p{i}._open, false) AND p{i}._end IS NOT NULL"
        items += [
            f"count(*) FILTER (WHERE {kept})",
            f"count(*) FILTER (WHERE {ends} AND p{i}._end <= {horizon})",
            f"CAST(min(p{i}._end) FILTER (WHERE {ends}) AS DATE)",
        ]
    row = con.execute(f"SELECT {', '.join(items)} FROM core.{quote(table)} x{''.join(joins)}")
    values = row.fetchone()
    return [
        PurposeCount(p.name, values[3 * i], values[3 * i + 1], values[3 * i + 2])
        for i, p in enumerate(purposes)
    ]
