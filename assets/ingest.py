"""Ingest assets: one per declared table, loading validated rows into core.*."""

import dagster as dg

from assets.metadata import (
    OWNERS,
    column_schema,
    core_key,
    landing_key,
    table_metadata,
    table_tags,
)
from lethe.ingest import IngestError, ingest_table
from lethe.policy import Policy
from lethe.strategies import quote
from pipelines.resources import PolicyResource, WarehouseResource

QUARANTINE_CHECK = "no_quarantined_rows"


def _build(policy: Policy, table_name: str) -> dg.AssetsDefinition:
    table = policy.data_schema.tables[table_name]
    file = table.source.file
    key = core_key(table_name)

    @dg.asset(
        key=key,
        group_name="ingest",
        deps=[landing_key(table_name), *(core_key(fk.ref_table) for fk in table.foreign_keys)],
        owners=OWNERS,
        kinds={"duckdb"},
        description=(
            f"core.{table_name}: {table.description} Loaded from landing/{file}.parquet"
            f" or .csv; rows that break the schema go to core.quarantine."
        ),
        metadata=table_metadata(policy, table_name),
        tags=table_tags(policy, table_name),
        check_specs=[
            dg.AssetCheckSpec(
                QUARANTINE_CHECK,
                asset=key,
                description="Every row of the landing file passed validation (none quarantined).",
            )
        ],
    )
    def _asset(
        context: dg.AssetExecutionContext,
        warehouse: WarehouseResource,
        policy: PolicyResource,
    ):
        loaded = policy.load()
        if loaded.data_schema.tables.get(table_name) != table:
            # The definitions were loaded from another policy or an older version of it.
            raise dg.Failure(
                description=f"{loaded.source}: does not declare table {table_name!r} as the"
                " loaded definitions do; reload the definitions"
            )
        try:
            with warehouse.connect() as con:
                result = ingest_table(con, warehouse.paths().landing, table_name, loaded)
                rows = con.execute(f"SELECT count(*) FROM core.{quote(table_name)}").fetchone()[0]
        except IngestError as exc:
            raise dg.Failure(description=str(exc)) from None
        problems = "; ".join(f"{n} × {reason}" for reason, n in result.problems.items())
        context.log.info(
            f"{table_name}: read {result.rows_read}, loaded {result.rows_loaded},"
            f" quarantined {result.rows_quarantined} {result.note}"
        )
        yield dg.MaterializeResult(
            metadata={
                "dagster/row_count": rows,
                "source_file": result.source_file or "none (no new file)",
                "rows_read": result.rows_read,
                "rows_loaded": result.rows_loaded,
                "rows_quarantined": result.rows_quarantined,
                # The run's own record of the policy and schema it applied.
                "policy": loaded.source,
                "dagster/column_schema": column_schema(table),
            }
        )
        yield dg.AssetCheckResult(
            check_name=QUARANTINE_CHECK,
            passed=result.ok,
            description=(
                f"{result.source_file}: {result.rows_quarantined} rows quarantined ({problems});"
                f" e.g. {'; '.join(result.examples)}; see core.quarantine"
                if not result.ok
                else "no rows quarantined"
            ),
            metadata={"rows_quarantined": result.rows_quarantined, "problems": problems or "none"},
        )

    return _asset


def ingest_assets(policy: Policy) -> list[dg.AssetsDefinition]:
    """One ingest asset per table the policy's schema declares, in load order."""
    return [_build(policy, name) for name in policy.data_schema.tables]
