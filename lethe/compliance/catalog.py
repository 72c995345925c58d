"""Plain-words compliance facts about each table, derived from the policy and contract.

Used for asset descriptions and metadata in the UI and for the record of processing:
which purposes keep which columns, on which legal basis, for how long, and what
happens after.
"""

from __future__ import annotations

from lethe.declaration.policy import LEGAL_BASIS_ARTICLE, Policy


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
    anon = actions.anonymized_rules()
    anon_parts = [f"{col} {s.describe()}" for col, s in anon.columns.items()]
    return (
        column_text
        + f"Rows no purpose keeps are anonymized: every column {anon.default.describe()}"
        + (f" except {'; '.join(anon_parts)}" if anon_parts else "")
        + "."
    )


def column_categories(policy: Policy, table: str) -> dict[str, str]:
    """Column name → data category of a table of the policy's schema (a Fides taxonomy key,
    e.g. `user.contact.email`)."""
    return {c.name: c.category for c in policy.data_schema.tables[table].columns}
