"""Backups and restore of a PostgreSQL warehouse (`LETHE_WAREHOUSE=postgresql://…`), by
table copies in the DuckDB backup's own format.

- `backup`: every table of the warehouse's schemas (core, analytics, audit, requests; not
  the vault, which a DuckDB backup does not hold either) is read in one snapshot (a
  repeatable-read transaction, under Lethe's advisory lock) and streamed by COPY into a
  DuckDB file in the backup's half-written folder, which `lethe.operations.backup`
  compresses, describes and renames into place: the same backups/<id>/ as on DuckDB, so
  ids, listing and the 80-day expiry are one code.
- `restore`: the live tables and the vault are copied the same way into a scratch
  LETHE_HOME (an owner-only folder under backups/ named like a half-written backup, so a
  killed restore's copies are removed when the next writer takes the LETHE_HOME lock);
  `lethe.operations.restore.restore_into` restores the backup there as on DuckDB (gone
  subjects' keys hashed in Lethe's tables, as every enforcement there does); the result
  replaces the rows of every table and the vault's tokens in ONE transaction (TRUNCATE,
  then COPY), so a restore killed before the commit leaves the database as it was, and a
  rerun starts afresh; the rewritten tables then get `VACUUM FULL`. The scratch folder is
  removed in every case.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path

import duckdb
import psycopg
from psycopg import sql as pgsql

from lethe.declaration.policy import Policy
from lethe.declaration.strategies import quote
from lethe.engine.compaction import user_tables
from lethe.engine.ddl import ensure_releases, ensure_schemas
from lethe.engine.engines import PostgresEngine
from lethe.engine.postgres_warehouse import (
    VAULT,
    WarehouseError,
    copy_in,
    create,
    key_secret,
    pull,
)
from lethe.engine.vault import attach
from lethe.engine.warehouse import SCHEMAS, connect, table_columns
from lethe.operations.backup import Backup, load_backup, store_backup
from lethe.operations.home import Home
from lethe.operations.restore import RestoreResult, restore_into

Name = tuple[str, str]  # (schema, table)
TOKENS: Name = (VAULT, "tokens")

_COLUMNS = """SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = ANY(%s) AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY n.nspname, c.relname, a.attnum"""
# PostgreSQL types DuckDB spells otherwise; a bare numeric keeps every digit as text.
_DUCKDB_TYPES = {"jsonb": "JSON", "numeric": "VARCHAR"}


def _tables(pg: psycopg.Connection) -> dict[Name, list[tuple[str, str]]]:
    """The warehouse's tables (not the vault's), each with its columns and their types."""
    out: dict[Name, list[tuple[str, str]]] = {}
    for schema, table, column, type_ in pg.execute(_COLUMNS, [list(SCHEMAS)]).fetchall():
        out.setdefault((schema, table), []).append((column, type_))
    return out


def _duckdb_type(name: Name, column: str, type_: str) -> str:
    if type_.startswith("bytea"):
        raise WarehouseError(f"{'.'.join(name)}.{column}: a bytea column cannot be backed up")
    return _DUCKDB_TYPES.get(type_, type_)


def _copy_tables(pg: psycopg.Connection, con: duckdb.DuckDBPyConnection) -> None:
    """Copy every table of the warehouse into DuckDB `con` (streamed): into the table of
    the same name, created where Lethe's DDL has none and given the columns it lacks."""
    for (schema, table), columns in _tables(pg).items():
        present = set(table_columns(con, schema, table))
        name = f"{schema}.{quote(table)}"
        if not present:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            typed = ", ".join(
                f"{quote(c)} {_duckdb_type((schema, table), c, t)}" for c, t in columns
            )
            con.execute(f"CREATE TABLE {name} ({typed})")
        for column, type_ in columns:
            if present and column not in present:
                kind = _duckdb_type((schema, table), column, type_)
                con.execute(f"ALTER TABLE {name} ADD COLUMN {quote(column)} {kind}")
        pull(pg, con, f"{schema}.{table}", columns=[c for c, _ in columns])


