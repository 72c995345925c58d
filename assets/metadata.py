"""Compliance metadata shown in the Dagster UI, derived from the policy and its schema."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg

from lethe.compliance.catalog import after_retention, purpose_facts, retention_rules
from lethe.compliance.table_status import EXPIRY_WINDOW, PurposeCount, TableStatus
from lethe.declaration.policy import LEGAL_BASIS_ARTICLE, Policy
from lethe.declaration.schema import Table
from lethe.engine.warehouse import SQL_TYPES

OWNERS = ["team:privacy"]

# (name, SQL type, data category, description) of a column shown in the UI.
ColumnInfo = tuple[str, str, str, str]
# Column → the (asset, column) pairs it is computed from.
LineageSources = Mapping[str, Iterable[tuple[dg.AssetKey, str]]]


def core_key(table: str) -> dg.AssetKey:
    """The asset of a core table as enforcement leaves it (materialized by enforcement)."""
    return dg.AssetKey(["core", table])


def ingest_key(table: str) -> dg.AssetKey:
    """The asset of a core table's ingest: the rows this run's delivery loaded into it."""
    return dg.AssetKey(["ingest", table])


def landing_key(table: str) -> dg.AssetKey:
    """The external asset of a landing file."""
    return dg.AssetKey(["landing", table])


def schema_of(columns: Iterable[ColumnInfo]) -> dg.TableSchema:
    """A column schema with each column's data category as a column tag."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=name,
                type=sql_type,
                description=description or None,
                tags={"data_category": category},
            )
            for name, sql_type, category, description in columns
        ]
    )


def column_schema(table: Table, headers: bool = False) -> dg.TableSchema:
    """The table's declared columns (or their source file's headers) with their type, data
    category as a column tag, and description (its English label when it has none)."""
    return schema_of(
        (
            c.header if headers else c.name,
            SQL_TYPES[c.type],
            c.category,
            c.description or c.label.get("en", ""),
        )
        for c in table.columns
    )


def lineage_metadata(sources: LineageSources) -> dict[str, Any]:
    """Column-level lineage: `dagster/column_lineage` and the same as a readable table.

    The structured entry is what Dagster (and Dagster+'s lineage graph) reads; the Markdown
    table shows a compliance officer in the open-source UI where each column comes from.
    """
    deps = {col: [dg.TableColumnDep(k, c) for k, c in src] for col, src in sources.items()}
    rows = "\n".join(
        f"| `{col}` | "
        + ", ".join(f"`{d.asset_key.to_user_string()}.{d.column_name}`" for d in ds)
        + " |"
        for col, ds in deps.items()
        if ds
    )
    return {
        "dagster/column_lineage": dg.TableColumnLineage(
            deps_by_column={col: ds for col, ds in deps.items() if ds}
        ),
        "column_lineage": dg.MetadataValue.md(f"| column | comes from |\n|---|---|\n{rows}"),
    }


def compliance_metadata(
    purposes: Mapping[str, str], retention: str, columns: Iterable[ColumnInfo] = ()
) -> dict[str, Any]:
    """Purposes, legal bases (with their article), retention in words, data categories."""
    columns = list(columns)
    bases = sorted(set(purposes.values()))
    out: dict[str, Any] = {
        "purposes": ", ".join(purposes) or "none",
        "legal_bases": ", ".join(bases),
        "legal_basis_articles": ", ".join(LEGAL_BASIS_ARTICLE[b] for b in bases),
        "retention": dg.MetadataValue.md(retention),
    }
    if columns:
        out["dagster/column_schema"] = schema_of(columns)
        out["data_categories"] = ", ".join(sorted({c[2] for c in columns}))
    return out


def compliance_tags(purposes: Mapping[str, str]) -> dict[str, str]:
    """Asset tags: one per purpose and legal basis, so the UI can filter by them."""
    return {
        **{f"purpose/{name}": "" for name in purposes},
        **{f"legal_basis/{basis}": "" for basis in purposes.values()},
    }


def table_compliance(policy: Policy, table: str, headers: bool = False) -> dict[str, Any]:
    """Purposes, legal bases, retention and the column schema of a declared table (of its
    source file's headers with `headers`)."""
    declared = policy.data_schema.tables[table]
    rules = retention_rules(policy, table)
    retention = "\n".join(f"- **{name}**: {text}" for name, text in rules.items())
    if table in policy.when_unkept:
        retention += f"\n\n{after_retention(policy, table)}"
    purposes = policy.purposes_for(table)
    if not purposes:  # the hold table: no purpose keeps the hold records; they serve the hold
        purposes = [policy.litigation_hold]
        retention = "No retention rule in the policy: hold records are kept as its evidence."
    return {
        "dagster/column_schema": column_schema(declared, headers),
        "purposes": ", ".join(p.name for p in purposes),
        "legal_bases": ", ".join(sorted({p.legal_basis for p in purposes})),
        "retention": dg.MetadataValue.md(retention),
        "data_categories": ", ".join(sorted({c.category for c in declared.columns})),
    }


