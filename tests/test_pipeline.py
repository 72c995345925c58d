"""The pipeline end to end: Dagster materialization, the launcher and the `lethe run` CLI,
on small hand-made landing sets in a temporary LETHE_HOME."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from conftest import (
    DEFAULT_POLICY,
    REPO,
    lethe_cli,
    tags,
    write_landing,
    write_landing_set,
)

from assets.ingest import ingest_assets
from assets.tagging import tagging_assets
from lethe.declaration.policy import load_policy
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from lethe.rights.requests import record_request
from pipelines.launch import run_pipeline
from pipelines.resources import PolicyResource, WarehouseResource

T = dt.date(2026, 3, 1)
POLICY = load_policy(DEFAULT_POLICY)

# Every row here is kept by some purpose at T, so enforcement (when it runs) leaves it as is.
CONTACTS = [
    {"contact_id": "C1", "last_active_at": "2025-06-01T00:00:00"},  # account
    {"contact_id": "C2", "last_active_at": "2015-01-01T00:00:00"},  # open order: contract
]
ORDERS = [
    {
        "order_id": "O1",
        "contact_id": "C2",
        "ordered_at": "2025-12-01T00:00:00",
        "completed_at": None,
    },
]
SHIPMENTS = [{"shipment_id": "S1", "order_id": "O1", "shipped_at": "2025-12-02T00:00:00"}]
CONSENTS = [{"consent_id": "K1", "contact_id": "C1", "granted_at": "2025-01-01T00:00:00"}]
BAD_ORDER = {"order_id": "O2", "contact_id": "C2", "total_amount": "abc"}


def landing_set(home: Home, bad_row: bool = False) -> None:
    write_landing_set(
        home.landing,
        contacts=CONTACTS,
        consents=CONSENTS,
        orders=ORDERS + ([BAD_ORDER] if bad_row else []),
        shipments=SHIPMENTS,
    )


def assert_tagged(home: Home) -> None:
    con = connect(home.warehouse, read_only=True)
    try:
        assert tags(con, "contacts", "C1")["purposes"] == ["account", "newsletter"]
        assert tags(con, "contacts", "C2") == {
            "purposes": ["contract"],
            "legal_bases": ["contract"],
            "retain_until": None,
            "state": "active",
        }
        assert sorted(tags(con, "orders", "O1")["purposes"]) == ["accounting", "contract"]
        assert tags(con, "shipments", "S1")["purposes"] == ["contract"]
        assert sorted(tags(con, "consents", "K1")["purposes"]) == [
            "consent_evidence",
            "newsletter",
        ]
    finally:
        con.close()


def check_results(result: Any) -> dict[str, Any]:
    return {
        "/".join(e.asset_key.path): e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "no_quarantined_rows"
    }


def materialize(home: Home) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*ingest_assets(POLICY), *tagging_assets(POLICY)],
        resources={
            "warehouse": WarehouseResource(home=str(home.root)),
            "policy": PolicyResource(path=str(DEFAULT_POLICY), as_of=T.isoformat()),
        },
        raise_on_error=False,
    )


def test_materialize_tags_the_warehouse(home: Home) -> None:
    landing_set(home)
    result = materialize(home)
    assert result.success
    checks = check_results(result)
    assert set(checks) == {
        "ingest/contacts",
        "ingest/consents",
        "ingest/orders",
        "ingest/shipments",
        "ingest/holds",
    }
    assert all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items()}
    assert_tagged(home)
    assert list(home.landing.iterdir()) == []  # landing files consumed
    mats = {
        "/".join(m.asset_key.path): m.metadata
        for m in result.asset_materializations_for_node("ingest__orders")
    }
    assert mats["ingest/orders"]["rows_loaded"].value == 1
    tag_md = result.asset_materializations_for_node("core__purpose_tags")[0].metadata
    assert tag_md["as_of"].value == "2026-03-01"
    assert tag_md["dagster/row_count"].value == 5  # 2 contacts, 1 consent, 1 order, 1 shipment


def test_quarantine_check_fails_on_bad_row(home: Home) -> None:
    landing_set(home, bad_row=True)
    result = materialize(home)
    assert result.success  # bad input never crashes a run
    checks = check_results(result)
    orders = checks["ingest/orders"]
    assert not orders.passed
    assert "orders.csv" in orders.description
    assert "1 rows quarantined" in orders.description
    assert "wrong type: expected decimal" in orders.description
    assert orders.metadata["rows_quarantined"].value == 1
    assert all(c.passed for k, c in checks.items() if k != "ingest/orders")
    assert_tagged(home)  # good rows still loaded and tagged
    con = connect(home.warehouse, read_only=True)
    try:
        q = con.execute(
            "SELECT table_name, row_number, column_name, reason FROM core.quarantine"
        ).fetchall()
    finally:
        con.close()
    assert q == [("orders", 2, "total_amount", "wrong type: expected decimal")]


def test_quarantine_check_names_row_and_column(home: Home) -> None:
    landing_set(home, bad_row=True)
    orders = check_results(materialize(home))["ingest/orders"]
    text = orders.description + " " + str({k: v.value for k, v in orders.metadata.items()})
    assert "total_amount" in text
    assert "row 2" in text


def test_missing_file_is_reported_and_the_run_goes_on(home: Home) -> None:
    write_landing_set(home.landing, contacts=CONTACTS)
    (home.landing / "orders.csv").unlink()
    result = materialize(home)
    assert result.success  # tagging still runs: a missing file holds nothing else up
    accepted = {
        "/".join(e.asset_key.path): e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "landing_file_accepted"
    }
    assert [k for k, c in accepted.items() if not c.passed] == ["ingest/orders"]
    assert "orders.parquet: missing" in accepted["ingest/orders"].description
    assert result.asset_materializations_for_node("core__purpose_tags")


def test_run_pipeline_in_tmp_home(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))  # restored after the test
    landing_set(home, bad_row=True)
    outcome = run_pipeline(home, T, str(DEFAULT_POLICY))
    assert outcome.success, outcome.errors
    assert outcome.errors == []
    assert len(outcome.failed_checks) == 1
    assert outcome.failed_checks[0].startswith("ingest/orders no_quarantined_rows: orders.csv")
    assert_tagged(home)
    # the run is recorded in the Dagster instance under LETHE_HOME (visible in `make ui`)
    assert (home.dagster / "dagster.yaml").exists()
    instance = dg.DagsterInstance.from_config(str(home.dagster))
    try:
        run = instance.get_run_by_id(outcome.run_id)
        assert run is not None and run.job_name == "lethe_pipeline"
        assert run.tags["lethe/as_of"] == "2026-03-01"
    finally:
        instance.dispose()


# --- the `lethe run` command ----------------------------------------------------------------


def lethe(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return lethe_cli(*args, home=home, timeout=120)


def test_cli_run(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    landing_set(home, bad_row=True)
    result = lethe(home.root, "run", "--as-of", "2026-03-01")
    assert result.returncode == 0, result.stderr
    assert "Lethe warehouse as of 2026-03-01" in result.stdout
    for word in ("contacts", "consents", "orders", "shipments", "account", "legal_obligation"):
        assert word in result.stdout
    assert "check failed: ingest/orders no_quarantined_rows" in result.stderr
    assert "Traceback" not in result.stderr
    assert (home.root / "warehouse.duckdb").exists()
    assert list(home.landing.iterdir()) == []
    assert_tagged(home)


def test_cli_run_bad_date(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = lethe(home, "run", "--as-of", "notadate")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--as-of" in lines[0] and "'notadate'" in lines[0]
    assert not home.exists()  # nothing touched


def test_cli_run_bad_policy_touches_nothing(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    landing_set(home)
    data = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    data["purposes"]["account"]["retention"]["keep"] = "forever"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data), encoding="utf-8")
    result = lethe(home.root, "run", "--as-of", "2026-03-01", "--policy", str(bad))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "purposes.account.retention.keep" in lines[0] and "'forever'" in lines[0]
    assert not home.warehouse.exists()
    assert sorted(p.name for p in home.landing.iterdir()) == [
        "consents.csv",
        "contacts.csv",
        "orders.csv",
        "shipments.csv",
    ]


def test_cli_run_records_the_run_of_the_policy_given(tmp_path: Path) -> None:
    """`lethe run --policy F` runs the definitions built from F: the run's recorded job holds
    F's assets (the example shop's tables), its tag names F, and each ingest records the
    policy and the column schema it applied."""
    shop = REPO / "examples" / "shop"
    home = Home(tmp_path / "home").ensure()
    for f in (shop / "landing").glob("*.csv"):
        shutil.copy(f, home.landing / f.name)
    policy = shop / "policy.yaml"
    result = lethe(home.root, "run", "--as-of", "2026-03-01", "--policy", str(policy))
    assert "Traceback" not in result.stderr
    instance = dg.DagsterInstance.from_config(str(home.dagster))
    try:
        (run,) = instance.get_runs()
        assert run.tags["lethe/policy"] == str(policy.resolve())
        job = instance.get_job_snapshot(run.job_snapshot_id)
        ops = {o.name: o for o in job.node_defs_snapshot.op_def_snaps}
        tables = ("zakaznici", "souhlasy", "objednavky", "zasilky", "blokace")
        assert {f"ingest__{t}" for t in tables} <= set(ops)
        assert not {"ingest__contacts", "ingest__orders"} & set(ops)
        assert ops["ingest__zakaznici"].description.startswith("core.zakaznici: Registrovaní")
        done = {
            e.step_key
            for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
        }
        assert {f"ingest__{t}" for t in tables} <= done
        event = instance.get_latest_materialization_event(dg.AssetKey(["ingest", "zakaznici"]))
        metadata = event.asset_materialization.metadata
        assert metadata["policy"].value == str(policy)
        columns = {c.name: c for c in metadata["dagster/column_schema"].schema.columns}
        assert columns["email"].tags["data_category"] == "user.contact.email"
        assert metadata["rows_loaded"].value > 0
    finally:
        instance.dispose()


@pytest.fixture(scope="module")
def run_without_files(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    return lethe(tmp_path_factory.mktemp("empty") / "home", "run", "--as-of", "2026-03-01")


def test_cli_run_missing_file_exits_non_zero(
    run_without_files: subprocess.CompletedProcess[str],
) -> None:
    assert run_without_files.returncode == 1
    last = run_without_files.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    assert "contacts.parquet: missing" in last


def test_cli_run_missing_file_one_line(run_without_files: subprocess.CompletedProcess[str]) -> None:
    assert run_without_files.returncode == 1
    assert "Stack Trace" not in run_without_files.stderr
    assert len(run_without_files.stderr.strip().splitlines()) == 1, run_without_files.stderr


def test_quarantine_check_fails_while_an_orphan_waits(home: Home) -> None:
    """The check stays red on later runs while a row waits, and turns green once it loads."""
    write_landing_set(
        home.landing, contacts=CONTACTS, orders=[*ORDERS, {"order_id": "O9", "contact_id": "C9"}]
    )
    assert not check_results(materialize(home))["ingest/orders"].passed
    waiting = check_results(materialize(home))["ingest/orders"]  # no new files
    assert not waiting.passed
    assert "1 rows waiting in core.quarantine" in waiting.description
    write_landing(home.landing, "contacts", [{"contact_id": "C9"}])
    assert check_results(materialize(home))["ingest/orders"].passed
    con = connect(home.warehouse, read_only=True)
    try:
        assert con.execute("SELECT contact_id FROM core.orders WHERE order_id = 'O9'").fetchall()
    finally:
        con.close()


def query(home: Home, sql: str) -> list[tuple]:
    con = connect(home.warehouse, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_a_refused_file_does_not_stop_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """consents.csv with a header `purpose ` is refused and left in place; contacts still load,
    the pending erasure is carried out and answered, a backup is written, and `lethe run`
    exits 1 naming the file in one line."""
    home = Home(tmp_path / "home").ensure()
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    landing_set(home)
    assert run_pipeline(home, T, str(DEFAULT_POLICY)).success
    con = connect(home.warehouse)
    try:
        erasure = record_request(con, POLICY.data_schema, "erasure", "C1")
    finally:
        con.close()
    write_landing(home.landing, "contacts", [{**CONTACTS[0], "contact_id": "C3"}])
    bad = write_landing(home.landing, "consents", [{"consent_id": "K3", "contact_id": "C3"}])
    bad.write_text(bad.read_text().replace(",purpose,", ",purpose ,", 1))
    result = lethe(home.root, "run", "--as-of", "2026-03-01", "--policy", str(DEFAULT_POLICY))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "consents.csv" in lines[0]
    assert "'purpose'" in lines[0] and "Traceback" not in result.stderr
    assert bad.exists()  # left in place
    ids = {r[0] for r in query(home, "SELECT contact_id FROM core.contacts")}
    assert {"C2", "C3"} <= ids and "C1" not in ids  # C1 erased (anonymized)
    assert query(
        home, f"SELECT status FROM requests.requests WHERE request_id = '{erasure.request_id}'"
    ) == [("done",)]
    assert len(list(home.backups.glob("*/manifest.json"))) == 2


def test_landing_leftovers_are_reported_and_never_followed(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every entry in landing/ that is not a table's file is named in the run's one error;
    nothing is loaded through it, nothing is left unreported, no raw OS error."""
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    landing_set(home)
    contacts = home.landing / "contacts.csv"
    (home.landing / "contacts.csv.bak").write_bytes(contacts.read_bytes())
    write_landing(home.landing, "contacts", [{"contact_id": "C7"}]).rename(
        home.landing / "contacts.CSV"
    )
    landing_set(home)
    (home.landing / "orders.csv").unlink()
    (home.landing / "orders.csv").mkdir()
    (home.landing / "consents.csv").unlink()
    (home.landing / "consents.csv").symlink_to(contacts)
    outcome = run_pipeline(home, T, str(DEFAULT_POLICY))
    assert not outcome.success
    told = "; ".join(outcome.errors)
    assert "\n" not in told and "Errno" not in told
    for name in ("contacts.csv.bak", "contacts.CSV", "orders.csv", "consents.csv"):
        assert f"{name}:" in told or f"{name} (" in told, told
    assert "symbolic link" in told and "directory" in told
    ids = {r[0] for r in query(home, "SELECT contact_id FROM core.contacts")}
    assert "C1" in ids and "C7" not in ids  # contacts.csv loaded, never contacts.CSV
    assert query(home, "SELECT count(*) FROM core.consents") == [(0,)]
    left = sorted(p.name for p in home.landing.iterdir())
    assert left == ["consents.csv", "contacts.CSV", "contacts.csv.bak", "orders.csv"]
    assert query(home, "SELECT count(*) FROM core.contacts WHERE _purposes IS NULL") == [(0,)]


