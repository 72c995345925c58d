"""Counts a run reports: rows per table, per purpose and legal basis, and per state."""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from lethe.declaration.policy import HOLD_PURPOSE, Policy
from lethe.declaration.strategies import quote
from lethe.engine.states import RowState
from lethe.engine.tagging import tagged_tables
from lethe.engine.warehouse import has_table


@dataclass
class TableSummary:
    """Counts of one core table (no personal data)."""

    table: str
    rows: int
    past_retention: int
    by_purpose: dict[str, int] = field(default_factory=dict)
    by_legal_basis: dict[str, int] = field(default_factory=dict)
    by_state: dict[str, int] = field(default_factory=dict)
    held: int = 0
    actions: dict[str, int] = field(default_factory=dict)


def _counts(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in con.execute(sql).fetchall()}


# The ledger actions a run reports, each with the one label the CLI and the UI show for it.
# Every count is of rows: a row whose columns were erased with several strategies (one
# ledger entry per strategy) counts once.
RUN_ACTIONS: dict[str, str] = {
    "erase": "rows_with_erased_columns",
    "pseudonymize": "pseudonymized",
    "anonymize": "anonymized",
    "delete": "deleted",
}


def run_actions(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, dict[str, int]]:
    """Rows per table and ledger action recorded by one run (from the ledger, the record of
    what was done); for `erase`, the distinct rows whose columns were erased."""
    if not has_table(con, "audit", "ledger"):
        return {}
    out: dict[str, dict[str, int]] = {}
    for table, action, n in con.execute(
        "SELECT table_name, action, sum(CAST(details->>'rows' AS BIGINT)) FROM audit.ledger"
        " WHERE run_id = ? AND table_name IS NOT NULL AND action <> 'erase' GROUP BY ALL"
        " UNION ALL SELECT table_name, action, count(DISTINCT k) FROM ("
        "  SELECT table_name, action, unnest(keys) AS k FROM audit.ledger"
        "  WHERE run_id = ? AND table_name IS NOT NULL AND action = 'erase') GROUP BY ALL",
        [run_id, run_id],
    ).fetchall():
        out.setdefault(table, {})[action] = int(n or 0)
    return out


def run_totals(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, int]:
    """Rows per action of one run over every table, by the labels of RUN_ACTIONS."""
    per_table = run_actions(con, run_id).values()
    return {label: sum(t.get(a, 0) for t in per_table) for a, label in RUN_ACTIONS.items()}


def purpose_rows(policy: Policy, summaries: list[TableSummary]) -> list[tuple[str, str, str, int]]:
    """(purpose, legal basis, table, rows it keeps) for each purpose of the policy and each
    table it keeps, in policy order."""
    counts = {s.table: s.by_purpose for s in summaries}
    return [
        (p.name, p.legal_basis, table, counts.get(table, {}).get(p.name, 0))
        for p in policy.all_purposes().values()
        for table in p.keeps
        if table in counts
    ]


def legal_basis_rows(policy: Policy, summaries: list[TableSummary]) -> list[tuple[str, str, int]]:
    """(legal basis, table, rows kept on it) for each legal basis of the policy and each
    table its purposes keep; a row kept on one basis by two purposes counts once."""
    counts = {s.table: s.by_legal_basis for s in summaries}
    tables: dict[str, dict[str, None]] = {}
    for p in policy.all_purposes().values():
        tables.setdefault(p.legal_basis, {}).update(dict.fromkeys(p.keeps))
    return [
        (basis, table, counts[table].get(basis, 0))
        for basis, kept in tables.items()
        for table in counts
        if table in kept
    ]


def summarize(
    con: duckdb.DuckDBPyConnection, policy: Policy, run_id: str | None = None
) -> list[TableSummary]:
    """Summaries of every tagged table of the policy's schema from its tags (and the run's
    ledger actions)."""
    actions = run_actions(con, run_id) if run_id else {}
    out = []
    for table in tagged_tables(policy):
        t = f"core.{quote(table)}"
        rows, past, held = con.execute(
            # Both engines: PostgreSQL's array_length of an empty array is NULL.
            f"SELECT count(*), count(*) FILTER (WHERE _purposes IS NOT NULL"
            f" AND coalesce(array_length(_purposes), 0) = 0"
            f" AND _state <> {RowState.ANONYMIZED.sql}),"
            f" count(*) FILTER (WHERE list_contains(_purposes, '{HOLD_PURPOSE}')) FROM {t}"
        ).fetchone()
        out.append(
            TableSummary(
                table=table,
                rows=rows,
                past_retention=past,
                by_purpose=_counts(
                    con,
                    f"SELECT p, count(*) FROM (SELECT unnest(_purposes) p FROM {t}) GROUP BY p"
                    " ORDER BY p",
                ),
                by_legal_basis=_counts(
                    con,
                    f"SELECT b, count(*) FROM (SELECT unnest(_legal_bases) b FROM {t})"
                    " GROUP BY b ORDER BY b",
                ),
                by_state=_counts(con, f"SELECT _state, count(*) FROM {t} GROUP BY 1 ORDER BY 1"),
                held=held,
                actions=actions.get(table, {}),
            )
        )
    return out
