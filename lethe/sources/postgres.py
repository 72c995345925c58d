"""PostgreSQL sources: connect by the declared environment variable, check, read in batches.

A declared table may come from a PostgreSQL table (`source: {postgres: {dsn_env, table}}`).
The DSN lives only in the named environment variable: it is never written to a file, a log
or an error message. Every problem is one line naming the source (the declared table and
the PostgreSQL table), with a reason from a fixed list, never the server's own message,
which may quote values or the connection string.

Reading is a server-side cursor over one REPEATABLE READ snapshot: rows arrive in batches
as text (the same validation as a CSV value follows), so no whole table is held in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
import pyarrow as pa
from psycopg import sql as pgsql
from sqlglot import exp

from lethe.declaration.schema import PostgresSource, Table
from lethe.errors import LetheError

BATCH = 50_000  # rows per batch read from a source
CONNECT_TIMEOUT = 10  # seconds
# Source column types (information_schema data_type) each declared type accepts.
_TEXT = {"text", "character varying", "character", "citext", "uuid", "name"}
_INTEGERS = {"smallint", "integer", "bigint"}
COMPATIBLE: dict[str, set[str]] = {
    "text": _TEXT,
    "integer": _INTEGERS,
    "decimal": {*_INTEGERS, "numeric", "real", "double precision"},
    "date": {"date"},
    "timestamp": {"timestamp without time zone", "timestamp with time zone", "date"},
    "boolean": {"boolean"},
}
# SQLSTATEs (or their two-character classes) and what they mean, in words.
_REASONS = {
    "28P01": "authentication failed",
    "28000": "authentication failed",
    "3D000": "the database does not exist",
    "42501": "permission denied",
    "42P01": "the table does not exist",
    "42703": "a column does not exist",
    "55P03": "lock timeout (another transaction has locked the rows)",
    "57014": "statement timeout or canceled",
    "57P01": "the server shut down",
    "P0001": "refused by a trigger or rule",
    "23": "an integrity constraint refused the change",
    "08": "the connection was lost",
    "53": "the server ran out of resources",
    "40": "a serialization failure or deadlock",
}


class SourceError(LetheError, ValueError):
    """A declared PostgreSQL source that cannot be used; the message names the source."""


def label(table: Table) -> str:
    """How messages name a table's source (never its DSN)."""
    pg = table.source.postgres
    assert pg is not None
    return f"source {table.name} (postgres {pg.table} via ${pg.dsn_env})"


def reason(exc: BaseException) -> str:
    """Why a driver call failed, in words from a fixed list (no value, no DSN)."""
    state = getattr(exc, "sqlstate", None) or ""
    for code in (state, state[:2]):
        if code and code in _REASONS:
            return _REASONS[code]
    if isinstance(exc, psycopg.OperationalError):
        text = str(exc).lower()
        # Refused at connect time, the error carries no SQLSTATE: only libpq's words.
        if "password authentication failed" in text:
            return _REASONS["28P01"]
        if "database" in text and "does not exist" in text:
            return _REASONS["3D000"]
        if "refused" in text or "no such file" in text:
            return "connection refused (is the server up?)"
        if "timeout" in text or "timed out" in text:
            return "connection timed out"
        if "closed" in text or "terminat" in text or "lost" in text:
            return "the connection was lost (the server went away)"
        return "the server is unreachable"
    return f"{type(exc).__name__}{f' (SQLSTATE {state})' if state else ''}"


@contextmanager
def connection(pg: PostgresSource, who: str) -> Iterator[psycopg.Connection]:
    """A connection to the source (DSN from its environment variable), closed afterwards.

    `who` names the source in errors. The session works in UTC with ISO dates.
    """
    dsn = os.environ.get(pg.dsn_env, "")
    if not dsn.strip():
        raise SourceError(f"{who}: environment variable {pg.dsn_env} is not set")
    try:
        con = psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT, application_name="lethe")
    except psycopg.ProgrammingError:
        raise SourceError(f"{who}: ${pg.dsn_env} is not a valid connection string") from None
    except psycopg.Error as exc:
        raise SourceError(f"{who}: cannot connect: {reason(exc)}") from None
    try:
        con.execute("SET TIME ZONE 'UTC'")
        con.execute("SET DateStyle = 'ISO, YMD'")
        con.commit()
        yield con
    finally:
        con.close()


def column_types(con: psycopg.Connection, pg: PostgresSource) -> dict[str, tuple[str, str]]:
    """Column name -> (information_schema data_type, full type) of the source table; empty
    when there is no such table."""
    rows = con.execute(
        "SELECT a.attname, c.data_type, format_type(a.atttypid, a.atttypmod)"
        " FROM pg_attribute a JOIN pg_class t ON t.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        " JOIN information_schema.columns c ON c.table_schema = n.nspname"
        " AND c.table_name = t.relname AND c.column_name = a.attname"
        " WHERE n.nspname = %s AND t.relname = %s AND a.attnum > 0 AND NOT a.attisdropped",
        [pg.schema_name, pg.table_name],
    ).fetchall()
    return {name: (data_type, full) for name, data_type, full in rows}


@dataclass(frozen=True)
class ForeignKey:
    """A single-column foreign key at the source: `table.column` references
    `parent.parent_column` (tables as schema.table)."""

    name: str
    table: str
    column: str
    parent: str
    parent_column: str


