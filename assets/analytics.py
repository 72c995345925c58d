"""Analyst datasets: k-anonymous aggregates in analytics.* and exports/analytics/*.parquet,
one asset per dataset the policy declares (`analytics.datasets`)."""

from typing import Any

import dagster as dg

from assets.metadata import (
    OWNERS,
    compliance_metadata,
    compliance_tags,
    core_key,
    lineage_metadata,
)
from lethe.compliance import postgres_analytics
from lethe.compliance.analytics import SCHEMA, Dataset, check_k_anonymity, datasets, k_of, release
from lethe.declaration.policy import Policy
from pipelines.resources import PolicyResource, WarehouseResource

K_ANONYMITY = "k_anonymity"
ENFORCEMENT = dg.AssetKey(["core", "retention_enforcement"])


def analytics_key(dataset: Dataset) -> dg.AssetKey:
    return dg.AssetKey([SCHEMA, dataset.name])


def _lineage(dataset: Dataset) -> dict[str, Any]:
    return lineage_metadata(
        {col: [(core_key(t), c) for t, c in src] for col, src in dataset.lineage().items()}
    )


def _metadata(policy: Policy, dataset: Dataset) -> dict[str, Any]:
    an = policy.analytics
    sources = sorted({p.name for t in dataset.tables for p in policy.purposes_for(t)})
    retention = (
        "Rebuilt on every run from the enforced warehouse, so a value erased or anonymized in"
        " core leaves this dataset with the next run; the Parquet extract is replaced at the"
        f" same time. Every row aggregates at least k = {k_of(policy, dataset)} data subjects;"
        " smaller cells are generalized further or suppressed. Restricted rows, rows under"
        " litigation hold and pseudonymized (accounting-only) rows are left out. No"
        " identifiers and no tokens: anonymous information (GDPR Recital 26)."
    )
    return {
        **compliance_metadata(
            {an.purpose: an.legal_basis},
            retention,
            ((c.name, c.sql_type, c.category, c.description) for c in dataset.columns),
        ),
        "purpose_description": an.description,
        "source_purposes": ", ".join(sources),
        "quasi_identifiers": ", ".join(dataset.labels),
        "generalization_ladder": " → ".join(dataset.generalize) + " → suppressed",
        "dimension_ladders": "; ".join(
            f"{d.name}: " + " → ".join(str(s) for s in d.ladder)
            for d in dataset.declaration.dimensions.values()
        ),
        "dagster/table_name": f"{SCHEMA}.{dataset.name}",
        **_lineage(dataset),
    }


def _build(policy: Policy, dataset: Dataset) -> dg.AssetsDefinition:
    key = analytics_key(dataset)

    @dg.asset(
        key=key,
        group_name="analytics",
        deps=[ENFORCEMENT, *(core_key(t) for t in dataset.tables)],
        owners=OWNERS,
        kinds={"duckdb", "parquet", "sql"},
        description=(
            f"{SCHEMA}.{dataset.name}: {dataset.description} Built after retention"
            f" enforcement; the vault is never opened. Extract:"
            f" exports/analytics/{dataset.name}.parquet."
        ),
        metadata=_metadata(policy, dataset),
        tags=compliance_tags({policy.analytics.purpose: policy.analytics.legal_basis}),
        check_specs=[
            dg.AssetCheckSpec(
                K_ANONYMITY,
                asset=key,
                description="Every quasi-identifier combination is released once and counts at"
                " least k data subjects (k from the policy); only declared columns.",
            )
        ],
    )
    def _asset(
        context: dg.AssetExecutionContext, warehouse: WarehouseResource, policy: PolicyResource
    ):
        loaded = policy.load()
        # The run's policy decides what is released (the UI shows the one loaded here).
        declared = datasets(loaded).get(dataset.name)
        if declared is None:
            raise dg.Failure(f"{loaded.source}: analytics.datasets.{dataset.name}: not declared")
        home, as_of, k = warehouse.paths(), policy.as_of_date(), k_of(loaded, declared)
        engine = warehouse.postgres()
        if engine is not None:
            result = postgres_analytics.release(engine, home, loaded, declared, as_of)
            check = postgres_analytics.check_k_anonymity(engine, declared, k)
        else:
            with warehouse.connect() as con:
                result = release(con, home, loaded, declared, as_of=as_of)
                check = check_k_anonymity(con, declared, k)
        suppressed = (
            f"{result.suppressed} of {result.records} records suppressed"
            f" ({result.suppressed_share:.2%}) in {result.suppressed_cells} cells"
        )
        context.log.info(f"{dataset.name}: {result.rows} rows; {suppressed}")
        yield dg.MaterializeResult(
            metadata={
                "dagster/row_count": result.rows,
                "k": result.k,
                "records": result.records,
                "generalized_records": result.generalized,
                "generalized_share": dg.MetadataValue.float(round(result.generalized_share, 4)),
                "suppressed_records": result.suppressed,
                "suppressed_share": dg.MetadataValue.float(round(result.suppressed_share, 4)),
                "suppressed_cells": result.suppressed_cells,
                "excluded_rows": result.excluded,
                "min_subjects_per_row": result.min_subjects or 0,
                "extract": dg.MetadataValue.path(str(result.path)),
                **_lineage(declared),
            }
        )
        yield dg.AssetCheckResult(
            check_name=K_ANONYMITY,
            passed=check.passed,
            description=f"{check.describe()}; {suppressed}",
            metadata={
                "k": check.k,
                "rows_below_k": check.violations,
                "repeated_combinations": check.duplicates,
                "min_subjects_per_row": check.min_subjects or 0,
                "suppressed_records": result.suppressed,
            },
        )

    return _asset


def analytics_assets(policy: Policy) -> list[dg.AssetsDefinition]:
    """One asset per analysts' dataset the policy declares."""
    return [_build(policy, d) for d in datasets(policy).values()]
