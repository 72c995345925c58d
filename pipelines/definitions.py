"""The one Dagster entry point: assets, checks, jobs, schedules and resources."""

import dagster as dg

from assets.ingest import ingest_assets
from assets.tagging import purpose_tags
from pipelines.jobs import pipeline_job
from pipelines.resources import PolicyResource, WarehouseResource
from pipelines.schedules import daily_retention

defs = dg.Definitions(
    assets=[*ingest_assets, purpose_tags],
    jobs=[pipeline_job],
    schedules=[daily_retention],
    resources={"warehouse": WarehouseResource(), "policy": PolicyResource()},
)
