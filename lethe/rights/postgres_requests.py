"""Data-subject requests on a PostgreSQL warehouse (`LETHE_WAREHOUSE=postgresql://…`).

The rules stay in `lethe.rights`, written once: each step runs the same function
(`record_request`, `extend_request`, `list_requests`, `apply_pending` and
`register_erasure_tokens`, `answer_pending`) on an in-memory DuckDB that mirrors what that
function reads of the database, then carries what it wrote back, set-based, in the
PostgreSQL transaction that read the mirror, under Lethe's advisory lock:

- the mirror holds the requests the step works on, the erasure register, the rows of their
  subjects in every declared table (found along `lethe.engine.reach`, by the subject's key
  and by the vault tokens standing for it), what else the function reads (the quarantine,
  the export log of those subjects, the ledger's last entry) and a vault in memory with the
  warehouse's key secret and only the tokens those rows and subjects need; nothing of it
  is written to a file;
- what the function changed goes back by comparing each mirrored table with its copy as
  read: rows changed or removed leave the database by their keys and the changed ones are
  copied in (COPY), new rows of the append-only tables (erasure register, export log,
  ledger: already hashed and chained, continuing the database's chain) are appended;
  tables that lost rows are then rewritten by `VACUUM FULL`, so a value a rectification
  replaced, or an erased subject's quarantined copy, leaves the table files.

`lethe run` calls `intake` after ingest and before enforcement (rectification, objection
and restriction carried out, erasures registered in `requests.erasures`, which the
enforcement plan reads, so the same rewrite erases them) and `answer` after enforcement
(access and portability exports under LETHE_HOME/exports, erasure answers).

With writable PostgreSQL sources, `intake` also plans the changes carried back to them
(`lethe.sources.propagation`, in the mirror: the change sets go back by request, the vault
tokens it issues with them, so enforcement finds the same); `lethe.sources.postgres_propagation`
carries them there. Once a subject is gone, its key in these tables is replaced by its
keyed hash by enforcement, in its transaction (`lethe.engine.postgres_warehouse.enforce`,
with the SQL of `lethe.rights.subject_keys.gone_keys_sql`), as on DuckDB; `answer` then
also deletes the exports of subjects gone since. The ledger hashes every key it records.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager

import duckdb
import psycopg
from psycopg import sql as pgsql

from lethe.declaration.policy import Policy
from lethe.declaration.schema import Schema
from lethe.declaration.strategies import literal, quote
from lethe.engine.ddl import ensure_schemas, ensure_vault
from lethe.engine.engines import PostgresEngine
from lethe.engine.keyhash import is_hash_sql
from lethe.engine.postgres_warehouse import (
    WarehouseError,
    copy_in,
    create,
    describe,
    key_secret,
    open_engine,
    pull,
)
from lethe.engine.reach import reach
from lethe.engine.rendering import POSTGRES, render
from lethe.engine.retention import pseudonym_columns
from lethe.engine.tagging import tagged_tables
from lethe.engine.vault import TOKEN_PREFIX
from lethe.engine.warehouse import connect, table_columns
from lethe.operations.home import Home
from lethe.rights.answers import Answers, answer_pending
from lethe.rights.requests import (
    Request,
    apply_pending,
    extend_request,
    list_requests,
    pending_request_ids,
    record_request,
    register_erasure_tokens,
    request_counts,
)
from lethe.rights.subject_keys import subject_token_kinds
from lethe.rights.subjects import email_column
from lethe.sources.postgres import reason
from lethe.sources.propagation import (
    plan_erasures,
    plan_rectifications_and_restrictions,
    writable_sources,
)

Name = tuple[str, str]  # (schema, table)
REQUESTS: Name = ("requests", "requests")
ERASURES: Name = ("requests", "erasures")
LEDGER: Name = ("audit", "ledger")
EXPORT_LOG: Name = ("audit", "export_log")
QUARANTINE: Name = ("core", "quarantine")
SOURCE_CHANGES: Name = ("requests", "source_changes")
PROPAGATIONS: Name = ("requests", "propagations")
TOKENS: Name = ("vault", "tokens")
OWNERS = "_owners"  # PostgreSQL temp table: the keys and tokens of the step's subjects
_PENDING = pgsql.SQL("status = 'pending'")
OF_PENDING = pgsql.SQL(
    "request_id IN (SELECT request_id FROM requests.requests WHERE status = 'pending')"
)


class Mirror:
    """An in-memory DuckDB warehouse holding what one step reads of the PostgreSQL one.

    `keyed` tables go back by key, `appended` ones by their new rows, `whole` ones (every
    row matching the pull's condition mirrored) as a whole when changed; `read` snapshots
    each as it was read.
    """

    def __init__(self, pg: psycopg.Connection, schema: Schema) -> None:
        self.pg = pg
        self.schema = schema
        self.mem = connect(":memory:")
        self.keyed: dict[Name, str] = {}
        self.appended: list[Name] = []
        self.whole: dict[Name, pgsql.Composable] = {}
        ensure_schemas(self.mem, schema)
        for table in schema.tables:
            self._carry_extra_columns(table)
        # The vault in memory: the warehouse's key secret hashes the ledger's keys.
        self.mem.execute("ATTACH ':memory:' AS vault")
        ensure_vault(self.mem)
        self.mem.execute("INSERT INTO vault.key_secret VALUES (?, now())", [key_secret(pg)])
        last = pgsql.SQL("seq = (SELECT max(seq) FROM audit.ledger)")
        self.pull(LEDGER, last, appended=True)

    def _carry_extra_columns(self, table: str) -> None:
        """Add the columns a load carried into `core.<table>` beyond the declared ones."""
        present = set(table_columns(self.mem, "core", table))
        for (name,) in self.pg.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'core' AND table_name = %s ORDER BY ordinal_position",
            [table],
        ).fetchall():
            if name not in present:
                self.mem.execute(
                    f"ALTER TABLE core.{quote(table)} ADD COLUMN {quote(name)} VARCHAR"
                )

    def pull(
        self,
        name: Name,
        where: pgsql.Composable,
        *,
        key: str | None = None,
        appended: bool = False,
        whole: bool = False,
        columns: list[str] | None = None,
    ) -> None:
        """Copy the rows of `name` matching `where` into the mirror and say how they go back."""
        pull(self.pg, self.mem, ".".join(name), where, columns)
        if key:
            self.keyed[name] = key
        if appended:
            self.appended.append(name)
        if whole:
            self.whole[name] = where

    def owners(self, requests: pgsql.Composable) -> None:
        """Fill the PostgreSQL temp table `_owners` with the subjects of the `requests`
        (a condition on requests.requests naming only its own columns): their keys, the
        vault tokens that stand for them and the tokens their erasures registered."""
        kinds = subject_token_kinds(self.schema)
        self.pg.execute(f"CREATE TEMP TABLE {OWNERS} (subject_key text) ON COMMIT DROP")
        self.pg.execute(
            pgsql.SQL(
                "INSERT INTO {owners} SELECT subject_key FROM requests.requests WHERE {r}"
                " UNION SELECT t.token FROM vault.tokens t JOIN requests.requests q"
                " ON t.value = q.subject_key WHERE {q} AND t.kind = ANY(%s)"
                " UNION SELECT e.subject_key FROM requests.erasures e"
                " JOIN requests.requests q USING (request_id) WHERE {q}"
            ).format(owners=pgsql.Identifier(OWNERS), r=requests, q=requests),
            [kinds],
        )

    def pull_named_subject(self, subject: str, every_row: bool = False) -> None:
        """Mirror the subject table's rows `resolve_subject` may read for `subject` as
        given: the key, e-mail and state of the row whose key it is, or of every row when it
        is an e-mail address or `every_row` (an address must identify one subject)."""
        table = self.schema.subject_table
        address = email_column(self.schema)
        key = pgsql.SQL("CAST({} AS text) IN ({}, {})").format(
            pgsql.Identifier(table.key), pgsql.Literal(subject), pgsql.Literal(subject.strip())
        )
        by_email = address is not None and ("@" in subject or every_row)
        columns = [table.key, *([address] if address else []), "_state"]
        self.pull(("core", table.name), pgsql.SQL("true") if by_email else key, columns=columns)

    def pull_subject_rows(self) -> None:
        """Mirror every row of every declared table whose subject is in `_owners`."""
        for name, spec in self.schema.tables.items():
            self.pull(("core", name), rendered_condition(_owned(self.schema, name)), key=spec.key)

    def pull_tokens(self, policy: Policy, issuing: bool = False) -> None:
        """Mirror the vault tokens the step needs: those in the mirrored rows' pseudonymized
        columns, and those standing for an owner's or an erased subject's key.

        `issuing`: the step may issue tokens (planning the changes carried to a source
        pseudonymizes values, `lethe.sources.propagation`): the tokens the values of those
        columns have already are mirrored too, and the tokens it issues go back."""
        columns = [
            (table, p)
            for table in tagged_tables(policy)
            for p in pseudonym_columns(policy, table)
            if p.column in table_columns(self.mem, "core", table)
        ]
        used = [
            f"SELECT CAST({quote(p.column)} AS VARCHAR) AS token FROM core.{quote(table)}"
            f" WHERE starts_with(CAST({quote(p.column)} AS VARCHAR), {literal(TOKEN_PREFIX)})"
            for table, p in columns
        ]
        self.pg.execute("CREATE TEMP TABLE _seen_tokens (token text) ON COMMIT DROP")
        if used:
            copy_in(self.mem.sql(" UNION ".join(used)), self.pg, "_seen_tokens")
        self.pg.execute("CREATE TEMP TABLE _seen_values (kind text, value text) ON COMMIT DROP")
        if issuing and columns:
            values = " UNION ".join(
                f"SELECT {literal(p.kind)} AS kind, CAST({quote(p.column)} AS VARCHAR) AS value"
                f" FROM core.{quote(table)} WHERE {quote(p.column)} IS NOT NULL"
                for table, p in columns
            )
            copy_in(self.mem.sql(values), self.pg, "_seen_values")
        where = pgsql.SQL(
            "token IN (SELECT token FROM _seen_tokens) OR (kind = ANY({kinds}) AND value IN"
            " (SELECT subject_key FROM {owners} UNION SELECT subject_key FROM requests.erasures))"
            " OR (kind, value) IN (SELECT kind, value FROM _seen_values)"
        ).format(
            kinds=pgsql.Literal(subject_token_kinds(self.schema)),
            owners=pgsql.Identifier(OWNERS),
        )
        # Pulled beside the vault (a table of the in-memory catalog has the schema `pull`
        # looks up), then moved into it.
        self.mem.execute("CREATE TABLE main._vault_tokens AS SELECT * FROM vault.tokens LIMIT 0")
        pull(self.pg, self.mem, "vault.tokens", where, into="main._vault_tokens")
        self.mem.execute("INSERT INTO vault.tokens SELECT * FROM main._vault_tokens")
        self.mem.execute("DROP TABLE main._vault_tokens")
        if issuing:
            self.appended.append(TOKENS)

    def freeze(self) -> None:
        """Keep a copy of each mirrored table as read, to tell later what the step changed."""
        for name in [*self.keyed, *self.appended, *self.whole]:
            self.mem.execute(f"CREATE TEMP TABLE {_read(name)} AS SELECT * FROM {_table(name)}")

    def carry_back(self) -> list[Name]:
        """Write what the step changed in the mirror to PostgreSQL (inside the caller's
        transaction); returns the tables that lost rows there (to purge)."""
        replaced: list[Name] = []
        for name, key in self.keyed.items():
            if self._replace_by_key(name, key):
                replaced.append(name)
        for name in self.appended:
            added = self.mem.sql(
                f"SELECT * FROM {_table(name)} EXCEPT ALL SELECT * FROM {_read(name)}"
            )
            copy_in(added, self.pg, _table(name))
        for name, where in self.whole.items():
            if self._changed(name):
                self.pg.execute(
                    pgsql.SQL("DELETE FROM {} WHERE {}").format(pgsql.Identifier(*name), where)
                )
                copy_in(self.mem.table(".".join(name)), self.pg, _table(name))
                replaced.append(name)
        return replaced

    def _changed(self, name: Name) -> bool:
        now, then = _table(name), _read(name)
        return bool(
            self.mem.execute(
                f"SELECT count(*) FROM (SELECT * FROM {now} EXCEPT ALL SELECT * FROM {then}"
                f" UNION ALL (SELECT * FROM {then} EXCEPT ALL SELECT * FROM {now}))"
            ).fetchall()[0][0]
        )

    def _replace_by_key(self, name: Name, key: str) -> bool:
        """Replace the database's rows of every key whose mirrored rows changed or went (a
        key may have several rows: all of its mirrored rows go back); True when it deleted
        any."""
        now, then, k = _table(name), _read(name), quote(key)
        changed = f"SELECT * FROM {now} EXCEPT ALL SELECT * FROM {then}"
        keys = (
            f"SELECT CAST({k} AS VARCHAR) AS k FROM ({changed})"
            f" UNION SELECT CAST({k} AS VARCHAR) FROM (SELECT * FROM {then}"
            f" EXCEPT ALL SELECT * FROM {now})"
        )
        if not self.mem.execute(f"SELECT count(*) FROM ({keys})").fetchall()[0][0]:
            return False
        self.pg.execute("CREATE TEMP TABLE _replaced (k text) ON COMMIT DROP")
        copy_in(self.mem.sql(keys), self.pg, "_replaced")
        deleted = self.pg.execute(
            pgsql.SQL("DELETE FROM {} WHERE CAST({} AS text) IN (SELECT k FROM _replaced)").format(
                pgsql.Identifier(*name), pgsql.Identifier(key)
            )
        ).rowcount
        copy_in(
            self.mem.sql(f"SELECT * FROM {now} WHERE CAST({k} AS VARCHAR) IN ({keys})"),
            self.pg,
            _table(name),
        )
        self.pg.execute("DROP TABLE _replaced")
        return deleted > 0

    def close(self) -> None:
        self.mem.close()


def _table(name: Name) -> str:
    return f"{name[0]}.{quote(name[1])}"


def _read(name: Name) -> str:
    return quote(f"_read_{name[0]}_{name[1]}")


def _owned(schema: Schema, table: str) -> str:
    """WHERE condition (DuckDB dialect) on `core.<table>`: rows whose subject, reached
    along `lethe.engine.reach` and compared as text, is in `_owners`."""
    key = quote(schema.tables[table].key)
    r = reach(schema, table, "_own")
    return (
        f"{key} IN (SELECT _own.{key} FROM core.{quote(table)} _own{r.joins}"
        f" WHERE CAST({r.subject} AS VARCHAR) IN (SELECT subject_key FROM {OWNERS}))"
    )


def rendered_condition(condition: str) -> pgsql.Composable:
    """A WHERE condition written in DuckDB's dialect, rendered for PostgreSQL."""
    (statement,) = render((f"SELECT 1 WHERE {condition}",), POSTGRES)
    return pgsql.SQL(statement.split(" WHERE ", 1)[1])