def test_quarantine_check_stays_failing_while_a_bad_row_waits(home: Home) -> None:
    """A row refused for a wrong type keeps the check red on later runs with no new file."""
    landing_set(home, bad_row=True)
    assert not check_results(materialize(home))["ingest/orders"].passed
    later = check_results(materialize(home))["ingest/orders"]
    assert not later.passed
    assert later.description == "1 rows waiting in core.quarantine"


# --- the core assets after enforcement (issue 15) ---------------------------------------------


def _latest(instance: dg.DagsterInstance, table: str) -> dg.EventLogEntry:
    event = instance.get_latest_materialization_event(dg.AssetKey(["core", table]))
    assert event is not None
    return event


def test_core_assets_show_the_tables_after_enforcement(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    write_landing_set(
        home.landing,
        contacts=[
            *CONTACTS,
            {"contact_id": "C3", "last_active_at": "2024-03-15T00:00:00"},  # account ends 03-15
            {"contact_id": "C4", "last_active_at": "2015-01-01T00:00:00"},  # anonymized
        ],
        consents=CONSENTS,
        orders=ORDERS,
        shipments=SHIPMENTS,
    )
    outcome = run_pipeline(home, T, str(DEFAULT_POLICY))
    assert outcome.success, outcome.errors
    kept = query(
        home,
        "SELECT p, count(*) FROM (SELECT unnest(_purposes) AS p FROM core.contacts) GROUP BY p",
    )
    states = dict(query(home, "SELECT _state, count(*) FROM core.contacts GROUP BY 1"))
    (rows,) = query(home, "SELECT count(*) FROM core.contacts")[0]
    instance = dg.DagsterInstance.from_config(str(home.dagster))
    try:
        event = _latest(instance, "contacts")
        assert event.run_id == outcome.run_id
        assert event.step_key == "core__retention_enforcement"  # "last updated" = enforcement
        md = event.asset_materialization.metadata
        assert md["dagster/row_count"].value == rows == 4
        assert md["rows_active"].value == states["active"] == 3
        assert md["rows_anonymized"].value == states["anonymized"] == 1
        table = {r.data["purpose"]: r.data for r in md["purposes_now"].value.records}
        assert {p: table[p]["rows kept"] for p, _ in kept} == dict(kept)
        assert table["account"] == {
            "purpose": "account",
            "legal basis": "GDPR Art. 6(1)(b) contract",
            "rows kept": 2,
            "expire in 30 d": 1,
            "next expiry": "2026-03-15",
        }
        assert table["contract"]["next expiry"] == "open-ended"  # the order is not completed
        assert table["litigation_hold"]["next expiry"] == "no rows"
        rules = {r.data["purpose"]: r.data for r in md["purposes_retention"].value.records}
        assert rules["newsletter"]["columns kept"] == "contact_id, email, first_name"
        assert (
            _latest(instance, "holds").asset_materialization.metadata["dagster/row_count"].value
            == 0
        )
        checks = {
            (e.asset_key.to_user_string(), e.check_name): e.passed
            for e in (
                r.dagster_event.asset_check_evaluation_data
                for r in instance.all_logs(
                    outcome.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
                )
            )
        }
        for table_name in ("contacts", "consents", "orders", "shipments"):
            assert checks[(f"core/{table_name}", "nothing_past_retention")]
    finally:
        instance.dispose()


def test_a_failed_blocking_check_stops_what_follows_and_lethe_run_exits_1(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    expired = {"contact_id": "C4", "last_active_at": "2015-01-01T00:00:00"}
    write_landing_set(home.landing, contacts=[*CONTACTS, expired])
    assert run_pipeline(home, T, str(DEFAULT_POLICY)).success
    con = connect(home.warehouse)
    try:
        (seq,) = con.execute("SELECT min(seq) FROM audit.ledger").fetchone()
        con.execute("UPDATE audit.ledger SET reason = 'edited' WHERE seq = ?", [seq])
    finally:
        con.close()
    result = lethe(home.root, "run", "--as-of", "2026-03-01")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith(("check failed: ", "error: ")) for line in lines), lines
    assert any(
        line.startswith("check failed: core/retention_enforcement ledger_chain_intact: ")
        for line in lines
    ), lines
    assert lines[-1] == (
        "error: 1 blocking checks failed: the analytics, exports and backups after them were"
        " not produced"
    )
    instance = dg.DagsterInstance.from_config(str(home.dagster))
    try:
        (run, _) = instance.get_runs()
        done = {
            e.step_key
            for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
        }
    finally:
        instance.dispose()
    assert "ingest__contacts" in done  # the run went as far as enforcement
    assert not {s for s in done if s.startswith(("analytics__", "backups__", "requests__answers"))}
