"""Lethe's own activity logs and their retention (SPEC: access log 30 days; export log
purged weekly, entries older than 90 days deleted once it holds more than 1000), and
the retention of rejected input rows in core.quarantine (each purge recorded in the
audit ledger: table, columns, reason and row count, never a value)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from lethe.declaration.policy import Policy
from lethe.engine.audit import LedgerEntry, append
from lethe.engine.ddl import ensure_logs
from lethe.engine.warehouse import has_table, transaction


@dataclass(frozen=True)
class LogPurge:
    """Rows deleted from each log by one purge."""

    access_log: int
    export_log: int
    export_log_purged: bool
    quarantine: int = 0


def purge_logs(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    now: dt.datetime,
    run_id: str = "log-retention",
    as_of: dt.date | None = None,
) -> LogPurge:
    """Apply the policy's log retention as of `now` (the caller compacts the file after).

    Quarantined rows are input data nobody loaded: their purge is recorded in the ledger
    (one entry per table and reason, under `run_id`), in the same transaction.
    """
    ensure_logs(con)
    ops = policy.operations
    now = now.replace(tzinfo=None)
    access = con.execute(
        "DELETE FROM audit.access_log WHERE accessed_at <= ?", [ops.access_log.subtract_from(now)]
    ).fetchone()[0]
    last = con.execute(
        "SELECT max(purged_at) FROM audit.log_purges WHERE log = 'export_log'"
    ).fetchone()[0]
    exports, purged = 0, False
    if last is None or ops.export_log.every.add_to(last) <= now:
        purged = True
        size = con.execute("SELECT count(*) FROM audit.export_log").fetchone()[0]
        if size > ops.export_log.purge_when_over:
            exports = con.execute(
                "DELETE FROM audit.export_log WHERE exported_at <= ?",
                [ops.export_log.keep.subtract_from(now)],
            ).fetchone()[0]
        con.execute("INSERT INTO audit.log_purges VALUES ('export_log', ?)", [now])
    quarantined = 0
    if has_table(con, "core", "quarantine"):
        cutoff = ops.quarantine.subtract_from(now)
        with transaction(con):
            groups = con.execute(
                "SELECT table_name, reason, list(DISTINCT column_name ORDER BY column_name),"
                " count(DISTINCT (source_file, row_number, quarantined_at)) FROM core.quarantine"
                " WHERE quarantined_at <= ? GROUP BY ALL ORDER BY ALL",
                [cutoff],
            ).fetchall()
            append(
                con,
                [
                    LedgerEntry(
                        run_id=run_id,
                        as_of=as_of or now.date(),
                        action="purge",
                        table_name=table,
                        columns=columns,
                        reason=f"quarantined rows past retention ({ops.quarantine}): {reason}",
                        details={"rows": rows},
                    )
                    for table, reason, columns, rows in groups
                ],
            )
            quarantined = con.execute(
                "DELETE FROM core.quarantine WHERE quarantined_at <= ?", [cutoff]
            ).fetchone()[0]
    return LogPurge(access, exports, purged, quarantined)
