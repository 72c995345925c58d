"""The warehouse in a PostgreSQL database (`LETHE_WAREHOUSE=postgresql://…`).

One database holds what a DuckDB warehouse file and its vault file hold:

- schemas `core`, `audit`, `requests` and `analytics` with the same tables, created from
  `lethe.engine.ddl` (the statements it runs, rendered for PostgreSQL: written once);
- schema `vault` (`tokens`, `key_secret`): the pseudonym vault and the secret of the keyed
  hashes, in a schema of its own. Keeping it apart from whoever reads the warehouse
  (GDPR Art. 4(5)) is a matter of grants here: give analysts' roles no USAGE on `vault`.

What runs on PostgreSQL so far:

- ingest (`ingest_table`): a landing file is read, screened and typed by DuckDB in memory,
  by `lethe.engine.ingest` exactly as for a DuckDB warehouse, against a mirror of what that
  reads of the database (the keys foreign keys point at, the table's restricted keys, its
  quarantine and ingest log; for a PostgreSQL source all its rows, its mark and the keys
  Lethe anonymized there); the loaded rows, the quarantine and the log entry then move
  to PostgreSQL by COPY, streamed in Arrow batches, in one transaction;
- enforcement (`enforce`): the same plans, run by `PostgresEngine` in one transaction
  (put back the raw key of a gone subject delivered again, stage, issue vault tokens in
  SQL, rewrite the tables that change, replace the keys of subjects left without a row by
  their keyed hashes in Lethe's own tables, append the ledger entries), then unused tokens
  are forgotten and `VACUUM FULL` rewrites the touched tables (and the vault) without
  their dead rows;
- the ledger: entries checked, key-hashed and chained by `lethe.engine.audit.ledger_rows`,
  and `verify` checks a copy read into DuckDB with `lethe.engine.audit.verify`.

Data-subject requests (recorded, listed, carried out and answered) run here through
`lethe.rights.postgres_requests`, litigation holds (placed and released) through
`lethe.rights.postgres_holds`, processors and breaches through
`lethe.compliance.postgres_processors`, the analysts' datasets through
`lethe.compliance.postgres_analytics` (the release plans rendered and run in the database,
the Parquet extracts written from the released tables), and `lethe.engine.postgres_run.run`
is what `lethe run` does with LETHE_WAREHOUSE set to a PostgreSQL URL (ingest, requests,
enforcement, answers, analytics); the Dagster assets call the same steps on such a
warehouse; backups and restore by table copies are `lethe.operations.postgres_backup`;
`refuse_here` refuses the rest in one line. PostgreSQL sources are read by the same ingest
(the source's batches staged in the in-memory DuckDB, with the warehouse's rows of that
table, its mark and its anonymized keys mirrored), and requests are carried back to them
by `lethe.sources.postgres_propagation`. Not yet here: tagging as a step of its own
(enforcement writes the fresh tags of every row it stages).

What `VACUUM FULL` cannot remove: PostgreSQL's write-ahead log (`pg_wal/`) holds the
replaced values until its segments are recycled (after later checkpoints), and so does any
WAL archive or streaming replica; the server's memory and the operating system's page
cache may hold them for a while. Column statistics, which VACUUM FULL also leaves, are
never gathered for columns that hold personal data (`NO_STATISTICS`).
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import itertools
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict

from lethe.declaration.policy import Policy
from lethe.declaration.schema import Schema, Table
from lethe.declaration.strategies import quote
from lethe.engine import audit
from lethe.engine import ingest as duckdb_ingest
from lethe.engine.ddl import (
    ensure_breaches,
    ensure_events,
    ensure_ledger,
    ensure_releases,
    ensure_schemas,
    ensure_vault,
)
from lethe.engine.enforcement import (
    TOKENS_TABLE,
    EnforcementResult,
    forget_tokens_sql,
    ledger_entries,
)
from lethe.engine.engines import PostgresEngine
from lethe.engine.ingest import IngestError, IngestResult, landing_file
from lethe.engine.keyhash import bind_postgres
from lethe.engine.plan import Plan
from lethe.engine.rendering import POSTGRES, render
from lethe.engine.retention import (
    TOKENS,
    enforcement_plan,
    wanted_tokens_select,
)
from lethe.engine.states import RowState
from lethe.engine.tagging import tagged_tables
from lethe.engine.vault import issue_tokens_sql, new_salt
from lethe.engine.warehouse import connect, table_columns
from lethe.errors import LetheError
from lethe.operations.home import POSTGRES_SCHEMES, WAREHOUSE_ENV
from lethe.rights.subject_keys import (
    ERASURES,
    GONE,
    KeyColumn,
    any_hash_sql,
    gone_keys_sql,
    key_columns,
    reveal_keys_sql,
)
from lethe.sources.postgres import CONNECT_TIMEOUT, reason

BATCH = 50_000  # rows per Arrow batch moved between DuckDB and PostgreSQL
VAULT = "vault"  # the schema of the vault's tables
_EVERY_ROW = pgsql.SQL("true")


class WarehouseError(LetheError):
    """The PostgreSQL warehouse cannot be reached or used; the message names it, never
    its password."""


def is_postgres(location: str) -> bool:
    """Whether LETHE_WAREHOUSE names a PostgreSQL database rather than a DuckDB file."""
    return location.startswith(POSTGRES_SCHEMES)


def describe(dsn: str) -> str:
    """How messages name the warehouse: user, host, port and database, never a password."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "PostgreSQL warehouse (LETHE_WAREHOUSE is not a valid connection URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    where = f"{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"
    return f"PostgreSQL warehouse postgresql://{where}"


def open_engine(dsn: str) -> PostgresEngine:
    """The engine on the warehouse database; a one-line `WarehouseError` if it cannot
    connect (the server's own message is not repeated: it may quote the DSN)."""
    try:
        return PostgresEngine(dsn, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.ProgrammingError:
        raise WarehouseError(f"{describe(dsn)}: not a valid connection URL") from None
    except psycopg.Error as exc:
        raise WarehouseError(f"{describe(dsn)}: cannot connect: {reason(exc)}") from None


class _Recorder:
    """Stands in for a DuckDB connection to keep the statements `lethe.engine.ddl` runs.

    Statements with parameters are the questions ddl asks of an existing warehouse (whether
    an old column needs renaming); a new PostgreSQL warehouse has nothing to migrate.
    """

    def __init__(self) -> None:
        self.statements: list[str] = []

    def execute(self, sql: str, params: Any = None) -> _Recorder:
        if params is None:
            self.statements.append(sql)
        return self

    def fetchall(self) -> list[Any]:
        return []


def ddl_statements(schema: Schema) -> list[str]:
    """Every CREATE of a PostgreSQL warehouse and its vault schema, rendered for PostgreSQL."""
    recorder = _Recorder()
    ensure_schemas(recorder, schema)  # type: ignore[arg-type]
    ensure_releases(recorder)  # type: ignore[arg-type]
    ensure_events(recorder)  # type: ignore[arg-type]
    ensure_breaches(recorder)  # type: ignore[arg-type]
    recorder.execute(f"CREATE SCHEMA IF NOT EXISTS {VAULT}")
    ensure_vault(recorder)  # type: ignore[arg-type]
    return list(_rendered(tuple(recorder.statements)))


@functools.cache
def _rendered(statements: tuple[str, ...]) -> tuple[str, ...]:
    # Every command and run step creates what is missing first: render each DDL once.
    return tuple(render(statements, POSTGRES))


# Column statistics (`pg_statistic`, filled by ANALYZE and autovacuum) keep sample values
# (most common values, histogram bounds) that neither a DELETE nor VACUUM FULL removes: the
# columns that hold personal data or subjects' keys (the audit logs too) gather none.
# Lethe's own tag columns (`_state`, …) keep theirs, so the planner still sees how rows
# spread over states and retention dates.
NO_STATISTICS = f"""SELECT format('ALTER TABLE %I.%I ALTER COLUMN %I SET STATISTICS 0',
        n.nspname, c.relname, a.attname)
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname IN ('core', 'requests', 'audit', '{VAULT}') AND c.relkind = 'r' AND a.attnum > 0
      AND NOT a.attisdropped AND coalesce(a.attstattarget, -1) <> 0
      AND NOT (n.nspname = 'core' AND starts_with(a.attname, '_'))"""


def create(engine: PostgresEngine, schema: Schema) -> None:
    """Create the warehouse's schemas and tables where missing, in one transaction; columns
    that hold personal data keep no statistics (`NO_STATISTICS`)."""
    with engine.transaction():
        for sql in ddl_statements(schema):
            engine.con.execute(sql)
        for (sql,) in engine.con.execute(NO_STATISTICS).fetchall():
            engine.con.execute(sql)


# --- moving rows between DuckDB and PostgreSQL ----------------------------------------------


def _as_copy_text(name: str, type_: str) -> str:
    """DuckDB SQL writing a column as PostgreSQL's COPY (CSV) reads it: lists as array
    literals, each element double-quoted with its backslashes and double quotes escaped."""
    column = quote(name)
    if not type_.endswith("[]"):
        return column
    element = r"""'"' || replace(replace(x, '\', '\\'), '"', '\"') || '"'"""
    return f"'{{' || array_to_string(list_transform({column}, lambda x: {element}), ',') || '}}'"


def copy_in(rows: duckdb.DuckDBPyRelation, pg: psycopg.Connection, target: str) -> int:
    """Append the rows of a DuckDB relation to the PostgreSQL table `target` (qualified and
    quoted) by one COPY, streamed as Arrow batches written as CSV; returns the row count.

    Columns go by name: the relation's columns must exist in `target`.
    """
    names = rows.columns
    texts = [_as_copy_text(n, str(t)) for n, t in zip(names, rows.dtypes, strict=True)]
    projected = rows.project(
        ", ".join(f"{t} AS {quote(n)}" for t, n in zip(texts, names, strict=True))
    )
    columns = ", ".join(quote(n) for n in names)
    count = 0
    options = pacsv.WriteOptions(include_header=False)
    with pg.cursor().copy(f"COPY {target} ({columns}) FROM STDIN (FORMAT csv)") as copy:
        for batch in projected.to_arrow_reader(BATCH):
            block = io.BytesIO()
            pacsv.write_csv(batch, block, options)
            copy.write(block.getbuffer())
            count += batch.num_rows
    return count


class _CopyStream(io.RawIOBase):
    """The blocks of a COPY … TO STDOUT as a readable file, for Arrow's CSV reader."""

    def __init__(self, blocks: Iterator[memoryview | bytes]) -> None:
        self._blocks = blocks
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._left = bytes(block)
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def pull(
    pg: psycopg.Connection,
    mem: duckdb.DuckDBPyConnection,
    target: str,
    where: pgsql.Composable = _EVERY_ROW,
    columns: list[str] | None = None,
    into: str | None = None,
) -> None:
    """Copy the rows of `target` (schema.table) matching `where` from PostgreSQL into the
    same table of DuckDB connection `mem` (or its table `into`, schema.table), streamed by
    COPY (CSV) as Arrow batches; only `columns` (default all of `mem`'s table) are read.

    Values travel as text and DuckDB casts them to its column types; arrays as JSON.
    """
    into = into or target
    schema, table = into.split(".")
    described = dict(
        mem.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = ? AND table_name = ?",
            [schema, table],
        ).fetchall()
    )
    names = columns or table_columns(mem, schema, table)
    lists = {n for n in names if described[n].endswith("[]")}
    selected = pgsql.SQL(", ").join(
        pgsql.SQL("to_json({})").format(pgsql.Identifier(n)) if n in lists else pgsql.Identifier(n)
        for n in names
    )
    query = pgsql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT (FORMAT csv)").format(
        selected, pgsql.Identifier(*target.split(".")), where
    )
    read = pacsv.ReadOptions(column_names=names, block_size=1 << 22)
    convert = pacsv.ConvertOptions(
        column_types=dict.fromkeys(names, pa.string()),
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,  # COPY writes NULL unquoted, '' quoted
    )
    casts = ", ".join(
        f"CAST(CAST({quote(n)} AS JSON) AS {described[n]})"
        if n in lists
        else f"CAST({quote(n)} AS {described[n]})"
        for n in names
    )
    with pg.cursor().copy(query) as copy:
        blocks = iter(copy)
        first = next(blocks, None)
        if first is None:
            return  # no row (Arrow's CSV reader refuses an empty file)
        stream = io.BufferedReader(_CopyStream(itertools.chain([first], blocks)))
        reader = pacsv.open_csv(stream, read_options=read, convert_options=convert)
        mem.register("_pulled", reader)
        try:
            mem.execute(
                f"INSERT INTO {into} ({', '.join(quote(n) for n in names)})"
                f" SELECT {casts} FROM _pulled"
            )
        finally:
            mem.unregister("_pulled")