@contextmanager
def mirrored_step(engine: PostgresEngine, schema: Schema) -> Iterator[Mirror]:
    """One step: under the advisory lock and in one transaction, a mirror to fill and run a
    function on; what it changed is carried back on success (nothing on a failure), and
    tables that lost rows are purged after the commit."""
    replaced: list[Name] = []
    create(engine, schema)
    with engine.lock():
        with engine.transaction():
            mirror = Mirror(engine.con, schema)
            try:
                yield mirror
                replaced = mirror.carry_back()
            finally:
                mirror.close()
        engine.purge(replaced)


@contextmanager
def opened(dsn: str, what: str) -> Iterator[PostgresEngine]:
    """The engine on the warehouse for one command; a failure of the database while it
    runs is one `WarehouseError` naming the warehouse and `what` was being done."""
    engine = open_engine(dsn)
    try:
        yield engine
    except psycopg.Error as exc:
        raise WarehouseError(f"{describe(dsn)}: {what} stopped: {reason(exc)}") from None
    finally:
        engine.close()


# --- the command line -----------------------------------------------------------------------


def record(
    engine: PostgresEngine,
    policy: Policy,
    type_: str,
    subject: str,
    changes: dict[str, str] | None = None,
    why: str | None = None,
) -> Request:
    """`lethe request TYPE --subject …`: `record_request` on the PostgreSQL warehouse.

    The mirror holds the subject table's rows `record_request` may read: those whose key is
    the given subject, or, for an e-mail address or a corrected one, every row's key,
    e-mail and state (an address must identify one subject).
    """
    schema = policy.data_schema
    address = email_column(schema)
    with mirrored_step(engine, schema) as mirror:
        mirror.pull_named_subject(subject, every_row=address in (changes or {}))
        mirror.pull(REQUESTS, pgsql.SQL("false"), appended=True)
        mirror.freeze()
        recorded = record_request(mirror.mem, schema, type_, subject, changes, why)
    return recorded


