"""Retention of Lethe's own logs on a PostgreSQL warehouse (`LETHE_WAREHOUSE=postgresql://…`).

A run applies `lethe.operations.activity_logs.purge_logs` itself, written once, by the
pattern of `lethe.rights.postgres_requests` (`mirrored_step`): under Lethe's advisory lock
and in one transaction, on an in-memory DuckDB holding the rows it may delete (access log
entries and quarantined input rows past their retention), the export log and the purge
record (it counts the export log and reads when it was last purged) and the ledger's last
entry; the rows it deleted leave the database, its ledger entries are appended (continuing
the chain), and the tables that lost rows are rewritten by `VACUUM FULL`.
"""

from __future__ import annotations

import datetime as dt

from psycopg import sql as pgsql

from lethe.declaration.policy import Policy
from lethe.engine.engines import PostgresEngine
from lethe.operations.activity_logs import LogPurge, purge_logs
from lethe.rights.postgres_requests import EXPORT_LOG, QUARANTINE, mirrored_step

ACCESS_LOG = ("audit", "access_log")
LOG_PURGES = ("audit", "log_purges")


def _until(column: str, cutoff: dt.datetime) -> pgsql.Composable:
    """The rows whose `column` is at or before `cutoff` (what `purge_logs` deletes)."""
    return pgsql.SQL("{} <= {}").format(pgsql.Identifier(column), pgsql.Literal(cutoff))


def purge(
    engine: PostgresEngine, policy: Policy, now: dt.datetime, run_id: str, as_of: dt.date
) -> LogPurge:
    """`purge_logs` on the PostgreSQL warehouse as of `now` (module notes)."""
    ops = policy.operations
    naive = now.replace(tzinfo=None)
    every = pgsql.SQL("true")
    with mirrored_step(engine, policy.data_schema) as mirror:
        mirror.pull(
            ACCESS_LOG, _until("accessed_at", ops.access_log.subtract_from(naive)), whole=True
        )
        mirror.pull(EXPORT_LOG, every, whole=True)
        mirror.pull(LOG_PURGES, every, whole=True)
        mirror.pull(
            QUARANTINE, _until("quarantined_at", ops.quarantine.subtract_from(naive)), whole=True
        )
        mirror.freeze()
        return purge_logs(mirror.mem, policy, now, run_id=run_id, as_of=as_of)
