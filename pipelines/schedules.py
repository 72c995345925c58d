"""The daily schedule: the pipeline evaluated as of the day it runs."""

import dagster as dg

from lethe.operations.shards import shard_names
from pipelines.jobs import pipeline_job, shard_job
from pipelines.resources import AS_OF_TAG, PolicyResource
from sensors.shards import BATCH_TAG, SHARDS_TAG


def daily_retention(policy: PolicyResource, shards: int = 1) -> dg.ScheduleDefinition:
    """Runs the whole pipeline every day at 02:00 UTC, as of that day, with `policy`'s file;
    with `shards` > 1, one run of each shard partition (the union follows them, see
    `sensors.shards`)."""

    @dg.schedule(
        name="daily_retention",
        job=pipeline_job if shards == 1 else shard_job,
        cron_schedule="0 2 * * *",
        execution_timezone="UTC",
        # Lethe exists to enforce on schedule: on unless someone turns it off in the UI.
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | list[dg.RunRequest]:
        """Runs the whole pipeline every day at 02:00 UTC, as of that day."""
        day = context.scheduled_execution_time.date().isoformat()
        # Run config replaces the resource's whole config: the policy file goes along.
        config = {"resources": {"policy": {"config": {"as_of": day, "path": policy.path}}}}
        if shards == 1:
            return dg.RunRequest(run_key=day, run_config=config, tags={AS_OF_TAG: day})
        names = shard_names(shards)
        batch = {AS_OF_TAG: day, BATCH_TAG: f"daily-{day}", SHARDS_TAG: ",".join(names)}
        return [
            dg.RunRequest(
                run_key=f"{day}/{name}", run_config=config, partition_key=name, tags=batch
            )
            for name in names
        ]

    return _schedule
