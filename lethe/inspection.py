"""Invariant queries over the warehouse that checks and tests rely on."""

from __future__ import annotations

import duckdb

from lethe.policy import HOLD_PURPOSE, Policy
from lethe.strategies import quote


def _tagged(policy: Policy) -> list[str]:
    """The declared tables whose rows carry purposes: all but the litigation-hold table."""
    return [t for t in policy.data_schema.tables if t != policy.hold_table]


def rows_past_retention(con: duckdb.DuckDBPyConnection, policy: Policy) -> dict[str, int]:
    """Rows per table that no purpose keeps and that are not anonymized (should be 0)."""
    return {
        t: con.execute(
            f"SELECT count(*) FROM core.{quote(t)}"
            " WHERE len(_purposes) = 0 AND _state <> 'anonymized'"
        ).fetchone()[0]
        for t in _tagged(policy)
    }


def held_rows_touched(con: duckdb.DuckDBPyConnection, policy: Policy, run_id: str) -> int:
    """Held rows whose key appears in a ledger entry of `run_id` (should be 0)."""
    total = 0
    for t in _tagged(policy):
        key = quote(policy.data_schema.tables[t].key)
        total += con.execute(
            f"SELECT count(*) FROM core.{quote(t)} x WHERE list_contains(x._purposes, ?)"
            f" AND EXISTS (SELECT 1 FROM audit.ledger l WHERE l.run_id = ?"
            f" AND l.table_name = ? AND list_contains(l.keys, CAST(x.{key} AS VARCHAR)))",
            [HOLD_PURPOSE, run_id, t],
        ).fetchone()[0]
    return total
