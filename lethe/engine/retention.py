"""Retention enforcement plans: what each tagged row becomes once purposes end.

For every tagged table one SELECT decides, per row, an action from its fresh tags:

- `retain`: some purpose still keeps the row; each column no remaining purpose keeps
  gets the table's column rule (erase, truncate, prefix, keep);
- `pseudonymize`: only purposes that need the subject as a pseudonym remain (accounting):
  their `pseudonymizes` columns are replaced by vault tokens;
- `anonymize` / `delete`: no purpose keeps the row any more;
- `none`: already anonymized, nothing left to do.

A held contact's rows carry the `litigation_hold` purpose, which keeps every column, so
they stay exactly as they are.

The plan of a table has three statements. The first stages only what decides each row
(rowid, fresh tags, action, keep flags) in a narrow temp table, not a copy of the rows.
Once the vault has tokens for the values to pseudonymize, the second groups the rows
that change by action and changed columns, for the audit ledger, and the third is the
enforced table that the rewrite of the warehouse file writes in one pass. Values never
leave SQL; only keys and counts reach the ledger.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from lethe.declaration.policy import Policy, Purpose
from lethe.declaration.strategies import Erase, Pseudonymize, literal, quote
from lethe.engine.plan import Plan
from lethe.engine.reach import reach
from lethe.engine.states import RowState
from lethe.engine.tagging import (
    FRESH_TAGS,
    MASK,
    mask_lists,
    purpose_bits,
    tag_select,
    tagged_tables,
)
from lethe.engine.warehouse import SQL_TYPES

TOKENS = "_tokens"  # temp relation (kind, value, token) filled from the vault
TOKEN_PREFIX = "_token_"


@dataclass(frozen=True)
class PseudonymColumn:
    """A column replaced by a vault token; `kind` groups values that must join."""

    column: str
    kind: str


def _value_columns(columns: list[str]) -> list[str]:
    """The columns holding data (contract and carried ones), not Lethe's tags."""
    return [c for c in columns if not c.startswith("_")]


def pseudonym_columns(policy: Policy, table: str) -> list[PseudonymColumn]:
    """Columns of `table` some purpose keeps only as pseudonyms, with their token kind."""
    cols: list[str] = []
    for p in policy.all_purposes().values():
        cols += [c for c in p.pseudonymizes.get(table, ()) if c not in cols]
    spec = policy.data_schema.tables[table]
    return [PseudonymColumn(c, spec.column(c).category) for c in cols]


def _pseudonymizing(policy: Policy, table: str) -> list[Purpose]:
    return [p for p in policy.all_purposes().values() if table in p.pseudonymizes]


def action_sql(policy: Policy, table: str) -> str:
    """SQL CASE choosing the action of a row of `x` (its fresh tags, purposes as `MASK`)."""
    actions = policy.when_unkept[table]
    gone = "delete" if actions.row == "delete" else "anonymize"
    pseudo = _pseudonymizing(policy, table)
    pseudo_case = ""
    if pseudo:
        # Every purpose keeping the row is one that keeps it only as a pseudonym.
        pseudo_bits = purpose_bits(policy, table, [p.name for p in pseudo])
        others = purpose_bits(policy, table) & ~pseudo_bits
        pseudo_case = f" WHEN (x.{MASK} & {others}) = 0 THEN 'pseudonymize'"
    return (
        f"CASE WHEN x.{MASK} = 0 AND x._state = {RowState.ANONYMIZED.sql} THEN 'none'"
        f" WHEN x.{MASK} = 0 THEN '{gone}'{pseudo_case} ELSE 'retain' END"
    )


def _keepers(policy: Policy, table: str, column: str | None) -> list[str]:
    """Purposes keeping `column` (None: an extra column, kept by purposes keeping all)."""
    width = len(policy.data_schema.tables[table].columns)
    return [
        p.name
        for p in policy.purposes_for(table)
        if ((column in p.keeps[table]) if column else len(p.keeps[table]) == width)
    ]


def _column_keepers(policy: Policy, table: str, column: str) -> list[str]:
    """Purposes keeping `column`, a contract or carried column of `table`."""
    declared = policy.data_schema.tables[table].column_names
    return _keepers(policy, table, column if column in declared else None)


