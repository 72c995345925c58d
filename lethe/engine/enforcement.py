"""Run retention enforcement: stage actions, issue vault tokens, rewrite, record.

One run = one atomic rewrite of the warehouse file (`lethe.engine.compaction`): every tagged
table is written from its enforcement SELECT, every other table copied, the ledger
entries appended, and the new file swapped in. So the warehouse is either entirely
before or entirely after a run, and no erased value survives in free blocks.
Running the same as-of date again finds nothing to do and changes nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from lethe.declaration.policy import Policy
from lethe.declaration.strategies import literal, quote
from lethe.engine.audit import LedgerEntry, append
from lethe.engine.compaction import Replacements, SameTable, compact
from lethe.engine.ddl import ensure_schemas, ledger_ddl
from lethe.engine.plan import Plan
from lethe.engine.retention import (
    TOKENS,
    changed_columns,
    enforcement_plan,
    pseudonym_columns,
    wanted_tokens_select,
)
from lethe.engine.tagging import tagged_tables
from lethe.engine.vault import TOKEN_PREFIX, attach, ensure_tokens
from lethe.engine.warehouse import connect, table_columns
from lethe.operations.home import Home
from lethe.rights.subject_keys import hash_gone_keys

REASONS = {
    "anonymize": "retention ended: no purpose keeps the row; anonymized",
    "delete": "retention ended: no purpose keeps the row; deleted",
    "pseudonymize": "only {purposes} keeps the row: identifiers pseudonymized",
    "retain": "columns no remaining purpose keeps",
}


@dataclass
class EnforcementResult:
    """Rows per table and action (`retain` counts only rows with changed columns)."""

    as_of: dt.date
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    ledger_entries: int = 0
    forgotten_tokens: int = 0

    def total(self, action: str) -> int:
        return sum(c.get(action, 0) for c in self.counts.values())


def stage_tokens(con: duckdb.DuckDBPyConnection, policy: Policy) -> None:
    """Issue vault tokens for every value about to be pseudonymized; expose them as _tokens.

    The vault is attached to the warehouse connection, so values never leave DuckDB.
    """
    con.execute(f"CREATE OR REPLACE TEMP TABLE _wanted AS {wanted_tokens_select(policy)}")
    ensure_tokens(con, con.table("_wanted"))
    con.execute(TOKENS_TABLE)
    con.execute("DROP TABLE _wanted")


# The tokens of the values about to be pseudonymized (temp table `_wanted`), as `_tokens`.
TOKENS_TABLE = (
    f"CREATE OR REPLACE TEMP TABLE {TOKENS} AS SELECT t.kind, t.value, t.token"
    " FROM vault.tokens t JOIN (SELECT DISTINCT kind, value FROM _wanted) w"
    " ON t.kind = w.kind AND t.value = w.value"
)


def forget_tokens_sql(policy: Policy) -> str:
    """The DELETE of the vault tokens no pseudonymized column of the warehouse holds."""
    # NULLs excluded: one NULL would make every `NOT IN` unknown and forget nothing. UNION
    # ALL: `NOT IN` needs no duplicate-free list, and removing duplicates costs a hash table.
    # Only values that look like tokens can be one: the others never reach that hash table.
    used = " UNION ALL ".join(
        f"SELECT v FROM (SELECT CAST({quote(p.column)} AS VARCHAR) AS v FROM core.{quote(table)})"
        f" WHERE starts_with(v, {literal(TOKEN_PREFIX)})"
        for table in tagged_tables(policy)
        for p in pseudonym_columns(policy, table)
    )
    return f"DELETE FROM vault.tokens WHERE token NOT IN ({used or 'SELECT NULL'})"


def _facts(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    """The rows of a ledger facts query (`ledger_select`), each key list an Arrow array:
    a first run's millions of keys never become Python strings."""
    facts = con.sql(sql).to_arrow_table()
    keys = facts.column(3).combine_chunks()
    rest = zip(*(facts.column(i).to_pylist() for i in (0, 1, 2, 4)), strict=True)
    return [
        (action, request, marks, keys[i].values, n)
        for i, (action, request, marks, n) in enumerate(rest)
    ]


