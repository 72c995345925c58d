"""How the audit ledger is stored in a DuckDB warehouse.

A few ledger rows hold every key ever recorded (a first run records every row it
pseudonymizes), and DuckDB compresses a row group's columns again at each checkpoint that
adds a row to it. So the keys are stored uncompressed: a checkpoint after an appended entry
then copies them without compressing millions of keyed hashes again. A warehouse written
by an earlier version migrates at its next enforcement rewrite, with the same entries and an
intact chain.
"""

from __future__ import annotations

import datetime as dt

import pytest
import retention_cases as rc

from lethe.declaration.policy import Policy
from lethe.engine import audit
from lethe.engine.compaction import SameTable, compact
from lethe.engine.ddl import ledger_ddl
from lethe.engine.enforcement import enforce
from lethe.engine.warehouse import connect
from lethe.operations.home import Home

T = rc.T


def keys_storage(home: Home) -> tuple[str, set[str]]:
    """The ledger's DDL and the compressions of the segments holding its keys' text."""
    con = rc.read_only(home)
    try:
        ddl = con.execute(
            "SELECT sql FROM duckdb_tables() WHERE schema_name = 'audit' AND table_name = 'ledger'"
        ).fetchone()[0]
        # The keys column's child (the strings) is path [7, 1]; [.., 0] is a validity mask.
        kinds = con.execute(
            "SELECT DISTINCT compression FROM pragma_storage_info('audit.ledger')"
            " WHERE column_name = 'keys' AND column_path = '[7, 1]'"
        ).fetchall()
        return ddl, {k for (k,) in kinds}
    finally:
        con.close()


def ledger_rows(home: Home) -> list[tuple]:
    con = rc.read_only(home)
    try:
        return con.execute("SELECT * FROM audit.ledger ORDER BY seq").fetchall()
    finally:
        con.close()


@pytest.fixture
def enforced(tmp_path, policy: Policy) -> Home:
    home = rc.prepare(tmp_path / "home", policy)
    enforce(home, policy, T, "run-T")
    return home


def test_the_ledger_keys_are_stored_uncompressed(enforced: Home) -> None:
    ddl, kinds = keys_storage(enforced)
    assert "USING COMPRESSION Uncompressed" in ddl
    assert kinds == {"Uncompressed"}
    assert sum(len(row[7]) for row in ledger_rows(enforced)) > 0


def test_an_older_ledger_migrates_at_the_next_rewrite(enforced: Home, policy: Policy) -> None:
    # The warehouse as an earlier version wrote it: the same entries, keys compressed.
    compact(
        enforced.warehouse,
        prepare=lambda con: {
            ("audit", "ledger"): SameTable("SELECT * FROM audit.ledger", ledger_ddl(False))
        },
    )
    before = ledger_rows(enforced)
    ddl, kinds = keys_storage(enforced)
    assert "COMPRESSION" not in ddl and "Uncompressed" not in kinds

    enforce(enforced, policy, T + dt.timedelta(days=1), "run-T+1")

    ddl, kinds = keys_storage(enforced)
    assert "USING COMPRESSION Uncompressed" in ddl
    assert kinds == {"Uncompressed"}
    after = ledger_rows(enforced)
    assert after[: len(before)] == before
    con = connect(enforced.warehouse)
    try:
        assert audit.verify(con).ok
    finally:
        con.close()
