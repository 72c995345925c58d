"""The pseudonym vault `vault.duckdb`: random tokens and the values they stand for.

GDPR Art. 4(5): the information that turns a token back into a person is kept apart
from the warehouse, in its own owner-only DuckDB file. Table `vault.tokens` (in the
file's main schema, so it reads `vault.tokens` both on a connection to vault.duckdb,
whose catalog is named after the file, and where the file is attached AS vault):

    subject     the key of the data subject the value was first tokenized for (on the
                default schema, a contact_id)
    kind        values that should join share a kind: the data category of the column
                they come from (user.unique_id, user.name, ...)
    value       the original value, as text
    token       'tok_' + 32 hex characters, random (128 bits: unique without an index,
                whose upkeep would cost more than issuing the tokens)
    created_at  when the token was issued (UTC)

The same value of the same kind always gets the same token, across tables and runs, so
pseudonymized tables still join: tokens are issued only for pairs that have none, by one
statement at a time (the LETHE_HOME lock admits one writer), without an index whose
upkeep would cost more than issuing them (`lethe.engine.ddl.ensure_vault`). A token
is random, not a hash of its value, so it cannot be recomputed from a guessed value;
forgetting a subject's rows leaves their tokens pointing nowhere (anonymous).

Every function is one set-based statement. Rows and value lists are handed over as
Arrow data: a pyarrow Table / RecordBatchReader or a polars DataFrame / Series (which
DuckDB reads without a copy), or a DuckDB relation made on the same connection.
Results come back as polars DataFrames.

Where the vault lives relative to the warehouse (DuckDB 2.0, checked in tests):
- a second connection to vault.duckdb and, in the same process, the warehouse
  connection ATTACHing it READ_ONLY cannot coexist ("unique file handle conflict");
- a connection of its own (`open_vault`) serves where values come as Arrow data;
- the warehouse connection can ATTACH the vault read-write (`attach`): then the vault
  functions take the warehouse connection, tokens are made from a relation over core
  tables without leaving DuckDB, and enforcement joins `vault.tokens` in SQL. One
  transaction may write to only one of the two files, so call `ensure_tokens` before
  (not inside) the enforcement transaction; reading `vault.tokens` inside it is fine;
- ATTACH ... READ_ONLY works when no connection in the process holds the vault for
  writing (e.g. analysts' read access, or a restore check).
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

from lethe.declaration.strategies import literal
from lethe.engine.ddl import ensure_vault
from lethe.engine.warehouse import connect as connect_file
from lethe.errors import LetheError

TOKEN_PREFIX = "tok_"
Rows = duckdb.DuckDBPyRelation | pa.Table | pa.RecordBatchReader | pl.DataFrame
Values = Iterable[str] | pa.Array | pa.ChunkedArray | pl.Series


class VaultError(LetheError):
    """The vault cannot be used as asked (missing columns, wrong file)."""


def open_vault(path: Path | str) -> duckdb.DuckDBPyConnection:
    """Open (or create, owner-only) the vault file and make sure its table exists.

    The file must be named vault.duckdb: its catalog is then `vault`, the name every
    vault statement uses, as it does when the file is attached AS vault.
    """
    path = Path(path)
    if path.name != "vault.duckdb":
        raise VaultError(f"{path}: the vault file must be named vault.duckdb")
    con = connect_file(path)
    ensure_vault(con)
    return con


def attach_sql(path: Path | str, *, read_only: bool = False) -> tuple[str, list[str]]:
    """The statement and parameters that ATTACH a vault file AS vault: `con.execute(*...)`.

    ATTACH creates a missing file with default permissions; `attach` avoids that.
    """
    mode = " (READ_ONLY)" if read_only else ""
    return f"ATTACH ? AS vault{mode}", [str(path)]


def attach(con: duckdb.DuckDBPyConnection, path: Path | str, *, read_only: bool = False) -> None:
    """Attach the vault to a (warehouse) connection AS vault, creating it owner-only first.

    No other connection in this process may have the vault file open (see module notes).
    """
    path = Path(path)
    if not path.exists():
        open_vault(path).close()
    con.execute(*attach_sql(path, read_only=read_only))
    if not read_only:
        ensure_vault(con)


def issue_tokens_sql(
    source: str, salt: str, now: dt.datetime, *, skip_conflicts: bool = False
) -> str:
    """The INSERT issuing tokens for the (kind, value) pairs of relation `source` (columns
    subject, kind, value) that have none yet, in DuckDB's dialect (rendered per engine).
    `skip_conflicts`: leave a pair that a concurrent writer issued meanwhile as it is (needs
    the unique index of `ensure_vault` on engines other than DuckDB).

    The token mixes `salt`, a per-call secret from the OS CSPRNG, into the engine's
    `gen_random_uuid()`, whose generator need not be cryptographic (DuckDB's is reset by
    setseed()): a token stays unpredictable even to someone who knows that state.
    """
    return f"""INSERT INTO vault.tokens (subject, kind, value, token, created_at)
        SELECT min(subject), kind, value,
               {literal(TOKEN_PREFIX)} || left(sha256({literal(salt)}
                   || CAST(gen_random_uuid() AS VARCHAR)), 32),
               CAST({literal(now.isoformat(sep=" "))} AS TIMESTAMP)
        FROM (SELECT CAST(subject AS VARCHAR) AS subject, CAST(kind AS VARCHAR) AS kind,
                     CAST(value AS VARCHAR) AS value
              FROM {source}) AS s
        WHERE kind IS NOT NULL AND value IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM vault.tokens AS t
                          WHERE t.kind = s.kind AND t.value = s.value)
        GROUP BY kind, value{" ON CONFLICT DO NOTHING" if skip_conflicts else ""}"""


def new_salt() -> tuple[str, dt.datetime]:
    """A fresh token salt and the issue time, for `issue_tokens_sql`."""
    return secrets.token_hex(32), dt.datetime.now(dt.UTC).replace(tzinfo=None)


def ensure_tokens(vault_con: duckdb.DuckDBPyConnection, rows: Rows) -> int:
    """Issue tokens for the (kind, value) pairs of `rows` that have none yet; idempotent.

    `rows` has columns subject, kind and value (any type, compared as text); rows with
    a NULL kind or value are skipped (NULL stays NULL). Where one value appears for
    several subjects, the smallest subject is recorded. Returns the number of tokens
    issued. One INSERT ... SELECT (`issue_tokens_sql`); existing pairs are skipped.
    """
    with _registered(vault_con, rows, ("subject", "kind", "value")) as src:
        result = vault_con.execute(issue_tokens_sql(src, *new_salt())).fetchall()
    return int(result[0][0]) if result else 0


def lookup(vault_con: duckdb.DuckDBPyConnection, kind: str, values: Values) -> pl.DataFrame:
    """The tokens of `values` of one kind, as a (value, token) frame to join on.

    Values without a token are simply absent (left-join and treat them as missing).
    """
    with _registered(vault_con, _column(values, "value"), ("value",)) as src:
        return vault_con.sql(
            f"""SELECT t.value, t.token FROM vault.tokens AS t
            WHERE t.kind = ? AND t.value IN (SELECT CAST(value AS VARCHAR) FROM {src})
            ORDER BY t.value""",
            params=[kind],
        ).pl()


def tokens_for(vault_con: duckdb.DuckDBPyConnection, rows: Rows) -> pl.DataFrame:
    """The tokens of the (kind, value) pairs in `rows`, as a (kind, value, token) frame.

    Like `lookup` for several kinds at once, e.g. right after `ensure_tokens` on the
    same rows; pairs without a token are absent.
    """
    with _registered(vault_con, rows, ("kind", "value")) as src:
        return vault_con.sql(
            f"""SELECT t.kind, t.value, t.token FROM vault.tokens AS t
            WHERE (t.kind, t.value) IN (SELECT (CAST(kind AS VARCHAR), CAST(value AS VARCHAR))
                                        FROM {src})
            ORDER BY t.kind, t.value"""
        ).pl()


def reidentify(vault_con: duckdb.DuckDBPyConnection, tokens: Values) -> pl.DataFrame:
    """The values behind `tokens`, as a (token, value) frame: for authorized access and restore.

    Tokens of forgotten subjects are absent: they no longer point to anyone.
    """
    with _registered(vault_con, _column(tokens, "token"), ("token",)) as src:
        return vault_con.sql(
            f"""SELECT t.token, t.value FROM vault.tokens AS t
            WHERE t.token IN (SELECT CAST(token AS VARCHAR) FROM {src})
            ORDER BY t.token"""
        ).pl()


def forget_subjects(vault_con: duckdb.DuckDBPyConnection, subjects: Values) -> int:
    """Delete the vault rows of these subjects, making their tokens anonymous; returns the count.

    The deleted values stay in the file's free pages until the caller compacts it.
    """
    with _registered(vault_con, _column(subjects, "subject"), ("subject",)) as src:
        result = vault_con.execute(
            f"""DELETE FROM vault.tokens
            WHERE subject IN (SELECT CAST(subject AS VARCHAR) FROM {src})"""
        ).fetchall()
    return int(result[0][0]) if result else 0


def _column(values: Values, name: str) -> pa.Table:
    """A one-column Arrow table from Arrow, polars or plain Python values."""
    if isinstance(values, pl.Series):
        return pa.table({name: values.to_arrow()})
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return pa.table({name: values})
    if isinstance(values, str):
        raise VaultError(f"expected a collection of {name}s, got one string")
    return pa.table({name: pa.array(list(values), pa.string())})


@contextmanager
def _registered(
    con: duckdb.DuckDBPyConnection, data: Rows, columns: tuple[str, ...]
) -> Iterator[str]:
    """Register `data` as a uniquely named view for one statement, then drop it."""
    view = f"_lethe_vault_{uuid.uuid4().hex}"
    con.register(view, data)
    try:
        # Binding reads the schema only, so a RecordBatchReader is still unread.
        present = con.sql(f"SELECT * FROM {view}").columns
        missing = [c for c in columns if c not in present]
        if missing:
            raise VaultError(f"vault input lacks column(s) {', '.join(missing)}")
        yield view
    finally:
        con.unregister(view)
