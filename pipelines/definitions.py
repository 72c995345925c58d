"""The one Dagster entry point: assets, checks, jobs, schedules and resources."""

import dagster as dg

from assets.analytics import analytics_assets
from assets.compliance import compliance_assets
from assets.enforcement import retention_enforcement
from assets.ingest import ingest_assets
from assets.landing import landing_specs, leftovers
from assets.operations import log_retention, warehouse_backup
from assets.requests import request_answers, request_intake
from assets.tagging import purpose_tags
from pipelines.jobs import pipeline_job
from pipelines.resources import PolicyResource, WarehouseResource
from pipelines.schedules import daily_retention
from sensors.requests import pending_requests_sensor

defs = dg.Definitions(
    assets=[
        *landing_specs,
        leftovers,
        *ingest_assets,
        request_intake,
        purpose_tags,
        log_retention,
        retention_enforcement,
        request_answers,
        warehouse_backup,
        *analytics_assets,
        *compliance_assets,
    ],
    jobs=[pipeline_job],
    schedules=[daily_retention],
    sensors=[pending_requests_sensor],
    resources={"warehouse": WarehouseResource(), "policy": PolicyResource()},
)
