"""Invariant queries over the warehouse that checks and tests rely on."""

from __future__ import annotations

import duckdb

from lethe.declaration.policy import HOLD_PURPOSE, Policy
from lethe.declaration.strategies import quote
from lethe.engine.keyhash import MACRO, bind
from lethe.engine.states import RowState
from lethe.engine.tagging import tagged_tables


def rows_past_retention(con: duckdb.DuckDBPyConnection, policy: Policy) -> dict[str, int]:
    """Rows per table that no purpose keeps and that are not anonymized (should be 0)."""
    return {
        t: con.execute(
            f"SELECT count(*) FROM core.{quote(t)}"
            # Written to run on both engines: PostgreSQL's array_length of an empty
            # array is NULL.
            f" WHERE coalesce(array_length(_purposes), 0) = 0"
            f" AND _state <> {RowState.ANONYMIZED.sql}"
        ).fetchone()[0]
        for t in tagged_tables(policy)
    }


def held_rows_touched(con: duckdb.DuckDBPyConnection, policy: Policy, run_id: str) -> int:
    """Held rows whose key appears in a ledger entry of `run_id` (should be 0); the ledger
    names keys by their keyed hash, so the held rows' keys are hashed to compare."""
    bind(con)
    total = 0
    for t in tagged_tables(policy):
        key = quote(policy.data_schema.tables[t].key)
        total += con.execute(
            f"SELECT count(*) FROM core.{quote(t)} x WHERE list_contains(x._purposes, ?)"
            f" AND EXISTS (SELECT 1 FROM audit.ledger l WHERE l.run_id = ?"
            f" AND l.table_name = ? AND list_contains(l.keys, {MACRO}(CAST(x.{key} AS VARCHAR))))",
            [HOLD_PURPOSE, run_id, t],
        ).fetchone()[0]
    return total
