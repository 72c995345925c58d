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

from lethe.declaration.policy import Policy
from lethe.engine.engines import PostgresEngine
from lethe.rights.holds import hold_columns, place_hold, release_hold
from lethe.rights.postgres_requests import mirrored_step
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
