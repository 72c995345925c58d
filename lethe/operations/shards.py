"""Subject shards (SPEC "Engines and scale"): `LETHE_SHARDS=N` splits every table by a
stable hash of its subject's key, each shard its own LETHE_HOME under `shards/NN/`.

The hash is the first 32 bits of the MD5 of the key's text, modulo N: the same in SQL
(`shard_sql`) and Python (`shard_of`), and across DuckDB versions (DuckDB's `hash()` is not
stable). The top LETHE_HOME keeps the union of the shards' tables, read from their files
opened read-only, for what must see every subject at once (analysts' datasets with
k-anonymity over all subjects, the record of processing).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import duckdb

from lethe.declaration.policy import Policy
from lethe.declaration.schema import Schema
from lethe.declaration.strategies import quote
from lethe.engine.compaction import Replacements, compact
from lethe.engine.ddl import ensure_schemas
from lethe.engine.keyhash import read_secret
from lethe.engine.vault import open_vault
from lethe.engine.warehouse import connect, has_table, spill_directory
from lethe.errors import LetheError
from lethe.operations.home import Home
from lethe.operations.lock import exclusive
from lethe.rights.requests import RequestError
from lethe.rights.subjects import UnknownSubjectError, resolve_subject

SHARDS_ENV = "LETHE_SHARDS"
WORKERS_ENV = "LETHE_SHARD_WORKERS"
MAX_SHARDS = 100  # shard folders are named by two digits
# Schemas whose tables the top LETHE_HOME holds as the union of the shards' tables.
UNION_SCHEMAS = ("core", "requests")
# Where a re-shard builds the new layout, and the file that commits it.
RESHARD_STAGING = ".reshard"
RESHARD_COMMIT = "commit.json"


class ShardError(LetheError):
    """A shard setting or layout Lethe cannot use."""


def shard_count() -> int:
    """N from LETHE_SHARDS (unset or empty: 1)."""
    raw = os.environ.get(SHARDS_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_SHARDS:
        raise ShardError(f"{SHARDS_ENV}: {raw!r} is not a whole number from 1 to {MAX_SHARDS}")
    return int(raw)


def worker_count() -> int:
    """How many shards run at once: LETHE_SHARD_WORKERS, else the machine's cores."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return os.cpu_count() or 1
    if not raw.isdigit() or int(raw) < 1:
        raise ShardError(f"{WORKERS_ENV}: {raw!r} is not a whole number of at least 1")
    return int(raw)


def shard_name(index: int) -> str:
    return f"{index:02d}"


def shard_sql(key_text: str, n: int) -> str:
    """SQL for the shard name (`00`…) of the subject key whose text is `key_text`."""
    bucket = f"CAST('0x' || substr(md5({key_text}), 1, 8) AS UBIGINT) % {n}"
    return f"lpad(CAST({bucket} AS VARCHAR), 2, '0')"


def shard_of(key: str, n: int) -> str:
    """The shard name of the subject key `key` (as `shard_sql` computes it)."""
    return shard_name(int(hashlib.md5(key.encode("utf-8")).hexdigest()[:8], 16) % n)


def shard_names(n: int) -> list[str]:
    """The names of `n` shards: `00`, `01`, …"""
    return [shard_name(i) for i in range(n)]


def shard_homes(home: Home, n: int) -> list[Home]:
    """The LETHE_HOME of each of the `n` shards of `home`."""
    return [home.shard(name) for name in shard_names(n)]