# --- ingest ---------------------------------------------------------------------------------


def ingest_table(
    engine: PostgresEngine, landing: Path, table_name: str, policy: Policy
) -> IngestResult:
    """Ingest a table's landing file (or read its PostgreSQL source) into the PostgreSQL
    warehouse, as `lethe.engine.ingest.ingest_table` does into a DuckDB one (module notes).

    The landing file is removed only once PostgreSQL has committed its rows; a file refused
    (`IngestError`) stays in landing/ and nothing is written.
    """
    table = policy.data_schema.tables[table_name]
    create(engine, policy.data_schema)  # a step of its own (Dagster) on a new database too
    pg = engine.con
    mem = connect(":memory:")
    scratch = Path(tempfile.mkdtemp(prefix=".ingest-", dir=landing.parent))
    try:
        ensure_schemas(mem, policy.data_schema)
        _mirror(pg, mem, table)
        original = landing_file(landing, table)
        staged = scratch / original.name if original else None
        if original and staged:
            try:
                os.link(original, staged)  # removed by ingest, the original only after commit
            except OSError:
                shutil.copy2(original, staged)
        try:
            result = duckdb_ingest.ingest_table(mem, scratch, table_name, policy)
        except IngestError as exc:
            raise IngestError(str(exc).replace(str(scratch), str(landing))) from None
        with engine.transaction():
            replaced = _write_back(pg, mem, table)
        if original and staged and not staged.exists():
            original.unlink()
        # Replaced rows (a re-delivered contact, a quarantined row loaded or dropped) would
        # keep their old values in dead tuples until the table is rewritten.
        engine.purge(replaced)
        return result
    finally:
        mem.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _mirror(pg: psycopg.Connection, mem: duckdb.DuckDBPyConnection, table: Table) -> None:
    """Fill the in-memory warehouse with what ingesting `table` reads of the database."""
    for fk in table.foreign_keys:
        pull(pg, mem, f"core.{fk.ref_table}", columns=[fk.ref_column])
    mine = pgsql.SQL("table_name = {}").format(pgsql.Literal(table.name))
    if table.source.postgres:
        # A source read skips the rows the warehouse holds already (compared column by
        # column) and those Lethe anonymized there, and reads from the table's mark.
        columns = [*table.column_names, "_state", "_ingested_at"]
        pull(pg, mem, f"core.{table.name}", columns=columns)
        pull(pg, mem, "core.source_marks", mine)
        pull(pg, mem, "core.source_anonymized", mine)
    else:
        restricted = pgsql.SQL("_state = {}").format(pgsql.Literal(RowState.RESTRICTED.value))
        pull(pg, mem, f"core.{table.name}", restricted, columns=[table.key, "_state"])
    pull(pg, mem, "core.quarantine", mine)
    pull(pg, mem, "core.ingest_log", mine)
    mem.execute("CREATE TEMP TABLE _quarantined AS SELECT * FROM core.quarantine")
    mem.execute("CREATE TEMP TABLE _logged AS SELECT * FROM core.ingest_log")
    known = f"SELECT {quote(table.key)}, _ingested_at FROM core.{quote(table.name)}"
    mem.execute(f"CREATE TEMP TABLE _known AS {known}")


