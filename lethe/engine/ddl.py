"""Every table Lethe creates, in one place: the declared core tables, and Lethe's own
tables of the warehouse (quarantine, ingest log, requests, ledger, activity logs, processor
events, breaches, analysts' releases) and of the vault."""

from __future__ import annotations

import duckdb

from lethe.declaration.schema import Schema, Table
from lethe.declaration.strategies import quote
from lethe.engine.warehouse import SCHEMAS, SQL_TYPES, TAG_COLUMNS, table_columns

EVENTS = "audit.processor_events"
BREACHES = "audit.breaches"
RELEASES = "analytics.releases"

# The subject column of Lethe's request tables before subjects were named by their
# declared key (warehouses written by earlier versions).
_OLD_SUBJECT_COLUMN = "contact_id"


def core_table_ddl(table: Table) -> str:
    """CREATE TABLE for a core table: contract columns plus Lethe's tag columns."""
    cols = [f"{quote(c.name)} {SQL_TYPES[c.type]}" for c in table.columns]
    cols += [f"{quote(n)} {t}" for n, t in TAG_COLUMNS.items()]
    return f"CREATE TABLE IF NOT EXISTS core.{quote(table.name)} ({', '.join(cols)})"


def ensure_schemas(con: duckdb.DuckDBPyConnection, schema: Schema | None = None) -> None:
    """Create Lethe's schemas and own tables (quarantine, requests, ledger, activity logs)
    and, given a declared schema, its core tables, where missing."""
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
    ensure_source_tables(con)
    con.execute(
        """CREATE TABLE IF NOT EXISTS core.ingest_log (
            table_name VARCHAR, source_file VARCHAR, sha256 VARCHAR, rows_read BIGINT,
            rows_loaded BIGINT, rows_quarantined BIGINT, ingested_at TIMESTAMP)"""
    )


def ensure_source_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create the tables of declared database sources: the high-water mark of each
    incremental read, the surrogate keys of the rows Lethe anonymized at a source, and the
    changes to carry back to writable sources (keys and the values after the policy, never
    the values replaced) with their state per request and source."""
    con.execute(
        """CREATE TABLE IF NOT EXISTS core.source_marks (
            table_name VARCHAR PRIMARY KEY, source VARCHAR NOT NULL, column_name VARCHAR,
            high_water VARCHAR, read_at TIMESTAMP)"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS core.source_anonymized (
            table_name VARCHAR NOT NULL, row_key VARCHAR NOT NULL)"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS requests.source_changes (
            request_id VARCHAR NOT NULL, table_name VARCHAR NOT NULL, row_key VARCHAR NOT NULL,
            action VARCHAR NOT NULL, column_name VARCHAR, value VARCHAR)"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS requests.propagations (
            request_id VARCHAR NOT NULL, source VARCHAR NOT NULL, status VARCHAR NOT NULL,
            reason VARCHAR, planned_at TIMESTAMP NOT NULL, attempted_at TIMESTAMP,
            done_at TIMESTAMP, PRIMARY KEY (request_id, source))"""
    )


def _name_request_subjects(con: duckdb.DuckDBPyConnection) -> None:
    """Rename the old subject column of `requests.requests` and `requests.erasures` to
    `subject_key` (idempotent: a warehouse migrated or created since has none)."""
    for table in ("requests", "erasures"):
        if _OLD_SUBJECT_COLUMN in table_columns(con, "requests", table):
            con.execute(
                f"ALTER TABLE requests.{table} RENAME COLUMN {_OLD_SUBJECT_COLUMN} TO subject_key"
            )


# DuckDB compresses every column of a row group again at each checkpoint that adds a row
# to it. The ledger is a few rows holding every key ever recorded, so one appended entry
# meant compressing millions of keyed hashes again (random hex, which compression hardly
# shrinks): its keys are stored as they are.
_KEYS_STORED_AS_IS = " USING COMPRESSION uncompressed"


def ledger_ddl(duckdb_storage: bool = True) -> str:
    """CREATE TABLE IF NOT EXISTS of `audit.ledger`; with DuckDB's storage clause for its
    keys unless `duckdb_storage` is False (the statement rendered for other engines)."""
    keys_storage = _KEYS_STORED_AS_IS if duckdb_storage else ""
    return f"""CREATE TABLE IF NOT EXISTS audit.ledger (
            "seq" BIGINT PRIMARY KEY,
            "recorded_at" TIMESTAMP NOT NULL,
            "run_id" VARCHAR NOT NULL,
            "as_of" DATE NOT NULL,
            "action" VARCHAR NOT NULL,
            "table_name" VARCHAR,
            "columns" VARCHAR[] NOT NULL,
            "keys" VARCHAR[]{keys_storage} NOT NULL,
            "key_count" BIGINT NOT NULL,
            "reason" VARCHAR NOT NULL,
            "strategy" VARCHAR,
            "details" JSON NOT NULL,
            "prev_hash" VARCHAR NOT NULL,
            "hash" VARCHAR NOT NULL)"""


def ensure_ledger(con: duckdb.DuckDBPyConnection) -> None:
    """Create `audit.ledger` if it does not exist yet (with DuckDB's storage clause on a
    DuckDB connection; `con` may also record the statement for another engine)."""
    con.execute("CREATE SCHEMA IF NOT EXISTS audit")
    con.execute(ledger_ddl(isinstance(con, duckdb.DuckDBPyConnection)))


def ensure_logs(con: duckdb.DuckDBPyConnection) -> None:
    """Create the access and export logs (keys and paths only, never personal values)."""
    con.execute("CREATE SCHEMA IF NOT EXISTS audit")
    con.execute(
        """CREATE TABLE IF NOT EXISTS audit.access_log (
            accessed_at TIMESTAMP NOT NULL, actor VARCHAR, action VARCHAR NOT NULL,
            subject_key VARCHAR, detail VARCHAR)"""
    )
    con.execute(
        """CREATE TABLE IF NOT EXISTS audit.export_log (
            exported_at TIMESTAMP NOT NULL, export_id VARCHAR NOT NULL, kind VARCHAR NOT NULL,
            subject_key VARCHAR, recipient VARCHAR, file_name VARCHAR, expires_at TIMESTAMP)"""
    )
    con.execute("CREATE TABLE IF NOT EXISTS audit.log_purges (log VARCHAR, purged_at TIMESTAMP)")


def ensure_events(con: duckdb.DuckDBPyConnection) -> None:
    """Create the processor event log (exports, refusals, revocations) if missing."""
    con.execute("CREATE SCHEMA IF NOT EXISTS audit")
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {EVENTS} (
            event_at TIMESTAMP NOT NULL, processor VARCHAR NOT NULL, event VARCHAR NOT NULL,
            reason VARCHAR, rows BIGINT, file_name VARCHAR, breach_id VARCHAR)"""
    )


