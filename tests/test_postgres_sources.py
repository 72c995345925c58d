"""PostgreSQL sources on a real server (tests/postgres.py): tables read in batches into the
same validation and quarantine as files, and erasure carried back to the source."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from lethe.declaration.policy import Policy, load_policy
from lethe.engine.enforcement import enforce
from lethe.engine.ingest import IngestError, ingest_table
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from lethe.rights.answers import answer_pending
from lethe.rights.requests import apply_pending, record_request
from lethe.sources.propagation import (
    plan_erasures,
    plan_rectifications_and_restrictions,
    propagate,
)
from tests.conftest import DEFAULT_POLICY, REPO, full_rows, lethe_cli
from tests.postgres import PostgresServer
from tests.request_cases import hashed

DSN_ENV = "LETHE_TEST_SHOP_DSN"
SOURCED = ("contacts", "consents", "orders", "shipments")
PG_TYPES = {
    "text": "text",
    "integer": "bigint",
    "decimal": "numeric(18,2)",
    "date": "date",
    "timestamp": "timestamp",
    "boolean": "boolean",
}


def shop_policy(
    folder: Path, writable: bool = True, incremental: dict[str, str] | None = None
) -> Policy:
    """The default policy on the default schema whose tables come from the shop database."""
    schema = yaml.safe_load((REPO / "lethe" / "eshop" / "schema.yaml").read_text())
    for name in SOURCED:
        pg: dict[str, Any] = {"dsn_env": DSN_ENV, "table": f"shop.{name}", "writable": writable}
        if name in (incremental or {}):
            pg["incremental"] = incremental[name]  # type: ignore[index]
        if name == "orders":
            pg["restrict_column"] = "restricted"
        schema["tables"][name]["source"] = {"postgres": pg}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shop.schema.yaml").write_text(
        yaml.safe_dump(schema, allow_unicode=True, sort_keys=False)
    )
    policy = folder / "policy.yaml"
    policy.write_text("schema: shop.schema.yaml\n" + DEFAULT_POLICY.read_text())
    return load_policy(policy)


def create_shop(dsn: str, policy: Policy, **rows: list[dict[str, Any]]) -> None:
    """The shop's tables (as the schema declares them, plus `updated_at`, and `restricted`
    on orders) in schema `shop`, with the given rows (defaults as in conftest)."""
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute("CREATE SCHEMA shop")
        for name in SOURCED:
            table = policy.data_schema.tables[name]
            cols = [f"{c.name} {PG_TYPES[c.type]}" for c in table.columns]
            cols.append("updated_at timestamp NOT NULL DEFAULT now()")
            if name == "orders":
                cols.append("restricted boolean NOT NULL DEFAULT false")
            con.execute(f"CREATE TABLE shop.{name} ({', '.join(cols)}, PRIMARY KEY ({table.key}))")
            insert_rows(con, name, rows.get(name, []))


def insert_rows(
    con: psycopg.Connection, name: str, rows: list[dict[str, Any]], at: str | None = None
) -> None:
    """Rows of the schema's table `name` into the shop's table `at` (default: `name`)."""
    columns, data = full_rows(name, rows)
    if data:
        marks = ", ".join(["%s"] * len(columns))
        with con.cursor() as cur:
            cur.executemany(
                f"INSERT INTO shop.{at or name} ({', '.join(columns)}) VALUES ({marks})",
                [[r[c] for c in columns] for r in data],
            )


def source_rows(dsn: str, name: str, columns: str = "*") -> list[tuple]:
    with psycopg.connect(dsn) as con:
        return con.execute(f"SELECT {columns} FROM shop.{name} ORDER BY 1").fetchall()


@pytest.fixture
def shop(postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """(dsn, policy): a fresh shop database, its DSN in the declared environment variable."""
    dsn = postgres.new_database()
    monkeypatch.setenv(DSN_ENV, dsn)
    return dsn, shop_policy(tmp_path / "policy")


def ingest_sources(home: Home, policy: Policy) -> dict[str, Any]:
    con = connect(home.warehouse)
    try:
        return {n: ingest_table(con, home.landing, n, policy) for n in SOURCED}
    finally:
        con.close()


def core_count(home: Home, name: str) -> int:
    con = connect(home.warehouse, read_only=True)
    try:
        return con.execute(f"SELECT count(*) FROM core.{name}").fetchone()[0]
    finally:
        con.close()


def test_source_tables_load_through_validation_and_quarantine(shop, home: Home) -> None:
    dsn, policy = shop
    create_shop(
        dsn,
        policy,
        contacts=[{}, {"country": "Czechia"}],  # row 2: not an ISO country code
        orders=[{}, {"contact_id": "C0001", "total_amount": "12.50"}],
    )
    results = ingest_sources(home, policy)
    assert results["contacts"].rows_read == 2
    assert results["contacts"].rows_loaded == 1
    assert results["contacts"].problems == {"not an ISO 3166-1 alpha-2 code": 1}
    assert results["orders"].rows_loaded == 2
    con = connect(home.warehouse, read_only=True)
    try:
        assert con.execute(
            "SELECT source_file, row_number, column_name FROM core.quarantine"
        ).fetchall() == [("postgres:shop.contacts", 2, "country")]
        assert con.execute(
            "SELECT total_amount, ordered_at FROM core.orders WHERE order_id = 'O0002'"
        ).fetchone() == (pytest.approx(12.5), dt.datetime(2012, 1, 1, 10))
    finally:
        con.close()


def test_incremental_source_reads_from_its_high_water_mark(
    postgres: PostgresServer, home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = postgres.new_database()
    monkeypatch.setenv(DSN_ENV, dsn)
    policy = shop_policy(tmp_path / "p", incremental={"contacts": "created_at"})
    create_shop(dsn, policy, contacts=[{"created_at": "2020-01-01T00:00:00"}])
    assert ingest_sources(home, policy)["contacts"].rows_read == 1
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute("UPDATE shop.contacts SET first_name = 'Eva'")  # before the mark: not read
        insert_rows(con, "contacts", [{"contact_id": "C0009", "created_at": "2021-06-01"}])
    again = ingest_sources(home, policy)["contacts"]
    # From the mark on (inclusive, so a row written in the same instant is never missed).
    assert (again.rows_read, again.rows_loaded) == (2, 2)
    assert core_count(home, "contacts") == 2


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("unset", "environment variable LETHE_TEST_SHOP_DSN is not set"),
        ("bad_dsn", "cannot connect: connection refused"),
        ("missing_table", "the table does not exist"),
        ("missing_column", "no column 'email'"),
        ("wrong_type", "column 'birth_date' is text at the source, declared date"),
    ],
)
def test_source_problems_are_one_line_naming_the_source(
    shop, home: Home, monkeypatch: pytest.MonkeyPatch, change: str, expected: str
) -> None:
    dsn, policy = shop
    create_shop(dsn, policy, contacts=[{}])
    with psycopg.connect(dsn, autocommit=True) as con:
        if change == "missing_table":
            con.execute("DROP TABLE shop.contacts")
        if change == "missing_column":
            con.execute("ALTER TABLE shop.contacts DROP COLUMN email")
        if change == "wrong_type":
            con.execute("ALTER TABLE shop.contacts ALTER birth_date TYPE text")
    if change == "unset":
        monkeypatch.delenv(DSN_ENV)
    if change == "bad_dsn":
        monkeypatch.setenv(DSN_ENV, "postgresql://secret-user:pw@127.0.0.1:1/shop")
    con = connect(home.warehouse)
    try:
        with pytest.raises(IngestError) as caught:
            ingest_table(con, home.landing, "contacts", policy)
        message = str(caught.value)
        assert "\n" not in message and expected in message
        assert message.startswith("source contacts (postgres shop.contacts via $LETHE_TEST")
        assert "secret" not in message and "127.0.0.1" not in message
        assert con.execute("SELECT count(*) FROM core.contacts").fetchone()[0] == 0
    finally:
        con.close()


AS_OF = "2026-01-15"
# Kept by their purposes at AS_OF: the account (active 2025), the contract (order completed
# 2024), accounting (ordered 2024), the newsletter (granted 2025).
KEPT = {
    "contacts": [{"last_active_at": "2025-06-01T00:00:00"}] * 2,
    "consents": [{"contact_id": "C0001", "granted_at": "2025-01-01T00:00:00"}],
    "orders": [
        {"contact_id": "C0001", "ordered_at": "2024-03-01T10:00:00", "completed_at": "2024-03-05"},
        {"contact_id": "C0002", "ordered_at": "2024-03-01T10:00:00", "completed_at": "2024-03-05"},
    ],
    "shipments": [{"order_id": "O0001", "shipped_at": "2024-03-02T08:00:00"}],
}


def run(home: Path, *args: str) -> str:
    result = lethe_cli(*args, home=home, LETHE_POLICY=str(home.parent / "policy" / "policy.yaml"))
    assert result.returncode == 0, result.stderr
    return result.stdout


def warehouse_rows(home: Path, sql: str) -> list[tuple]:
    con = connect(home / "warehouse.duckdb", read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_erasure_is_carried_back_to_the_shop_database_as_the_policy_says(shop, home: Home) -> None:
    dsn, policy = shop
    create_shop(dsn, policy, **KEPT)
    before = {n: source_rows(dsn, n) for n in SOURCED}
    ingest_sources(home, policy)  # as a run's first step does

    preview = run(home.root, "request", "erasure", "--subject", "C0001", "--dry-run")
    for line in ("shop.contacts", "anonymize", "shop.orders", "pseudonymize", "shop.shipments"):
        assert line in preview
    assert "1 deleted" in preview and "1 updated" in preview  # counted at the source
    assert {n: source_rows(dsn, n) for n in SOURCED} == before  # a dry run changes nothing
    assert warehouse_rows(home.root, "SELECT count(*) FROM requests.requests") == [(0,)]

    run(home.root, "request", "erasure", "--subject", "C0001")
    run(home.root, "run", "--as-of", AS_OF)

    # The rest of the shop is untouched.
    assert source_rows(dsn, "contacts")[0] == before["contacts"][1]
    assert [r for r in source_rows(dsn, "orders") if r[0] == "O0002"] == [before["orders"][1]]
    # The subject: shipment and consent deleted, contact anonymized under a surrogate key.
    assert source_rows(dsn, "shipments") == source_rows(dsn, "consents") == []
    (anonymized,) = [r for r in source_rows(dsn, "contacts", "*") if r[0] != "C0002"]
    contact = dict(
        zip(policy.data_schema.tables["contacts"].column_names, anonymized, strict=False)
    )
    assert contact["contact_id"].startswith("anon-")
    assert contact["email"] is contact["first_name"] is contact["street"] is None
    assert (contact["birth_date"], contact["postal_code"], contact["country"]) == (
        dt.date(1980, 1, 1),
        "110",
        "CZ",
    )
    # The invoice stays for accounting, its buyer pseudonymized with the warehouse's tokens,
    # and marked restricted at the source.
    cols = "order_id, contact_id, billing_name, billing_street, invoice_number, restricted"
    (order,) = [r for r in source_rows(dsn, "orders", cols) if r[0] == "O0001"]
    assert order[4] == "FVO0001" and order[5] is True
    assert "C0001" not in order and "Jan Novák" not in order
    assert warehouse_rows(
        home.root,
        "SELECT order_id, contact_id, billing_name, billing_street FROM core.orders"
        " WHERE order_id = 'O0001'",
    ) == [order[:4]]
    # The ledger says so: per source table, the action, columns and keys; the request is done.
    ledger = warehouse_rows(
        home.root,
        "SELECT table_name, action, columns, keys FROM audit.ledger"
        " WHERE table_name LIKE 'postgres:%' ORDER BY 1",
    )
    # The ledger names keys by their keyed hash, never raw.
    assert ledger == [
        ("postgres:shop.consents", "delete", [], [hashed(home, "K0001")]),
        ("postgres:shop.contacts", "anonymize", ledger[1][2], [hashed(home, "C0001")]),
        (
            "postgres:shop.orders",
            "pseudonymize",
            ["billing_name", "billing_street", "contact_id"],
            [hashed(home, "O0001")],
        ),
        ("postgres:shop.orders", "restrict", ["restricted"], [hashed(home, "O0001")]),
        ("postgres:shop.shipments", "delete", [], [hashed(home, "S0001")]),
    ]
    assert {"contact_id", "email", "birth_date", "postal_code"} <= set(ledger[1][2])
    assert warehouse_rows(home.root, "SELECT status FROM requests.requests") == [("done",)]
    assert warehouse_rows(home.root, "SELECT count(*) FROM requests.source_changes") == [(0,)]
    # The next read of the sources brings nothing back: the invoice holds what the warehouse
    # holds, and the anonymized contact is the warehouse's own anonymized copy's twin.
    counts = {n: core_count(home, n) for n in SOURCED}
    again = ingest_sources(home, policy)
    assert {n: r.rows_read for n, r in again.items()} == dict.fromkeys(SOURCED, 0)
    assert {n: core_count(home, n) for n in SOURCED} == counts
    assert warehouse_rows(home.root, "SELECT count(*) FROM core.quarantine") == [(0,)]


def erase_in_a_run(home: Home, policy: Policy) -> list:
    """The request steps of a run, as its assets call them: plan and carry out the pending
    requests, enforce, carry the changes to the sources, answer."""
    as_of, run_id = dt.date.fromisoformat(AS_OF), "run-test"
    con = connect(home.warehouse)
    try:
        plan_rectifications_and_restrictions(con, policy)
        apply_pending(con, policy, as_of, run_id, vault=home.vault)
        plan_erasures(con, policy, as_of, home.vault)
    finally:
        con.close()
    enforce(home, policy, as_of, run_id)
    con = connect(home.warehouse)
    try:
        outcomes = propagate(con, policy, run_id, as_of)
        answer_pending(con, home, policy, as_of, run_id)
    finally:
        con.close()
    return outcomes


def request_state(home: Home) -> list[tuple]:
    return warehouse_rows(
        home.root,
        "SELECT r.status, p.status, p.reason FROM requests.requests r"
        " LEFT JOIN requests.propagations p USING (request_id)",
    )


@pytest.mark.parametrize("obstacle", ["trigger", "lock", "permissions", "server_down"])
def test_a_refusing_source_rolls_back_and_the_request_waits_for_the_next_run(
    postgres: PostgresServer, shop, home: Home, monkeypatch: pytest.MonkeyPatch, obstacle: str
) -> None:
    dsn, policy = shop
    create_shop(dsn, policy, **KEPT)
    ingest_sources(home, policy)
    con = connect(home.warehouse)
    try:
        record_request(con, policy.data_schema, "erasure", "C0001")
    finally:
        con.close()
    before = {n: source_rows(dsn, n) for n in SOURCED}
    admin = psycopg.connect(dsn, autocommit=True)
    blocker = None
    expected = {
        "trigger": "refused by a trigger or rule",
        "lock": "lock timeout",
        "permissions": "permission denied",
        "server_down": "cannot connect",
    }[obstacle]
    if obstacle == "trigger":
        admin.execute(
            "CREATE FUNCTION shop.no() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN RAISE EXCEPTION 'orders are immutable'; END$$;"
            " CREATE TRIGGER no BEFORE UPDATE ON shop.orders FOR EACH ROW"
            " EXECUTE FUNCTION shop.no()"
        )
    if obstacle == "lock":
        monkeypatch.setenv("LETHE_SOURCE_LOCK_TIMEOUT", "0.3")
        blocker = psycopg.connect(dsn)
        blocker.execute("LOCK TABLE shop.orders IN ACCESS EXCLUSIVE MODE")
    if obstacle == "permissions":
        admin.execute(
            "CREATE ROLE reader LOGIN; GRANT USAGE ON SCHEMA shop TO reader;"
            " GRANT SELECT, DELETE ON ALL TABLES IN SCHEMA shop TO reader"
        )
        monkeypatch.setenv(DSN_ENV, dsn.replace("lethe_test@", "reader@"))
    admin.close()
    if obstacle == "server_down":
        postgres.stop()
    try:
        (outcome,) = erase_in_a_run(home, policy)
    finally:
        if blocker is not None:
            blocker.close()
        if obstacle == "server_down":
            postgres.start()
    assert not outcome.ok and expected in outcome.reason
    assert outcome.reason.startswith(f"source ${DSN_ENV}") and "\n" not in outcome.reason
    # Nothing half-done at the source (the deletes rolled back with the refused update),
    # the warehouse erased the subject, and the request waits with the reason.
    assert {n: source_rows(dsn, n) for n in SOURCED} == before
    assert warehouse_rows(
        home.root, "SELECT count(*) FROM core.contacts WHERE contact_id = 'C0001'"
    ) == [(0,)]
    assert request_state(home) == [("pending", "pending", outcome.reason)]

    monkeypatch.setenv(DSN_ENV, dsn)
    if obstacle == "trigger":
        with psycopg.connect(dsn, autocommit=True) as con:
            con.execute("DROP TRIGGER no ON shop.orders")
    (retried,) = erase_in_a_run(home, policy)
    assert retried.ok
    assert source_rows(dsn, "shipments") == []
    assert request_state(home) == [("done", "done", None)]


def test_server_going_away_mid_read_loads_nothing_and_the_next_run_completes(
    postgres: PostgresServer, shop, home: Home
) -> None:
    dsn, policy = shop
    create_shop(dsn, policy, contacts=[{"contact_id": f"C{i:04d}"} for i in range(1, 301)])
    with psycopg.connect(dsn, autocommit=True) as con:
        # A slow source: every row takes a few milliseconds to read.
        con.execute("ALTER TABLE shop.contacts RENAME TO contacts_data")
        con.execute(
            "CREATE VIEW shop.contacts AS SELECT c.* FROM shop.contacts_data c,"
            " LATERAL (SELECT pg_sleep(0.01) WHERE c.contact_id IS NOT NULL) s"
        )
    killer = threading.Timer(1.0, postgres.kill)
    killer.start()
    con = connect(home.warehouse)
    try:
        with pytest.raises(IngestError) as caught:
            ingest_table(con, home.landing, "contacts", policy)
        killer.join()
        assert "reading failed" in str(caught.value) and "\n" not in str(caught.value)
        assert str(caught.value).startswith("source contacts (postgres shop.contacts")
        assert con.execute("SELECT count(*) FROM core.contacts").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM core.ingest_log").fetchone()[0] == 0
        postgres.start()
        assert ingest_table(con, home.landing, "contacts", policy).rows_loaded == 300
    finally:
        killer.join()
        postgres.start()
        con.close()


def test_rectification_and_restriction_are_carried_back(shop, home: Home) -> None:
    dsn, policy = shop
    create_shop(dsn, policy, **KEPT)
    ingest_sources(home, policy)
    con = connect(home.warehouse)
    try:
        schema = policy.data_schema
        record_request(con, schema, "rectification", "C0002", {"email": "eva@example.org"})
        record_request(con, schema, "restriction", "C0001")
    finally:
        con.close()
    (outcome,) = erase_in_a_run(home, policy)
    assert outcome.ok
    assert [(c.source_table, c.action, c.columns, c.at_source) for c in outcome.changes] == [
        ("shop.contacts", "rectify", ["email"], 1),
        ("shop.orders", "restrict", ["restricted"], 1),
    ]
    assert source_rows(dsn, "contacts", "contact_id, email") == [
        ("C0001", "c0001@example.com"),
        ("C0002", "eva@example.org"),
    ]
    assert source_rows(dsn, "orders", "order_id, restricted") == [("O0001", True), ("O0002", False)]
    assert {s for _, s, _ in request_state(home)} == {"done"}
