"""Restore a backup without ever exposing what was erased after it.

The backup is decompressed into a scratch file beside the warehouse; the live ledger,
logs, litigation holds and requests replace the backup's (they record every erasure, hold and
request since); where they name a subject gone since by its keyed hash, the backup's rows
of that subject are matched by the hash and get their key back (`reveal_keys`); answered
objections and restrictions are re-applied, retention (with the erasure register) as of
the latest date any run enforced, which hashes those keys again; only then is the file
swapped in. Rectifications made after the backup are not re-applied: their new values
are not kept once carried out (a known limit, reported in the answer's ledger entry).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from lethe.declaration.policy import Policy
from lethe.declaration.strategies import quote
from lethe.engine.audit import LedgerEntry, append
from lethe.engine.compaction import rewrite_path, swap_in
from lethe.engine.ddl import ensure_schemas
from lethe.engine.enforcement import enforce
from lethe.engine.warehouse import connect, has_table
from lethe.operations.backup import Backup, decompress, load_backup
from lethe.operations.home import Home
from lethe.rights.requests import reapply_done
from lethe.rights.subject_keys import reveal_keys


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did (counts only)."""

    backup_id: str
    reapplied_as_of: dt.date | None
    erasures_since_backup: int


# Newer than any backup and authoritative: the ledger and logs (every erasure since), the
# requests (erasures, objections and restrictions are re-applied from them) and, with them,
# the policy's hold table (`carried_over`).
CARRIED_OVER = (
    ("audit", "ledger"),
    ("audit", "access_log"),
    ("audit", "export_log"),
    ("audit", "log_purges"),
    ("requests", "requests"),
    ("requests", "erasures"),
)


def carried_over(policy: Policy) -> tuple[tuple[str, str], ...]:
    """The tables a restore takes from the live warehouse: `CARRIED_OVER` and the litigation
    holds (a hold placed since the backup must still freeze its rows)."""
    return (*CARRIED_OVER, ("core", policy.hold_table))


def scratch_path(home: Home) -> Path:
    """Where a restore is prepared; removed on the next start if a restore was killed."""
    return home.warehouse.with_name(home.warehouse.name + ".restore")


def restore(home: Home, backup_id: str, policy: Policy) -> RestoreResult:
    """Restore `backup_id`, re-apply every later erasure, then swap it in atomically."""
    return restore_into(home, load_backup(home, backup_id), policy)


def restore_into(home: Home, backup: Backup, policy: Policy) -> RestoreResult:
    """Restore `backup` over the warehouse and vault of `home` (module notes); a PostgreSQL
    restore passes a scratch home holding copies of its database's tables and vault."""
    backup_id = backup.id
    scratch = scratch_path(home)
    scratch.unlink(missing_ok=True)
    decompress(backup, scratch)
    run_id = f"restore-{uuid.uuid4()}"
    try:
        con = connect(scratch)
        try:
            ensure_schemas(con, policy.data_schema)
            con.execute("ATTACH ? AS live (READ_ONLY)", [str(home.warehouse)])
            for schema, table in carried_over(policy):
                if has_table(con, schema, table):
                    name = f"{schema}.{quote(table)}"
                    con.execute(f"DELETE FROM {name}")
                    con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM live.{name}")
            con.execute("DETACH live")
            reveal_keys(con, policy)
            reapply_done(con, policy)
            last_as_of, since = con.execute(
                "SELECT max(as_of), count(*) FILTER (WHERE seq > ? AND action IN"
                " ('erase', 'anonymize', 'delete', 'pseudonymize')) FROM audit.ledger",
                [backup.ledger_seq],
            ).fetchone()
            con.execute("CHECKPOINT")
        finally:
            con.close()
        if last_as_of is not None:
            enforce(home, policy, last_as_of, run_id, warehouse=scratch)
        con = connect(scratch)
        try:
            append(
                con,
                [
                    LedgerEntry(
                        run_id=run_id,
                        as_of=last_as_of or dt.datetime.now(dt.UTC).date(),
                        action="restore",
                        reason=f"restored backup {backup_id}; retention re-applied",
                        details={"erasures_since_backup": since},
                    )
                ],
            )
            con.execute("CHECKPOINT")
        finally:
            con.close()
        # Swapped in as a rewrite is: the live warehouse's WAL, if any, goes with it.
        os.replace(scratch, rewrite_path(home.warehouse))
        swap_in(home.warehouse)
    finally:
        scratch.unlink(missing_ok=True)
    return RestoreResult(backup_id, last_as_of, since)