def ensure_breaches(con: duckdb.DuckDBPyConnection) -> None:
    """Create the breach register if it does not exist."""
    con.execute("CREATE SCHEMA IF NOT EXISTS audit")
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {BREACHES} (
            breach_id VARCHAR PRIMARY KEY, recorded_at TIMESTAMP NOT NULL,
            aware_at TIMESTAMP NOT NULL, source VARCHAR NOT NULL, processor VARCHAR,
            processor_aware_at TIMESTAMP, subjects_affected BIGINT,
            authority_deadline TIMESTAMP NOT NULL, processor_deadline TIMESTAMP,
            authority_notified_at TIMESTAMP, controller_notified_at TIMESTAMP,
            closed_at TIMESTAMP, description VARCHAR NOT NULL, closed_reason VARCHAR)"""
    )


def ensure_releases(con: duckdb.DuckDBPyConnection) -> None:
    """Create the register of analysts' releases (one row per dataset, counts only)."""
    con.execute("CREATE SCHEMA IF NOT EXISTS analytics")
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {RELEASES} (
            dataset VARCHAR NOT NULL, released_at TIMESTAMP NOT NULL, k INTEGER NOT NULL,
            rows BIGINT, records BIGINT, generalized BIGINT, suppressed BIGINT,
            suppressed_cells BIGINT, excluded_restricted BIGINT, excluded_held BIGINT,
            excluded_pseudonymized BIGINT, excluded_other BIGINT)"""
    )


TOKENS_INDEX = "tokens_kind_value"


def ensure_vault(con: duckdb.DuckDBPyConnection) -> None:
    """Create `vault.tokens` and `vault.key_secret` (the secret of the keyed hashes of keys,
    one row) if they do not exist; `con` may also record the statements for another engine.

    Another engine gets a unique index on (kind, value), so that concurrent writers cannot
    issue a value two tokens. A DuckDB vault has one writer (the LETHE_HOME lock) and no
    index, whose upkeep slowed every token issue and every rewrite of the vault. An older
    vault's index is dropped.
    """
    con.execute(
        """CREATE TABLE IF NOT EXISTS vault.tokens (
            subject VARCHAR,
            kind VARCHAR NOT NULL,
            value VARCHAR NOT NULL,
            token VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL)"""
    )
    if isinstance(con, duckdb.DuckDBPyConnection):
        con.execute(f"DROP INDEX IF EXISTS vault.{TOKENS_INDEX}")
    else:
        con.execute(
            f"CREATE UNIQUE INDEX IF NOT EXISTS {TOKENS_INDEX} ON vault.tokens (kind, value)"
        )
    con.execute(
        "CREATE TABLE IF NOT EXISTS vault.key_secret (secret BLOB NOT NULL, created_at TIMESTAMP)"
    )
