"""Counts a run reports: rows per table, per purpose and legal basis, and per state."""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from lethe.strategies import quote
from lethe.tables import TAGGED_TABLES


@dataclass
class TableSummary:
    """Counts of one core table (no personal data)."""

    table: str
    rows: int
    past_retention: int
    by_purpose: dict[str, int] = field(default_factory=dict)
    by_legal_basis: dict[str, int] = field(default_factory=dict)
    by_state: dict[str, int] = field(default_factory=dict)


def _counts(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in con.execute(sql).fetchall()}


def summarize(con: duckdb.DuckDBPyConnection) -> list[TableSummary]:
    """Summaries of every tagged core table, from its current tags."""
    out = []
    for table in TAGGED_TABLES:
        t = f"core.{quote(table)}"
        rows, past = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE len(_purposes) = 0"
            f" AND _state NOT IN ('anonymized')) FROM {t}"
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
            )
        )
    return out
