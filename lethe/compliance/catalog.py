"""Plain-words compliance facts about each table, derived from the policy and contract.

Used for asset descriptions and metadata in the UI and for the record of processing:
which purposes keep which columns, on which legal basis, for how long, and what
happens after.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lethe.declaration.policy import HOLD_PURPOSE, LEGAL_BASIS_ARTICLE, Policy, Purpose


def retention_rules(policy: Policy, table: str) -> dict[str, str]:
    """Purpose name → one sentence: legal basis, columns kept and retention."""
    out = {}
    width = len(policy.data_schema.tables[table].columns)
    for p in policy.purposes_for(table):
        cols = p.keeps[table]
        scope = "all columns" if len(cols) == width else ", ".join(cols)
        out[p.name] = (
            f"{LEGAL_BASIS_ARTICLE[p.legal_basis]}; keeps {scope}; for {p.retention.describe()}"
        )
    return out


def after_retention(policy: Policy, table: str) -> str:
    """What happens to the table's values and rows once no purpose keeps them."""
    actions = policy.when_unkept[table]
    if actions.row == "delete":
        return "Rows no purpose keeps are deleted."
    listed = actions.column.columns
    parts = [f"{col} {s.describe()}" for col, s in listed.items()]
    column_text = (
        f"Values no purpose keeps are {actions.column.default.describe()}"
        + (f" (except: {'; '.join(parts)})" if parts else "")
        + ". "
    )
    return (
        column_text
        + _pseudonymized(policy, table)
        + f"Rows no purpose keeps are {_gone(policy, table)}."
    )


def _pseudonymized(policy: Policy, table: str) -> str:
    """Which columns a purpose keeping the table's rows only as pseudonyms replaces."""
    return "".join(
        f"While only {p.name} keeps a row, {_names(p.pseudonymizes[table])} are"
        " replaced by vault tokens (pseudonymized). "
        for p in _pseudonymizers(policy, table)
    )


def _pseudonymizers(policy: Policy, table: str) -> list[Purpose]:
    return [p for p in policy.purposes_for(table) if p.pseudonymizes.get(table)]


def _gone(policy: Policy, table: str) -> str:
    """What becomes of a row no purpose keeps, in words."""
    actions = policy.when_unkept[table]
    if actions.row == "delete":
        return "deleted"
    anon = actions.anonymized_rules()
    anon_parts = [f"{col} {s.describe()}" for col, s in anon.columns.items()]
    return f"anonymized: every column {anon.default.describe()}" + (
        f" except {'; '.join(anon_parts)}" if anon_parts else ""
    )


def _names(columns: Iterable[str]) -> str:
    items = list(columns)
    return ", ".join(items[:-1]) + f" and {items[-1]}" if len(items) > 1 else "".join(items)


def _rules_in_words(policy: Policy, table: str, columns: Iterable[str]) -> str:
    """`a and b erased (set to NULL); c generalized to the year`: the table's rule for
    values no purpose keeps, grouped by what it does."""
    rules = policy.when_unkept[table].column
    groups: dict[str, list[str]] = {}
    for column in columns:
        groups.setdefault(rules.for_column(column).describe(), []).append(column)
    return "; ".join(f"{_names(cols)} {what}" for what, cols in groups.items())


@dataclass(frozen=True)
class PurposeFacts:
    """One purpose of one table in plain words, as the UI's purpose table shows it."""

    purpose: str
    legal_basis: str  # with its GDPR article
    columns_kept: str
    retention: str
    afterwards: str


def purpose_facts(policy: Policy, table: str) -> list[PurposeFacts]:
    """Every purpose keeping something of `table`: its legal basis and article, the columns
    it keeps, its retention in the policy's words and what happens when it ends."""
    width = len(policy.data_schema.tables[table].columns)
    if table == policy.hold_table:  # no purpose keeps the hold records: they serve the hold
        hold = policy.litigation_hold
        return [
            PurposeFacts(
                purpose=hold.name,
                legal_basis=LEGAL_BASIS_ARTICLE[hold.legal_basis],
                columns_kept="all columns",
                retention="No retention rule in the policy: hold records are kept as its evidence.",
                afterwards="The records stay after the hold is released.",
            )
        ]
    out = []
    for p in policy.purposes_for(table):
        cols = p.keeps[table]
        kept = "all columns" if len(cols) == width else ", ".join(cols)
        if p.pseudonymizes.get(table):
            kept += f"; as vault tokens: {', '.join(p.pseudonymizes[table])}"
        out.append(
            PurposeFacts(
                purpose=p.name,
                legal_basis=LEGAL_BASIS_ARTICLE[p.legal_basis],
                columns_kept=kept,
                retention=" ".join(p.description.split()),
                afterwards=_afterwards(policy, table, p),
            )
        )
    return out


def _afterwards(policy: Policy, table: str, purpose: Purpose) -> str:
    """What happens to the table's rows when `purpose` ends for them: for each other purpose
    that may still keep a row, what it does not keep of this purpose's columns, then what
    becomes of a row no purpose keeps."""
    if purpose.name == HOLD_PURPOSE:
        return "Once the hold is released, the other purposes' retention applies again."
    if table not in policy.when_unkept:
        return "No rule in the policy: the rows stay."
    parts = []
    for other in policy.purposes_for(table):
        if other.name in (purpose.name, HOLD_PURPOSE):
            continue
        tokens = [c for c in other.pseudonymizes.get(table, ()) if c in purpose.keeps[table]]
        rest = [c for c in purpose.keeps[table] if c not in other.keeps[table] and c not in tokens]
        said = ([f"{_names(tokens)} replaced by vault tokens"] if tokens else []) + (
            [_rules_in_words(policy, table, rest)] if rest else []
        )
        if said:
            parts.append(f"If only {other.name} keeps it: {'; '.join(said)}.")
    parts.append(f"With no purpose left: {_gone(policy, table)}.")
    return " ".join(parts)


def column_categories(policy: Policy, table: str) -> dict[str, str]:
    """Column name → data category of a table of the policy's schema (a Fides taxonomy key,
    e.g. `user.contact.email`)."""
    return {c.name: c.category for c in policy.data_schema.tables[table].columns}
