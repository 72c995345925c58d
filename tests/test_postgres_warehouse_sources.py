"""PostgreSQL sources on a PostgreSQL warehouse, on a real server (tests/postgres.py): the
shop's tables read by `lethe run` there, and requests carried back to the shop database as
on a DuckDB warehouse (the same rows at the source, the same counts in a dry run, the same
ledger entries), a refusing source leaving the request pending with the reason."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import psycopg
import pytest
import request_cases as rq
import retention_cases as rc

from lethe.declaration.policy import Policy
from lethe.engine import postgres_run
from lethe.engine.keyhash import key_hash
from lethe.engine.postgres_warehouse import key_secret, open_engine, verify
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from lethe.rights import postgres_requests
from lethe.rights.requests import record_request
from lethe.sources import postgres_propagation
from lethe.sources.propagation import SourceOutcome, preview_request
from tests.conftest import lethe_cli
from tests.postgres import PostgresServer
from tests.request_cases import hashed
from tests.test_postgres_dagster import run_job
from tests.test_postgres_sources import (
    AS_OF,
    DSN_ENV,
    KEPT,
    SOURCED,
    create_shop,
    erase_in_a_run,
    ingest_sources,
    insert_rows,
    shop_policy,
    source_rows,
)

WHEN = dt.date.fromisoformat(AS_OF)
RECTIFIED = {"email": "eva@example.org"}


def plain(rows: list[tuple]) -> list[tuple]:
    """Source rows with tokens and surrogates as placeholders (each engine draws its own)."""

    def one(value: Any) -> Any:
        if isinstance(value, str) and rc.TOKEN.fullmatch(value):
            return "<token>"
        if isinstance(value, str) and rc.SURROGATE.fullmatch(value):
            return "<surrogate>"
        return value

    return sorted((tuple(one(v) for v in row) for row in rows), key=repr)


def shop_state(dsn: str, policy: Policy) -> dict[str, list[tuple]]:
    """The shop's rows (declared columns and the restrict column; not `updated_at`, which
    each database sets itself)."""
    state = {}
    for name in SOURCED:
        columns = policy.data_schema.tables[name].column_names
        if name == "orders":
            columns = [*columns, "restricted"]
        state[name] = plain(source_rows(dsn, name, ", ".join(columns)))
    return state


def summary(outcomes: list[SourceOutcome]) -> list[tuple]:
    """What each source got, comparable across engines."""
    return [
        (
            o.source,
            o.reason,
            [(c.source_table, c.action, c.rows, c.columns, c.at_source) for c in o.changes],
        )
        for o in outcomes
    ]


def pg_rows(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn) as con:
        return con.execute(sql).fetchall()


def pg_run(warehouse: str, home: Home, policy: Policy) -> postgres_run.RunResult:
    return postgres_run.run(warehouse, home, policy, WHEN)


def pg_record(warehouse: str, policy: Policy, kind: str, subject: str, changes=None) -> str:
    engine = open_engine(warehouse)
    try:
        return postgres_requests.record(engine, policy, kind, subject, changes).request_id
    finally:
        engine.close()


def cli(home: Home, warehouse: str, *args: str) -> str:
    result = lethe_cli(
        *args,
        home=home.root,
        LETHE_WAREHOUSE=warehouse,
        LETHE_POLICY=str(home.root.parent / "policy" / "policy.yaml"),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


LEDGER = (
    "SELECT table_name, action, columns, keys FROM audit.ledger"
    " WHERE table_name LIKE 'postgres:%' ORDER BY 1, 2"
)


def test_requests_reach_the_source_as_on_a_duckdb_warehouse(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = shop_policy(tmp_path / "policy")
    duck_shop, pg_shop, warehouse = (postgres.new_database() for _ in range(3))
    for dsn in (duck_shop, pg_shop):
        create_shop(dsn, policy, **KEPT)
    before = shop_state(pg_shop, policy)

    # DuckDB warehouse: the steps of a run, as its assets call them.
    monkeypatch.setenv(DSN_ENV, duck_shop)
    duck = Home(tmp_path / "duck").ensure()
    ingest_sources(duck, policy)
    con = connect(duck.warehouse)
    try:
        duck_preview = preview_request(con, policy, duck.vault, "erasure", "C0001", None, WHEN)
        record_request(con, policy.data_schema, "erasure", "C0001")
        record_request(con, policy.data_schema, "rectification", "C0002", RECTIFIED)
        record_request(con, policy.data_schema, "restriction", "C0002")
    finally:
        con.close()
    duck_outcomes = erase_in_a_run(duck, policy)

    # PostgreSQL warehouse: a run reads the shop, a dry run changes nothing, a run erases.
    monkeypatch.setenv(DSN_ENV, pg_shop)
    home = Home(tmp_path / "home").ensure()
    first = pg_run(warehouse, home, policy)
    assert not first.refused and not first.sources
    assert {n: first.ingested[n].rows_loaded for n in SOURCED} == {
        n: len(rows) for n, rows in KEPT.items()
    }
    engine = open_engine(warehouse)
    try:
        preview = postgres_propagation.preview(engine, policy, "erasure", "C0001", None, WHEN)
    finally:
        engine.close()
    assert summary(preview) == summary(duck_preview)
    assert preview[0].changes and all(c.at_source for c in preview[0].changes)
    shown = cli(home, warehouse, "request", "erasure", "--subject", "C0001", "--dry-run")
    for word in ("shop.contacts", "anonymize", "shop.orders", "pseudonymize", "1 deleted"):
        assert word in shown
    assert shop_state(pg_shop, policy) == before  # a dry run changes nothing, here or there
    assert pg_rows(warehouse, "SELECT count(*) FROM requests.requests") == [(0,)]

    pg_record(warehouse, policy, "erasure", "C0001")
    pg_record(warehouse, policy, "rectification", "C0002", RECTIFIED)
    pg_record(warehouse, policy, "restriction", "C0002")
    second = pg_run(warehouse, home, policy)
    assert summary(second.sources) == summary(duck_outcomes)

    # The same rows at both shops, and the invoice's buyer the warehouse's own token.
    assert shop_state(pg_shop, policy) == shop_state(duck_shop, policy) != before
    cols = "order_id, contact_id, billing_name, billing_street"
    (order,) = [r for r in source_rows(pg_shop, "orders", cols) if r[0] == "O0001"]
    assert rc.TOKEN.fullmatch(order[1])
    assert pg_rows(warehouse, f"SELECT {cols} FROM core.orders WHERE order_id = 'O0001'") == [order]
    # The same ledger entries (keys hashed with each warehouse's own secret), verified.
    with psycopg.connect(warehouse) as con:
        secret = key_secret(con)
        ledger = con.execute(LEDGER).fetchall()
        assert verify(con).ok
    raw = ("C0001", "C0002", "K0001", "O0001", "O0002", "S0001")
    duck_keys = {hashed(duck, k): k for k in raw}
    pg_keys = {key_hash(secret, k): k for k in raw}

    def entries(rows: list[tuple], keys: dict[str, str]) -> list[tuple]:
        return sorted((t, a, list(c), sorted(keys[k] for k in ks)) for t, a, c, ks in rows)

    assert entries(ledger, pg_keys) == entries(rq.query(duck, LEDGER), duck_keys)
    assert [(t, a, k) for t, a, _, k in entries(ledger, pg_keys)] == [
        ("postgres:shop.consents", "delete", ["K0001"]),
        ("postgres:shop.contacts", "anonymize", ["C0001"]),
        ("postgres:shop.contacts", "rectify", ["C0002"]),
        ("postgres:shop.orders", "pseudonymize", ["O0001"]),
        ("postgres:shop.orders", "restrict", ["O0001"]),
        ("postgres:shop.orders", "restrict", ["O0002"]),
        ("postgres:shop.shipments", "delete", ["S0001"]),
    ]
    assert pg_rows(warehouse, "SELECT status FROM requests.requests") == [("done",)] * 3
    assert pg_rows(warehouse, "SELECT count(*) FROM requests.source_changes") == [(0,)]
    # No erased or replaced value is left in the warehouse's table files (the new one is).
    with psycopg.connect(warehouse, autocommit=True) as con:
        files, _ = postgres.table_files(con)
    gone = {"email of C0001": "c0001@example.com", "old email of C0002": "c0002@example.com"}
    assert rc.scan_files(files, {"new email": RECTIFIED["email"]}).keys() == {"new email"}
    assert rc.scan_files(files, gone) == {}
    # The next read brings nothing back: the warehouse holds what the source holds.
    third = pg_run(warehouse, home, policy)
    assert {n: third.ingested[n].rows_loaded for n in SOURCED} == dict.fromkeys(SOURCED, 0)
    assert not third.sources


def test_incremental_source_on_a_postgres_warehouse(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop, warehouse = postgres.new_database(), postgres.new_database()
    monkeypatch.setenv(DSN_ENV, shop)
    policy = shop_policy(tmp_path / "policy", incremental={"contacts": "created_at"})
    active = {"last_active_at": "2025-06-01T00:00:00"}  # kept by the account's purpose
    contacts = [
        {"created_at": "2020-01-01T00:00:00", **active},
        {"contact_id": "C0002", "created_at": "2021-01-01T00:00:00", **active},
    ]
    create_shop(shop, policy, contacts=contacts)
    home = Home(tmp_path / "home").ensure()
    assert pg_run(warehouse, home, policy).ingested["contacts"].rows_read == 2
    with psycopg.connect(shop, autocommit=True) as con:
        # Before the mark: not read again.
        con.execute("UPDATE shop.contacts SET first_name = 'Eva' WHERE contact_id = 'C0001'")
        new = {"contact_id": "C0009", "created_at": "2021-06-01", **active}
        insert_rows(con, "contacts", [new])
    again = pg_run(warehouse, home, policy).ingested["contacts"]
    # From the mark on (inclusive): the row at the mark is known already (not counted as
    # read, as on DuckDB), the new one loads.
    assert (again.rows_read, again.rows_loaded) == (1, 1)
    assert pg_rows(warehouse, "SELECT contact_id, first_name FROM core.contacts ORDER BY 1") == [
        ("C0001", "Jan"),
        ("C0002", "Jan"),
        ("C0009", "Jan"),
    ]
    assert pg_rows(warehouse, "SELECT high_water FROM core.source_marks") == [
        ("2021-06-01 00:00:00",)
    ]


def test_a_refusing_source_leaves_the_request_pending_until_a_later_run(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop, warehouse = postgres.new_database(), postgres.new_database()
    monkeypatch.setenv(DSN_ENV, shop)
    policy = shop_policy(tmp_path / "policy")
    create_shop(shop, policy, **KEPT)
    home = Home(tmp_path / "home").ensure()
    pg_run(warehouse, home, policy)
    pg_record(warehouse, policy, "erasure", "C0001")
    with psycopg.connect(shop, autocommit=True) as con:
        con.execute(
            "CREATE FUNCTION shop.no() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN RAISE EXCEPTION 'orders are immutable'; END$$;"
            " CREATE TRIGGER no BEFORE UPDATE ON shop.orders FOR EACH ROW"
            " EXECUTE FUNCTION shop.no()"
        )
    before = shop_state(shop, policy)
    (refused,) = pg_run(warehouse, home, policy).sources
    assert not refused.ok and "refused by a trigger or rule" in refused.reason
    assert refused.reason.startswith(f"source ${DSN_ENV}") and "\n" not in refused.reason
    # Nothing half-done at the source; the warehouse erased the subject; the request waits.
    assert shop_state(shop, policy) == before
    assert pg_rows(warehouse, "SELECT count(*) FROM core.contacts WHERE contact_id = 'C0001'") == [
        (0,)
    ]
    state = (
        "SELECT r.status, p.status, p.reason FROM requests.requests r"
        " JOIN requests.propagations p USING (request_id)"
    )
    assert pg_rows(warehouse, state) == [("pending", "pending", refused.reason)]

    with psycopg.connect(shop, autocommit=True) as con:
        con.execute("DROP TRIGGER no ON shop.orders")
    shown = cli(home, warehouse, "propagate", "--dry-run")
    assert "shop.shipments" in shown and "1 deleted" in shown
    assert shop_state(shop, policy) == before
    assert pg_rows(warehouse, state) == [("pending", "pending", refused.reason)]
    shown = cli(home, warehouse, "run", "--as-of", AS_OF)
    assert "shop.shipments" in shown and "1 deleted" in shown
    assert source_rows(shop, "shipments") == source_rows(shop, "consents") == []
    assert pg_rows(warehouse, state) == [("done", "done", None)]


def test_a_dagster_run_carries_the_erasure_to_the_source(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline job on a PostgreSQL warehouse reads the source and, in its answers
    step, carries an erasure back to it, as `lethe run` does there."""
    shop, warehouse = postgres.new_database(), postgres.new_database()
    monkeypatch.setenv(DSN_ENV, shop)
    policy = shop_policy(tmp_path / "policy")
    create_shop(shop, policy, **KEPT)
    home = Home(tmp_path / "home").ensure()
    monkeypatch.setenv("LETHE_HOME", str(home.root))
    monkeypatch.setenv("LETHE_WAREHOUSE", warehouse)
    monkeypatch.delenv("LETHE_SHARDS", raising=False)
    assert run_job(policy, WHEN).success
    assert pg_rows(warehouse, "SELECT count(*) FROM core.shipments") != [(0,)]
    pg_record(warehouse, policy, "erasure", "C0001")
    assert run_job(policy, WHEN).success
    assert source_rows(shop, "shipments") == source_rows(shop, "consents") == []
    state = (
        "SELECT r.status, p.status FROM requests.requests r"
        " JOIN requests.propagations p USING (request_id)"
    )
    assert pg_rows(warehouse, state) == [("done", "done")]
