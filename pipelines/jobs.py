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

# With subject shards (LETHE_SHARDS > 1): each shard runs the groups of its own subjects,
# then the top LETHE_HOME the groups that need every subject at once (k-anonymity over the
# union of the shards, the record of processing).
UNION_GROUPS = ("analytics", "compliance")
SHARD_JOB = "lethe_shard"
UNION_JOB = "lethe_union"
# Marks the runs that write the top LETHE_HOME of a sharded home: the run queue starts one
# at a time (pipelines.instance).
TOP_RUN_TAG = "lethe/top_home"

shard_job = dg.define_asset_job(
    SHARD_JOB,
    selection=dg.AssetSelection.groups(*(g for g in PIPELINE_GROUPS if g not in UNION_GROUPS)),
    description="One subject shard: ingest its landing files, tag, enforce, answer requests.",
    executor_def=dg.in_process_executor,
)

union_job = dg.define_asset_job(
    UNION_JOB,
    selection=dg.AssetSelection.groups(*UNION_GROUPS),
    description="Over the union of every shard: analysts' datasets and compliance documents.",
    executor_def=dg.in_process_executor,
    tags={TOP_RUN_TAG: "union"},
)
