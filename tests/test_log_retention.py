"""Retention of Lethe's own logs: access log 30 days; export log purged weekly, entries
older than 90 days deleted only once it holds more than 1000."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from lethe.declaration.policy import Policy
from lethe.engine.ddl import ensure_logs, ensure_schemas
from lethe.engine.warehouse import connect
from lethe.operations.activity_logs import purge_logs

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)
DAY = dt.timedelta(days=1)


def naive(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=None)


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(tmp_path / "warehouse.duckdb")
    ensure_schemas(con)
    ensure_logs(con)
    yield con
    con.close()


def add_access(con: duckdb.DuckDBPyConnection, when: dict[str, dt.datetime]) -> None:
    con.executemany(
        "INSERT INTO audit.access_log VALUES (?, 'dpo', 'read', ?, NULL)",
        [[naive(t), key] for key, t in when.items()],
    )


def add_exports(con: duckdb.DuckDBPyConnection, n: int, at: dt.datetime, prefix: str) -> None:
    con.execute(
        "INSERT INTO audit.export_log SELECT ?, ? || i, 'access', 'C' || i, NULL,"
        " 'x.zip', NULL FROM range(?) t(i)",
        [naive(at), prefix, n],
    )


def exports(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute("SELECT count(*) FROM audit.export_log").fetchone()[0]


def test_access_log_keeps_30_days(con: duckdb.DuckDBPyConnection, policy: Policy) -> None:
    add_access(
        con,
        {
            "older": NOW - 31 * DAY,
            "exactly_30d": NOW - 30 * DAY,
            "30d_minus_1s": NOW - 30 * DAY + SECOND,
            "yesterday": NOW - DAY,
        },
    )
    result = purge_logs(con, policy, NOW)
    assert result.access_log == 2
    left = sorted(k for (k,) in con.execute("SELECT subject_key FROM audit.access_log").fetchall())
    assert left == ["30d_minus_1s", "yesterday"]


def test_export_log_of_1000_entries_is_not_purged(
    con: duckdb.DuckDBPyConnection, policy: Policy
) -> None:
    add_exports(con, 1000, NOW - 200 * DAY, "old")
    result = purge_logs(con, policy, NOW)
    assert result.export_log_purged  # the weekly purge ran ...
    assert result.export_log == 0  # ... but the log is not over 1000 entries
    assert exports(con) == 1000


def test_export_log_over_1000_loses_entries_older_than_90_days(
    con: duckdb.DuckDBPyConnection, policy: Policy
) -> None:
    add_exports(con, 600, NOW - 200 * DAY, "old")
    add_exports(con, 1, NOW - 90 * DAY, "exactly_90d")
    add_exports(con, 1, NOW - 90 * DAY + SECOND, "young_edge")
    add_exports(con, 400, NOW - DAY, "young")
    result = purge_logs(con, policy, NOW)
    assert result.export_log == 601
    left = {
        k
        for (k,) in con.execute(
            "SELECT DISTINCT regexp_extract(export_id, '^[a-z_]+') FROM audit.export_log"
        ).fetchall()
    }
    assert left == {"young_edge", "young"}
    assert exports(con) == 401  # all younger entries stay, even below 1000


def test_export_log_purge_runs_once_a_week(con: duckdb.DuckDBPyConnection, policy: Policy) -> None:
    assert purge_logs(con, policy, NOW).export_log_purged
    add_exports(con, 1001, NOW - 100 * DAY, "old")
    later = purge_logs(con, policy, NOW + 7 * DAY - SECOND)
    assert not later.export_log_purged and later.export_log == 0
    assert exports(con) == 1001
    week = purge_logs(con, policy, NOW + 7 * DAY)
    assert week.export_log_purged and week.export_log == 1001
    assert exports(con) == 0
    # the access log is purged on every run regardless
    add_access(con, {"old": NOW - 40 * DAY})
    assert purge_logs(con, policy, NOW + 8 * DAY).access_log == 1