def _write_back(
    pg: psycopg.Connection, mem: duckdb.DuckDBPyConnection, table: Table
) -> list[tuple[str, str]]:
    """Carry what the in-memory ingest changed to PostgreSQL (inside the caller's
    transaction): new carried columns, the loaded rows (replacing those with their keys),
    the table's quarantine and the new ingest log entries. Returns the tables whose rows
    it deleted, (schema, table) pairs."""
    replaced = []
    target = pgsql.Identifier("core", table.name)
    present = {
        r[0]
        for r in pg.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'core' AND table_name = %s",
            [table.name],
        ).fetchall()
    }
    columns = table_columns(mem, "core", table.name)
    for extra in (c for c in columns if c not in present):
        pg.execute(
            pgsql.SQL("ALTER TABLE {} ADD COLUMN {} text").format(target, pgsql.Identifier(extra))
        )
    # The loaded rows: each has an ingest time, and not one a mirrored row had.
    k = quote(table.key)
    loaded = (
        f"SELECT * FROM core.{quote(table.name)} c WHERE _ingested_at IS NOT NULL"
        f" AND NOT EXISTS (SELECT 1 FROM _known k WHERE k.{k} = c.{k}"
        " AND k._ingested_at = c._ingested_at)"
    )
    if mem.execute(f"SELECT count(*) FROM ({loaded})").fetchall()[0][0]:
        pg.execute(pgsql.SQL("CREATE TEMP TABLE _loaded (LIKE {}) ON COMMIT DROP").format(target))
        copy_in(mem.sql(loaded), pg, "_loaded")
        key = pgsql.Identifier(table.key)
        deleted = pg.execute(
            pgsql.SQL("DELETE FROM {} WHERE {} IN (SELECT {} FROM _loaded)").format(
                target, key, key
            )
        ).rowcount
        if deleted:
            replaced.append(("core", table.name))
        names = pgsql.SQL(", ").join(pgsql.Identifier(c) for c in columns)
        pg.execute(
            pgsql.SQL("INSERT INTO {} ({}) SELECT {} FROM _loaded").format(target, names, names)
        )
    changed = mem.execute(
        "SELECT count(*) FROM (SELECT * FROM core.quarantine EXCEPT ALL SELECT * FROM _quarantined"
        " UNION ALL (SELECT * FROM _quarantined EXCEPT ALL SELECT * FROM core.quarantine))"
    ).fetchall()[0][0]
    if changed:
        pg.execute("DELETE FROM core.quarantine WHERE table_name = %s", [table.name])
        copy_in(mem.table("core.quarantine"), pg, "core.quarantine")
        replaced.append(("core", "quarantine"))
    copy_in(
        mem.sql("SELECT * FROM core.ingest_log EXCEPT ALL SELECT * FROM _logged"),
        pg,
        "core.ingest_log",
    )
    if table.source.postgres:  # the source's new high-water mark, if incremental
        pg.execute("DELETE FROM core.source_marks WHERE table_name = %s", [table.name])
        copy_in(mem.table("core.source_marks"), pg, "core.source_marks")
    return replaced