def table_metadata(policy: Policy, table: str, ingest: bool = False) -> dict[str, Any]:
    """Static metadata of a core table: its compliance facts, and the lineage of each column
    from where it is read: the landing file's header (`ingest`), else the ingest asset."""
    declared = policy.data_schema.tables[table]
    sources = {
        c.name: [(landing_key(table), c.header) if ingest else (ingest_key(table), c.name)]
        for c in declared.columns
    }
    out = {
        **table_compliance(policy, table),
        "dagster/table_name": f"core.{table}",
        **lineage_metadata(sources),
    }
    if not ingest:
        out[PURPOSE_RULES] = purpose_rules(policy, table)
    return out


# Two tables, one row per purpose each: the counts, compact enough to read at a glance
# beside the legal basis, and the rules in words, whose long texts need the width.
_COUNTS = (
    ("purpose", "purpose", "string"),
    ("legal basis", "legal_basis", "string"),
    ("rows kept", "rows_kept", "int"),
    (f"expire in {EXPIRY_WINDOW.days} d", "rows_expiring", "int"),
    ("next expiry", "next_expiry", "string"),
)
_RULES = (
    ("purpose", "purpose", "string"),
    ("retention", "retention", "string"),
    ("columns kept", "columns_kept", "string"),
    ("afterwards", "afterwards", "string"),
)
PURPOSE_COUNTS = "purposes_now"
PURPOSE_RULES = "purposes_retention"


def _table(
    layout: tuple[tuple[str, str, str], ...], rows: list[dict[str, str | int]]
) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        [dg.TableRecord({heading: row[name] for heading, name, _ in layout}) for row in rows],
        dg.TableSchema(columns=[dg.TableColumn(h, kind) for h, _, kind in layout]),
    )


def purpose_rules(policy: Policy, table: str) -> dg.TableMetadataValue:
    """One row per purpose keeping the table: its retention in the policy's words, the
    columns it keeps and what happens to the rows when it ends."""
    return _table(_RULES, [vars(f) for f in purpose_facts(policy, table)])


def purpose_counts(
    policy: Policy, table: str, counts: Iterable[PurposeCount]
) -> dg.TableMetadataValue:
    """One row per purpose keeping the table: legal basis with its GDPR article, rows kept
    now, rows it stops keeping within the window and the next date one of them expires."""
    by_name = {c.purpose: c for c in counts}
    rows: list[dict[str, str | int]] = []
    for facts in purpose_facts(policy, table):
        count = by_name.get(facts.purpose)
        rows.append(
            {
                "purpose": facts.purpose,
                "legal_basis": facts.legal_basis,
                "rows_kept": count.rows_kept if count else 0,
                "rows_expiring": count.rows_expiring if count else 0,
                "next_expiry": _next_expiry(count),
            }
        )
    return _table(_COUNTS, rows)


def _next_expiry(count: PurposeCount | None) -> str:
    if count is None or not count.rows_kept:
        return "no rows"
    return count.next_expiry.isoformat() if count.next_expiry else "open-ended"


def status_metadata(policy: Policy, status: TableStatus) -> dict[str, Any]:
    """A core table's materialization after enforcement: the purpose tables (first, so the
    UI lists them first), its row count now and rows per state."""
    return {
        PURPOSE_COUNTS: purpose_counts(policy, status.table, status.by_purpose),
        PURPOSE_RULES: purpose_rules(policy, status.table),
        "dagster/row_count": status.rows,
        **{f"rows_{state}": n for state, n in status.by_state.items()},
    }


def all_purposes_metadata(policy: Policy) -> dict[str, Any]:
    """For assets acting on every purpose (tagging, enforcement): each purpose's retention
    and what happens to each table's values and rows after it."""
    retention = [
        f"- **{p.name}**: {p.retention.describe()}" for p in policy.all_purposes().values()
    ]
    retention += [f"- **{t}** afterwards: {after_retention(policy, t)}" for t in policy.when_unkept]
    return compliance_metadata(
        {p.name: p.legal_basis for p in policy.all_purposes().values()}, "\n".join(retention)
    )


def own_data_metadata(policy: Policy, what: str) -> dict[str, Any]:
    """Lethe's own data (`logs` or `backups`): why it is kept and for how long."""
    ops = policy.operations
    if what == "logs":
        return compliance_metadata(
            {"security_logging": "legitimate_interest"},
            f"Access log: {ops.access_log}. Export log: purged every {ops.export_log.every},"
            f" entries older than {ops.export_log.keep} once it holds more than"
            f" {ops.export_log.purge_when_over} (GDPR Art. 5(2), 32).",
        )
    return compliance_metadata(
        {"backup": "legitimate_interest"},
        f"Backups: {ops.backups}; a restore re-applies every later erasure before the data is"
        " visible (GDPR Art. 32(1)(c)).",
    )


def table_tags(policy: Policy, table: str) -> dict[str, str]:
    """Asset tags: one per purpose and legal basis, so the UI can filter by them."""
    return compliance_tags({p.name: p.legal_basis for p in policy.purposes_for(table)})
