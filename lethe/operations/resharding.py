"""Re-sharding: moving a LETHE_HOME from one number of subject shards to another in one run.

When LETHE_SHARDS differs from the layout on disk (a one-warehouse home counts as one
shard), `lethe run` first moves every row to its subject's shard under the new count
(the stable hash of `lethe.operations.shards`), set-based: the old warehouses and vaults
are attached read-only to one DuckDB and each table is routed by one statement.

- Declared tables go by their subject's key, reached along the schema's references
  (`reach`; a pseudonymized reference by the subject its token was issued for); Lethe's
  own tables by their `subject_key` (the erasure register's rows of gone subjects, whose
  key is a keyed hash or a token, go to every shard: wherever such a subject is
  delivered again, it is erased again), a request's other tables by its request, the
  ingest log and the log purges to every shard (each new shard continues that history),
  what names no subject (quarantine, registers) to shard 00.
- Vault tokens go by the subject they were issued for; where two old shards issued
  tokens for one value and the new shard gets both, the earlier is kept and the rows of
  the shard use it. Every new vault gets the old layout's key secret (shard 00's), so the
  keyed hashes moved along still match.
- Request answers waiting under `exports/requests/` go with their request.
- The audit ledgers are not merged (each is its own hash chain): each old ledger is kept,
  read-only and verifiable, as `ledgers/<stamp>/<name>.duckdb` (keyed hashes and counts,
  never values), and each new warehouse's ledger starts with a `reshard` entry that
  counts the rows it received and names that folder.

The new layout is built under `.reshard/new/`; a commit file written atomically then
decides: a kill before it leaves the old layout (the next run throws the half-built one
away and starts again), a kill after it is completed by the next run, whose steps each
find where the last one stopped. The old layout is deleted once the new one is in place
(its backups too: they cannot be restored into the new layout), and the top warehouse
is rewritten as the union of the new shards, so no old file keeps a value.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb

from lethe.declaration.policy import Policy
from lethe.declaration.strategies import literal, quote
from lethe.engine.audit import LedgerEntry, append
from lethe.engine.compaction import fsync, user_tables
from lethe.engine.ddl import ensure_ledger, ensure_vault
from lethe.engine.keyhash import is_hash_sql
from lethe.engine.reach import reach
from lethe.engine.vault import TOKEN_PREFIX
from lethe.operations.home import Home
from lethe.operations.lock import exclusive
from lethe.operations.shards import (
    RESHARD_COMMIT as COMMIT,
)
from lethe.operations.shards import (
    RESHARD_STAGING as STAGING,
)
from lethe.operations.shards import (
    SHARDS_ENV,
    ShardError,
    build_union,
    check_sources,
    scratch,
    shard_homes,
    shard_name,
    shard_names,
    shard_sql,
)
from lethe.rights.exports import export_dir

LEDGERS = "ledgers"
REQUESTS = ("requests", "requests")
ERASURES = ("requests", "erasures")
# A shard's own history that each new shard continues: what it loaded (ingest skips a
# missing file of a table loaded before) and when it last purged its logs.
EVERY_SHARD = (("core", "ingest_log"), ("audit", "log_purges"))
FALLBACK = shard_name(0)  # where rows naming no subject go
_FILES = ("warehouse.duckdb", "warehouse.duckdb.wal", "vault.duckdb", "vault.duckdb.wal")


@dataclass(frozen=True)
class Resharding:
    """What a re-shard did: the shard counts, rows per new shard, the archive's folder."""

    before: int
    after: int
    rows: dict[str, int]
    ledgers: str


def staging(home: Home) -> Path:
    return home.root / STAGING


def committed(home: Home) -> dict | None:
    """The plan of a re-shard that was committed and not completed yet (None: none)."""
    path = staging(home) / COMMIT
    return json.loads(path.read_text()) if path.exists() else None


def current_shards(home: Home) -> int | None:
    """How many shards the home has on disk: the shard folders, else 1 for a one-warehouse
    home, else None (nothing loaded yet)."""
    present = [p.name for p in home.shards.iterdir()] if home.shards.is_dir() else []
    present = [p for p in present if p.isdigit()]
    if present:
        return len(present)
    return 1 if home.warehouse.exists() else None