def keep_flag(keepers: list[str]) -> str:
    """Column name of the per-row flag "some active purpose is one of `keepers`"."""
    return quote("_keep_" + "_".join(keepers))


def _kept(keepers: list[str]) -> str:
    """Whether the row `x` keeps a column these purposes keep (never, if there are none)."""
    return f"x.{keep_flag(keepers)}" if keepers else "false"


def _keeper_lists(policy: Policy, table: str, columns: list[str]) -> list[list[str]]:
    """The distinct non-empty lists of purposes keeping some data column of `columns`."""
    lists = {tuple(_column_keepers(policy, table, c)) for c in _value_columns(columns)}
    return [list(k) for k in sorted(lists) if k]


def keep_flags(policy: Policy, table: str, columns: list[str]) -> list[str]:
    """SELECT items computing each distinct keep flag once per row (not once per column)."""
    return [
        f"(x.{MASK} & {purpose_bits(policy, table, k)}) <> 0 AS {keep_flag(k)}"
        for k in _keeper_lists(policy, table, columns)
    ]


def _retained_sql(policy: Policy, table: str, column: str, sql_type: str, contract: bool) -> str:
    """The new value of one column of a row `x` some purpose still keeps: the column as
    it is if one of them keeps it, else the table's column rule applied."""
    c = f"x.{quote(column)}"
    kept = _kept(_column_keepers(policy, table, column))
    # SPEC: a column the policy does not know is personal data until it says otherwise.
    rule = policy.when_unkept[table].column.for_column(column) if contract else Erase()
    return f"CASE WHEN {kept} THEN {c} ELSE {rule.sql(c, sql_type)} END"


def column_sql(policy: Policy, table: str, column: str, sql_type: str, contract: bool) -> str:
    """The new value of one column, by the row's `_action`."""
    actions = policy.when_unkept[table]
    c = f"x.{quote(column)}"
    retain = _retained_sql(policy, table, column, sql_type, contract)
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
        f"CASE WHEN x._state = {RowState.PSEUDONYMIZED.sql} THEN {c}"
        f" ELSE coalesce({token}, {c}) END"
        if column in pseudo
        else retain
    )
    return (
        f"CASE x._action WHEN 'anonymize' THEN {anonymized}"
        f" WHEN 'pseudonymize' THEN {pseudonymized}"
        f" WHEN 'none' THEN {c} ELSE {retain} END"
    )


ROW_ID = "_rid"  # the core row an `_act_<table>` row stands for (its rowid)


def _acted(policy: Policy, table: str, columns: list[str]) -> str:
    """The staged rows of `core.<table>` joined with their `_act_<table>` (fresh tags,
    action, keep flags) and with the vault tokens of their pseudonymized columns
    (`_token_<column>`)."""
    # The staged mask becomes the purpose and legal-basis lists here, in the statement
    # that writes them.
    names, bases = mask_lists(policy, table, f"a.{MASK}")
    tags = {"_purposes": names, "_legal_bases": bases, "_retain_until": "a._retain_until"}
    tags["_state"] = "a._state"
    staged = [f"{v} AS {quote(c)}" for c, v in tags.items()]
    staged += ["a._action", "a._request"]
    staged += [f"a.{keep_flag(k)}" for k in _keeper_lists(policy, table, columns)]
    copied = [c for c in columns if c not in FRESH_TAGS]
    pseudo = pseudonym_columns(policy, table)
    # Only pseudonymized rows look their values up: the others join on NULL, which is cheap.
    joins = "".join(
        f" LEFT JOIN {TOKENS} t{i} ON t{i}.kind = {literal(p.kind)} AND t{i}.value ="
        f" CASE WHEN a._action = 'pseudonymize' THEN CAST(c.{quote(p.column)} AS VARCHAR) END"
        for i, p in enumerate(pseudo)
    )
    items = [f"c.{quote(col)}" for col in copied] + staged
    items += [f"t{i}.token AS {quote(TOKEN_PREFIX + p.column)}" for i, p in enumerate(pseudo)]
    return f"SELECT {', '.join(items)} FROM {_staged(table)}{joins}"


