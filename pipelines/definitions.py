"""The one Dagster entry point: assets, checks, jobs, schedules and resources, all built
from one policy and its schema, loaded once when the code location loads."""

import dagster as dg

from assets.analytics import analytics_assets
from assets.compliance import compliance_assets
from assets.enforcement import enforcement_assets
from assets.ingest import ingest_assets
from assets.landing import landing_specs, leftovers_asset
from assets.operations import operations_assets
from assets.requests import request_assets
from assets.tagging import tagging_assets
from lethe.declaration.policy import Policy, load_policy
from lethe.engine.postgres_warehouse import dsn_from_env
from lethe.operations.shards import shard_count
from pipelines.jobs import pipeline_job, shard_job, union_job
from pipelines.partitions import by_shard
from pipelines.resources import PolicyResource, WarehouseResource
from pipelines.schedules import daily_retention
from sensors.requests import pending_requests
from sensors.shards import shard_union


def build_definitions(policy: Policy) -> dg.Definitions:
    """The definitions describing `policy` and its schema; their runs apply that policy."""
    analytics = analytics_assets(policy)
    resource = PolicyResource.bound_to(policy)
    # On a PostgreSQL warehouse (LETHE_WAREHOUSE) tagging is part of enforcement's rewrite.
    postgres = dsn_from_env() is not None
    steps = [*ingest_assets(policy), *request_assets(policy), *operations_assets(policy)]
    if not postgres:
        steps += tagging_assets(policy)
    steps += enforcement_assets(policy, postgres)
    compliance = compliance_assets(policy, [a.key for a in analytics])
    if postgres:
        steps, analytics = _in_postgres(steps), _in_postgres(analytics)
        compliance = _in_postgres(compliance)
    return dg.Definitions(
        assets=[
            *landing_specs(policy),
            *by_shard([leftovers_asset(policy), *steps]),
            *analytics,
            *compliance,
        ],
        jobs=[pipeline_job, shard_job, union_job],
        schedules=[daily_retention(resource, shard_count())],
        sensors=[
            pending_requests(shard_count()),
            *([shard_union(resource)] if shard_count() > 1 else []),
        ],
        resources={"warehouse": WarehouseResource(), "policy": resource},
        # Every job, the UI's "Materialize all" included, runs in one process: DuckDB has one
        # writer, and a process per step would only add start-up time.
        executor=dg.in_process_executor,
    )


def _in_postgres(assets: list[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """`assets` as they run on a PostgreSQL warehouse: of kind `postgres`, not `duckdb`."""

    def kinds(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(
            kinds={"postgres" if k == "duckdb" else k for k in spec.kinds}
        )

    return [a.map_asset_specs(kinds) for a in assets]


@dg.definitions
def defs() -> dg.Definitions:
    """The definitions of the policy LETHE_POLICY names (else the default policy)."""
    return build_definitions(load_policy())