def extend(engine: PostgresEngine, policy: Policy, request_id: str, why: str) -> Request:
    """`lethe request extend ID --reason …`: `extend_request` on the PostgreSQL warehouse."""
    with mirrored_step(engine, policy.data_schema) as mirror:
        one = pgsql.SQL("request_id = {}").format(pgsql.Literal(request_id))
        mirror.pull(REQUESTS, one, key="request_id")
        mirror.freeze()
        extended = extend_request(mirror.mem, request_id, why)
    return extended


@contextmanager
def _requests_copy(engine: PostgresEngine) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory copy of the PostgreSQL warehouse's requests (read in one statement;
    nothing is locked or written)."""
    mem = connect(":memory:")
    try:
        ensure_schemas(mem)
        if engine.con.execute("SELECT to_regclass('requests.requests')").fetchone()[0]:
            pull(engine.con, mem, ".".join(REQUESTS))
        yield mem
    finally:
        mem.close()


def listing(engine: PostgresEngine, overdue_only: bool = False) -> list[tuple]:
    """`lethe requests`: `list_requests` over a copy of the warehouse's requests."""
    with _requests_copy(engine) as mem:
        return list_requests(mem, overdue_only=overdue_only)


def counts(engine: PostgresEngine) -> dict[str, int]:
    """`request_counts` (open, done, refused, overdue) over a copy of the requests."""
    with _requests_copy(engine) as mem:
        return request_counts(mem)


