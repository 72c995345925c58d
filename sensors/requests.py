"""Sensor: a new data-subject request launches the pipeline, which carries it out."""

import dagster as dg
import duckdb

from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from lethe.operations.lock import LockedError, exclusive
from lethe.rights.requests import pending_request_ids
from pipelines.jobs import pipeline_job


@dg.sensor(
    job=pipeline_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING
)
def pending_requests_sensor(context: dg.SensorEvaluationContext):
    """Launches the pipeline when requests are pending that no run has picked up yet."""
    home = Home.from_env()
    if not home.warehouse.exists():
        return dg.SkipReason("no warehouse yet")
    # Read under the shared lock: while a run writes, even a read-only open would take
    # DuckDB's file lock from it, and a run starting now waits until the read is done.
    try:
        with exclusive(home.lock, shared=True):
            con = connect(home.warehouse, read_only=True)
            try:
                ids = pending_request_ids(con)
            finally:
                con.close()
    except LockedError:
        return dg.SkipReason("a run is in progress; retrying next tick")
    except duckdb.Error:
        return dg.SkipReason("the warehouse is busy (another process has it); retrying next tick")
    if not ids:
        return dg.SkipReason("no pending request")
    key = ",".join(ids)
    if key == context.cursor:
        return dg.SkipReason(f"{len(ids)} pending requests already launched")
    context.update_cursor(key)
    return dg.RunRequest(run_key=key, tags={"lethe/trigger": "requests"})
