"""The daily schedule: the pipeline evaluated as of the day it runs."""

import dagster as dg

from pipelines.jobs import pipeline_job


@dg.schedule(job=pipeline_job, cron_schedule="0 2 * * *", execution_timezone="UTC")
def daily_retention(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Runs the whole pipeline every day at 02:00 UTC, as of that day."""
    day = context.scheduled_execution_time.date().isoformat()
    return dg.RunRequest(
        run_key=day,
        run_config={"resources": {"policy": {"config": {"as_of": day}}}},
        tags={"lethe/as_of": day},
    )