def ingest_all(engine: PostgresEngine, landing: Path, policy: Policy) -> dict[str, IngestResult]:
    """Ingest every declared table's landing file, referenced tables first."""
    create(engine, policy.data_schema)
    return {name: ingest_table(engine, landing, name, policy) for name in policy.data_schema.tables}


# --- the vault and the ledger ---------------------------------------------------------------


def key_secret(pg: psycopg.Connection) -> bytes:
    """The secret of the keyed hashes, kept in `vault.key_secret`; created on first use."""
    pg.execute(
        "INSERT INTO vault.key_secret SELECT %s, now()"
        " WHERE NOT EXISTS (SELECT 1 FROM vault.key_secret)",
        [secrets.token_bytes(32)],
    )
    (secret,) = pg.execute("SELECT secret FROM vault.key_secret LIMIT 1").fetchone()
    return bytes(secret)


def append(pg: psycopg.Connection, entries: list[audit.LedgerEntry]) -> list[str]:
    """Append ledger entries to `audit.ledger` (inside the caller's transaction), hashed
    and chained by `lethe.engine.audit.ledger_rows`, keys hashed with the vault's secret."""
    if not entries:
        return []
    secret = key_secret(pg)
    mem = connect(":memory:")
    try:
        rows = audit.ledger_rows(
            entries, audit.head(pg), lambda keys: audit.hashed_keys(mem, keys, secret)
        )
        copy_in(mem.from_arrow(rows), pg, "audit.ledger")
    finally:
        mem.close()
    return rows["hash"].to_pylist()


