"""Litigation holds on a PostgreSQL warehouse (`LETHE_WAREHOUSE=postgresql://…`).

`lethe hold add` and `lethe hold release` run `lethe.rights.holds`' own `place_hold` and
`release_hold` by the pattern of `lethe.rights.postgres_requests`: under Lethe's advisory
lock and in one transaction, on an in-memory DuckDB mirroring what they read (the key,
e-mail and state of the subject named, or of every subject when it is named by e-mail;
that subject's rows of the hold table; the ledger's last entry and the key secret), and
what they changed goes back set-based:
the hold rows by their key, the new ledger entries (hashed and chained by the same code)
appended. A refusal (an unknown subject, no open hold, no reason) writes nothing.

The next `lethe run` there enforces with the hold table as it is, as on DuckDB: a held
subject's rows stay as they are until the hold is released.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
from psycopg import sql as pgsql

from lethe.compliance import inspection
from lethe.declaration.policy import HOLD_PURPOSE, Policy
from lethe.engine.engines import PostgresEngine
from lethe.engine.tagging import tagged_tables
from lethe.rights.holds import hold_columns, place_hold, release_hold
from lethe.rights.postgres_requests import LEDGER, Mirror, mirrored_step
from lethe.rights.subjects import resolve_subject


@contextmanager
def _holds_of(
    engine: PostgresEngine, policy: Policy, subject: str
) -> Iterator[duckdb.DuckDBPyConnection]:
    """The mirror for one hold command on `subject` (module notes), to run a function of
    `lethe.rights.holds` on; what it changed is carried back when the block ends."""
    schema = policy.data_schema
    h = hold_columns(policy)
    with mirrored_step(engine, schema) as mirror:
        mirror.pull_named_subject(subject)
        # Resolved here to mirror only that subject's holds; the function resolves it again.
        key = resolve_subject(mirror.mem, schema, subject)
        theirs = pgsql.SQL("CAST({} AS text) = {}").format(
            pgsql.Identifier(h.subject), pgsql.Literal(key)
        )
        mirror.pull(("core", h.table), theirs, key=h.key)
        mirror.freeze()
        yield mirror.mem


def place(engine: PostgresEngine, policy: Policy, subject: str, reason: str) -> str:
    """`lethe hold add`: `place_hold` on the PostgreSQL warehouse; the hold id."""
    with _holds_of(engine, policy, subject) as mem:
        return place_hold(mem, policy, subject, reason)


def release(engine: PostgresEngine, policy: Policy, subject: str, reason: str) -> int:
    """`lethe hold release`: `release_hold` on the PostgreSQL warehouse; holds released."""
    with _holds_of(engine, policy, subject) as mem:
        return release_hold(mem, policy, subject, reason)


def held_rows_touched(engine: PostgresEngine, policy: Policy, run_id: str) -> int:
    """`lethe.compliance.inspection.held_rows_touched` on the PostgreSQL warehouse: held
    rows a ledger entry of `run_id` names, counted on a mirror of the held rows' keys and
    the run's ledger entries, with the warehouse's key secret (nothing is written back)."""
    schema = policy.data_schema
    mirror = Mirror(engine.con, schema)  # holds the ledger's last entry already
    try:
        held = pgsql.SQL("{} = ANY(_purposes)").format(pgsql.Literal(HOLD_PURPOSE))
        for table in tagged_tables(policy):
            mirror.pull(("core", table), held, columns=[schema.tables[table].key, "_purposes"])
        runs = pgsql.SQL("run_id = {} AND seq < (SELECT max(seq) FROM audit.ledger)")
        mirror.pull(LEDGER, runs.format(pgsql.Literal(run_id)))
        return inspection.held_rows_touched(mirror.mem, policy, run_id)
    finally:
        mirror.close()