def ledger_entries(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    plans: dict[str, tuple[list[str], Plan]],
    as_of: dt.date,
    run_id: str,
) -> tuple[list[LedgerEntry], dict[str, dict[str, int]]]:
    """The ledger entries of staged `plans` (from each plan's facts query, run on `con`)
    and the rows per table and action."""
    entries, counts = [], {}
    pseudo_names = ", ".join(p.name for p in policy.all_purposes().values() if p.pseudonymizes)
    for table, (columns, plan) in plans.items():
        rows = _facts(con, plan.statements[1])
        counts[table] = {}
        rules = policy.when_unkept[table].column
        # Few distinct marks, however many requests: decode each once.
        decoded = {m: changed_columns(columns, m) for m in {row[2] for row in rows}}
        for action, request, marks, keys, n in rows:
            changed = decoded[marks]
            counts[table][action] = counts[table].get(action, 0) + n
            if action == "retain":
                # One entry per strategy: the ledger names a single strategy per batch.
                by_strategy: dict[str, list[str]] = {}
                for col in changed:
                    by_strategy.setdefault(rules.for_column(col).name, []).append(col)
                batches = [("erase", name, cols) for name, cols in sorted(by_strategy.items())]
            else:
                batches = [(action, action, changed)]
            for ledger_action, strategy, cols in batches:
                entries.append(
                    LedgerEntry(
                        run_id=run_id,
                        as_of=as_of,
                        action=ledger_action,
                        table_name=table,
                        columns=cols,
                        keys=keys,
                        reason=f"erasure request {request}"
                        if request
                        else REASONS[action].format(purposes=pseudo_names),
                        strategy=strategy,
                        details={"rows": n},
                    )
                )
    return entries, counts


def enforce(
    home: Home,
    policy: Policy,
    as_of: dt.date,
    run_id: str,
    warehouse: Path | None = None,
) -> EnforcementResult:
    """Enforce `policy` as of `as_of` on the warehouse under `home`, atomically.

    `warehouse` overrides the file (restore enforces a decompressed backup before it is
    swapped in); the vault is always the one under `home`.
    """
    result = EnforcementResult(as_of)
    staged: list[LedgerEntry] = []

    def prepare(con: duckdb.DuckDBPyConnection) -> Replacements:
        ensure_schemas(con, policy.data_schema)
        plans = {}
        for table in tagged_tables(policy):
            columns = table_columns(con, "core", table)
            plans[table] = (columns, enforcement_plan(policy, table, columns, as_of))
        for _, plan in plans.values():
            con.execute(plan.statements[0])
        attach(con, home.vault)
        try:
            stage_tokens(con, policy)
        finally:
            con.execute("DETACH vault")
        entries, counts = ledger_entries(con, policy, plans, as_of, run_id)
        staged.extend(entries)
        result.counts = counts
        enforced: Replacements = {
            ("core", table): plan.statements[2] for table, (_, plan) in plans.items()
        }
        # The ledger is rewritten by its current definition: older warehouses migrate.
        ledger: Replacements = {
            ("audit", "ledger"): SameTable("SELECT * FROM audit.ledger", ledger_ddl())
        }
        # The keys of the subjects this rewrite anonymizes or deletes go with them.
        return enforced | ledger | hash_gone_keys(con, policy, enforced, TOKENS)

    def finish(con: duckdb.DuckDBPyConnection) -> None:
        append(con, staged)
        result.ledger_entries = len(staged)

    target = warehouse or home.warehouse
    compact(target, prepare=prepare, finish=finish)
    result.forgotten_tokens = forget_unused_tokens(target, home, policy)
    return result


def forget_unused_tokens(warehouse: Path, home: Home, policy: Policy) -> int:
    """Forget vault entries no row of the (already swapped-in) warehouse refers to any more.

    Runs after the swap, so a crash in between only delays it to the next run; the vault
    file is then compacted so the forgotten values leave no trace in it.
    """
    con = connect(warehouse)
    try:
        attach(con, home.vault)
        try:
            forgotten = con.execute(forget_tokens_sql(policy)).fetchone()[0]
            con.execute("CHECKPOINT vault")
            # Free blocks also remain after a crash between a delete and its compaction.
            free = con.execute(
                "SELECT free_blocks FROM pragma_database_size() WHERE database_name = 'vault'"
            ).fetchone()[0]
        finally:
            con.execute("DETACH vault")
    finally:
        con.close()
    if forgotten or free:
        compact(home.vault)
    return forgotten
