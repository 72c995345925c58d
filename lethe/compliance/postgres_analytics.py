"""The analysts' datasets on a PostgreSQL warehouse (`LETHE_WAREHOUSE=postgresql://…`).

The DuckDB pipeline's plans (`lethe.compliance.analytics`), rendered for PostgreSQL and run
in the database by `PostgresEngine`: the release plan stages the records, generalizes and
suppresses the cells under k, the publish plan replaces `analytics.<dataset>` and its row in
`analytics.releases`, all in one transaction per dataset. The released table is then read
back streamed (COPY as Arrow batches, through DuckDB in memory, which gives it the column
types it has on a DuckDB warehouse) and written as the same Parquet extract under
LETHE_HOME/exports/analytics. The k-anonymity check runs its query in the database too.
Only the warehouse's `core` tables are read: the vault is never opened.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from lethe.compliance.analytics import (
    SCHEMA,
    Dataset,
    KCheck,
    Release,
    datasets,
    drop_staged,
    k_check,
    k_of,
    publish_plan,
    release_plan,
    released,
    released_counts,
    write_extract,
)
from lethe.declaration.policy import Policy
from lethe.declaration.strategies import quote
from lethe.engine.engines import PostgresEngine
from lethe.engine.plan import Plan
from lethe.engine.postgres_warehouse import pull
from lethe.engine.warehouse import connect
from lethe.operations.home import Home


def release(
    engine: PostgresEngine, home: Home, policy: Policy, dataset: Dataset, as_of: dt.date
) -> Release:
    """Build `analytics.<dataset>` in the database and its Parquet extract, as
    `lethe.compliance.analytics.release` does on DuckDB (module notes)."""
    with engine.transaction():
        engine.run(release_plan(policy, dataset))
        engine.run(publish_plan(policy, dataset))
        counts = engine.run(Plan("released counts", (released_counts(dataset),)))[-1]
        engine.run(drop_staged())
    assert counts, "the register row was just written"
    path = write_extract(_released_table(engine, dataset), home, policy, dataset, as_of)
    return released(policy, dataset, counts[0], path)


def _released_table(engine: PostgresEngine, dataset: Dataset) -> pa.Table:
    """`analytics.<dataset>` as Arrow, with the column types of its DuckDB twin: pulled
    (streamed) into a table of those types in DuckDB in memory."""
    mem = connect(":memory:")
    try:
        mem.execute(f"CREATE SCHEMA {SCHEMA}")
        columns = ", ".join(f"{quote(c.name)} {c.sql_type}" for c in dataset.columns)
        mem.execute(f"CREATE TABLE {SCHEMA}.{quote(dataset.name)} ({columns})")
        pull(engine.con, mem, f"{SCHEMA}.{dataset.name}")
        return mem.table(f"{SCHEMA}.{quote(dataset.name)}").to_arrow_table()
    finally:
        mem.close()


def check_k_anonymity(engine: PostgresEngine, dataset: Dataset, k: int) -> KCheck:
    """`lethe.compliance.analytics.check_k_anonymity` of the released table in the database."""
    present = [
        name
        for (name,) in engine.con.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            [SCHEMA, dataset.name],
        ).fetchall()
    ]

    def row_of(sql: str) -> tuple:
        rows = engine.run(Plan("k-anonymity check", (sql,)))[-1]
        assert rows, "an aggregate returns one row"
        return rows[0]

    return k_check(dataset, k, present, row_of)


def release_all(
    engine: PostgresEngine, home: Home, policy: Policy, as_of: dt.date
) -> dict[str, tuple[Release, KCheck]]:
    """Release every dataset the policy declares and check it; by dataset name."""
    out = {}
    for name, dataset in datasets(policy).items():
        result = release(engine, home, policy, dataset, as_of)
        out[name] = (result, check_k_anonymity(engine, dataset, k_of(policy, dataset)))
    return out
