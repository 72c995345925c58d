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


def run_actions(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, dict[str, int]]:
    """Rows per table and ledger action recorded by one run."""
    if not has_table(con, "audit", "ledger"):
        return {}
    out: dict[str, dict[str, int]] = {}
    for table, action, n in con.execute(
        "SELECT table_name, action, sum(CAST(details->>'rows' AS BIGINT)) FROM audit.ledger"
        " WHERE run_id = ? AND table_name IS NOT NULL GROUP BY ALL",
        [run_id],
    ).fetchall():
        out.setdefault(table, {})[action] = int(n or 0)
    return out


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
            f"SELECT count(*), count(*) FILTER (WHERE len(_purposes) = 0"
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