def pending_ids(engine: PostgresEngine) -> list[str]:
    """`pending_request_ids` over a copy of the requests (the request sensor polls it)."""
    with _requests_copy(engine) as mem:
        return pending_request_ids(mem)


# --- a run ----------------------------------------------------------------------------------


def intake(engine: PostgresEngine, policy: Policy, as_of: dt.date, run_id: str) -> dict[str, int]:
    """Carry out pending rectifications, objections and restrictions and register pending
    erasures (with the tokens standing for erased keys), as the DuckDB pipeline's intake
    does before tagging; returns requests handled per type."""
    schema = policy.data_schema
    sourced = bool(writable_sources(policy))
    with mirrored_step(engine, schema) as mirror:
        mirror.pull(REQUESTS, _PENDING, key="request_id")
        mirror.pull(ERASURES, pgsql.SQL("true"), appended=True)
        if sourced:  # the change sets planned so far for writable sources, by request
            for name in (SOURCE_CHANGES, PROPAGATIONS):
                mirror.pull(name, OF_PENDING, key="request_id")
        mirror.owners(_PENDING)
        mirror.pull_subject_rows()
        if _corrects_emails(mirror.mem, schema):
            _pull_other_emails(mirror)
        erasing = mirror.mem.execute(
            "SELECT count(*) FROM requests.requests WHERE type = 'erasure'"
        ).fetchall()[0][0]
        if erasing:  # an erasure forgets the subject's quarantined rows (the only reader)
            mirror.pull(QUARANTINE, pgsql.SQL("true"), whole=True)
        mirror.pull_tokens(policy, issuing=sourced)
        mirror.freeze()
        # As the DuckDB intake: corrections planned for the sources as recorded, erasures
        # once registered (their tokens issued in the mirror's vault, which goes back).
        plan_rectifications_and_restrictions(mirror.mem, policy)
        done = apply_pending(mirror.mem, policy, as_of, run_id)
        register_erasure_tokens(mirror.mem, schema)
        plan_erasures(mirror.mem, policy, as_of)
    return done


