"""The pipeline job: ingest, tag and enforce, run in one process (DuckDB has one writer)."""

import dagster as dg

PIPELINE_JOB = "lethe_pipeline"

pipeline_job = dg.define_asset_job(
    PIPELINE_JOB,
    selection=dg.AssetSelection.groups(
        "ingest", "requests", "tagging", "enforcement", "backups", "analytics", "compliance"
    ),
    description="Ingest landing files, tag every row with its purposes, enforce retention,"
    " release the anonymized analyst datasets and the compliance documents.",
    executor_def=dg.in_process_executor,
)
