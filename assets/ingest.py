"""Ingest assets (`ingest/<table>`): one per declared table, loading validated rows into
core.*; the `core/<table>` assets are the tables as enforcement leaves them.

A landing file that cannot be used does not fail the step: the refusal is reported by the
`landing_file_accepted` check (the launcher turns it into the run's error) and every later
step still runs, so one bad file never holds up tagging, enforcement or erasures.
"""

import dagster as dg

from assets.metadata import (
    OWNERS,
    column_schema,
    ingest_key,
    landing_key,
    table_metadata,
    table_tags,
)
from lethe.declaration.policy import Policy
from lethe.declaration.strategies import quote
from lethe.engine import postgres_warehouse
from lethe.engine.ingest import IngestError, IngestResult, ingest_table, waiting_rows
from pipelines.resources import PolicyResource, WarehouseResource

QUARANTINE_CHECK = "no_quarantined_rows"
ACCEPTED_CHECK = "landing_file_accepted"


def _build(policy: Policy, table_name: str) -> dg.AssetsDefinition:
    table = policy.data_schema.tables[table_name]
    file = table.source.file
    key = ingest_key(table_name)

    @dg.asset(
        key=key,
        group_name="ingest",
        deps=[landing_key(table_name), *(ingest_key(fk.ref_table) for fk in table.foreign_keys)],
        owners=OWNERS,
        kinds={"duckdb"},
        description=(
            f"core.{table_name}: {table.description} Loaded from landing/{file}.parquet"
            f" or .csv; rows that break the schema go to core.quarantine. Row counts here are"
            f" those after loading; core/{table_name} shows the table after enforcement."
        ),
        metadata=table_metadata(policy, table_name, ingest=True),
        tags=table_tags(policy, table_name),
        check_specs=[
            dg.AssetCheckSpec(
                QUARANTINE_CHECK,
                asset=key,
                description="No row of the table waits in core.quarantine (every delivered row"
                " passed validation, or loaded once its parent arrived).",
            ),
            dg.AssetCheckSpec(
                ACCEPTED_CHECK,
                asset=key,
                description="The landing file, if any, could be read (a refused file stays in"
                " landing/ and is named here).",
            ),
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
        refused = None
        landing, engine = warehouse.paths().landing, warehouse.postgres()
        # The enforcement rewrite that follows writes these rows into the new file.
        with warehouse.connect(defer_checkpoint=True) as con:
            try:
                if engine is not None:
                    result = postgres_warehouse.ingest_table(engine, landing, table_name, loaded)
                else:
                    result = ingest_table(con, landing, table_name, loaded)
            except IngestError as exc:
                refused = str(exc)
                waiting = waiting_rows(con, table_name)
                result = IngestResult(table_name, None, note="file refused", rows_waiting=waiting)
            rows = con.execute(f"SELECT count(*) FROM core.{quote(table_name)}").fetchone()[0]
        problems = "; ".join(f"{n} × {reason}" for reason, n in result.problems.items())
        context.log.info(
            f"{table_name}: read {result.rows_read}, loaded {result.rows_loaded},"
            f" quarantined {result.rows_quarantined}, loaded from quarantine"
            f" {result.rows_retried}, waiting {result.rows_waiting} {result.note}"
        )
        yield dg.MaterializeResult(
            metadata={
                "dagster/row_count": rows,
                "source_file": result.source_file or "none (no new file)",
                "rows_read": result.rows_read,
                "rows_loaded": result.rows_loaded,
                "rows_quarantined": result.rows_quarantined,
                "rows_loaded_from_quarantine": result.rows_retried,
                "rows_waiting_in_quarantine": result.rows_waiting,
                # The run's own record of the policy and schema it applied.
                "policy": loaded.source,
                "dagster/column_schema": column_schema(table),
            }
        )
        yield dg.AssetCheckResult(
            check_name=QUARANTINE_CHECK,
            passed=result.ok,
            description=_quarantine_description(result, problems),
            metadata={
                "rows_quarantined": result.rows_quarantined,
                "rows_waiting": result.rows_waiting,
                "problems": problems or "none",
            },
        )
        yield dg.AssetCheckResult(
            check_name=ACCEPTED_CHECK,
            passed=refused is None,
            description=refused or "no landing file refused",
        )

    return _asset


def _quarantine_description(result: IngestResult, problems: str) -> str:
    """Why the quarantine check fails: this delivery's bad rows, and all rows still waiting."""
    parts = []
    if result.rows_quarantined:
        parts.append(
            f"{result.source_file}: {result.rows_quarantined} rows quarantined ({problems});"
            f" e.g. {'; '.join(result.examples)}"
        )
    if result.rows_waiting:
        parts.append(f"{result.rows_waiting} rows waiting in core.quarantine")
    return "; ".join(parts) if parts else "no rows quarantined"


def ingest_assets(policy: Policy) -> list[dg.AssetsDefinition]:
    """One ingest asset per table the policy's schema declares, in load order."""
    return [_build(policy, name) for name in policy.data_schema.tables]