def reshard(home: Home, policy: Policy, n: int, as_of: dt.date) -> Resharding | None:
    """Bring `home` to `n` shards when its layout differs (completing an interrupted
    re-shard first); None when there was nothing to move. Under the LETHE_HOME lock."""
    with exclusive(home.lock):
        plan = committed(home)
        if plan is not None:
            _complete(home, policy, plan)
        before = current_shards(home)
        if before is None or before == n:
            return _done(plan) if plan else None
        if n > 1:
            check_sources(policy)
        olds = [home] if before == 1 else shard_homes(home, before)
        waiting = [
            h for h in olds if before > 1 and h.landing.is_dir() and any(h.landing.iterdir())
        ]
        if waiting:
            raise ShardError(
                f"{SHARDS_ENV}={n}: {waiting[0].landing} has a delivery not loaded yet;"
                f" run with {SHARDS_ENV}={before} once, then change it"
            )
        with ExitStack() as stack:
            for old in olds if before > 1 else []:  # the top lock is held already
                stack.enter_context(exclusive(old.lock))
            plan = _build(home, policy, olds, n, as_of)
            _complete(home, policy, plan)
        return _done(plan)


def _done(plan: dict) -> Resharding:
    return Resharding(plan["before"], plan["after"], plan["rows"], plan["ledgers"])


def _build(home: Home, policy: Policy, olds: list[Home], n: int, as_of: dt.date) -> dict:
    """Write the new layout under `.reshard/new/` and commit it; the plan."""
    stage = staging(home)
    shutil.rmtree(stage, ignore_errors=True)  # a build killed before its commit
    new = stage / "new"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    before = 1 if olds == [home] else len(olds)
    archive = new / LEDGERS / f"{stamp}-from-{before}"
    archive.mkdir(parents=True, mode=0o700)
    targets = (
        [Home(new / "top")] if n == 1 else [Home(new / "shards" / name) for name in shard_names(n)]
    )
    with scratch() as con:
        warehouses = _attach(con, olds, "warehouse")
        vaults = _attach(con, olds, "vault")
        _route_tokens(con, vaults, n)
        tables = _route_tables(con, policy, warehouses, n)
        secret = _secret(con, vaults)
        entry = LedgerEntry(
            run_id=f"reshard-{stamp}",
            as_of=as_of,
            action="reshard",
            reason=f"re-sharded from {before} to {n} shards; earlier ledgers kept in"
            f" {LEDGERS}/{archive.name}",
        )
        rows = {
            target.root.name: _write_shard(
                con, tables, warehouses, target, shard_name(i), secret, entry
            )
            for i, target in enumerate(targets)
        }
        ledgers = [
            (w, "top" if before == 1 else old.root.name)
            for w, old in zip(warehouses, olds, strict=True)
        ]
        if before > 1 and n == 1 and home.warehouse.exists():
            # The top warehouse (the old shards' union) is replaced too.
            con.execute("ATTACH ? AS _old_top (READ_ONLY)", [str(home.warehouse)])
            ledgers.append(("_old_top", "top"))
        for alias, name in ledgers:
            if alias:
                _archive_ledger(con, alias, archive / f"{name}.duckdb")
        answers = _answer_shards(con, tables)
    _copy_answers(olds, targets, answers)
    plan = {"before": before, "after": n, "rows": rows, "ledgers": f"{LEDGERS}/{archive.name}"}
    _commit(stage, plan)
    return plan


def _attach(con: duckdb.DuckDBPyConnection, olds: list[Home], kind: str) -> list[str | None]:
    """Attach each old home's warehouse (or vault) read-only; the aliases (None: no file)."""
    aliases: list[str | None] = []
    for i, old in enumerate(olds):
        path = old.warehouse if kind == "warehouse" else old.vault
        if not path.exists():
            aliases.append(None)
            continue
        alias = f"_old_{kind}_{i}"
        con.execute(f"ATTACH ? AS {alias} (READ_ONLY)", [str(path)])
        aliases.append(alias)
    return aliases


def _routed(schema: str, table: str) -> str:
    return quote(f"_routed_{schema}_{table}")