def verify(pg: psycopg.Connection) -> audit.VerifyResult:
    """Check the ledger's hash chain with `lethe.engine.audit.verify`, on a copy read into
    DuckDB in memory (streamed; it spills to the private spill folder when large)."""
    mem = connect(":memory:")
    try:
        ensure_ledger(mem)
        pull(pg, mem, "audit.ledger")
        return audit.verify(mem)
    finally:
        mem.close()


# --- enforcement ----------------------------------------------------------------------------


class Rendered:
    """A DuckDB-like `execute(sql, params).fetchone()/fetchall()` for code that reads the
    warehouse (plan results, table counts): each statement (DuckDB dialect, `?` parameters)
    rendered for PostgreSQL and run there."""

    def __init__(self, pg: psycopg.Connection) -> None:
        self.pg = pg

    def execute(self, sql: str, params: list[Any] | None = None) -> psycopg.Cursor[Any]:
        *before, last = render((sql,), POSTGRES)
        for statement in before:
            self.pg.execute(statement)
        return self.pg.execute(last, params)

    def sql(self, select: str) -> _Result:
        """The result of `select` (DuckDB's `con.sql(…).pl()` for code that reads a frame)."""
        return _Result(self.execute(select))


class _Result:
    """A query's result, read as a Polars frame (`pl()`) or an Arrow table
    (`to_arrow_table()`), as DuckDB's relation gives it."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self.cursor = cursor

    def pl(self) -> pl.DataFrame:
        names = [c.name for c in self.cursor.description or ()]
        return pl.DataFrame(self.cursor.fetchall(), schema=names, orient="row")

    def to_arrow_table(self) -> pa.Table:
        return self.pl().to_arrow()


def _issue_tokens(pg: psycopg.Connection, policy: Policy) -> None:
    """Issue vault tokens for every value about to be pseudonymized, in SQL, and expose the
    tokens of those values as the temp table `_tokens`, as `enforce_select` reads them: the
    DuckDB vault's statements, rendered for PostgreSQL (whose `gen_random_uuid()` draws
    from its strong random source)."""
    statements = (
        f"CREATE TEMP TABLE _wanted AS {wanted_tokens_select(policy)}",
        issue_tokens_sql("_wanted", *new_salt(), skip_conflicts=True),
        TOKENS_TABLE,
        "DROP TABLE _wanted",
    )
    for sql in render(statements, POSTGRES):
        pg.execute(sql)


def enforce(
    engine: PostgresEngine, policy: Policy, as_of: dt.date, run_id: str
) -> EnforcementResult:
    """Enforce `policy` as of `as_of` on the PostgreSQL warehouse, in one transaction, then
    forget unused tokens and `VACUUM FULL` what was rewritten (module notes).

    Only tables with staged rows (rows whose tags or values change) are rewritten, so the
    same as-of date again changes nothing. Holds Lethe's advisory lock throughout.
    """
    result = EnforcementResult(as_of)
    pg = engine.con
    create(engine, policy.data_schema)
    with engine.lock():
        with engine.transaction():
            _reveal_keys(pg, policy)
            plans = {}
            for table in tagged_tables(policy):
                columns = _columns(pg, table)
                plans[table] = (columns, enforcement_plan(policy, table, columns, as_of))
            for _, plan in plans.values():
                engine.run(Plan(plan.name, plan.statements[:1]))
            _issue_tokens(pg, policy)
            entries, result.counts = ledger_entries(
                Rendered(pg),  # type: ignore[arg-type]
                policy,
                plans,
                as_of,
                run_id,
            )
            touched = [t for t in plans if pg.execute(f"SELECT 1 FROM _act_{t} LIMIT 1").fetchall()]
            for table in touched:
                columns, plan = plans[table]
                _rewrite(engine, table, columns, plan)
            hashed = _hash_gone_keys(pg, policy)
            append(pg, entries)
            result.ledger_entries = len(entries)
            for table in plans:
                pg.execute(f"DROP TABLE _act_{table}")
            pg.execute(f"DROP TABLE {TOKENS}")
        with engine.transaction():
            result.forgotten_tokens = _forget_unused_tokens(pg, policy)
        purged = [("core", t) for t in touched] + hashed
        if result.forgotten_tokens:
            purged.append((VAULT, "tokens"))
        engine.purge(purged)
    return result


def _columns(pg: psycopg.Connection, table: str) -> list[str]:
    rows = pg.execute(
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_schema = 'core' AND table_name = %s ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return [r[0] for r in rows]


def _rewrite(engine: PostgresEngine, table: str, columns: list[str], plan: Plan) -> None:
    """Replace the rows of `core.<table>` by its enforced rows (the plan's last statement)."""
    engine.run(Plan(f"enforced {table}", (f"CREATE TEMP TABLE _enforced AS {plan.statements[2]}",)))
    target = pgsql.Identifier("core", table)
    names = pgsql.SQL(", ").join(pgsql.Identifier(c) for c in columns)
    engine.con.execute(pgsql.SQL("DELETE FROM {}").format(target))
    engine.con.execute(
        pgsql.SQL("INSERT INTO {} ({}) SELECT {} FROM _enforced").format(target, names, names)
    )
    engine.con.execute("DROP TABLE _enforced")


def _key_columns(pg: psycopg.Connection, policy: Policy) -> list[KeyColumn]:
    """The columns of Lethe's own tables holding subjects' keys, as the database has them."""
    present = []
    for schema, table, column in key_columns(policy):
        types = dict(
            pg.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                [schema, table],
            ).fetchall()
        )
        if column in types:
            text = types[column] in ("text", "character varying")
            present.append(KeyColumn(schema, table, column, tuple(types), text))
    return present


