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

from lethe.declaration.schema import Table
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


def connect(
    path: Path | str, read_only: bool = False, defer_checkpoint: bool = False
) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file with Lethe's session settings; new files are owner-only.

    `defer_checkpoint`: closing leaves this connection's writes in the file's WAL (durable
    there since each commit) instead of checkpointing them into the file, for a rewrite of
    the file that follows (`lethe.engine.compaction`): it reads them from the WAL and
    writes them once. `:memory:` opens an in-memory database with the same settings (it
    spills to the same private folder), e.g. as the staging engine of a PostgreSQL
    warehouse."""
    path = Path(path)
    existed = str(path) == ":memory:" or path.exists()
    con = duckdb.connect(str(path), read_only=read_only)
    if not existed and not read_only:
        os.chmod(path, 0o600)
    con.execute("SET TimeZone = 'UTC'")
    # A memory limit makes big runs spill instead of taking the machine.
    con.execute("SET temp_directory = ?", [str(spill_directory())])
    con.execute("SET memory_limit = ?", [os.environ.get("LETHE_MEMORY_LIMIT", "4GB")])
    if defer_checkpoint:
        con.execute("PRAGMA disable_checkpoint_on_shutdown")
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


def has_table(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    """Whether `schema.table` exists (read-only connections cannot create it)."""
    return bool(
        con.execute(
            # information_schema: the same question on a PostgreSQL warehouse.
            "SELECT count(*) FROM information_schema.tables"
            " WHERE table_schema = ? AND table_name = ?",
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