def _route_tables(
    con: duckdb.DuckDBPyConnection, policy: Policy, warehouses: list[str | None], n: int
) -> list[tuple[str, str]]:
    """A temp table per warehouse table (the ledger aside): its rows over every old
    warehouse and `_shard`, the new shard of each row. The tables, in order."""
    present = [a for a in warehouses if a]
    found: dict[tuple[str, str], list[str]] = {}
    for alias in present:
        for schema, table in user_tables(con, alias):
            found.setdefault((schema, table), []).append(alias)
    found.pop(("audit", "ledger"), None)
    declared = policy.data_schema.tables
    con.execute("CREATE SCHEMA IF NOT EXISTS core")  # what `reach` joins: the old rows
    for (schema, table), aliases in found.items():
        union = " UNION ALL BY NAME ".join(
            f"SELECT * FROM {a}.{quote(schema)}.{quote(table)}" for a in aliases
        )
        if schema == "core" and table in declared:
            con.execute(f"CREATE OR REPLACE VIEW core.{quote(table)} AS {union}")
    # Requests first: a request's other tables follow it.
    order = sorted(found, key=lambda t: t != REQUESTS)
    for schema, table in order:
        union = " UNION ALL BY NAME ".join(
            f"SELECT * FROM {a}.{quote(schema)}.{quote(table)}" for a in found[(schema, table)]
        )
        columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM ({union})").fetchall()]
        target = _routed(schema, table)
        if schema == "core" and table in declared:
            r = reach(policy.data_schema, table, "x")
            # A pseudonymized reference is a token: its subject is the one it was issued for.
            shard = _shard_of(f"coalesce(_tok.subject, CAST({r.subject} AS VARCHAR))", n)
            select = (
                f"SELECT x.*, {shard} AS _shard FROM core.{quote(table)} x{r.joins}"
                " LEFT JOIN (SELECT token, any_value(subject) AS subject FROM _all_tokens"
                f" GROUP BY token) _tok ON _tok.token = CAST({r.subject} AS VARCHAR)"
            )
        elif (schema, table) in EVERY_SHARD:
            select = f"SELECT x.*, s._shard FROM ({union}) x, {_every_shard(n)}"
        elif "subject_key" in columns:
            shard = _shard_of("x.subject_key", n)
            select = f"SELECT x.*, {shard} AS _shard FROM ({union}) x"
            if (schema, table) == ERASURES:
                # A gone subject's key cannot be hashed to its shard: every shard keeps it.
                gone = (
                    f"coalesce({is_hash_sql('x.subject_key')}"
                    f" OR starts_with(x.subject_key, {literal(TOKEN_PREFIX)}), false)"
                )
                select = (
                    f"{select} WHERE NOT {gone} UNION ALL SELECT x.*, s._shard"
                    f" FROM ({union}) x, {_every_shard(n)} WHERE {gone}"
                )
        elif "request_id" in columns and (schema, table) != REQUESTS:
            select = (
                f"SELECT x.*, coalesce(r._shard, {literal(FALLBACK)}) AS _shard FROM ({union}) x"
                f" LEFT JOIN (SELECT request_id, any_value(_shard) AS _shard"
                f" FROM {_routed(*REQUESTS)} GROUP BY request_id) r USING (request_id)"
            )
        else:
            select = f"SELECT x.*, {literal(FALLBACK)} AS _shard FROM ({union}) x"
        con.execute(f"CREATE TEMP TABLE {target} AS {select}")
        if (schema, table) not in (*EVERY_SHARD, ERASURES):
            moved = con.execute(f"SELECT count(*) FROM {target}").fetchone()[0]
            old = con.execute(f"SELECT count(*) FROM ({union})").fetchone()[0]
            if moved != old:
                raise ShardError(
                    f"{schema}.{table}: {old} rows routed as {moved} (a reference that is no"
                    " key); nothing was moved"
                )
    return order


def _every_shard(n: int) -> str:
    """SQL: a relation `s` of the `n` shard names, as column `_shard` (to cross join)."""
    names = ", ".join(f"({literal(name)})" for name in shard_names(n))
    return f"(VALUES {names}) s(_shard)"


def _shard_of(key: str, n: int) -> str:
    """SQL: the new shard of the subject key `key` (shard 00 without one)."""
    return f"coalesce({shard_sql(f'CAST({key} AS VARCHAR)', n)}, {literal(FALLBACK)})"