def _reveal_keys(pg: psycopg.Connection, policy: Policy) -> None:
    """`lethe.rights.subject_keys.reveal_keys` (recent rows only) rendered for PostgreSQL,
    before enforcement stages: a gone subject delivered again is named by its raw key once
    more, so the erasure register applies to its new rows, as on DuckDB."""
    # A column that cannot hold text never holds a hash (a gone key there became NULL).
    columns = [(c.schema, c.table, c.column) for c in _key_columns(pg, policy) if c.text]
    if not columns:
        return
    (any_hash,) = render((any_hash_sql(columns),), POSTGRES)
    if not pg.execute(any_hash).fetchone()[0]:
        return
    bind_postgres(pg, key_secret(pg))
    for sql in render(tuple(reveal_keys_sql(policy, columns, recent_only=True)), POSTGRES):
        pg.execute(sql)


def _hash_gone_keys(pg: psycopg.Connection, policy: Policy) -> list[tuple[str, str]]:
    """Replace the keys of the subjects the rewrite just left without a row by their keyed
    hashes wherever Lethe's own tables hold them, as DuckDB's enforcement does in its
    rewrite: `lethe.rights.subject_keys.gone_keys_sql` rendered for PostgreSQL, inside the
    enforcement's transaction. Returns the tables rewritten (to purge)."""
    present = _key_columns(pg, policy)
    if not present:
        return []
    bind_postgres(pg, key_secret(pg))
    after = f"SELECT * FROM core.{quote(policy.data_schema.subject_table.name)}"
    gone, selects = gone_keys_sql(policy, after, present, TOKENS)
    for sql in render((gone,), POSTGRES):
        pg.execute(sql)
    rewritten = []
    if pg.execute(f"SELECT 1 FROM {GONE} LIMIT 1").fetchall():
        for key in present:
            if _hash_keys_of(pg, key, selects[(key.schema, key.table)].select):
                rewritten.append((key.schema, key.table))
    pg.execute(f"DROP TABLE {GONE}")
    return rewritten


