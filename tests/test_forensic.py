"""Erasure is physical: after enforcement no erased value is left in the bytes of any file
under LETHE_HOME (young backups excepted), free pages of the DuckDB files included.

The warehouse is loaded with uncompressed storage, so a value left anywhere in it would
show in its raw bytes; each scan is checked to find the values before enforcement and
the values a purpose still keeps after it, so that "not found" means something.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import dagster as dg
import pytest
import retention_cases as rc
from conftest import DEFAULT_POLICY, ingest_all

from lethe.declaration.policy import Policy
from lethe.engine.enforcement import enforce
from lethe.engine.tagging import tag_all
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from pipelines.launch import run_pipeline

T = rc.T
YOUNG_BACKUPS = ("backups",)


def uncompressed_home(root: Path, policy: Policy) -> Home:
    """The cases ingested and tagged as of T into a warehouse stored uncompressed."""
    home = Home(root).ensure()
    rc.write_cases(home.landing)
    con = connect(home.warehouse)
    try:
        con.execute("PRAGMA force_compression='uncompressed'")
        ingest_all(con, home.landing, policy)
        tag_all(con, policy, T)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    # not vacuous: before enforcement every value to erase is in the warehouse's bytes
    found = rc.scan_files(home.root, rc.erased_values())
    assert set(found) == set(rc.erased_values())
    assert all(files == ["warehouse.duckdb"] for files in found.values()), found
    return home


def assert_only_kept_values_remain(home: Home) -> None:
    leftovers = rc.scan_files(home.root, rc.erased_values(), skip=YOUNG_BACKUPS)
    assert leftovers == {}
    kept = rc.scan_files(home.root, rc.kept_values(), skip=YOUNG_BACKUPS)
    assert set(kept) == set(rc.kept_values())
    assert all("warehouse.duckdb" in files for files in kept.values()), kept


def test_enforce_leaves_no_erased_value_in_any_file(tmp_path: Path, policy: Policy) -> None:
    home = uncompressed_home(tmp_path / "home", policy)
    enforce(home, policy, T, "run-T")
    assert_only_kept_values_remain(home)
    assert sorted(p.name for p in home.root.iterdir() if p.is_file()) == [
        "vault.duckdb",
        "warehouse.duckdb",
    ]
    # the vault holds what accounting still needs as pseudonyms: the scan would see it
    vault = home.vault.read_bytes()
    assert b"Billname-acct_two-x" in vault and b"Billstreet-ctr_exact-x 7" in vault


def test_pipeline_run_checks_pass_and_no_erased_value_is_left(
    tmp_path: Path, policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = uncompressed_home(tmp_path / "home", policy)
    direct = Home(tmp_path / "direct")
    shutil.copytree(home.root, direct.root)
    enforce(direct, policy, T, "run-T")
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    outcome = run_pipeline(home, T, str(DEFAULT_POLICY))
    assert outcome.success, outcome.errors
    assert outcome.failed_checks == []
    assert enforcement_checks(home, outcome.run_id) == {
        "nothing_past_retention": True,
        "held_contacts_untouched": True,
        "ledger_chain_intact": True,
    }
    # the pipeline's warehouse is the one enforce() makes directly
    drop = ("_ingested_at",)
    assert rc.comparable(home, drop=drop) == rc.comparable(direct, drop=drop)
    con = rc.read_only(home)
    try:
        runs = con.execute("SELECT DISTINCT run_id FROM audit.ledger").fetchall()
    finally:
        con.close()
    assert runs == [(outcome.run_id,)]
    # every file, the run's Dagster event log included; young backups may keep values
    assert any(home.dagster.rglob("*.db"))
    assert any(home.backups.iterdir())
    assert_only_kept_values_remain(home)
    # the surrogates of anonymized contacts appear nowhere but in core.contacts
    con = rc.read_only(home)
    try:
        surrogates = [
            s
            for (s,) in con.execute(
                "SELECT contact_id FROM core.contacts WHERE _state = 'anonymized'"
            ).fetchall()
        ]
        elsewhere = [
            f"{schema}.{table}"
            for schema, table in con.execute(
                "SELECT schema_name, table_name FROM duckdb_tables()"
            ).fetchall()
            if (schema, table) != ("core", "contacts")
            and any(s in line for line in rc.all_text(con, schema, table) for s in surrogates)
        ]
    finally:
        con.close()
    assert len(surrogates) == len(rc.ANONYMIZED_CONTACTS)
    assert elsewhere == []
    hits = rc.scan_files(home.root, {s: s for s in surrogates}, skip=YOUNG_BACKUPS)
    assert set(hits) == set(surrogates)
    assert all(files == ["warehouse.duckdb"] for files in hits.values()), hits


def enforcement_checks(home: Home, run_id: str) -> dict[str, bool]:
    """The asset checks of core/retention_enforcement recorded for a run."""
    instance = dg.DagsterInstance.from_config(str(home.dagster))
    try:
        records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    finally:
        instance.dispose()
    evaluations = [r.dagster_event.asset_check_evaluation_data for r in records]
    return {
        e.check_name: e.passed
        for e in evaluations
        if e.asset_key.path == ["core", "retention_enforcement"]
    }


def test_values_of_orders_anonymized_later_leave_the_vault(tmp_path: Path, policy: Policy) -> None:
    home = uncompressed_home(tmp_path / "home", policy)
    enforce(home, policy, T, "run-T")  # o_acct_in pseudonymized (accounting until T + 1d)
    assert b"Billname-acct_in-x" in home.vault.read_bytes()
    enforce(home, policy, T + dt.timedelta(days=2), "run-T+2")  # accounting over: anonymized
    con = rc.read_only(home)
    try:
        texts = "\n".join(rc.all_text(con, "core", "orders"))
    finally:
        con.close()
    assert "o_acct_in" not in texts  # the order is anonymized: no token of it is used
    gone = {
        "billing_name": "Billname-acct_in-x",
        "billing_street": "Billstreet-acct_in-x 7",
    }
    assert rc.scan_files(home.root, gone, skip=YOUNG_BACKUPS) == {}