def _route_tokens(con: duckdb.DuckDBPyConnection, vaults: list[str | None], n: int) -> None:
    """Temp `_routed_tokens` (the tokens each new vault keeps) and `_token_remap` (a
    token to replace, in a shard's rows, by the one kept for the same value)."""
    parts = [f"SELECT * FROM {a}.main.tokens" for a in vaults if a]
    if not parts:
        parts = [
            "SELECT NULL::VARCHAR AS subject, '' AS kind, '' AS value, '' AS token,"
            " NULL::TIMESTAMP AS created_at WHERE false"
        ]
    con.execute(
        f"CREATE TEMP TABLE _all_tokens AS SELECT t.*, {_shard_of('t.subject', n)} AS _shard"
        f" FROM ({' UNION ALL '.join(parts)}) t"
    )
    con.execute(
        "CREATE TEMP TABLE _routed_tokens AS SELECT * EXCLUDE (_rank) FROM (SELECT *,"
        " row_number() OVER (PARTITION BY _shard, kind, value ORDER BY created_at, token)"
        " AS _rank FROM _all_tokens) WHERE _rank = 1"
    )
    con.execute(
        "CREATE TEMP TABLE _token_remap AS SELECT a._shard, a.token AS old, k.token AS new"
        " FROM _all_tokens a JOIN _routed_tokens k USING (_shard, kind, value)"
        " WHERE a.token <> k.token"
    )


def _secret(con: duckdb.DuckDBPyConnection, vaults: list[str | None]) -> bytes:
    """The key secret every new vault gets: the first old vault's, else a new one."""
    for alias in vaults:
        if alias:
            rows = con.execute(f"SELECT secret FROM {alias}.main.key_secret").fetchall()
            if rows:
                return bytes(rows[0][0])
    return secrets.token_bytes(32)


def _write_shard(
    con: duckdb.DuckDBPyConnection,
    tables: list[tuple[str, str]],
    warehouses: list[str | None],
    target: Home,
    shard: str,
    secret: bytes,
    entry: LedgerEntry,
) -> int:
    """Write new shard `shard`'s warehouse and vault at `target`, its ledger starting
    with `entry` (its rows counted in); its rows."""
    target.ensure()
    present = [a for a in warehouses if a]
    ddl: dict[tuple[str, str], str] = {}
    for alias in present:
        for schema, table, sql in con.execute(
            "SELECT schema_name, table_name, sql FROM duckdb_tables() WHERE database_name = ?",
            [alias],
        ).fetchall():
            ddl.setdefault((schema, table), sql)
    remapped = con.execute(
        "SELECT count(*) FROM _token_remap WHERE _shard = ?", [shard]
    ).fetchone()[0]
    con.execute("ATTACH ? AS _new", [str(target.warehouse)])
    os.chmod(target.warehouse, 0o600)
    con.execute("USE _new")
    for schema in sorted({s for s, _ in ddl}):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
    ensure_ledger(con)
    total = 0
    for schema, table in tables:
        con.execute(ddl[(schema, table)])
        source = f"temp.main.{_routed(schema, table)}"
        items = []
        for name, kind, *_ in con.execute(
            f"DESCRIBE SELECT * EXCLUDE (_shard) FROM {source}"
        ).fetchall():
            column = f"x.{quote(name)}"
            if remapped and kind == "VARCHAR":
                # A token another old shard issued for the same value: the kept one.
                column = (
                    f"coalesce((SELECT m.new FROM temp.main._token_remap m WHERE m._shard ="
                    f" {literal(shard)} AND m.old = {column}), {column})"
                )
            items.append(f"{column} AS {quote(name)}")
        total += con.execute(
            f"INSERT INTO {quote(schema)}.{quote(table)} BY NAME SELECT {', '.join(items)}"
            f" FROM {source} x WHERE x._shard = ?",
            [shard],
        ).fetchone()[0]
    for (sql,) in con.execute(
        "SELECT DISTINCT sql FROM duckdb_indexes() WHERE database_name IN ? AND sql IS NOT NULL",
        [present],
    ).fetchall():
        con.execute(sql)
    append(con, [replace(entry, details={"rows": total, "tokens_merged": remapped})])
    con.execute("USE memory")
    con.execute("CHECKPOINT _new")
    con.execute("DETACH _new")
    con.execute("ATTACH ? AS vault", [str(target.vault)])
    os.chmod(target.vault, 0o600)
    ensure_vault(con)
    con.execute(
        "INSERT INTO vault.tokens SELECT subject, kind, value, token, created_at"
        " FROM _routed_tokens WHERE _shard = ?",
        [shard],
    )
    con.execute("INSERT INTO vault.key_secret VALUES (?, now())", [secret])
    con.execute("CHECKPOINT vault")
    con.execute("DETACH vault")
    return total