@contextmanager
def _reading(shard: Home) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to a shard's warehouse under its shared lock (a run writing
    there is waited for as `lethe` waits for one on LETHE_HOME)."""
    with exclusive(shard.lock, shared=True):
        con = connect(shard.warehouse, read_only=True)
        try:
            yield con
        finally:
            con.close()


@contextmanager
def holding_shards(homes: list[Home], wait_seconds: float = 0) -> Iterator[None]:
    """The shards' LETHE_HOME locks, shared, for reading across shard files (a split, a
    union): no shard's run writes meanwhile, so each shard is read wholly before or wholly
    after a run of it."""
    with ExitStack() as stack:
        for shard in homes:
            stack.enter_context(exclusive(shard.lock, wait_seconds, shared=True))
        yield


def check_layout(home: Home, n: int) -> None:
    """Refuse a shard count that differs from the shards already under `home`, or a
    re-shard left half done: with shards, the top warehouse only holds their union, and a
    warehouse without shards holds every subject. `lethe run` re-shards
    (`lethe.operations.resharding`)."""
    if (home.root / RESHARD_STAGING / RESHARD_COMMIT).exists():
        raise ShardError(f"{home.root}: a re-shard was interrupted; `lethe run` completes it")
    present = [p.name for p in home.shards.iterdir()] if home.shards.is_dir() else []
    present = [p for p in present if p.isdigit()]
    if n > 1 and not present and home.warehouse.exists():
        raise ShardError(
            f"{SHARDS_ENV}={n}: {home.root} has an unsharded warehouse; `lethe run` moves"
            f" it into {n} shards"
        )
    if present and len(present) != n:
        raise ShardError(
            f"{SHARDS_ENV}={n}: {home.shards} has {len(present)} shards; `lethe run`"
            f" re-shards it to {n}"
        )


def share_key_secret(homes: list[Home]) -> None:
    """Give every shard's new vault the key secret of the first shard that has one (else
    of shard 00, created): a keyed hash of a gone subject's key then matches in whichever
    shard the subject is delivered again, also after a re-shard moved it."""
    missing = [h for h in homes if not h.vault.exists()]
    if not missing:
        return
    source = next((h for h in homes if h.vault.exists()), missing[0])
    secret = read_secret(source.vault)
    for shard in missing:
        if shard == source:
            continue
        con = open_vault(shard.vault)
        try:
            con.execute(
                "INSERT INTO vault.key_secret SELECT ?, now()"
                " WHERE NOT EXISTS (SELECT 1 FROM vault.key_secret)",
                [secret],
            )
        finally:
            con.close()


def check_sources(policy: Policy) -> None:
    """Shards split landing files; a table read from PostgreSQL cannot be split yet."""
    tables = [t.name for t in policy.data_schema.tables.values() if t.source.postgres]
    if tables:
        raise ShardError(
            f"{SHARDS_ENV}: table {tables[0]} is read from PostgreSQL; shards split landing"
            " files only (unset the variable)"
        )


@contextmanager
def scratch() -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory DuckDB with Lethe's spill folder, for work across shard files."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET temp_directory = ?", [str(spill_directory())])
        con.execute("SET memory_limit = ?", [os.environ.get("LETHE_MEMORY_LIMIT", "4GB")])
        yield con
    finally:
        con.close()


def attach_shards(con: duckdb.DuckDBPyConnection, homes: list[Home]) -> list[str]:
    """Attach every shard warehouse that exists, read-only (opening a file read-only leaves
    its bytes and modification time as they are), as `shard_NN`; their aliases."""
    aliases = []
    for shard in homes:
        if shard.warehouse.exists():
            alias = f"shard_{shard.root.name}"
            con.execute(f"ATTACH ? AS {alias} (READ_ONLY)", [str(shard.warehouse)])
            aliases.append(alias)
    return aliases


def build_union(home: Home, policy: Policy, n: int, wait_seconds: float = 0) -> dict[str, int]:
    """Replace the top warehouse's core and request tables by the union of the shards',
    so analysts' datasets and the record of processing see every subject; rows per core
    table. No shard's run writes meanwhile (waited for up to `wait_seconds`): each shard
    is read wholly before or wholly after its run.

    The top file is rewritten into a fresh file and swapped in (`compact`), as enforcement
    does: a union written over the old one would leave values the shards have erased
    since in the file's freed blocks.
    """
    homes = shard_homes(home, n)

    def union(con: duckdb.DuckDBPyConnection) -> Replacements:
        ensure_schemas(con, policy.data_schema)
        aliases = attach_shards(con, homes)
        if not aliases:
            return {}
        tables = con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables()"
            " WHERE database_name = ? AND schema_name IN ? ORDER BY ALL",
            [aliases[0], list(UNION_SCHEMAS)],
        ).fetchall()
        for schema_name, table in tables:
            # A table only the shards have yet (e.g. a request table) gets its columns here.
            con.execute(
                f"CREATE TABLE IF NOT EXISTS {schema_name}.{quote(table)} AS"
                f" SELECT * FROM {aliases[0]}.{schema_name}.{quote(table)} LIMIT 0"
            )
        return {
            (schema_name, table): " UNION ALL BY NAME ".join(
                f"SELECT * FROM {a}.{schema_name}.{quote(table)}" for a in aliases
            )
            for schema_name, table in tables
        }

    if not any(shard.warehouse.exists() for shard in homes):
        return {}
    with holding_shards(homes, wait_seconds):
        compact(home.warehouse, prepare=union)
    con = connect(home.warehouse, read_only=True)
    try:
        return {
            table: con.execute(f"SELECT count(*) FROM core.{quote(table)}").fetchone()[0]
            for (table,) in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'core' ORDER BY 1"
            ).fetchall()
        }
    finally:
        con.close()


def subject_shard(home: Home, schema: Schema, subject: str, n: int) -> Home:
    """The shard holding the subject given by key or e-mail, found with read-only looks:
    a key only in the shard its hash names, an e-mail address in every shard."""
    candidates = shard_homes(home, n)
    if "@" not in subject.strip():
        names = {shard_of(subject, n), shard_of(subject.strip(), n)}
        candidates = [h for h in candidates if h.root.name in names]
    found: list[Home] = []
    problem: UnknownSubjectError | None = None
    for shard in candidates:
        if not shard.warehouse.exists():
            continue
        with _reading(shard) as con:
            try:
                resolve_subject(con, schema, subject)
                found.append(shard)
            except UnknownSubjectError as exc:
                problem = exc
    if len(found) > 1:
        table = schema.subject_table
        raise UnknownSubjectError(
            f"--subject: {len(found)} {table.name} rows share that e-mail address;"
            f" give the {table.key}"
        )
    if not found:
        raise problem or UnknownSubjectError(
            f"--subject: no {schema.subject_table.name} row has that {schema.subject_table.key}"
        )
    return found[0]


def request_shard(home: Home, request_id: str, n: int) -> Home:
    """The shard holding request `request_id` (every shard looked at read-only)."""
    for shard in shard_homes(home, n):
        if not shard.warehouse.exists():
            continue
        with _reading(shard) as con:
            if (
                has_table(con, "requests", "requests")
                and con.execute(
                    "SELECT count(*) FROM requests.requests WHERE request_id = ?", [request_id]
                ).fetchone()[0]
            ):
                return shard
    raise RequestError(f"{request_id!r}: no such request")
