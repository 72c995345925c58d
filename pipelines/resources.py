"""Resources: where LETHE_HOME is, which policy applies and as of which date."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
from pydantic import Field, PrivateAttr

from lethe.declaration.policy import Policy, load_policy
from lethe.engine.ddl import ensure_schemas
from lethe.engine.engines import PostgresEngine
from lethe.engine.postgres_warehouse import Rendered, dsn_from_env, open_engine, refuse_here
from lethe.engine.warehouse import connect
from lethe.operations.files import owner_only_umask, restrict_tree
from lethe.operations.home import Home
from lethe.operations.lock import exclusive
from lethe.operations.routing import split_landing
from lethe.operations.shards import (
    SHARDS_ENV,
    ShardError,
    build_union,
    check_layout,
    check_sources,
    shard_count,
)
from pipelines.jobs import SHARD_JOB, UNION_JOB

SHARDED_JOBS = (SHARD_JOB, UNION_JOB)
PARTITION_TAG = "dagster/partition"
# Tags of the shard and union runs `lethe run` launches: it split the landing files before
# the shard runs and built the union before the union run. Runs without them (the daily
# schedule, the request sensor, the UI) do it themselves, under the LETHE_HOME lock.
SPLIT_TAG = "lethe/split"
UNION_TAG = "lethe/union"


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse under LETHE_HOME (empty `home` = the LETHE_HOME variable), or
    the PostgreSQL warehouse LETHE_WAREHOUSE names (`postgres()`; LETHE_HOME then holds the
    landing files, exports and the Dagster instance).

    A run holds the LETHE_HOME lock (on PostgreSQL: Lethe's advisory lock, in the run's one
    session) from its first step to its last, whoever launched it (`lethe run`, the daily
    schedule, the request sensor or the UI), so two runs never write at once: a second run
    waits up to `lock_wait_seconds`, then fails in one line.
    """

    home: str = ""
    lock_wait_seconds: float = Field(
        default=1800.0,
        description="How long a run waits for another run on the same LETHE_HOME to finish.",
    )
    # The run's session on a PostgreSQL warehouse (None: the DuckDB one).
    _engine: PostgresEngine | None = PrivateAttr(default=None)

    def postgres(self) -> PostgresEngine | None:
        """The run's PostgreSQL warehouse, open for the run; None on a DuckDB warehouse."""
        return self._engine

    def paths(self) -> Home:
        return Home.from_env(self.home or None).ensure()

    def for_shard(self, shard: str | None) -> WarehouseResource:
        """The resource of subject shard `shard` (a run of one partition of the per-shard
        assets works on that shard's LETHE_HOME); itself for None."""
        if shard is None:
            return self
        return WarehouseResource(
            home=str(self.paths().shard(shard).root), lock_wait_seconds=self.lock_wait_seconds
        )

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[WarehouseResource]:
        dsn = dsn_from_env()
        if dsn:
            with self._on_postgres(dsn) as target:
                yield target
            return
        run = context.run
        if run is not None and run.job_name not in SHARDED_JOBS:
            check_layout(self.paths(), shard_count())
        if shard_count() > 1 and run is not None and run.job_name not in SHARDED_JOBS:
            # The top warehouse only holds the shards' union: a whole-pipeline run there
            # would ingest and enforce beside the shards.
            raise ShardError(
                f"{SHARDS_ENV}={shard_count()}: job {run.job_name} does not run on shards;"
                f" run `lethe run`, or job {SHARD_JOB} by shard partition then {UNION_JOB}"
            )
        if run is not None and run.job_name in SHARDED_JOBS:
            self._prepare_sharded(context, run)
        target = self.for_shard(run.tags.get(PARTITION_TAG)) if run is not None else self
        with (
            owner_only_umask(),
            exclusive(target.paths().lock, wait_seconds=self.lock_wait_seconds),
        ):
            try:
                yield target
            finally:
                # Dagster wrote this run's files before the umask above applied (when the
                # process that launched the run did not set one).
                restrict_tree(self.paths().dagster)

    @contextmanager
    def _on_postgres(self, dsn: str) -> Iterator[WarehouseResource]:
        """The resource of a run on the PostgreSQL warehouse: one session for the whole run,
        holding Lethe's advisory lock (each step nests its own in it)."""
        if shard_count() > 1:
            refuse_here(f"{SHARDS_ENV}={shard_count()}")
        target = WarehouseResource(home=self.home, lock_wait_seconds=self.lock_wait_seconds)
        target._engine = open_engine(dsn)
        try:
            with (
                owner_only_umask(),
                target._engine.lock(wait_seconds=self.lock_wait_seconds),
            ):
                try:
                    yield target
                finally:
                    restrict_tree(self.paths().dagster)
        finally:
            target._engine.close()

    def _prepare_sharded(self, context: dg.InitResourceContext, run: dg.DagsterRun) -> None:
        """Before a shard run, split the top landing files into the shards; before a union
        run, build the union of the shards: each under the top LETHE_HOME's lock, unless
        `lethe run` did it (its tags say so)."""
        top, n = self.paths(), shard_count()
        step = SPLIT_TAG if run.job_name == SHARD_JOB else UNION_TAG
        if run.tags.get(step) is not None:
            return
        policy = _run_policy(run)
        check_sources(policy)
        with owner_only_umask(), exclusive(top.lock, wait_seconds=self.lock_wait_seconds):
            check_layout(top, n)
            if step == UNION_TAG:
                build_union(top, policy, n, wait_seconds=self.lock_wait_seconds)
                return
            for refused in split_landing(top, policy, n, self.lock_wait_seconds).refused:
                # The file waits in landing/ for the next split; this shard runs on.
                context.log.warning(refused)

    @contextmanager
    def connect(self, defer_checkpoint: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """The DuckDB warehouse; on PostgreSQL, a reader rendering each statement for it
        (`Rendered`: the steps that read counts run unchanged, the writing steps call the
        PostgreSQL functions with `postgres()`). `defer_checkpoint` for the steps before
        the enforcement rewrite (`lethe.engine.warehouse.connect`)."""
        if self._engine is not None:
            yield Rendered(self._engine.con)  # type: ignore[misc]
            return
        con = connect(self.paths().warehouse, defer_checkpoint=defer_checkpoint)
        try:
            ensure_schemas(con)
            yield con
        finally:
            con.close()


# The run tag naming the date a run evaluates retention at.
AS_OF_TAG = "lethe/as_of"

# The policies that definitions in this process were built from, by file: a run of those
# definitions uses the very policy they describe, loaded once.
_BOUND: dict[str, Policy] = {}


class PolicyResource(dg.ConfigurableResource):
    """The retention policy file (empty = LETHE_POLICY, else the default) and the date it is
    evaluated at (empty = today, UTC)."""

    path: str = ""
    as_of: str = ""
    # The date a run evaluates, fixed when it starts (a run crossing midnight keeps its day).
    _day: dt.date | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Fix the run's as-of date and tag the run with it (`lethe/as_of`), so a run
        launched from the UI, with no date in its config, shows its date like any other."""
        self._day = self.as_of_date()
        run = context.run
        if context.instance is not None and run is not None and AS_OF_TAG not in run.tags:
            context.instance.add_run_tags(run.run_id, {AS_OF_TAG: self._day.isoformat()})

    @classmethod
    def bound_to(cls, policy: Policy) -> PolicyResource:
        """The resource of definitions built from `policy`: its runs load no other policy."""
        source = Path(policy.source)
        path = str(source.resolve()) if source.is_file() else policy.source
        _BOUND[path] = policy
        return cls(path=path)

    def load(self) -> Policy:
        """The policy of the definitions this resource is bound to, else the file's."""
        bound = _BOUND.get(self.path)
        return bound if bound is not None else load_policy(self.path or None)

    def as_of_date(self) -> dt.date:
        """The configured date, else the run's (fixed at its start), else today (UTC)."""
        if self._day is not None:
            return self._day
        if not self.as_of:
            return dt.datetime.now(dt.UTC).date()
        return dt.date.fromisoformat(self.as_of)


def _run_policy(run: dg.DagsterRun) -> Policy:
    """The policy a run applies: its policy resource's file, else the definitions' own."""
    config = run.run_config.get("resources", {}).get("policy", {}).get("config", {})
    return PolicyResource(path=config.get("path", "")).load()