def _archive_ledger(con: duckdb.DuckDBPyConnection, alias: str, path: Path) -> None:
    """Copy the ledger of the attached warehouse `alias` into its own read-only file."""
    con.execute("ATTACH ? AS _archive", [str(path)])
    con.execute("USE _archive")
    ensure_ledger(con)
    if ("audit", "ledger") in user_tables(con, alias):
        con.execute(f"INSERT INTO audit.ledger SELECT * FROM {alias}.audit.ledger")
    con.execute("USE memory")
    con.execute("CHECKPOINT _archive")
    con.execute("DETACH _archive")
    os.chmod(path, 0o400)


def _answer_shards(con: duckdb.DuckDBPyConnection, tables: list[tuple[str, str]]) -> dict[str, str]:
    """The new shard of each request (request id: shard)."""
    if REQUESTS not in tables:
        return {}
    return dict(con.execute(f"SELECT request_id, _shard FROM {_routed(*REQUESTS)}").fetchall())


def _copy_answers(olds: list[Home], targets: list[Home], shards: dict[str, str]) -> None:
    """Copy the answers waiting in the old homes to their request's new home (a file per
    request, named `<request id>-<kind>.zip`)."""
    by_name = {shard_name(i): t for i, t in enumerate(targets)}
    for old in olds:
        folder = export_dir(old)
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            request_id = path.name.rsplit("-", 1)[0]
            target = export_dir(by_name.get(shards.get(request_id, FALLBACK), targets[0]))
            target.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copy2(path, target / path.name)


def _commit(stage: Path, plan: dict) -> None:
    """Write the commit file atomically: from here on the new layout is the home's."""
    for path in sorted(stage.rglob("*"), reverse=True):  # files, then their folders
        fsync(path)
    temporary = stage / f"{COMMIT}.tmp"
    temporary.write_text(json.dumps(plan, sort_keys=True))
    fsync(temporary)
    os.replace(temporary, stage / COMMIT)
    fsync(stage)


def _complete(home: Home, policy: Policy, plan: dict) -> None:
    """Put the committed new layout in place and delete the old one; each step finds
    where a killed run left it."""
    stage = staging(home)
    old, new = stage / "old", stage / "new"
    old.mkdir(exist_ok=True, mode=0o700)
    before, after = plan["before"], plan["after"]
    placed = not (new / ("top" if after == 1 else "shards")).exists()
    if not placed:
        _step_aside(home, old, new, before, after)
        _place(home, new, after)
    archive = new / plan["ledgers"]
    if archive.exists():
        (home.root / LEDGERS).mkdir(exist_ok=True, mode=0o700)
        os.replace(archive, home.root / plan["ledgers"])
    shutil.rmtree(old)
    if before == 1:
        shutil.rmtree(export_dir(home), ignore_errors=True)  # copied into the shards
    if after > 1:
        build_union(home, policy, after)
    fsync(home.root)
    (stage / COMMIT).unlink()
    shutil.rmtree(stage)


def _step_aside(home: Home, old: Path, new: Path, before: int, after: int) -> None:
    """Move the old layout into `old`: the shards, and the top files it replaces (those of
    them the new layout has not put in place yet)."""
    if home.shards.exists() and not (old / "shards").exists():
        os.replace(home.shards, old / "shards")
    if before == 1 or after == 1:
        for name in _FILES:
            if after == 1 and not (new / "top" / name).exists():
                continue
            if (home.root / name).exists():
                os.replace(home.root / name, old / name)
    fsync(home.root)


def _place(home: Home, new: Path, after: int) -> None:
    """Move the new layout from `new` into the home (the folder that marks it as not
    placed yet goes last)."""
    if after > 1:
        os.replace(new / "shards", home.shards)
        return
    top = Home(new / "top")
    if export_dir(top).is_dir():
        shutil.rmtree(export_dir(home), ignore_errors=True)
        home.exports.mkdir(exist_ok=True, mode=0o700)
        os.replace(export_dir(top), export_dir(home))
    for name in _FILES:  # the warehouse before the vault, each once its old one is aside
        if (top.root / name).exists():
            os.replace(top.root / name, home.root / name)
    shutil.rmtree(top.root)
