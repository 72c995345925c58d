"""The DuckDB warehouse: connections, schemas and the core table layout."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from lethe.declaration.schema import Schema, Table
from lethe.declaration.strategies import quote
from lethe.errors import LetheError

SQL_TYPES: dict[str, str] = {
    "text": "VARCHAR",
    "integer": "BIGINT",
    "decimal": "DECIMAL(18,2)",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
    "boolean": "BOOLEAN",
}
# Columns Lethe adds to every core table (SPEC "Warehouse").
TAG_COLUMNS: dict[str, str] = {
    "_purposes": "VARCHAR[]",
    "_legal_bases": "VARCHAR[]",
    "_retain_until": "TIMESTAMP",
    "_state": "VARCHAR",
    "_ingested_at": "TIMESTAMP",
}
SCHEMAS = ("core", "analytics", "audit", "requests")


def sql_type(table: Table, column: str) -> str:
    """The warehouse SQL type of a contract column."""
    return SQL_TYPES[table.column(column).type]


def connect(path: Path | str, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file with Lethe's session settings; new files are owner-only."""
    path = Path(path)
    existed = path.exists()
    con = duckdb.connect(str(path), read_only=read_only)
    if not existed and not read_only:
        os.chmod(path, 0o600)
    con.execute("SET TimeZone = 'UTC'")
    # A memory limit makes big runs spill instead of taking the machine.
    con.execute("SET temp_directory = ?", [str(spill_directory())])
    con.execute("SET memory_limit = ?", [os.environ.get("LETHE_MEMORY_LIMIT", "4GB")])
    return con


class SpillFolderError(LetheError):
    """The spill folder is not private to the user running Lethe."""


def spill_directory() -> Path:
    """A new folder for one connection's spill files, in the user's private spill folder.

    Spill files hold personal data: they go outside LETHE_HOME (DuckDB's default sits
    beside the file) into a folder only this user can reach. DuckDB creates the
    connection's folder on its first spill and removes it when the connection closes;
    the folders of processes that died (a killed run) are removed here.
    """
    base = Path(tempfile.gettempdir()) / f"lethe-spill-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700)
    info = base.lstat()  # checked after the mkdir: another account may have made it first
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or mode & 0o077:
        raise SpillFolderError(
            f"{base}: refusing to spill personal data there (not a folder of yours with"
            f" mode 0700: owner uid {info.st_uid}, mode {mode:#o}); remove it or set TMPDIR"
        )
    for folder in base.iterdir():
        pid, _, _ = folder.name.partition("-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    return base / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another account's process
        return True
    return True


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN … COMMIT, rolled back on any error so a step is all or nothing."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def core_table_ddl(table: Table) -> str:
    """CREATE TABLE for a core table: contract columns plus Lethe's tag columns."""
    cols = [f"{quote(c.name)} {SQL_TYPES[c.type]}" for c in table.columns]
    cols += [f"{quote(n)} {t}" for n, t in TAG_COLUMNS.items()]
    return f"CREATE TABLE IF NOT EXISTS core.{quote(table.name)} ({', '.join(cols)})"


def ensure_schemas(con: duckdb.DuckDBPyConnection, schema: Schema | None = None) -> None:
    """Create Lethe's schemas and own tables (quarantine, requests, ledger, activity logs)
    and, given a declared schema, its core tables, where missing."""
    # Imported here: those modules use this one's helpers.
    from lethe.engine.audit import ensure_ledger
    from lethe.operations.activity_logs import ensure_logs

    for name in SCHEMAS:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {name}")
    ensure_ledger(con)
    ensure_logs(con)
    for table in schema.tables.values() if schema else ():
        con.execute(core_table_ddl(table))
    con.execute(
        """CREATE TABLE IF NOT EXISTS core.quarantine (
            table_name VARCHAR, source_file VARCHAR, row_number BIGINT, column_name VARCHAR,
            reason VARCHAR, record JSON, quarantined_at TIMESTAMP)"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS requests.requests (
            request_id VARCHAR PRIMARY KEY, type VARCHAR NOT NULL, subject_key VARCHAR NOT NULL,
            received_at TIMESTAMP NOT NULL, deadline TIMESTAMP NOT NULL,
            extended BOOLEAN NOT NULL DEFAULT false, extension_reason VARCHAR,
            status VARCHAR NOT NULL, completed_at TIMESTAMP, reason VARCHAR,
            changes JSON, answer JSON)"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS requests.erasures (
            request_id VARCHAR NOT NULL, subject_key VARCHAR NOT NULL, registered_at TIMESTAMP)"""
    )
    _name_request_subjects(con)
    con.execute(
        """CREATE TABLE IF NOT EXISTS core.ingest_log (
            table_name VARCHAR, source_file VARCHAR, sha256 VARCHAR, rows_read BIGINT,
            rows_loaded BIGINT, rows_quarantined BIGINT, ingested_at TIMESTAMP)"""
    )


# The subject column of Lethe's request tables before subjects were named by their
# declared key (warehouses written by earlier versions).
_OLD_SUBJECT_COLUMN = "contact_id"


def _name_request_subjects(con: duckdb.DuckDBPyConnection) -> None:
    """Rename the old subject column of `requests.requests` and `requests.erasures` to
    `subject_key` (idempotent: a warehouse migrated or created since has none)."""
    for table in ("requests", "erasures"):
        if _OLD_SUBJECT_COLUMN in table_columns(con, "requests", table):
            con.execute(
                f"ALTER TABLE requests.{table} RENAME COLUMN {_OLD_SUBJECT_COLUMN} TO subject_key"
            )


def has_table(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    """Whether `schema.table` exists (read-only connections cannot create it)."""
    return bool(
        con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?",
            [schema, table],
        ).fetchone()[0]
    )


def table_columns(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> list[str]:
    """Column names of an existing table, in order."""
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
        [schema, table],
    ).fetchall()
    return [r[0] for r in rows]
