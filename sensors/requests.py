"""Sensor: a new data-subject request launches the pipeline, which carries it out; with
subject shards (LETHE_SHARDS > 1), a run of the shard partition holding it."""

import hashlib

import dagster as dg
import duckdb
import psycopg

from lethe.engine.postgres_warehouse import WarehouseError, describe, dsn_from_env, open_engine
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from lethe.operations.lock import LockedError, exclusive
from lethe.operations.shards import shard_homes
from lethe.rights.postgres_requests import pending_ids
from lethe.rights.requests import pending_request_ids
from lethe.sources.postgres import reason
from pipelines.jobs import PIPELINE_JOB, SHARD_JOB, pipeline_job, shard_job
from sensors.shards import BATCH_TAG, SHARDS_TAG

TRIGGER = {"lethe/trigger": "requests"}


def _pending(home: Home) -> list[str] | dg.SkipReason:
    """Ids of the pending requests in `home`'s warehouse, or why they cannot be read now."""
    # Read under the shared lock: while a run writes, even a read-only open would take
    # DuckDB's file lock from it, and a run starting now waits until the read is done.
    try:
        with exclusive(home.lock, shared=True):
            con = connect(home.warehouse, read_only=True)
            try:
                return pending_request_ids(con)
            finally:
                con.close()
    except LockedError:
        return dg.SkipReason("a run is in progress; retrying next tick")
    except duckdb.Error:
        return dg.SkipReason("the warehouse is busy (another process has it); retrying next tick")


def pending_requests(shards: int) -> dg.SensorDefinition:
    """The sensor launching runs for pending requests: of the pipeline job, or with
    `shards` > 1 of the shard job's partitions that hold them (requests live in their
    subject's shard), as one batch the union follows (`sensors.shards`)."""

    @dg.sensor(
        name="pending_requests_sensor",
        jobs=[pipeline_job] if shards == 1 else [shard_job],
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(context: dg.SensorEvaluationContext):
        """Launches the pipeline when requests are pending that no run has picked up yet."""
        home = Home.from_env()
        dsn = dsn_from_env()
        if dsn:
            ids = _pending_in_postgres(dsn)
            if isinstance(ids, dg.SkipReason):
                return ids
            return _launch(context, {home.root.name: ids})
        homes = [home] if shards == 1 else shard_homes(home, shards)
        homes = [h for h in homes if h.warehouse.exists()]
        if not homes:
            return dg.SkipReason("no warehouse yet")
        pending: dict[str, list[str]] = {}
        for where in homes:
            ids = _pending(where)
            if isinstance(ids, dg.SkipReason):
                return ids
            if ids:
                pending[where.root.name] = ids
        return _launch(context, pending, shards)

    return _sensor


def _launch(
    context: dg.SensorEvaluationContext, pending: dict[str, list[str]], shards: int = 1
) -> dg.SkipReason | dg.RunRequest | list[dg.RunRequest]:
    """The runs for the pending request ids by home (one home without shards), unless
    the sensor launched them already (its cursor)."""
    pending = {name: ids for name, ids in pending.items() if ids}
    if not pending:
        return dg.SkipReason("no pending request")
    count = sum(len(ids) for ids in pending.values())
    if shards == 1:
        (key,) = (",".join(ids) for ids in pending.values())
    else:
        key = ",".join(f"{s}:{i}" for s, ids in sorted(pending.items()) for i in ids)
    if key == context.cursor:
        return dg.SkipReason(f"{count} pending requests already launched")
    context.update_cursor(key)
    if shards == 1:
        return dg.RunRequest(run_key=key, job_name=PIPELINE_JOB, tags=TRIGGER)
    batch = {
        BATCH_TAG: f"requests-{hashlib.sha256(key.encode()).hexdigest()[:16]}",
        SHARDS_TAG: ",".join(sorted(pending)),
    }
    return [
        dg.RunRequest(
            run_key=f"{shard}:{','.join(ids)}",
            job_name=SHARD_JOB,
            partition_key=shard,
            tags={**TRIGGER, **batch},
        )
        for shard, ids in sorted(pending.items())
    ]


def _pending_in_postgres(dsn: str) -> list[str] | dg.SkipReason:
    """Ids of the pending requests in the PostgreSQL warehouse (read without its lock: a
    reader sees the last committed state), or why they cannot be read now."""
    try:
        engine = open_engine(dsn)
    except WarehouseError as exc:
        return dg.SkipReason(f"{exc}; retrying next tick")
    try:
        return pending_ids(engine)
    except psycopg.Error as exc:
        return dg.SkipReason(f"{describe(dsn)}: {reason(exc)}; retrying next tick")
    finally:
        engine.close()


# Without shards (the sensor the definitions use is built for LETHE_SHARDS).
pending_requests_sensor = pending_requests(1)
