"""Engine-neutral SQL plans: DuckDB-dialect SQL checked by SQLGlot, transpilable.

Tagging and enforcement are generated from the policy as SQL text in DuckDB's dialect.
`check()` parses every statement with SQLGlot and `transpile()` renders the same plan for
another engine (e.g. PostgreSQL) as SQLGlot alone translates it; an engine
(`lethe.engine.engines`) renders it with the rewrites SQLGlot does not make
(`lethe.engine.rendering`), and tests/test_plans.py runs every kind of plan on PostgreSQL.
A run hands the text straight to DuckDB, since parsing the enforcement statements with
SQLGlot takes longer than DuckDB needs to enforce 100,000 rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlglot


@dataclass(frozen=True)
class Plan:
    """A named, ordered list of SQL statements (DuckDB dialect)."""

    name: str
    statements: tuple[str, ...]

    def check(self) -> None:
        """Parse every statement with SQLGlot; raises on SQL the generator got wrong."""
        for sql in self.statements:
            sqlglot.parse_one(sql, read="duckdb")

    def transpile(self, dialect: str) -> list[str]:
        """The statements rendered for another SQLGlot dialect (`postgres`, `spark`, …)."""
        return [sqlglot.transpile(s, read="duckdb", write=dialect)[0] for s in self.statements]


def timestamp_literal(when: dt.date | dt.datetime) -> str:
    """A SQL timestamp literal for a trusted date (never from raw user text)."""
    if not isinstance(when, dt.datetime):
        when = dt.datetime.combine(when, dt.time())
    return f"CAST('{when.replace(tzinfo=None).isoformat(sep=' ')}' AS TIMESTAMP)"
