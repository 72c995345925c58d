"""Resources: where LETHE_HOME is, which policy applies and as of which date."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb
from pydantic import Field

from lethe.files import owner_only_umask, restrict_tree
from lethe.home import Home
from lethe.lock import exclusive
from lethe.policy import Policy, load_policy
from lethe.warehouse import connect, ensure_schemas


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse under LETHE_HOME (empty `home` = the LETHE_HOME variable).

    A run holds the LETHE_HOME lock from its first step to its last, whoever launched it
    (`lethe run`, the daily schedule, the request sensor or the UI), so two runs never write
    at once: a second run waits up to `lock_wait_seconds`, then fails in one line.
    """

    home: str = ""
    lock_wait_seconds: float = Field(
        default=1800.0,
        description="How long a run waits for another run on the same LETHE_HOME to finish.",
    )

    def paths(self) -> Home:
        return Home.from_env(self.home or None).ensure()

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator[WarehouseResource]:
        with (
            owner_only_umask(),
            exclusive(self.paths().lock, wait_seconds=self.lock_wait_seconds),
        ):
            try:
                yield self
            finally:
                # Dagster wrote this run's files before the umask above applied (when the
                # process that launched the run did not set one).
                restrict_tree(self.paths().dagster)

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = connect(self.paths().warehouse)
        try:
            ensure_schemas(con)
            yield con
        finally:
            con.close()


class PolicyResource(dg.ConfigurableResource):
    """The retention policy file and the date it is evaluated at (empty = today, UTC)."""

    path: str = ""
    as_of: str = ""

    def load(self) -> Policy:
        return load_policy(self.path or None)

    def as_of_date(self) -> dt.date:
        if not self.as_of:
            return dt.datetime.now(dt.UTC).date()
        return dt.date.fromisoformat(self.as_of)
