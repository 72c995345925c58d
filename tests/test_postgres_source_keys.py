"""Erasure carried back to a realistic shop database (tests/postgres.py, a real server):
primary keys, NOT NULL key columns and foreign keys between the tables, as a shop has."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from lethe.declaration.policy import Policy, load_policy
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from lethe.rights.requests import record_request
from lethe.sources.propagation import preview_request
from tests.conftest import DEFAULT_POLICY, REPO
from tests.request_cases import hashed
from tests.test_postgres_sources import (
    AS_OF,
    DSN_ENV,
    PG_TYPES,
    SOURCED,
    core_count,
    erase_in_a_run,
    ingest_sources,
    insert_rows,
    request_state,
    run,
    source_rows,
    warehouse_rows,
)

# The shop's own table names (the customers are the declared contacts).
AT = {"contacts": "customers", "consents": "consents", "orders": "orders", "shipments": "shipments"}
# C0001 is erased: an old order (anonymized), an invoice of 2024 (kept for accounting), a
# delivery of each (deleted) and a consent (deleted). C0002 and their order stay as they are.
ROWS: dict[str, list[dict[str, Any]]] = {
    "contacts": [{}, {"last_active_at": "2025-06-01T00:00:00"}],
    "consents": [{"contact_id": "C0001"}],
    "orders": [
        {"contact_id": "C0001"},
        {"contact_id": "C0001", "ordered_at": "2024-03-01T10:00:00", "completed_at": "2024-03-05"},
        {"contact_id": "C0002", "ordered_at": "2024-03-01T10:00:00", "completed_at": "2024-03-05"},
    ],
    "shipments": [
        {"order_id": "O0001"},
        {"order_id": "O0002", "shipped_at": "2024-03-02T08:00:00"},
        {"order_id": "O0003", "shipped_at": "2024-03-02T08:00:00"},
    ],
}


def keyed_shop_policy(folder: Path) -> Policy:
    """The default policy on the default schema, its tables read from (and erasures carried
    back to) the shop database."""
    schema = yaml.safe_load((REPO / "lethe" / "eshop" / "schema.yaml").read_text())
    for name in SOURCED:
        pg: dict[str, Any] = {"dsn_env": DSN_ENV, "table": f"shop.{AT[name]}", "writable": True}
        if name == "orders":
            pg["restrict_column"] = "restricted"
        schema["tables"][name]["source"] = {"postgres": pg}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shop.schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    policy = folder / "policy.yaml"
    policy.write_text("schema: shop.schema.yaml\n" + DEFAULT_POLICY.read_text())
    return load_policy(policy)


def create_keyed_shop(
    dsn: str, policy: Policy, order_key: str = "text", not_null: tuple[str, ...] = ()
) -> None:
    """The shop's tables with primary keys, NOT NULL keys and references, and foreign keys
    (consents and orders to customers, shipments to orders; not deferrable), as a shop has
    them. `order_key` is the type of the order number; `not_null` adds NOT NULL columns."""
    spec = policy.data_schema.tables
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute("CREATE SCHEMA shop")
        for name in SOURCED:
            table = spec[name]
            refs = dict(table.references)
            cols = []
            for c in table.columns:
                type_ = order_key if c.name == "order_id" else PG_TYPES[c.type]
                sql = f"{c.name} {type_}"
                if c.name == table.key:
                    sql += " PRIMARY KEY"
                elif c.name in refs:
                    parent = spec[refs[c.name]]
                    sql += f" NOT NULL REFERENCES shop.{AT[parent.name]} ({parent.key})"
                elif c.name in not_null or c.name == "ordered_at":
                    sql += " NOT NULL"
                cols.append(sql)
            if name == "orders":
                cols.append("restricted boolean NOT NULL DEFAULT false")
            con.execute(f"CREATE TABLE shop.{AT[name]} ({', '.join(cols)})")
            insert_rows(con, name, ROWS[name], AT[name])


def rows_at(dsn: str, name: str, columns: str = "*") -> list[tuple]:
    return source_rows(dsn, AT[name], columns)


def orphans(dsn: str) -> int:
    """Rows whose reference points at no row (the foreign keys would refuse them)."""
    with psycopg.connect(dsn) as con:
        return con.execute(
            "SELECT (SELECT count(*) FROM shop.orders o WHERE NOT EXISTS (SELECT 1"
            " FROM shop.customers c WHERE c.contact_id = o.contact_id))"
            " + (SELECT count(*) FROM shop.shipments s WHERE NOT EXISTS (SELECT 1"
            " FROM shop.orders o WHERE o.order_id = s.order_id))"
        ).fetchone()[0]


@pytest.fixture
def keyed_shop(postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    dsn = postgres.new_database()
    monkeypatch.setenv(DSN_ENV, dsn)
    return dsn, keyed_shop_policy(tmp_path / "policy")


def prepare(home: Home, policy: Policy) -> list:
    """Read the shop, then preview an erasure of C0001 (a dry run) and record it."""
    ingest_sources(home, policy)
    con = connect(home.warehouse)
    try:
        preview = preview_request(
            con, policy, home.vault, "erasure", "C0001", None, dt.date.fromisoformat(AS_OF)
        )
        record_request(con, policy.data_schema, "erasure", "C0001")
    finally:
        con.close()
    return preview


def counts(outcomes: list) -> list[tuple]:
    return [(c.source_table, c.action, c.rows, c.at_source) for o in outcomes for c in o.changes]


def ledger(home: Home) -> list[tuple]:
    return warehouse_rows(
        home.root,
        "SELECT table_name, action, columns, keys, reason FROM audit.ledger"
        " WHERE table_name LIKE 'postgres:%' ORDER BY 1, 2",
    )


def test_erasure_keeps_the_shops_keys_and_foreign_keys_valid(keyed_shop, home: Home) -> None:
    dsn, policy = keyed_shop
    create_keyed_shop(dsn, policy)
    before = {n: rows_at(dsn, n) for n in SOURCED}
    preview = prepare(home, policy)
    # The command line's preview says where the source's own keys change the plan.
    shown = run(home.root, "request", "erasure", "--subject", "C0001", "--dry-run")
    assert f"${DSN_ENV} orders.contact_id: follows the new key of shop." in shown
    assert {n: rows_at(dsn, n) for n in SOURCED} == before  # the dry run changed nothing

    (outcome,) = erase_in_a_run(home, policy)
    assert outcome.ok, outcome.reason
    # The dry run counted what the run did, statement by statement.
    assert counts(preview) == counts([outcome])
    assert ("shop.orders", "anonymize", 1, 2) in counts([outcome])  # + the invoice's update

    (customer,) = [r for r in rows_at(dsn, "contacts") if r[0] != "C0002"]
    assert customer[0].startswith("anon-") and customer[1] is None  # e-mail erased
    assert rows_at(dsn, "consents") == []
    orders = rows_at(dsn, "orders", "order_id, contact_id, billing_name, ordered_at, restricted")
    old, invoice = (
        [o for o in orders if o[0] != "O0003" and not o[0].startswith("O0002")],
        [o for o in orders if o[0] == "O0002"][0],
    )
    # The old order: anonymized under a surrogate key (its number is erased), its buyer
    # the anonymized customer's new key: what the foreign key to customers needs.
    assert len(old) == 1 and old[0][0].startswith("anon-") and old[0][1] == customer[0]
    assert old[0][2] is None and old[0][3] == dt.datetime(2012, 1, 1)
    # The invoice: kept, its buyer the anonymized customer's new key too (not a vault token
    # that references nothing), its billing name a token, restricted.
    assert invoice[1] == customer[0] and invoice[2] != "Jan Novák" and invoice[4] is True
    assert [s[0] for s in rows_at(dsn, "shipments")] == ["S0003"]
    assert ("O0003", "C0002") in rows_at(dsn, "orders", "order_id, contact_id")
    assert orphans(dsn) == 0

    entries = ledger(home)
    by = {(t, a): (cols, keys, why) for t, a, cols, keys, why in entries}
    cols, keys, why = by[("postgres:shop.orders", "anonymize")]
    assert "order_id" in cols and keys == [hashed(home, "O0001")]
    assert "contact_id follows the new key of shop.customers" in why
    cols, keys, why = by[("postgres:shop.orders", "pseudonymize")]
    assert "contact_id" in cols and keys == [hashed(home, "O0002")]
    assert (
        "contact_id follows the new key of shop.customers (foreign key orders_contact_id_fkey)"
        in why
    )
    assert all("C0001" not in e[4] and "Jan" not in e[4] for e in entries)
    assert request_state(home) == [("done", "done", None)]

    # A second run changes nothing there, and the next read brings nothing back.
    after = {n: rows_at(dsn, n) for n in SOURCED}
    assert erase_in_a_run(home, policy) == []
    assert {n: rows_at(dsn, n) for n in SOURCED} == after
    warehouse = {n: core_count(home, n) for n in SOURCED}
    again = ingest_sources(home, policy)
    assert {n: r.rows_read for n, r in again.items()} == dict.fromkeys(SOURCED, 0)
    assert {n: core_count(home, n) for n in SOURCED} == warehouse
    assert warehouse_rows(home.root, "SELECT count(*) FROM core.quarantine") == [(0,)]


def test_a_key_too_narrow_for_a_surrogate_stays_and_the_ledger_says_so(
    keyed_shop, home: Home
) -> None:
    dsn, policy = keyed_shop
    create_keyed_shop(dsn, policy, order_key="varchar(10)")
    prepare(home, policy)
    (outcome,) = erase_in_a_run(home, policy)
    assert outcome.ok, outcome.reason
    orders = rows_at(dsn, "orders", "order_id, billing_name, total_amount")
    # The old order keeps its number at the source, everything else as anonymized.
    assert orders[0][0] == "O0001" and orders[0][1] is None and orders[0][2] == 100
    assert orphans(dsn) == 0
    (why,) = [e[4] for e in ledger(home) if e[:2] == ("postgres:shop.orders", "anonymize")]
    assert "order_id kept at the source (character varying(10) cannot hold a surrogate)" in why
    # The kept key is the anonymized row's: the next read skips it.
    again = ingest_sources(home, policy)
    assert again["orders"].rows_read == 0


def test_a_not_null_column_the_policy_erases_is_refused_before_any_change(
    keyed_shop, home: Home
) -> None:
    dsn, policy = keyed_shop
    create_keyed_shop(dsn, policy, not_null=("created_at",))
    before = {n: rows_at(dsn, n) for n in SOURCED}
    (preview,) = prepare(home, policy)
    expected = (
        f"source ${DSN_ENV}: shop.customers.created_at is NOT NULL at the source but the"
        " policy erases it; nothing changed there"
    )
    assert not preview.ok and preview.reason.startswith(expected)
    (outcome,) = erase_in_a_run(home, policy)
    assert outcome.reason == preview.reason and "\n" not in outcome.reason
    assert {n: rows_at(dsn, n) for n in SOURCED} == before
    assert request_state(home) == [("pending", "pending", outcome.reason)]