def _hash_keys_of(pg: psycopg.Connection, key: KeyColumn, select: str) -> bool:
    """Rewrite the table of `key` from `select` (its rows with gone keys hashed) when that
    changes it: it holds a gone key, or (the erasure register) gains the tokens standing
    for one. Whether it did."""
    target = pgsql.Identifier(key.schema, key.table)
    holds = pg.execute(
        pgsql.SQL("SELECT 1 FROM {} x JOIN {} g ON g.key = CAST(x.{} AS text) LIMIT 1").format(
            target, pgsql.Identifier(GONE), pgsql.Identifier(key.column)
        )
    ).fetchall()
    if not holds and (key.schema, key.table) != ERASURES:
        return False
    for sql in render((f"CREATE TEMP TABLE _hashed AS {select}",), POSTGRES):
        pg.execute(sql)
    (before,) = pg.execute(pgsql.SQL("SELECT count(*) FROM {}").format(target)).fetchone()
    (after,) = pg.execute("SELECT count(*) FROM _hashed").fetchone()
    changed = bool(holds) or after != before
    if changed:
        names = pgsql.SQL(", ").join(pgsql.Identifier(c) for c in key.columns)
        pg.execute(pgsql.SQL("DELETE FROM {}").format(target))
        pg.execute(pgsql.SQL("INSERT INTO {} ({}) SELECT * FROM _hashed").format(target, names))
    pg.execute("DROP TABLE _hashed")
    return changed


