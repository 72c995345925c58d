"""Where Lethe's own tables hold a data subject's key, and how it leaves them.

Requests, the erasure register, the activity logs and the litigation holds name a subject
by its key while the subject is held; they must, to work. Once the subject is gone (its
row anonymized or deleted), `hash_gone_keys` replaces the key by its keyed hash
(`lethe.engine.keyhash`) in the enforcement rewrite that makes it gone, so the same
transaction erases the subject and its key, and no free page keeps it. The audit ledger
never holds a raw key at all (it hashes on append).

A restore brings back a backup in which the subject may still be held, and a source may
deliver an erased subject's row again: `reveal_keys` matches such subjects to the hashes
(hashing each of their keys in SQL) and puts the raw key back, so the erasure register,
restrictions and objections apply to those rows as before; the next enforcement rewrite
hashes them again.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from lethe.declaration.policy import Policy
from lethe.declaration.schema import Schema
from lethe.declaration.strategies import literal, quote
from lethe.engine.compaction import Replacements, SameTable
from lethe.engine.keyhash import MACRO, bind, is_hash_sql
from lethe.engine.states import RowState
from lethe.engine.vault import TOKEN_PREFIX
from lethe.engine.warehouse import has_table, table_columns

GONE = "_gone_keys"  # temp (key, hash) of the subjects a rewrite makes gone
ERASURES = ("requests", "erasures")
REQUESTS = ("requests", "requests")


def key_columns(policy: Policy) -> list[tuple[str, str, str]]:
    """(schema, table, column) of every column of Lethe's own tables that holds a subject's
    key: requests, the erasure register, the activity logs and the hold table's reference."""
    hold = policy.hold_table
    return [
        (*REQUESTS, "subject_key"),
        (*ERASURES, "subject_key"),
        ("audit", "access_log", "subject_key"),
        ("audit", "export_log", "subject_key"),
        ("core", hold, policy.data_schema.path_to_subject(hold)[0].column),
    ]


def subject_token_kinds(schema: Schema) -> list[str]:
    """Vault kinds of the tokens that can stand for a subject's key: the categories of the
    columns holding it (the subject's key, and each table's last reference on its way)."""
    subject = schema.subject_table
    kinds = {subject.column(subject.key).category}
    for name in schema.tables:
        path = schema.path_to_subject(name)
        if path:
            holder = schema.tables[path[-2].ref_table if len(path) > 1 else name]
            kinds.add(holder.column(path[-1].column).category)
    return sorted(kinds)


def _present(con: duckdb.DuckDBPyConnection, policy: Policy) -> list[tuple[str, str, str]]:
    return [c for c in key_columns(policy) if has_table(con, c[0], c[1])]


def _raw(expr: str) -> str:
    """SQL: `expr` (text) is a raw key: not NULL, not a keyed hash, not a vault token."""
    return (
        f"{expr} IS NOT NULL AND NOT {is_hash_sql(expr)}"
        f" AND NOT starts_with({expr}, {literal(TOKEN_PREFIX)})"
    )


@dataclass(frozen=True)
class KeyColumn:
    """A column of Lethe's own tables holding subjects' keys, as the warehouse has it."""

    schema: str
    table: str
    column: str
    columns: tuple[str, ...]  # the table's columns, in order
    text: bool  # whether the column can hold a keyed hash (an integer key cannot)


def hash_gone_keys(
    con: duckdb.DuckDBPyConnection, policy: Policy, replacements: Replacements, tokens: str
) -> Replacements:
    """Replacements for a rewrite (`lethe.engine.compaction`) that hash the keys of subjects
    the rewrite leaves without a row, wherever Lethe's own tables hold them.

    `replacements` must hold the subject table's enforced SELECT (its rows after the
    rewrite); `tokens` names a relation (kind, value, token) of the tokens the rewrite
    pseudonymizes with: those standing for an erased subject's key join the erasure
    register first, so its pseudonymized rows stay erased once the key is hashed.
    """
    subject = policy.data_schema.subject_table
    after = replacements[("core", subject.name)]
    after = after.select if isinstance(after, SameTable) else after
    present = [
        KeyColumn(s, t, c, tuple(table_columns(con, s, t)), _is_text(con, s, t, c))
        for s, t, c in _present(con, policy)
    ]
    bind(con)
    gone, out = gone_keys_sql(policy, after, present, tokens)
    con.execute(gone)
    return out


