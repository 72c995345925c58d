"""What enforcement stages: only the rows it changes (or an erasure request reaches), so a
daily run on an enforced warehouse stages a few rows and copies the rest as they are.

The staged rows decide the result, so every row left out must come out exactly as stored:
the retention and forensic suites check the results; these tests check that the stage is
small, and that a value changed behind enforcement's back is still enforced again.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
import retention_cases as rc

from lethe.declaration.policy import Policy
from lethe.engine.enforcement import enforce
from lethe.engine.retention import action_select, enforcement_plan
from lethe.engine.tagging import tagged_tables
from lethe.engine.warehouse import connect, table_columns
from lethe.operations.home import Home

T = rc.T


@pytest.fixture(scope="module")
def enforced_home(tmp_path_factory: pytest.TempPathFactory, policy: Policy) -> Home:
    """The cases ingested, tagged and enforced as of T."""
    home = rc.prepare(tmp_path_factory.mktemp("stage") / "home", policy)
    enforce(home, policy, T, "run-T")
    return home


def staged_rows(home: Home, policy: Policy, as_of: dt.date) -> dict[str, int]:
    """Rows per table that enforcement as of `as_of` stages (`_act_<table>`)."""
    con = connect(home.warehouse)
    try:
        out = {}
        for table in tagged_tables(policy):
            columns = table_columns(con, "core", table)
            con.execute(enforcement_plan(policy, table, columns, as_of).statements[0])
            out[table] = con.execute(f"SELECT count(*) FROM _act_{table}").fetchone()[0]
        return out
    finally:
        con.close()


def test_a_run_on_an_enforced_warehouse_stages_only_what_changes(
    enforced_home: Home, policy: Policy
) -> None:
    # as of the same day nothing changes: nothing is staged, however many rows are kept
    assert staged_rows(enforced_home, policy, T) == dict.fromkeys(tagged_tables(policy), 0)
    # a day later o_acct_in's accounting ends (anonymized) and nl_in's newsletter, acc_in's
    # account and ctr_in's contract end too: those rows are staged, and few others
    next_day = staged_rows(enforced_home, policy, T + dt.timedelta(days=1))
    assert next_day["orders"] >= 1 and next_day["contacts"] >= 3
    con = rc.read_only(enforced_home)
    try:
        total = {
            t: con.execute(f"SELECT count(*) FROM core.{t}").fetchone()[0]
            for t in tagged_tables(policy)
        }
    finally:
        con.close()
    assert sum(next_day.values()) < sum(total.values()) // 2, (next_day, total)


def test_a_value_changed_behind_enforcement_is_enforced_again(
    enforced_home: Home, policy: Policy, tmp_path: Path
) -> None:
    home = Home(tmp_path / "home")
    shutil.copytree(enforced_home.root, home.root)
    con = connect(home.warehouse)
    try:
        # nl_only is kept by the newsletter only: its phone is erased, its postal code cut
        before = rc.keyed(con, "contacts")["nl_only"]
        assert before["phone"] is None and before["postal_code"] == "110"
        con.execute(
            "UPDATE core.contacts SET phone = '+420 777 000', postal_code = '11000'"
            " WHERE contact_id = 'nl_only'"
        )
    finally:
        con.close()
    result = enforce(home, policy, T, "run-T-again")
    assert result.counts["contacts"] == {"retain": 1}
    con = rc.read_only(home)
    try:
        assert rc.keyed(con, "contacts")["nl_only"] == before
    finally:
        con.close()


def _filters(node: dict) -> list[str]:
    """The expressions of every FILTER in a plan node of DuckDB's JSON EXPLAIN."""
    own = [node["extra_info"].get("Expression", "")] if node.get("name") == "FILTER" else []
    return own + [f for child in node.get("children", []) for f in _filters(child)]


def test_the_staging_filter_builds_no_purpose_list_per_row(
    enforced_home: Home, policy: Policy
) -> None:
    # DuckDB copies a projected expression into a filter above it at every reference: the
    # filter that leaves unchanged rows out of the stage must read the fresh purpose and
    # legal-basis lists as columns (one lookup per mask), not build them for every row
    # once per reference, which made it the costliest step of a daily run.
    con = connect(enforced_home.warehouse)
    try:
        for table in tagged_tables(policy):
            columns = table_columns(con, "core", table)
            select = action_select(policy, table, columns, T + dt.timedelta(days=1))
            plan = json.loads(con.execute(f"EXPLAIN (FORMAT JSON) {select}").fetchall()[0][1])
            filters = [f for node in plan for f in _filters(node)]
            assert filters, f"{table}: no filter in the staging plan"
            for expression in filters:
                names = [p.name for p in policy.purposes_for(table) if f"'{p.name}'" in expression]
                assert "[" not in expression and not names, f"{table}: {names}"
    finally:
        con.close()