def _forget_unused_tokens(pg: psycopg.Connection, policy: Policy) -> int:
    """Delete the vault tokens no row of the warehouse refers to any more; the count."""
    (sql,) = render((forget_tokens_sql(policy),), POSTGRES)
    return pg.execute(sql).rowcount


# --- a run ----------------------------------------------------------------------------------

RUNS_HERE = (
    "`lethe run` (ingest, requests, enforcement, answers, analytics), `lethe request`,"
    " `lethe requests`, `lethe hold add|release`, `lethe processor`, `lethe breach`,"
    " `lethe propagate`, `lethe audit verify`, `lethe backup`, `lethe restore` and"
    " Dagster runs"
)
NOT_BUILT = "`lethe demo` and subject shards"


def dsn_from_env() -> str | None:
    """The PostgreSQL URL LETHE_WAREHOUSE names, or None (the DuckDB warehouse under
    LETHE_HOME). The URL is only ever passed to the driver: never printed or written."""
    value = os.environ.get(WAREHOUSE_ENV, "").strip()
    return value if is_postgres(value) else None


def refuse_here(what: str) -> None:
    """Refuse `what` in one line, before any change, when the warehouse is a PostgreSQL
    database, where it does not run yet."""
    dsn = dsn_from_env()
    if dsn:
        raise WarehouseError(
            f"{describe(dsn)}: {what} does not run on a PostgreSQL warehouse yet (only {RUNS_HERE})"
        )
