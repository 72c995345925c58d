"""The daily schedule: the pipeline evaluated as of the day it runs."""

import dagster as dg

from pipelines.jobs import pipeline_job
from pipelines.resources import AS_OF_TAG, PolicyResource


def daily_retention(policy: PolicyResource) -> dg.ScheduleDefinition:
    """Runs the whole pipeline every day at 02:00 UTC, as of that day, with `policy`'s file."""

    @dg.schedule(
        name="daily_retention",
        job=pipeline_job,
        cron_schedule="0 2 * * *",
        execution_timezone="UTC",
        # Lethe exists to enforce on schedule: on unless someone turns it off in the UI.
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        """Runs the whole pipeline every day at 02:00 UTC, as of that day."""
        day = context.scheduled_execution_time.date().isoformat()
        # Run config replaces the resource's whole config: the policy file goes along.
        config = {"as_of": day, "path": policy.path}
        return dg.RunRequest(
            run_key=day,
            run_config={"resources": {"policy": {"config": config}}},
            tags={AS_OF_TAG: day},
        )

    return _schedule
