"""The one Dagster entry point: assets, checks, jobs, schedules and resources, all built
from one policy and its schema, loaded once when the code location loads."""

import dagster as dg

from assets.compliance import compliance_assets
from assets.enforcement import ENFORCEMENT, enforcement_assets
from assets.ingest import ingest_assets
from assets.landing import landing_specs
from assets.metadata import core_key
from assets.operations import operations_assets
from assets.requests import request_assets
from assets.tagging import tagging_assets
from lethe.policy import Policy, load_policy
from pipelines.jobs import pipeline_job
from pipelines.resources import PolicyResource, WarehouseResource
from pipelines.schedules import daily_retention
from sensors.requests import pending_requests_sensor


def _analytics(policy: Policy) -> list[dg.AssetsDefinition]:
    """The analyst datasets whose source tables the policy's schema declares."""
    # Imported here: the module reads the default policy when imported, and a policy that
    # does not load must fail as a load error of the definitions, not of an import.
    from assets.analytics import analytics_assets

    known = {ENFORCEMENT, *(core_key(t) for t in policy.data_schema.tables)}
    return [
        a for a in analytics_assets if all(d.asset_key in known for s in a.specs for d in s.deps)
    ]


def build_definitions(policy: Policy) -> dg.Definitions:
    """The definitions describing `policy` and its schema; their runs apply that policy."""
    analytics = _analytics(policy)
    resource = PolicyResource.bound_to(policy)
    return dg.Definitions(
        assets=[
            *landing_specs(policy),
            *ingest_assets(policy),
            *request_assets(policy),
            *tagging_assets(policy),
            *operations_assets(policy),
            *enforcement_assets(policy),
            *analytics,
            *compliance_assets(policy, [a.key for a in analytics]),
        ],
        jobs=[pipeline_job],
        schedules=[daily_retention(resource)],
        sensors=[pending_requests_sensor],
        resources={"warehouse": WarehouseResource(), "policy": resource},
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The definitions of the policy LETHE_POLICY names (else the default policy)."""
    return build_definitions(load_policy())