@dataclass
class Constraints:
    """What a source's own constraints require of the changes Lethe carries to its tables
    (tables as schema.table): the NOT NULL columns, the longest value each character
    column holds (None: any), and the single-column foreign keys."""

    not_null: set[tuple[str, str]] = field(default_factory=set)
    lengths: dict[tuple[str, str], int | None] = field(default_factory=dict)
    foreign_keys: list[ForeignKey] = field(default_factory=list)


def constraints(con: psycopg.Connection, tables: list[PostgresSource]) -> Constraints:
    """The constraints of the source `tables`, read once (two catalog queries)."""
    names = [pg.table for pg in tables]
    out = Constraints()
    for schema, table, column, nullable, length in con.execute(
        "SELECT table_schema, table_name, column_name, is_nullable, character_maximum_length"
        " FROM information_schema.columns WHERE table_schema || '.' || table_name = ANY(%s)",
        [names],
    ).fetchall():
        at = (f"{schema}.{table}", column)
        out.lengths[at] = length
        if nullable == "NO":
            out.not_null.add(at)
    # Multi-column foreign keys are left out: no declared key spans columns.
    for name, table, column, parent, parent_column in con.execute(
        "SELECT c.conname, cn.nspname || '.' || cl.relname, a.attname,"
        " pn.nspname || '.' || pc.relname, pa.attname FROM pg_constraint c"
        " JOIN pg_class cl ON cl.oid = c.conrelid JOIN pg_namespace cn ON cn.oid = cl.relnamespace"
        " JOIN pg_class pc ON pc.oid = c.confrelid JOIN pg_namespace pn ON pn.oid = pc.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
        " JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = c.confkey[1]"
        " WHERE c.contype = 'f' AND cardinality(c.conkey) = 1"
        " AND cn.nspname || '.' || cl.relname = ANY(%s) ORDER BY 1",
        [names],
    ).fetchall():
        out.foreign_keys.append(ForeignKey(name, table, column, parent, parent_column))
    return out


def check_columns(table: Table, found: dict[str, tuple[str, str]]) -> None:
    """Refuse a source table that is missing, lacks a declared column, or holds one in a
    type the declaration cannot take (each named)."""
    who = label(table)
    if not found:
        raise SourceError(f"{who}: the table does not exist (or is not visible to this user)")
    for col in table.columns:
        if col.header not in found:
            raise SourceError(f"{who}: no column {col.header!r} (declared as {col.name})")
        data_type = found[col.header][0]
        if data_type not in COMPATIBLE[col.type]:
            raise SourceError(
                f"{who}: column {col.header!r} is {data_type} at the source, declared {col.type}"
            )
    restrict = table.source.postgres.restrict_column  # type: ignore[union-attr]
    if restrict and found.get(restrict, ("",))[0] != "boolean":
        raise SourceError(f"{who}: restrict_column {restrict!r} is not a boolean column")


def source_table(pg: PostgresSource, alias: str | None = None) -> exp.Table:
    """The source table as a SQLGlot table (quoted identifiers)."""
    return exp.table_(pg.table_name, db=pg.schema_name, alias=alias, quoted=True)


def read_select(table: Table, since: str | None) -> exp.Select:
    """The SELECT reading the declared columns as text, under their declared names, in key
    order; with `since`, only rows whose incremental column is at or after it."""
    pg = table.source.postgres
    assert pg is not None
    columns = [
        exp.alias_(
            exp.cast(exp.column(c.header, quoted=True), exp.DataType.build("text")),
            c.name,
            quoted=True,
        )
        for c in table.columns
    ]
    select = exp.select(*columns).from_(source_table(pg))
    if since is not None and pg.incremental:
        column = exp.column(table.column(pg.incremental).header, quoted=True)
        select = select.where(exp.GTE(this=column, expression=exp.Placeholder()))
    return select.order_by(exp.column(table.column(table.key).header, quoted=True))


@dataclass
class Snapshot:
    """What one read saw: the incremental column's highest value (as text) at the source."""

    high_water: str | None = None


def read_batches(
    con: psycopg.Connection, table: Table, since: str | None, snapshot: Snapshot
) -> Iterator[pa.RecordBatch]:
    """The source rows as Arrow batches of text columns (declared names), from one
    REPEATABLE READ snapshot; `snapshot.high_water` is set from the same snapshot.

    Raises SourceError naming the source on any problem, the server going away included.
    """
    pg = table.source.postgres
    assert pg is not None
    who = label(table)
    names = table.column_names
    query = read_select(table, since).sql("postgres", identify=True)  # `%s` placeholder
    try:
        con.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        con.read_only = True
        with con.transaction():
            check_columns(table, column_types(con, pg))
            if pg.incremental:
                column = pgsql.Identifier(table.column(pg.incremental).header)
                high = con.execute(
                    pgsql.SQL("SELECT CAST(max({}) AS text) FROM {}").format(
                        column, pgsql.Identifier(pg.schema_name, pg.table_name)
                    )
                ).fetchone()
                snapshot.high_water = high[0] if high else None
            with con.cursor(name="lethe_read") as cur:
                cur.execute(query, [since] if since is not None and pg.incremental else None)
                while rows := cur.fetchmany(BATCH):
                    columns = zip(*rows, strict=True)
                    yield pa.RecordBatch.from_arrays(
                        [pa.array(c, pa.string()) for c in columns], names=names
                    )
    except SourceError:
        raise
    except psycopg.Error as exc:
        raise SourceError(f"{who}: reading failed: {reason(exc)}") from None