def _staged(table: str, every_row: bool = False) -> str:
    """`core.<table>` as `c` joined with its staged actions `_act_<table>` as `a` (a left
    join with `every_row`)."""
    join = "LEFT JOIN" if every_row else "JOIN"
    return f"core.{quote(table)} c {join} _act_{table} a ON c.rowid = a.{ROW_ID}"


def wanted_tokens_select(policy: Policy) -> str:
    """(subject, kind, value) of every value the staged actions pseudonymize and that has
    no token in the attached vault yet (a value that already is a token gets none)."""
    parts = []
    for table in tagged_tables(policy):
        # The vault records whose value it is, so an erasure can forget it.
        subject = reach(policy.data_schema, table, "c")
        for p in pseudonym_columns(policy, table):
            value = f"CAST(c.{quote(p.column)} AS VARCHAR)"
            parts.append(
                f"SELECT CAST({subject.subject} AS VARCHAR) AS subject, {literal(p.kind)} AS kind,"
                f" {value} AS value FROM {_staged(table)}{subject.joins}"
                " WHERE a._action = 'pseudonymize'"
                f" AND a._state <> {RowState.PSEUDONYMIZED.sql} AND {value} IS NOT NULL"
                f" AND {value} NOT IN (SELECT token FROM vault.tokens)"
            )
    return " UNION ".join(parts) or "SELECT NULL AS subject, NULL AS kind, NULL AS value"


def _new_values(policy: Policy, table: str, columns: list[str]) -> list[tuple[str, str]]:
    """(column, SQL of its value after enforcement) over `x`, a row of `_acted`."""
    spec = policy.data_schema.tables[table]
    contract = set(spec.column_names)
    out = []
    for col in columns:
        if col == "_state":
            new = (
                f"CASE x._action WHEN 'anonymize' THEN {RowState.ANONYMIZED.sql}"
                f" WHEN 'pseudonymize' THEN CASE WHEN x._state = {RowState.RESTRICTED.sql}"
                f" THEN {RowState.RESTRICTED.sql} ELSE {RowState.PSEUDONYMIZED.sql} END"
                " ELSE x._state END"
            )
        elif col == "_retain_until":
            new = "CASE WHEN x._action = 'anonymize' THEN NULL ELSE x._retain_until END"
        elif col.startswith("_"):
            new = f"x.{quote(col)}"
        else:
            sql_type = SQL_TYPES[spec.column(col).type] if col in contract else "VARCHAR"
            new = column_sql(policy, table, col, sql_type, col in contract)
        out.append((col, new))
    return out


def enforce_select(policy: Policy, table: str, columns: list[str]) -> str:
    """The rows `core.<table>` keeps after enforcement, with their new values, in the order
    of `columns` (deleted rows are left out).

    A row not staged is written as stored, with no expression evaluated over it: on a daily
    run that is nearly every row, so the rewrite costs about what a plain copy does.
    """
    values = ", ".join(f"{new} AS {quote(col)}" for col, new in _new_values(policy, table, columns))
    stored = ", ".join(f"c.{quote(col)}" for col in columns)
    return (
        f"SELECT {stored} FROM {_staged(table, every_row=True)} WHERE a.{ROW_ID} IS NULL"
        f" UNION ALL SELECT {values} FROM ({_acted(policy, table, columns)}) x"
        " WHERE x._action <> 'delete'"
    )


def ledger_select(policy: Policy, table: str, columns: list[str]) -> str:
    """What enforcement does to `core.<table>`, for the audit ledger: one row per action,
    erasure request and set of changed columns, with the keys (before anonymization) and
    the row count.

    `_changed` has one character per data column of `columns`, in order: '1' where the
    value changes. Rows that keep every column (retained by purposes keeping them all,
    or already anonymized) cannot change and are skipped before any value is computed.
    """
    values = dict(_new_values(policy, table, columns))
    data = _value_columns(columns)
    marks = " || ".join(
        f"CASE WHEN x.{quote(col)} IS NOT NULL AND ({values[col]}) IS DISTINCT FROM"
        f" x.{quote(col)} THEN '1' ELSE '0' END"
        for col in data
    )
    kept = dict.fromkeys(_kept(_column_keepers(policy, table, col)) for col in data)
    unchanged = " AND ".join(["x._action = 'retain'", *kept])
    key = quote(policy.data_schema.tables[table].key)
    return (
        "SELECT _action, _request, _changed, list(_old_key ORDER BY _old_key), count(*)"
        f" FROM (SELECT x._action, x._request, CAST(x.{key} AS VARCHAR) AS _old_key,"
        f" {marks or literal('')} AS _changed FROM ({_acted(policy, table, columns)}) x"
        f" WHERE x._action <> 'none' AND NOT ({unchanged}))"
        " WHERE _action = 'delete' OR contains(_changed, '1')"
        " GROUP BY ALL ORDER BY _action, _changed, _request"
    )