def _copy_warehouse(pg: psycopg.Connection, path: Path, policy: Policy) -> None:
    """Write the warehouse's tables to the DuckDB file `path`, with the column types of a
    DuckDB warehouse wherever Lethe's DDL declares them."""
    con = connect(path)
    try:
        ensure_schemas(con, policy.data_schema)
        ensure_releases(con)
        _copy_tables(pg, con)
        con.execute("CHECKPOINT")
    finally:
        con.close()


def _copy_vault(pg: psycopg.Connection, path: Path) -> None:
    """Write the vault schema (tokens and the key secret) to the DuckDB vault file `path`."""
    con = connect(":memory:")
    try:
        attach(con, path)
        # Pulled beside the vault (`pull` looks tables up in the in-memory catalog).
        con.execute("CREATE TABLE main._tokens AS SELECT * FROM vault.tokens LIMIT 0")
        pull(pg, con, ".".join(TOKENS), into="main._tokens")
        con.execute("INSERT INTO vault.tokens SELECT * FROM main._tokens")
        con.execute("INSERT INTO vault.key_secret VALUES (?, now())", [key_secret(pg)])
        con.execute("CHECKPOINT vault")
    finally:
        con.close()


def _snapshot(engine: PostgresEngine) -> None:
    """Begin reading in the caller's transaction from one snapshot of the database."""
    engine.con.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")


def backup(
    engine: PostgresEngine, home: Home, policy: Policy, now: dt.datetime | None = None
) -> Backup:
    """`lethe backup`: the warehouse's tables as a backup under `home`'s backups/ (module
    notes), read in one snapshot under Lethe's advisory lock."""
    create(engine, policy.data_schema)

    def copied(folder: Path) -> Path:
        path = folder / "warehouse.duckdb"
        with engine.transaction():
            _snapshot(engine)
            _copy_warehouse(engine.con, path, policy)
        return path

    with engine.lock():
        return store_backup(home, copied, now)


def restore(engine: PostgresEngine, home: Home, backup_id: str, policy: Policy) -> RestoreResult:
    """`lethe restore BACKUP_ID` on the PostgreSQL warehouse (module notes): every erasure
    recorded since the backup is re-applied before the restored rows reach the database."""
    backup = load_backup(home, backup_id)
    create(engine, policy.data_schema)
    with engine.lock():
        scratch = Path(tempfile.mkdtemp(prefix=".restore-", suffix=".partial", dir=home.backups))
        try:
            copy = Home(scratch)
            with engine.transaction():
                _snapshot(engine)
                _copy_warehouse(engine.con, copy.warehouse, policy)
                _copy_vault(engine.con, copy.vault)
            result = restore_into(copy, backup, policy)
            with engine.transaction():
                rewritten = _replace_all(engine.con, copy)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        engine.purge(rewritten)
    return result


def _replace_all(pg: psycopg.Connection, restored: Home) -> list[Name]:
    """Replace the rows of every warehouse table and of the vault's tokens by those of the
    restored files (inside the caller's transaction); returns the tables rewritten.

    A table the backup lacks (created since) is left empty, as the restored DuckDB file
    would lack it; one the database lacks must be empty (nothing is dropped unseen).
    """
    con = connect(restored.warehouse, read_only=True)
    try:
        attach(con, restored.vault, read_only=True)
        (catalog,) = con.execute("SELECT current_database()").fetchone()
        live = list(_tables(pg))
        kept = [n for n in user_tables(con, catalog) if n[0] in SCHEMAS]
        for name in (n for n in kept if n not in live):
            if con.execute(f"SELECT count(*) FROM {name[0]}.{quote(name[1])}").fetchone()[0]:
                raise WarehouseError(f"{'.'.join(name)}: in the backup but not in the database")
        targets = [*live, TOKENS]
        pg.execute(
            pgsql.SQL("TRUNCATE {}").format(
                pgsql.SQL(", ").join(pgsql.Identifier(*n) for n in targets)
            )
        )
        for name in targets:
            if name in kept or name == TOKENS:
                source = con.table(f"{name[0]}.{quote(name[1])}")
                copy_in(source, pg, pgsql.Identifier(*name).as_string(pg))
        return targets
    finally:
        con.close()
