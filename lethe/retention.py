"""Retention enforcement plans: what each tagged row becomes once purposes end.

For every tagged table one SELECT decides, per row, an action from its fresh tags:

- `retain`: some purpose still keeps the row; each column no remaining purpose keeps
  gets the table's column rule (erase, truncate, prefix, keep);
- `pseudonymize`: only purposes that need the subject as a pseudonym remain (accounting):
  their `pseudonymizes` columns are replaced by vault tokens;
- `anonymize` / `delete`: no purpose keeps the row any more;
- `none`: already anonymized, nothing left to do.

A held contact's rows carry the `litigation_hold` purpose, which keeps every column, so
they stay exactly as they are. The plan also lists the columns each row changes, for
the audit ledger. Values never leave SQL; only keys and counts reach the ledger.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from lethe.plan import Plan
from lethe.policy import Policy, Purpose
from lethe.strategies import Erase, Pseudonymize, literal, quote
from lethe.tables import TABLES
from lethe.tagging import erasure_join, tag_select
from lethe.warehouse import SQL_TYPES

TOKENS = "_tokens"  # temp relation (kind, value, token) filled from the vault
TOKEN_PREFIX = "_token_"


@dataclass(frozen=True)
class PseudonymColumn:
    """A column replaced by a vault token; `kind` groups values that must join."""

    column: str
    kind: str


def _list(items: list[str]) -> str:
    return "[" + ", ".join(literal(i) for i in items) + "]" if items else "CAST([] AS VARCHAR[])"


def pseudonym_columns(policy: Policy, table: str) -> list[PseudonymColumn]:
    """Columns of `table` some purpose keeps only as pseudonyms, with their token kind."""
    cols: list[str] = []
    for p in policy.all_purposes().values():
        cols += [c for c in p.pseudonymizes.get(table, ()) if c not in cols]
    return [PseudonymColumn(c, TABLES[table].column(c).category) for c in cols]


def _pseudonymizing(policy: Policy, table: str) -> list[Purpose]:
    return [p for p in policy.all_purposes().values() if table in p.pseudonymizes]


def action_sql(policy: Policy, table: str) -> str:
    """SQL CASE choosing the action of a row of `x` (a tagged table)."""
    actions = policy.when_unkept[table]
    gone = "delete" if actions.row == "delete" else "anonymize"
    pseudo = _pseudonymizing(policy, table)
    pseudo_case = ""
    if pseudo:
        pseudo_case = (
            f" WHEN list_has_all({_list([p.name for p in pseudo])}, x._purposes)"
            " THEN 'pseudonymize'"
        )
    return (
        "CASE WHEN len(x._purposes) = 0 AND x._state = 'anonymized' THEN 'none'"
        f" WHEN len(x._purposes) = 0 THEN '{gone}'{pseudo_case} ELSE 'retain' END"
    )


def _keepers(policy: Policy, table: str, column: str | None) -> list[str]:
    """Purposes keeping `column` (None: an extra column, kept by purposes keeping all)."""
    width = len(TABLES[table].columns)
    return [
        p.name
        for p in policy.purposes_for(table)
        if ((column in p.keeps[table]) if column else len(p.keeps[table]) == width)
    ]


def keep_flag(keepers: list[str]) -> str:
    """Name of the per-row flag "some active purpose is one of `keepers`"."""
    return quote("_keep_" + "_".join(keepers)) if keepers else "false"


def keep_flags(policy: Policy, table: str, columns: list[str]) -> list[str]:
    """SELECT items computing each distinct keep flag once per row (not once per column)."""
    contract = set(TABLES[table].column_names)
    lists = {
        tuple(_keepers(policy, table, col if col in contract else None))
        for col in columns
        if not col.startswith("_")
    }
    return [
        f"list_has_any(x._purposes, {_list(list(k))}) AS {keep_flag(list(k))}"
        for k in sorted(lists)
        if k
    ]


def column_sql(policy: Policy, table: str, column: str, sql_type: str, contract: bool) -> str:
    """The new value of one column, by the row's `_action`."""
    actions = policy.when_unkept[table]
    c = f"x.{quote(column)}"
    kept = _keepers(policy, table, column if contract else None)
    # SPEC: a column the policy does not know is personal data until it says otherwise.
    rule = actions.column.for_column(column) if contract else Erase()
    retain = f"CASE WHEN x.{keep_flag(kept)} THEN {c} ELSE {rule.sql(c, sql_type)} END"
    anonymized_rule = (
        actions.anonymized_rules().for_column(column)
        if contract
        else actions.anonymized_rules().default
    )
    anonymized = anonymized_rule.sql(c, sql_type)
    pseudo = {p.column for p in pseudonym_columns(policy, table)}
    # A value that already is a token gets no token of its own (restricted rows are
    # pseudonymized again each run), so the joined token is missing and it stays.
    token = Pseudonymize().sql(f"x.{quote(TOKEN_PREFIX + column)}", sql_type)
    pseudonymized = (
        f"CASE WHEN x._state = 'pseudonymized' THEN {c} ELSE coalesce({token}, {c}) END"
        if column in pseudo
        else retain
    )
    return (
        f"CASE x._action WHEN 'anonymize' THEN {anonymized}"
        f" WHEN 'pseudonymize' THEN {pseudonymized}"
        f" WHEN 'none' THEN {c} ELSE {retain} END"
    )


