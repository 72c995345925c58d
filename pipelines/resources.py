"""Resources: where LETHE_HOME is, which policy applies and as of which date."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb

from lethe.home import Home
from lethe.policy import Policy, load_policy
from lethe.warehouse import connect, ensure_schemas


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse under LETHE_HOME (empty `home` = the LETHE_HOME variable)."""

    home: str = ""

    def paths(self) -> Home:
        return Home.from_env(self.home or None).ensure()

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