def changed_columns(columns: list[str], changed: str) -> list[str]:
    """The data columns a `_changed` mark of `ledger_select` names."""
    return [c for c, mark in zip(_value_columns(columns), changed, strict=True) if mark == "1"]


def action_select(
    policy: Policy, table: str, columns: list[str], as_of: dt.date | dt.datetime
) -> str:
    """Per row of `core.<table>` (by rowid): fresh tags as of `as_of`, the `_action`, the
    erasure request behind it and the keep flags.

    Tagging is part of the same statement, so enforcement never acts on stale tags. Only
    what decides the action is staged; the values are read again when the rows are written.
    A row that enforcement leaves exactly as stored (`_unchanged`) is not staged, unless an
    erasure request reaches it: on a daily run that is nearly every row, so the stage stays
    small and the rewrite copies those rows as they are.
    """
    spec = policy.data_schema.tables[table]
    # What the row's subject is reached by: its key and its references.
    links = [spec.key, *(fk.column for fk in spec.foreign_keys)]
    # And the values a purpose may not keep, to tell whether the rule changes them.
    checked = [c for c in _maybe_unkept(policy, table, columns) if c not in links]
    tagged = tag_select(
        policy,
        table,
        as_of,
        links + checked,
        row_id=ROW_ID,
        request="_request",
        mask=True,
        previous=True,
    )
    keepers = _keeper_lists(policy, table, columns)
    staged = [f"x.{ROW_ID}", f"x.{MASK}", "x._retain_until", "x._state", "x._action", "x._request"]
    staged += [f"x.{keep_flag(k)}" for k in keepers]
    carried = [f"x._was{tag}" for tag in FRESH_TAGS] + [f"x.{quote(c)}" for c in links + checked]
    flags = "".join(f", m.{keep_flag(k)}" for k in keepers)
    anonymized = f"coalesce(x._state = {RowState.ANONYMIZED.sql}, false)"
    decided = (
        f"SELECT x.{ROW_ID}, x.{MASK}, x._retain_until, x._state, m._action, x._request,"
        f" m._new_purposes, m._new_legal_bases{flags}, {', '.join(carried)} FROM ({tagged}) x"
        f" LEFT JOIN {_by_mask(policy, table, columns)} m"
        f" ON m.{MASK} = x.{MASK} AND m._anonymized = {anonymized}"
    )
    return (
        f"SELECT {', '.join(staged)} FROM ({decided}) x"
        f" WHERE x._request IS NOT NULL OR ({_unchanged(policy, table, columns)}) IS NOT TRUE"
    )


def _by_mask(policy: Policy, table: str, columns: list[str]) -> str:
    """What depends only on a row's purpose mask and on whether it is anonymized, one row
    per combination: the tag lists, the action and the keep flags.

    Joined to the rows by mask, these are computed once per combination instead of once
    per row; and the filter of `action_select`, which reads them many times, reads columns
    (DuckDB would otherwise copy the whole mask expression into it at every reference).
    """
    combinations = ", ".join(
        f"({m}, {state})"
        for m in range(1 << len(policy.purposes_for(table)))
        for state in ("NULL", RowState.ANONYMIZED.sql)
    )
    names, bases = mask_lists(policy, table, f"x.{MASK}")
    items = [
        f"x.{MASK}",
        "x._state IS NOT NULL AS _anonymized",
        f"{names} AS _new_purposes",
        f"{bases} AS _new_legal_bases",
        f"{action_sql(policy, table)} AS _action",
        *keep_flags(policy, table, columns),
    ]
    return f"(SELECT {', '.join(items)} FROM (VALUES {combinations}) x({MASK}, _state))"