def _corrects_emails(mem: duckdb.DuckDBPyConnection, schema: Schema) -> bool:
    """Whether a pending rectification corrects the e-mail address (then `apply_pending`
    checks it against every other subject's)."""
    address = email_column(schema)
    changes = mem.execute(
        "SELECT changes FROM requests.requests WHERE status = 'pending'"
        " AND type = 'rectification' AND changes IS NOT NULL"
    ).fetchall()
    return address is not None and any(address in json.loads(c) for (c,) in changes)


def _pull_other_emails(mirror: Mirror) -> None:
    """The key, e-mail and state of every subject the mirror does not hold yet."""
    subject = mirror.schema.subject_table
    address = email_column(mirror.schema)
    assert address is not None
    others = pgsql.SQL("CAST({} AS text) NOT IN (SELECT subject_key FROM {})").format(
        pgsql.Identifier(subject.key), pgsql.Identifier(OWNERS)
    )
    pull(mirror.pg, mirror.mem, f"core.{subject.name}", others, [subject.key, address, "_state"])


def answer(
    engine: PostgresEngine, home: Home, policy: Policy, as_of: dt.date, run_id: str
) -> Answers:
    """Answer pending access, portability and erasure requests after enforcement, as the
    DuckDB pipeline does: exports under `home`'s exports/, answers and ledger entries in
    the database."""
    schema = policy.data_schema
    with mirrored_step(engine, schema) as mirror:
        mirror.pull(REQUESTS, _PENDING, key="request_id")
        mirror.pull(ERASURES, pgsql.SQL("true"))
        mirror.pull(PROPAGATIONS, OF_PENDING)
        mirror.owners(_PENDING)
        mirror.pull_subject_rows()
        # And the exports of subjects gone since (named by keyed hash): they go too.
        mine = pgsql.SQL("subject_key IN (SELECT subject_key FROM {}) OR {}").format(
            pgsql.Identifier(OWNERS), rendered_condition(is_hash_sql("subject_key"))
        )
        mirror.pull(EXPORT_LOG, mine, appended=True)
        mirror.pull_tokens(policy)
        mirror.freeze()
        answered = answer_pending(mirror.mem, home, policy, as_of, run_id)
    return answered