def enforce_select(policy: Policy, table: str, columns: list[str], source: str) -> str:
    """The enforced rows of `source` (tagged rows with an `_action` column), plus ledger facts.

    Output: the table's `columns` with new values, `_old_key` (the key before
    anonymization), `_action`, `_request` (the erasure request behind it, if any) and
    `_changed` (the columns whose value changed).
    """
    spec = TABLES[table]
    contract = set(spec.column_names)
    exprs, changed = [], []
    for col in columns:
        if col == "_state":
            exprs.append(
                "CASE x._action WHEN 'anonymize' THEN 'anonymized'"
                " WHEN 'pseudonymize' THEN CASE WHEN x._state = 'restricted' THEN 'restricted'"
                " ELSE 'pseudonymized' END ELSE x._state END AS _state"
            )
            continue
        if col == "_retain_until":
            exprs.append(
                "CASE WHEN x._action = 'anonymize' THEN NULL ELSE x._retain_until END"
                " AS _retain_until"
            )
            continue
        if col.startswith("_"):
            exprs.append(f"x.{quote(col)}")
            continue
        sql_type = SQL_TYPES[spec.column(col).type] if col in contract else "VARCHAR"
        new = column_sql(policy, table, col, sql_type, col in contract)
        exprs.append(f"{new} AS {quote(col)}")
        changed.append(
            f"CASE WHEN x.{quote(col)} IS NOT NULL AND ({new}) IS DISTINCT FROM x.{quote(col)}"
            f" THEN [{literal(col)}] ELSE CAST([] AS VARCHAR[]) END"
        )
    pseudo = pseudonym_columns(policy, table)
    joins = "".join(
        f" LEFT JOIN {TOKENS} t{i} ON t{i}.kind = {literal(p.kind)}"
        f" AND t{i}.value = CAST(s.{quote(p.column)} AS VARCHAR)"
        for i, p in enumerate(pseudo)
    )
    token_cols = "".join(
        f", t{i}.token AS {quote(TOKEN_PREFIX + p.column)}" for i, p in enumerate(pseudo)
    )
    inner = f"SELECT s.*{token_cols} FROM {source} s{joins}"
    return (
        f"SELECT {', '.join(exprs)}, x.{quote(spec.key)} AS _old_key, x._action, x._request,"
        f" {' || '.join(changed) or 'CAST([] AS VARCHAR[])'} AS _changed"
        f" FROM ({inner}) x"
    )


def action_select(
    policy: Policy, table: str, columns: list[str], as_of: dt.date | dt.datetime
) -> str:
    """The rows of `core.<table>`, freshly tagged as of `as_of`, with the `_action` of each
    and its keep flags.

    Tagging is part of the same statement, so enforcement never acts on stale tags.
    """
    tagged = tag_select(policy, table, as_of, columns)
    flags = "".join(f", {f}" for f in keep_flags(policy, table, columns))
    return (
        f"SELECT x.*, {action_sql(policy, table)} AS _action, _er.request_id AS _request{flags}"
        f" FROM ({tagged}) x{erasure_join(table)}"
    )


def enforcement_plan(
    policy: Policy, table: str, columns: list[str], as_of: dt.date | dt.datetime
) -> Plan:
    """Statements that stage `_act_<table>` (tags and actions) and `_enf_<table>` (new rows)."""
    return Plan(
        f"enforce {table}",
        (
            f"CREATE OR REPLACE TEMP TABLE _act_{table} AS"
            f" {action_select(policy, table, columns, as_of)}",
            f"CREATE OR REPLACE TEMP TABLE _enf_{table} AS"
            f" {enforce_select(policy, table, columns, f'_act_{table}')}",
        ),
    )