def _maybe_unkept(policy: Policy, table: str, columns: list[str]) -> list[str]:
    """The data columns of `columns` that not every purpose of `table` keeps: a row some
    purpose keeps may lose them (`_retained_sql`)."""
    every = [p.name for p in policy.purposes_for(table)]
    return [c for c in _value_columns(columns) if _column_keepers(policy, table, c) != every]


def _unchanged(policy: Policy, table: str, columns: list[str]) -> str:
    """Whether enforcement writes the row `x` (fresh tags and action, keep flags, stored
    tags as `_was<tag>`, the fresh lists as `_new_purposes` and `_new_legal_bases`, the
    values of `_maybe_unkept`) exactly as it is stored: its tags are the same and its action
    changes no value (already anonymized, or each column kept or already as its rule makes
    it, pseudonyms included)."""
    same = [
        "x._was_purposes IS NOT DISTINCT FROM x._new_purposes",
        "x._was_legal_bases IS NOT DISTINCT FROM x._new_legal_bases",
        "x._was_retain_until IS NOT DISTINCT FROM x._retain_until",
        "x._was_state IS NOT DISTINCT FROM x._state",
    ]
    spec = policy.data_schema.tables[table]
    pseudo = {p.column for p in pseudonym_columns(policy, table)}

    def all_stay(cols: list[str]) -> str:
        # Most rows keep every column: the flags alone settle them, before any value is read.
        flags = dict.fromkeys(_kept(_column_keepers(policy, table, c)) for c in cols)
        stay = []
        for c in cols:
            contract = c in spec.column_names
            sql_type = SQL_TYPES[spec.column(c).type] if contract else "VARCHAR"
            new = _retained_sql(policy, table, c, sql_type, contract)
            stay.append(f"({new}) IS NOT DISTINCT FROM x.{quote(c)}")
        return f"(({' AND '.join(flags)}) OR ({' AND '.join(stay)}))" if cols else "true"

    maybe = _maybe_unkept(policy, table, columns)
    # A pseudonymized row keeps its tokens (`column_sql`); its other columns are retained.
    no_op = (
        "x._action = 'none'"
        f" OR (x._action = 'retain' AND {all_stay(maybe)})"
        f" OR (x._action = 'pseudonymize' AND x._state = {RowState.PSEUDONYMIZED.sql}"
        f" AND {all_stay([c for c in maybe if c not in pseudo])})"
    )
    return f"{' AND '.join(same)} AND ({no_op})"


def enforcement_plan(
    policy: Policy, table: str, columns: list[str], as_of: dt.date | dt.datetime
) -> Plan:
    """Stage `_act_<table>` (what each row becomes); then, once the vault tokens are in
    `_tokens`, the ledger facts and the enforced rows (`ledger_select`, `enforce_select`)."""
    return Plan(
        f"enforce {table}",
        (
            f"CREATE OR REPLACE TEMP TABLE _act_{table} AS"
            f" {action_select(policy, table, columns, as_of)}",
            ledger_select(policy, table, columns),
            enforce_select(policy, table, columns),
        ),
    )


def request_changes_select(policy: Policy, table: str, columns: list[str]) -> str:
    """What enforcement does to the rows of `core.<table>` an erasure request reaches, for
    carrying it back to the table's source: the request, the action, the key before
    enforcement, the new `_state`, and per contract column its new value (`_new_<col>`) and
    whether it changes (`_changes_<col>`, as `ledger_select` marks it). Needs the staged
    `_act_<table>` and `_tokens`, as `enforce_select` does."""
    values = dict(_new_values(policy, table, columns))
    spec = policy.data_schema.tables[table]
    items = [
        "x._request",
        "x._action",
        f"CAST(x.{quote(spec.key)} AS VARCHAR) AS _old_key",
        f"{values['_state']} AS _new_state",
    ]
    for col in (c for c in spec.column_names if c in values):
        old = f"x.{quote(col)}"
        items.append(f"{values[col]} AS {quote('_new_' + col)}")
        items.append(
            f"({old} IS NOT NULL AND ({values[col]}) IS DISTINCT FROM {old})"
            f" AS {quote('_changes_' + col)}"
        )
    return (
        f"SELECT {', '.join(items)} FROM ({_acted(policy, table, columns)}) x"
        " WHERE x._request IS NOT NULL AND x._action <> 'none'"
    )
