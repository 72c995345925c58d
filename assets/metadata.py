"""Compliance metadata shown in the Dagster UI, derived from the policy and table contract."""

from __future__ import annotations

from typing import Any

import dagster as dg

from lethe.catalog import after_retention, column_categories, retention_rules
from lethe.policy import Policy
from lethe.tables import TABLES
from lethe.warehouse import SQL_TYPES

OWNERS = ["team:privacy"]


def column_schema(table: str) -> dg.TableSchema:
    """The table's contract columns with their data category as a column tag."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=SQL_TYPES[c.type],
                description=c.description or None,
                tags={"data_category": c.category},
            )
            for c in TABLES[table].columns
        ]
    )


def table_metadata(policy: Policy, table: str) -> dict[str, Any]:
    """Static metadata of a core table: purposes, legal bases, retention, columns."""
    rules = retention_rules(policy, table)
    retention = "\n".join(f"- **{name}**: {text}" for name, text in rules.items())
    if table in policy.when_unkept:
        retention += f"\n\n{after_retention(policy, table)}"
    return {
        "dagster/column_schema": column_schema(table),
        "purposes": ", ".join(rules) or "none",
        "legal_bases": ", ".join(sorted({p.legal_basis for p in policy.purposes_for(table)})),
        "retention": dg.MetadataValue.md(retention),
        "data_categories": ", ".join(sorted(set(column_categories(table).values()))),
    }


def table_tags(policy: Policy, table: str) -> dict[str, str]:
    """Asset tags: one per purpose and legal basis, so the UI can filter by them."""
    tags = {f"purpose/{p.name}": "" for p in policy.purposes_for(table)}
    tags.update({f"legal_basis/{p.legal_basis}": "" for p in policy.purposes_for(table)})
    return tags
