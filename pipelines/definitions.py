"""The one Dagster entry point: assets, checks, jobs, schedules and resources."""

import dagster as dg

from assets.enforcement import retention_enforcement
from assets.ingest import ingest_assets
from assets.operations import log_retention, warehouse_backup
from assets.tagging import purpose_tags
from pipelines.jobs import pipeline_job
from pipelines.resources import PolicyResource, WarehouseResource
from pipelines.schedules import daily_retention

defs = dg.Definitions(
    assets=[*ingest_assets, purpose_tags, log_retention, retention_enforcement, warehouse_backup],
    jobs=[pipeline_job],
    schedules=[daily_retention],
    resources={"warehouse": WarehouseResource(), "policy": PolicyResource()},
)
