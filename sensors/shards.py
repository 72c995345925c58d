"""Sensor: with subject shards, the union job once every shard run of a batch succeeded.

The daily schedule and the request sensor launch a batch of shard runs (one per shard
partition, each tagged with the batch and the shards it holds); when the last of them
succeeds, this sensor launches job `lethe_union` once for the batch (its run key), which
builds the union of the shards and the analytics and compliance documents over it. A
batch with a failed shard gets no union until that shard's run is re-executed and
succeeds (a re-execution keeps the run's tags).
"""

import dagster as dg

from pipelines.jobs import SHARD_JOB, shard_job, union_job
from pipelines.resources import AS_OF_TAG, PARTITION_TAG, SPLIT_TAG, PolicyResource

BATCH_TAG = "lethe/batch"
SHARDS_TAG = "lethe/batch_shards"


def shard_union(policy: PolicyResource) -> dg.RunStatusSensorDefinition:
    """The sensor launching the union job after a batch of shard runs, with `policy`'s
    file, as of the batch's date."""

    @dg.run_status_sensor(
        name="shard_union_sensor",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[shard_job],
        request_job=union_job,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(context: dg.RunStatusSensorContext):
        """Launches the union once every shard run of a batch has succeeded."""
        run = context.dagster_run
        if SPLIT_TAG in run.tags:
            return dg.SkipReason("`lethe run` builds its union itself")
        # A shard run launched alone (from the UI) is a batch of its own.
        batch = run.tags.get(BATCH_TAG, run.run_id)
        wanted = set(run.tags.get(SHARDS_TAG, run.tags.get(PARTITION_TAG, "")).split(","))
        done = {
            r.tags.get(PARTITION_TAG)
            for r in context.instance.get_runs(
                dg.RunsFilter(
                    job_name=SHARD_JOB,
                    tags={BATCH_TAG: batch} if BATCH_TAG in run.tags else None,
                    run_ids=None if BATCH_TAG in run.tags else [run.run_id],
                    statuses=[dg.DagsterRunStatus.SUCCESS],
                )
            )
        }
        missing = sorted(wanted - done)
        if missing:
            return dg.SkipReason(f"batch {batch}: shards {', '.join(missing)} not done yet")
        config = {"path": policy.path}
        tags = {BATCH_TAG: batch, "lethe/trigger": "shards"}
        if AS_OF_TAG in run.tags:
            config["as_of"] = run.tags[AS_OF_TAG]
            tags[AS_OF_TAG] = run.tags[AS_OF_TAG]
        return dg.RunRequest(
            run_key=batch,
            run_config={"resources": {"policy": {"config": config}}},
            tags=tags,
        )

    return _sensor
