"""The pipeline job: ingest, tag and enforce, run in one process (DuckDB has one writer)."""

import dagster as dg

PIPELINE_JOB = "lethe_pipeline"

# The asset groups in the order the pipeline runs them (landing files are external).
PIPELINE_GROUPS = (
    "ingest",
    "requests",
    "tagging",
    "enforcement",
    "core",
    "answers",
    "backups",
    "analytics",
    "compliance",
)

pipeline_job = dg.define_asset_job(
    PIPELINE_JOB,
    selection=dg.AssetSelection.groups(*PIPELINE_GROUPS),
    description="Ingest landing files, tag every row with its purposes, enforce retention,"
    " release the anonymized analyst datasets and the compliance documents.",
    executor_def=dg.in_process_executor,
)