def gone_keys_sql(
    policy: Policy, after: str, present: list[KeyColumn], tokens: str
) -> tuple[str, dict[tuple[str, str], SameTable]]:
    """The statement (DuckDB's dialect, rendered for other engines) filling the temp table
    `_gone_keys` (key, hash) of the raw keys `present` holds whose subject has no row in
    `after` (the subject table's rows after the rewrite; `lethe_key_hash` bound), and per
    table the SELECT of its rows with those keys hashed (`hash_gone_keys`)."""
    subject = policy.data_schema.subject_table
    text = [
        f"SELECT CAST({quote(c.column)} AS VARCHAR) AS k FROM {c.schema}.{quote(c.table)}"
        for c in present
    ]
    # NOT EXISTS, not NOT IN: PostgreSQL runs NOT IN over a subquery larger than its
    # work_mem as a scan of the subject table per key held (minutes at a million subjects).
    gone = (
        f"CREATE OR REPLACE TEMP TABLE {GONE} AS SELECT held.k AS key, {MACRO}(held.k) AS hash"
        f" FROM ({' UNION '.join(text)}) held WHERE {_raw('held.k')}"
        f" AND NOT EXISTS (SELECT 1 FROM ({after}) a"
        f" WHERE CAST(a.{quote(subject.key)} AS VARCHAR) = held.k)"
    )
    out: dict[tuple[str, str], SameTable] = {}
    for key in present:
        schema, table, column = key.schema, key.table, key.column
        items = []
        # A key column that cannot hold text (an integer key) loses the gone key instead.
        hashed = "g.hash" if key.text else "NULL"
        for name in key.columns:
            if name == column:
                items.append(f"CASE WHEN g.key IS NULL THEN x.{quote(name)} ELSE {hashed} END")
            elif (schema, table, name) == (*REQUESTS, "answer"):
                # An answer names the subject's own rows, its subject-table row among them.
                items.append(
                    "CASE WHEN g.hash IS NULL THEN x.answer ELSE CAST(replace(CAST(x.answer"
                    " AS VARCHAR), to_json(g.key)::VARCHAR, to_json(g.hash)::VARCHAR) AS JSON) END"
                )
            else:
                items.append(f"x.{quote(name)}")
        select = (
            f"SELECT {', '.join(items)} FROM {schema}.{quote(table)} x"
            f" LEFT JOIN {GONE} g ON g.key = CAST(x.{quote(column)} AS VARCHAR)"
        )
        if (schema, table) == ERASURES:
            kinds = ", ".join(literal(k) for k in subject_token_kinds(policy.data_schema))
            select += (
                f" UNION ALL SELECT DISTINCT e.request_id, t.token, now() FROM {schema}.{table} e"
                f" JOIN {tokens} t ON t.kind IN ({kinds}) AND t.value = e.subject_key"
                f" WHERE t.token NOT IN (SELECT subject_key FROM {schema}.{table})"
            )
        out[(schema, table)] = SameTable(select)
    return gone, out


def _is_text(con: duckdb.DuckDBPyConnection, schema: str, table: str, column: str) -> bool:
    return con.execute(
        "SELECT data_type = 'VARCHAR' FROM information_schema.columns"
        " WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?"
        " AND column_name = ?",
        [schema, table, column],
    ).fetchone()[0]


def reveal_keys(con: duckdb.DuckDBPyConnection, policy: Policy, recent_only: bool = False) -> int:
    """Put the raw key back for every hash that stands for a subject held in `con`'s
    subject table (a restored backup, a subject delivered again); returns how many values
    changed. The raw key is in the subject's row already, so this exposes nothing new.

    Each held subject's key is hashed once, set-based; only then are the hashes matched.
    `recent_only` hashes only the rows loaded since the last rewrite that made subjects
    gone (with a day's margin): a row older than that was there when the hashes were
    made, so it is no gone subject's.
    """
    columns = _present(con, policy)
    # No hash held anywhere (no gone subject named): hashing every key would match nothing.
    if not columns or not con.execute(any_hash_sql(columns)).fetchone()[0]:
        return 0
    bind(con)
    recent = recent_only and has_table(con, "audit", "ledger")
    create, *updates, drop = reveal_keys_sql(policy, columns, recent)
    con.execute(create)
    changed = sum(con.execute(sql).fetchone()[0] for sql in updates)
    con.execute(drop)
    return changed


def any_hash_sql(columns: list[tuple[str, str, str]]) -> str:
    """SQL (DuckDB's dialect): how many keyed hashes the key `columns` hold."""
    held = " UNION ALL ".join(
        f"SELECT CAST({quote(c)} AS VARCHAR) AS k FROM {s}.{quote(t)}" for s, t, c in columns
    )
    return f"SELECT count(*) FROM ({held}) held WHERE {is_hash_sql('held.k')}"


def reveal_keys_sql(
    policy: Policy, columns: list[tuple[str, str, str]], recent_only: bool
) -> list[str]:
    """The statements of `reveal_keys` (DuckDB's dialect, `lethe_key_hash` bound): the temp
    table `_held_keys` (key, hash) of the subjects held, one UPDATE per key column (each
    returning its count), and the DROP of the temp table."""
    subject = policy.data_schema.subject_table
    key = f"CAST({quote(subject.key)} AS VARCHAR)"
    since = "true"
    if recent_only:
        since = (
            "_ingested_at IS NULL OR _ingested_at >= (SELECT coalesce(max(recorded_at),"
            " TIMESTAMP '1900-01-01') - INTERVAL 1 DAY FROM audit.ledger"
            " WHERE action IN ('anonymize', 'delete'))"
        )
    statements = [
        f"CREATE OR REPLACE TEMP TABLE _held_keys AS SELECT {key} AS key, {MACRO}({key}) AS hash"
        f" FROM core.{quote(subject.name)} WHERE {_raw(key)}"
        f" AND _state <> {RowState.ANONYMIZED.sql} AND ({since})"
    ]
    for schema, table, column in columns:
        name = f"{schema}.{quote(table)}"
        statements.append(
            f"UPDATE {name} SET {quote(column)} = h.key FROM _held_keys h"
            f" WHERE CAST({name}.{quote(column)} AS VARCHAR) = h.hash"
        )
    return [*statements, "DROP TABLE _held_keys"]
