"""Ingest: bad rows are quarantined with table, row, column and reason; good rows load;
unusable files are refused with an error naming the file; reruns are idempotent."""

from __future__ import annotations

import csv
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import INGEST_ORDER, TABLES, full_rows, ingest_all, write_landing, write_landing_set

from lethe.declaration.policy import Policy
from lethe.engine.audit import verify
from lethe.engine.ingest import (
    IngestError,
    IngestResult,
    ingest_table,
    landing_leftovers,
    quarantine_summary,
)
from lethe.engine.tagging import tag_all
from lethe.engine.warehouse import connect
from lethe.operations.activity_logs import purge_logs
from lethe.operations.home import Home

# Every character str.strip() removes (as --subject does): each makes a value blank.
PYTHON_SPACE = [chr(i) for i in range(0x3001) if chr(i).isspace()]


@pytest.fixture
def con(home: Home) -> Any:
    c = connect(home.warehouse)
    yield c
    c.close()


def quarantined(con: duckdb.DuckDBPyConnection, table: str) -> list[tuple[Any, ...]]:
    return con.execute(
        "SELECT table_name, source_file, row_number, column_name, reason FROM core.quarantine"
        " WHERE table_name = ? ORDER BY row_number, column_name",
        [table],
    ).fetchall()


def keys(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    key = TABLES[table].key
    return [r[0] for r in con.execute(f"SELECT {key} FROM core.{table} ORDER BY {key}").fetchall()]


def assert_accounted(con: duckdb.DuckDBPyConnection, result: IngestResult) -> None:
    """Nothing silently dropped: every row read is either loaded or quarantined."""
    assert result.rows_loaded + result.rows_quarantined == result.rows_read
    distinct_bad = con.execute(
        "SELECT count(DISTINCT row_number) FROM core.quarantine WHERE table_name = ?",
        [result.table],
    ).fetchone()[0]
    assert distinct_bad == result.rows_quarantined
    assert len(keys(con, result.table)) == result.rows_loaded
    log = con.execute(
        "SELECT rows_read, rows_loaded, rows_quarantined FROM core.ingest_log WHERE table_name = ?",
        [result.table],
    ).fetchall()
    assert log == [(result.rows_read, result.rows_loaded, result.rows_quarantined)]


def load_contacts(con: duckdb.DuckDBPyConnection, home: Home, policy: Policy, n: int = 2) -> None:
    write_landing(home.landing, "contacts", [{"contact_id": f"C{i}"} for i in range(1, n + 1)])
    assert ingest_table(con, home.landing, "contacts", policy).rows_loaded == n


# --- bad rows ------------------------------------------------------------------------------


def test_good_file_loads_typed(con: duckdb.DuckDBPyConnection, home: Home, policy: Policy) -> None:
    write_landing_set(
        home.landing,
        contacts=[{"contact_id": "C1", "birth_date": None}, {"contact_id": "C2"}],
        orders=[{"order_id": "O1", "contact_id": "C2", "total_amount": "1234.50"}],
    )
    results = ingest_all(con, home.landing, policy)
    for name in ("contacts", "consents", "orders", "shipments"):
        assert results[name].ok and results[name].source_file == f"{name}.csv"
        assert_accounted(con, results[name])
    assert results["holds"].source_file is None
    assert keys(con, "contacts") == ["C1", "C2"]
    row = con.execute(
        "SELECT ordered_at, completed_at, total_amount, _state, _ingested_at FROM core.orders"
    ).fetchone()
    assert row[0] == dt.datetime(2012, 1, 1, 10, 0)
    assert row[1] == dt.datetime(2012, 1, 5, 10, 0)
    assert row[2] == Decimal("1234.50")
    assert row[3] == "active" and row[4] is not None
    birth = con.execute("SELECT birth_date FROM core.contacts ORDER BY contact_id").fetchall()
    assert birth == [(None,), (dt.date(1980, 5, 17),)]
    assert con.execute("SELECT count(*) FROM core.quarantine").fetchone()[0] == 0


def test_wrong_type(con: duckdb.DuckDBPyConnection, home: Home, policy: Policy) -> None:
    load_contacts(con, home, policy)
    write_landing(
        home.landing,
        "orders",
        [
            {"order_id": "O1", "contact_id": "C1"},
            {"order_id": "O2", "contact_id": "C1", "total_amount": "abc"},
            {"order_id": "O3", "contact_id": "C2", "total_amount": "12,50"},
        ],
    )
    result = ingest_table(con, home.landing, "orders", policy)
    assert quarantined(con, "orders") == [
        ("orders", "orders.csv", 2, "total_amount", "wrong type: expected decimal"),
        ("orders", "orders.csv", 3, "total_amount", "wrong type: expected decimal"),
    ]
    assert keys(con, "orders") == ["O1"]
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (3, 1, 2)
    assert not result.ok
    assert result.problems == {"wrong type: expected decimal": 2}
    assert_accounted(con, result)


def test_unparsable_date(con: duckdb.DuckDBPyConnection, home: Home, policy: Policy) -> None:
    write_landing(
        home.landing,
        "contacts",
        [
            {"contact_id": "C1"},
            {"contact_id": "C2", "created_at": "yesterday"},
            {"contact_id": "C3", "birth_date": "1980-02-30"},
            {"contact_id": "C4", "last_active_at": "01/03/2024"},
        ],
    )
    result = ingest_table(con, home.landing, "contacts", policy)
    assert quarantined(con, "contacts") == [
        ("contacts", "contacts.csv", 2, "created_at", "unparsable date: expected timestamp"),
        ("contacts", "contacts.csv", 3, "birth_date", "unparsable date: expected date"),
        ("contacts", "contacts.csv", 4, "last_active_at", "unparsable date: expected timestamp"),
    ]
    assert keys(con, "contacts") == ["C1"]
    assert_accounted(con, result)


def test_quarantine_keeps_the_rejected_record(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    write_landing(home.landing, "contacts", [{"contact_id": "C1", "created_at": "never"}])
    ingest_table(con, home.landing, "contacts", policy)
    record, when = con.execute("SELECT record, quarantined_at FROM core.quarantine").fetchone()
    assert json.loads(record)["created_at"] == "never"
    assert json.loads(record)["contact_id"] == "C1"
    assert when is not None
    assert quarantine_summary(con, "contacts") == [
        ("contacts.csv", 1, "created_at", "unparsable date: expected timestamp")
    ]


def test_duplicate_key(con: duckdb.DuckDBPyConnection, home: Home, policy: Policy) -> None:
    write_landing(
        home.landing,
        "contacts",
        [
            {"contact_id": "C1", "first_name": "První"},
            {"contact_id": "C2"},
            {"contact_id": "C1", "first_name": "Druhý"},
            {"contact_id": "C1", "first_name": "Třetí"},
        ],
    )
    result = ingest_table(con, home.landing, "contacts", policy)
    assert quarantined(con, "contacts") == [
        ("contacts", "contacts.csv", 3, "contact_id", "duplicate key (first at row 1)"),
        ("contacts", "contacts.csv", 4, "contact_id", "duplicate key (first at row 1)"),
    ]
    first = con.execute("SELECT first_name FROM core.contacts WHERE contact_id = 'C1'").fetchall()
    assert first == [("První",)]
    assert keys(con, "contacts") == ["C1", "C2"]
    assert_accounted(con, result)


def test_orphan_order(con: duckdb.DuckDBPyConnection, home: Home, policy: Policy) -> None:
    load_contacts(con, home, policy)
    write_landing(
        home.landing,
        "orders",
        [{"order_id": "O1", "contact_id": "C1"}, {"order_id": "O2", "contact_id": "C404"}],
    )
    result = ingest_table(con, home.landing, "orders", policy)
    assert quarantined(con, "orders") == [
        ("orders", "orders.csv", 2, "contact_id", "orphan foreign key: no contacts.contact_id")
    ]
    assert keys(con, "orders") == ["O1"]
    assert_accounted(con, result)


def test_orphan_shipment(con: duckdb.DuckDBPyConnection, home: Home, policy: Policy) -> None:
    load_contacts(con, home, policy)
    write_landing(home.landing, "orders", [{"order_id": "O1", "contact_id": "C1"}])
    ingest_table(con, home.landing, "orders", policy)
    write_landing(
        home.landing,
        "shipments",
        [{"shipment_id": "S1", "order_id": "O404"}, {"shipment_id": "S2", "order_id": "O1"}],
    )
    result = ingest_table(con, home.landing, "shipments", policy)
    assert quarantined(con, "shipments") == [
        ("shipments", "shipments.csv", 1, "order_id", "orphan foreign key: no orders.order_id")
    ]
    assert keys(con, "shipments") == ["S2"]
    assert_accounted(con, result)


def test_rejected_parent_makes_children_orphans(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    write_landing_set(
        home.landing,
        contacts=[{"contact_id": "C1"}, {"contact_id": "C2", "created_at": "bad"}],
        orders=[{"order_id": "O1", "contact_id": "C1"}, {"order_id": "O2", "contact_id": "C2"}],
        shipments=[
            {"shipment_id": "S1", "order_id": "O1"},
            {"shipment_id": "S2", "order_id": "O2"},
        ],
    )
    results = ingest_all(con, home.landing, policy)
    assert keys(con, "orders") == ["O1"]
    assert keys(con, "shipments") == ["S1"]
    assert [r[2:4] for r in quarantined(con, "orders")] == [(2, "contact_id")]
    assert [r[2:4] for r in quarantined(con, "shipments")] == [(2, "order_id")]
    for name in ("contacts", "orders", "shipments"):
        assert_accounted(con, results[name])


def test_orphans_wait_in_quarantine_and_load_when_their_parent_arrives(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    """An order (and its shipment) whose contact comes in a later delivery is retried on every
    ingest and loads once the contact is there; nothing is left waiting."""
    load_contacts(con, home, policy, n=1)
    write_landing(
        home.landing,
        "orders",
        [{"order_id": "O1", "contact_id": "C1"}, {"order_id": "O2", "contact_id": "C2"}],
    )
    ingest_table(con, home.landing, "orders", policy)
    write_landing(home.landing, "shipments", [{"shipment_id": "S2", "order_id": "O2"}])
    ingest_table(con, home.landing, "shipments", policy)
    assert keys(con, "orders") == ["O1"] and keys(con, "shipments") == []
    # A run without the parent: still waiting, still counted.
    waiting = ingest_table(con, home.landing, "orders", policy)
    assert (waiting.rows_waiting, waiting.rows_retried) == (1, 0) and not waiting.ok
    load_contacts(con, home, policy, n=2)  # C2 arrives
    orders = ingest_table(con, home.landing, "orders", policy)  # no new orders file
    shipments = ingest_table(con, home.landing, "shipments", policy)
    assert keys(con, "orders") == ["O1", "O2"] and keys(con, "shipments") == ["S2"]
    assert (orders.rows_retried, orders.rows_waiting, orders.ok) == (1, 0, True)
    assert (shipments.rows_retried, shipments.rows_waiting, shipments.ok) == (1, 0, True)
    assert con.execute("SELECT count(*) FROM core.quarantine").fetchone()[0] == 0
    row = con.execute("SELECT _state, total_amount FROM core.orders WHERE order_id = 'O2'")
    assert row.fetchone() == ("active", Decimal("100.00"))


def test_a_waiting_orphan_never_overwrites_a_later_delivery(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    load_contacts(con, home, policy, n=1)
    write_landing(home.landing, "orders", [{"order_id": "O1", "contact_id": "C2"}])
    ingest_table(con, home.landing, "orders", policy)  # waits for C2
    write_landing(home.landing, "orders", [{"order_id": "O1", "contact_id": "C1"}])
    later = ingest_table(con, home.landing, "orders", policy)  # a later delivery of O1
    assert later.rows_waiting == 0  # the waiting copy is superseded
    load_contacts(con, home, policy, n=2)
    ingest_table(con, home.landing, "orders", policy)
    assert con.execute("SELECT contact_id FROM core.orders").fetchall() == [("C1",)]


def test_purged_quarantine_rows_are_recorded_in_the_ledger(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    load_contacts(con, home, policy, n=1)
    write_landing(
        home.landing,
        "orders",
        [
            {"order_id": "O1", "contact_id": "C404"},
            {"order_id": "O2", "contact_id": "C405"},
            {"order_id": "O3", "contact_id": "C1", "total_amount": "abc"},
        ],
    )
    ingest_table(con, home.landing, "orders", policy)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=31)
    assert purge_logs(con, policy, later, run_id="r1").quarantine == 3
    entries = con.execute(
        "SELECT action, table_name, columns, key_count, reason, details FROM audit.ledger"
        " ORDER BY reason"
    ).fetchall()
    assert [e[:4] for e in entries] == [
        ("purge", "orders", ["contact_id"], 0),
        ("purge", "orders", ["total_amount"], 0),
    ]
    assert "orphan foreign key: no contacts.contact_id" in entries[0][4]
    assert json.loads(entries[0][5]) == {"rows": 2}
    assert json.loads(entries[1][5]) == {"rows": 1}
    assert verify(con).ok


def test_unknown_purpose(con: duckdb.DuckDBPyConnection, home: Home, policy: Policy) -> None:
    load_contacts(con, home, policy)
    write_landing(
        home.landing,
        "consents",
        [
            {"consent_id": "K1", "contact_id": "C1", "purpose": "newsletter"},
            {"consent_id": "K2", "contact_id": "C1", "purpose": "telemarketing"},
            {"consent_id": "K3", "contact_id": "C2", "purpose": "consent_evidence"},
        ],
    )
    result = ingest_table(con, home.landing, "consents", policy)
    assert quarantined(con, "consents") == [
        ("consents", "consents.csv", 2, "purpose", "unknown purpose (not in the policy)")
    ]
    assert keys(con, "consents") == ["K1", "K3"]
    assert_accounted(con, result)


@pytest.mark.parametrize(
    ("table", "rows", "bad_row", "column"),
    [
        ("contacts", [{"contact_id": "C1"}, {"contact_id": None}], 2, "contact_id"),
        ("contacts", [{"contact_id": "  "}, {"contact_id": "C2"}], 1, "contact_id"),
        # Blank is any Unicode whitespace (what --subject strips), not only spaces.
        ("contacts", [{"contact_id": "C1"}, {"contact_id": " \t "}], 2, "contact_id"),
        ("contacts", [{"contact_id": "\u00a0\u3000"}, {"contact_id": "C2"}], 1, "contact_id"),
        (
            "contacts",
            [{"contact_id": "C1"}, {"contact_id": "".join(PYTHON_SPACE)}],
            2,
            "contact_id",
        ),
        ("orders", [{"order_id": "O1", "contact_id": "\u2003\n"}], 1, "contact_id"),
        ("consents", [{"consent_id": "K1", "contact_id": "C1", "purpose": "\t"}], 1, "purpose"),
        ("contacts", [{"contact_id": "C1", "created_at": None}], 1, "created_at"),
        ("orders", [{"order_id": None, "contact_id": "C1"}], 1, "order_id"),
        ("orders", [{"order_id": "O1", "contact_id": "C1", "ordered_at": None}], 1, "ordered_at"),
        ("consents", [{"consent_id": "K1", "contact_id": "C1", "purpose": None}], 1, "purpose"),
    ],
)
def test_missing_required_value(
    con: duckdb.DuckDBPyConnection,
    home: Home,
    policy: Policy,
    table: str,
    rows: list[dict[str, Any]],
    bad_row: int,
    column: str,
) -> None:
    if table != "contacts":
        load_contacts(con, home, policy)
    write_landing(home.landing, table, rows)
    result = ingest_table(con, home.landing, table, policy)
    assert (table, f"{table}.csv", bad_row, column, "missing value") in quarantined(con, table)
    assert result.rows_quarantined == 1
    assert_accounted(con, result)


def test_bad_country_code(con: duckdb.DuckDBPyConnection, home: Home, policy: Policy) -> None:
    write_landing(
        home.landing,
        "contacts",
        [{"contact_id": "C1", "country": "Czechia"}, {"contact_id": "C2", "country": "cz"}],
    )
    result = ingest_table(con, home.landing, "contacts", policy)
    assert [r[2:] for r in quarantined(con, "contacts")] == [
        (1, "country", "not an ISO 3166-1 alpha-2 code"),
        (2, "country", "not an ISO 3166-1 alpha-2 code"),
    ]
    assert_accounted(con, result)


def test_row_with_several_problems_counted_once(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    load_contacts(con, home, policy)
    write_landing(
        home.landing,
        "orders",
        [
            {"order_id": "O1", "contact_id": "C9", "total_amount": "x", "ordered_at": "never"},
            {"order_id": "O2", "contact_id": "C1"},
        ],
    )
    result = ingest_table(con, home.landing, "orders", policy)
    assert {r[3] for r in quarantined(con, "orders")} == {
        "contact_id",
        "total_amount",
        "ordered_at",
    }
    assert (result.rows_read, result.rows_loaded, result.rows_quarantined) == (2, 1, 1)
    assert_accounted(con, result)


# --- unusable files ------------------------------------------------------------------------


def _nothing_loaded(con: duckdb.DuckDBPyConnection, table: str) -> None:
    assert con.execute(f"SELECT count(*) FROM core.{table}").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM core.quarantine").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM core.ingest_log").fetchone()[0] == 0


def test_missing_required_column(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    path = write_landing(home.landing, "contacts", [{"contact_id": "C1"}], omit=("created_at",))
    with pytest.raises(IngestError) as info:
        ingest_table(con, home.landing, "contacts", policy)
    message = str(info.value)
    assert str(path) in message
    assert "'created_at'" in message
    assert "email" not in message  # only the missing column is named
    assert path.exists()  # left in landing for the data engineer to fix
    _nothing_loaded(con, "contacts")


def test_missing_required_columns_parquet(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    path = write_landing(
        home.landing, "contacts", [{"contact_id": "C1"}], fmt="parquet", omit=("email", "phone")
    )
    with pytest.raises(IngestError) as info:
        ingest_table(con, home.landing, "contacts", policy)
    assert str(path) in str(info.value)
    assert "'email'" in str(info.value) and "'phone'" in str(info.value)
    assert path.exists()
    _nothing_loaded(con, "contacts")


def test_missing_file(con: duckdb.DuckDBPyConnection, home: Home, policy: Policy) -> None:
    with pytest.raises(IngestError) as info:
        ingest_table(con, home.landing, "contacts", policy)
    assert "contacts.parquet" in str(info.value) and "contacts.csv" in str(info.value)
    assert str(home.landing) in str(info.value)
    with pytest.raises(IngestError, match="contacts"):
        ingest_all(con, home.landing, policy)


def test_missing_optional_holds_is_fine(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    result = ingest_table(con, home.landing, "holds", policy)
    assert result.source_file is None and result.rows_read == 0 and result.ok


def test_unreadable_parquet(con: duckdb.DuckDBPyConnection, home: Home, policy: Policy) -> None:
    path = home.landing / "contacts.parquet"
    path.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(IngestError) as info:
        ingest_table(con, home.landing, "contacts", policy)
    assert str(path) in str(info.value)
    assert "cannot read" in str(info.value)
    assert "\n" not in str(info.value)
    assert path.exists()
    _nothing_loaded(con, "contacts")


def test_two_files_for_one_table(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    write_landing(home.landing, "contacts", [{"contact_id": "C1"}])
    write_landing(home.landing, "contacts", [{"contact_id": "C2"}], fmt="parquet")
    with pytest.raises(IngestError, match="contacts.parquet and contacts.csv"):
        ingest_table(con, home.landing, "contacts", policy)
    _nothing_loaded(con, "contacts")


# --- formats and extra columns -------------------------------------------------------------


def test_parquet_strings(con: duckdb.DuckDBPyConnection, home: Home, policy: Policy) -> None:
    write_landing(
        home.landing,
        "contacts",
        [{"contact_id": "C1"}, {"contact_id": "C2", "last_active_at": "soon"}],
        fmt="parquet",
    )
    result = ingest_table(con, home.landing, "contacts", policy)
    assert result.source_file == "contacts.parquet"
    assert keys(con, "contacts") == ["C1"]
    assert quarantined(con, "contacts") == [
        ("contacts", "contacts.parquet", 2, "last_active_at", "unparsable date: expected timestamp")
    ]
    assert not (home.landing / "contacts.parquet").exists()


def test_parquet_native_types(con: duckdb.DuckDBPyConnection, home: Home, policy: Policy) -> None:
    load_contacts(con, home, policy)
    when = dt.datetime(2025, 6, 1, 12, 30)
    table = pa.table(
        {
            "order_id": ["O1"],
            "contact_id": ["C1"],
            "ordered_at": pa.array([when], pa.timestamp("us")),
            "completed_at": pa.array([None], pa.timestamp("us")),
            "invoice_number": ["FV1"],
            "total_amount": pa.array([Decimal("99.90")], pa.decimal128(12, 2)),
            "currency": ["EUR"],
            "billing_name": ["Jan Novák"],
            "billing_street": ["Dlouhá 1"],
            "billing_city": ["Praha"],
            "billing_postal_code": ["11000"],
            "billing_country": ["CZ"],
        }
    )
    pq.write_table(table, home.landing / "orders.parquet")
    result = ingest_table(con, home.landing, "orders", policy)
    assert result.ok and result.rows_loaded == 1
    row = con.execute("SELECT ordered_at, completed_at, total_amount FROM core.orders").fetchone()
    assert row == (when, None, Decimal("99.90"))


def _text_parquet(table: str, rows: list[dict[str, Any]], **typed: pa.Array) -> pa.Table:
    """A landing table of text columns, with the columns in `typed` replaced."""
    columns, data = full_rows(table, rows)
    out = pa.Table.from_pylist(data, schema=pa.schema([(c, pa.string()) for c in columns]))
    for name, values in typed.items():
        out = out.set_column(columns.index(name), name, values)
    return out


@pytest.mark.parametrize(
    ("column", "values", "kind"),
    [
        ("email", pa.array([{"local": "jan", "domain": "example.test"}]), "STRUCT"),
        ("contact_id", pa.array([["C1"]]), "LIST"),
        (
            "created_at",
            pa.array([[("at", "2020-01-01")]], pa.map_(pa.string(), pa.string())),
            "MAP",
        ),
    ],
)
def test_parquet_nested_contract_column_refuses_the_file(
    con: duckdb.DuckDBPyConnection,
    home: Home,
    policy: Policy,
    column: str,
    values: pa.Array,
    kind: str,
) -> None:
    path = home.landing / "contacts.parquet"
    pq.write_table(_text_parquet("contacts", [{"contact_id": "C1"}], **{column: values}), path)
    with pytest.raises(IngestError) as info:
        ingest_table(con, home.landing, "contacts", policy)
    message = str(info.value)
    assert str(path) in message and f"'{column}'" in message and kind in message
    assert "example.test" not in message and "\n" not in message
    assert path.exists()
    _nothing_loaded(con, "contacts")


def test_parquet_scalar_of_another_type_is_checked_as_text(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    """A scalar typed otherwise than the contract is read as its text, like a CSV value:
    a boolean is no amount (DuckDB alone casts true to 1.00), an integer is a postal code."""
    load_contacts(con, home, policy)
    rows = [{"order_id": "O1", "contact_id": "C1"}, {"order_id": "O2", "contact_id": "C2"}]
    typed = {
        "total_amount": pa.array([True, None]),
        "billing_postal_code": pa.array([11000, 60200]),
        "ordered_at": pa.array([dt.date(2025, 6, 1)] * 2),
    }
    pq.write_table(_text_parquet("orders", rows, **typed), home.landing / "orders.parquet")
    result = ingest_table(con, home.landing, "orders", policy)
    assert quarantined(con, "orders") == [
        ("orders", "orders.parquet", 1, "total_amount", "wrong type: expected decimal")
    ]
    assert con.execute(
        "SELECT order_id, total_amount, billing_postal_code, ordered_at FROM core.orders"
    ).fetchall() == [("O2", None, "60200", dt.datetime(2025, 6, 1))]
    assert_accounted(con, result)


def test_parquet_text_beside_typed_columns_is_screened(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    """Typed columns are left out of the screen for control characters and long values
    (they hold no text); the text columns beside them are screened as in a CSV."""
    load_contacts(con, home, policy)
    rows = [
        {"order_id": "O1", "contact_id": "C1", "billing_name": "Jan\x07Novák"},
        {"order_id": "O2", "contact_id": "C2", "billing_city": "P" * 10_001},
        {"order_id": "O3", "contact_id": "C1"},
    ]
    typed = {
        "ordered_at": pa.array([dt.datetime(2025, 6, 1)] * 3, pa.timestamp("us")),
        "total_amount": pa.array([Decimal("1.00")] * 3, pa.decimal128(12, 2)),
        "billing_postal_code": pa.array([11000, 60200, 70030], pa.uint32()),
    }
    pq.write_table(_text_parquet("orders", rows, **typed), home.landing / "orders.parquet")
    result = ingest_table(con, home.landing, "orders", policy)
    assert quarantined(con, "orders") == [
        ("orders", "orders.parquet", 1, "billing_name", "control characters"),
        ("orders", "orders.parquet", 2, "billing_city", "value too long (over 10000 characters)"),
    ]
    assert keys(con, "orders") == ["O3"]
    assert_accounted(con, result)


def test_mixed_line_endings_load_like_uniform_ones(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    """LF, CRLF and CR row ends mixed in one CSV (files concatenated or edited by hand)
    load the same rows as the uniform file; line breaks inside quoted values are kept."""
    rows = [
        {"contact_id": "C1", "street": "Dlouhá 1\r\npatro 2"},
        {"contact_id": "C2", "birth_date": None},
        {"contact_id": "C3", "street": "Krátká 2\nvzadu"},
        {"contact_id": "C4", "last_name": ""},
    ]
    write_landing(home.landing, "contacts", rows)  # uniform CRLF
    assert ingest_table(con, home.landing, "contacts", policy).rows_loaded == 4
    uniform = con.execute(
        "SELECT * EXCLUDE (_ingested_at) FROM core.contacts ORDER BY 1"
    ).fetchall()
    columns, data = full_rows("contacts", rows)
    with (home.landing / "contacts.csv").open("w", newline="", encoding="utf-8") as fh:
        for end, row in zip(["\n", "\r\n", "\n", "\r\n", "\r"], [columns, *data], strict=True):
            values = row if row is columns else [row[c] or "" for c in columns]
            csv.writer(fh, lineterminator=end).writerow(values)
    result = ingest_table(con, home.landing, "contacts", policy)
    assert result.ok and result.rows_loaded == 4
    mixed = con.execute("SELECT * EXCLUDE (_ingested_at) FROM core.contacts ORDER BY 1").fetchall()
    assert mixed == uniform
    assert con.execute(
        "SELECT street FROM core.contacts WHERE contact_id IN ('C1', 'C3') ORDER BY 1"
    ).fetchall() == [("Dlouhá 1\r\npatro 2",), ("Krátká 2\nvzadu",)]


@pytest.mark.parametrize(
    ("data", "line"),
    [
        ("{header}\n{row}\r\n{row}\n{short}\r\n{row}\n", "line 4: missing columns"),
        ("{header}\r\n{row}\n{row},extra\r\n", "line 3: too many columns"),
        ('{header}\n{row}\r\n"a"b,{row}\n', "line 3: "),
    ],
)
def test_mixed_line_endings_with_a_bad_line_refused_naming_it(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy, data: str, line: str
) -> None:
    columns, (row,) = full_rows("contacts", [{"contact_id": "C1"}])
    values = [row[c] or "" for c in columns]
    path = home.landing / "contacts.csv"
    path.write_text(
        data.format(header=",".join(columns), row=",".join(values), short=",".join(values[:-2])),
        encoding="utf-8",
        newline="",
    )
    with pytest.raises(IngestError) as info:
        ingest_table(con, home.landing, "contacts", policy)
    message = str(info.value)
    assert str(path) in message and line in message and "\n" not in message
    assert "Novák" not in message
    assert path.exists()
    _nothing_loaded(con, "contacts")


def test_extra_columns_are_carried(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    write_landing_set(
        home.landing,
        contacts=[
            {"contact_id": "C1", "loyalty_tier": "gold", "Preferred Language": "cs"},
            {"contact_id": "C2", "loyalty_tier": None},
        ],
    )
    results = ingest_all(con, home.landing, policy)
    assert results["contacts"].ok
    rows = con.execute(
        'SELECT contact_id, loyalty_tier, "Preferred Language" FROM core.contacts ORDER BY 1'
    ).fetchall()
    assert rows == [("C1", "gold", "cs"), ("C2", None, None)]
    # and they survive tagging
    tag_all(con, policy, dt.date(2026, 3, 1))
    again = con.execute(
        'SELECT contact_id, loyalty_tier, "Preferred Language" FROM core.contacts ORDER BY 1'
    ).fetchall()
    assert again == rows


@pytest.mark.parametrize("extra", [None, "file_row_number"])
def test_parquet_rows_are_numbered_as_in_the_file(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy, extra: str | None
) -> None:
    """Quarantined rows name their row in the file, across row groups, also when the file
    has a column named as the reader's own row numbers (it is carried like any extra)."""
    rows = [{"contact_id": f"C{i}"} for i in range(1, 2001)]
    rows[1499]["last_active_at"] = "soon"
    table = _text_parquet("contacts", rows)
    if extra:
        table = table.append_column(extra, pa.array([f"x{i}" for i in range(2000)]))
    pq.write_table(table, home.landing / "contacts.parquet", row_group_size=300)
    result = ingest_table(con, home.landing, "contacts", policy)
    assert [r[2:] for r in quarantined(con, "contacts")] == [
        (1500, "last_active_at", "unparsable date: expected timestamp")
    ]
    assert result.rows_loaded == 1999
    if extra:
        assert con.execute(
            "SELECT file_row_number FROM core.contacts WHERE contact_id = 'C2000'"
        ).fetchall() == [("x1999",)]


def test_tag_columns_in_a_landing_file_are_ignored(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    write_landing(home.landing, "contacts", [{"contact_id": "C1", "_state": "anonymized"}])
    assert ingest_table(con, home.landing, "contacts", policy).ok
    assert con.execute("SELECT _state FROM core.contacts").fetchone() == ("active",)


# --- reruns --------------------------------------------------------------------------------


def test_landing_file_removed_and_same_file_not_loaded_twice(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    rows = [{"contact_id": "C1"}, {"contact_id": "C2", "created_at": "bad"}]
    path = write_landing(home.landing, "contacts", rows)
    content = path.read_bytes()
    first = ingest_table(con, home.landing, "contacts", policy)
    assert first.rows_loaded == 1 and first.rows_quarantined == 1
    assert not path.exists()
    ingested_at = con.execute("SELECT _ingested_at FROM core.contacts").fetchall()

    path.write_bytes(content)  # the same delivery dropped again (e.g. after a crash)
    second = ingest_table(con, home.landing, "contacts", policy)
    assert second.rows_read == second.rows_loaded == second.rows_quarantined == 0
    assert "already loaded" in second.note
    assert not path.exists()
    assert keys(con, "contacts") == ["C1"]
    assert con.execute("SELECT _ingested_at FROM core.contacts").fetchall() == ingested_at
    assert con.execute("SELECT count(*) FROM core.quarantine").fetchone()[0] == 1
    assert con.execute("SELECT count(*) FROM core.ingest_log").fetchone()[0] == 1


def test_new_delivery_replaces_rows_by_key(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    write_landing(home.landing, "contacts", [{"contact_id": "C1"}, {"contact_id": "C2"}])
    ingest_table(con, home.landing, "contacts", policy)
    write_landing(
        home.landing, "contacts", [{"contact_id": "C2", "city": "Brno"}, {"contact_id": "C3"}]
    )
    result = ingest_table(con, home.landing, "contacts", policy)
    assert result.rows_loaded == 2
    assert con.execute("SELECT contact_id, city FROM core.contacts ORDER BY 1").fetchall() == [
        ("C1", "Praha"),
        ("C2", "Brno"),
        ("C3", "Praha"),
    ]
    assert con.execute("SELECT count(*) FROM core.ingest_log").fetchone()[0] == 2


def test_second_run_without_new_files(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    write_landing_set(
        home.landing,
        contacts=[{"contact_id": "C1"}],
        consents=[{"consent_id": "K1", "contact_id": "C1"}],
        orders=[{"order_id": "O1", "contact_id": "C1"}],
        shipments=[{"shipment_id": "S1", "order_id": "O1"}],
    )
    ingest_all(con, home.landing, policy)
    assert list(home.landing.iterdir()) == []
    again = ingest_all(con, home.landing, policy)
    assert [r.note for r in again.values()] == ["no new landing file"] * len(INGEST_ORDER)
    assert all(r.rows_read == 0 for r in again.values())


def test_empty_table_delivered_once_is_not_missing_later(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    write_landing_set(home.landing, contacts=[{"contact_id": "C1"}])  # no consents etc. yet
    first = ingest_all(con, home.landing, policy)
    assert first["shipments"].source_file == "shipments.csv"
    assert list(home.landing.iterdir()) == []
    again = ingest_all(con, home.landing, policy)  # the next daily run, no new files
    assert all(r.rows_read == 0 for r in again.values())


def test_timestamp_with_offset_converted_to_utc(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    write_landing(
        home.landing,
        "contacts",
        [{"contact_id": "C1", "last_active_at": "2024-03-01T02:00:00+02:00"}],
    )
    result = ingest_table(con, home.landing, "contacts", policy)
    stored = con.execute("SELECT last_active_at FROM core.contacts").fetchall()
    # either converted to UTC or quarantined; never silently shifted by two hours
    assert stored == [(dt.datetime(2024, 3, 1, 0, 0),)] or result.rows_quarantined == 1


def test_utc_suffix_accepted(con: duckdb.DuckDBPyConnection, home: Home, policy: Policy) -> None:
    write_landing(
        home.landing, "contacts", [{"contact_id": "C1", "created_at": "2020-05-01T08:00:00Z"}]
    )
    assert ingest_table(con, home.landing, "contacts", policy).ok
    assert con.execute("SELECT created_at FROM core.contacts").fetchone() == (
        dt.datetime(2020, 5, 1, 8, 0),
    )


def test_landing_path_is_reported(tmp_path: Path, policy: Policy) -> None:
    """Ingest works on any landing directory, not only LETHE_HOME's."""
    landing = tmp_path / "elsewhere"
    write_landing(landing, "contacts", [{"contact_id": "C1"}])
    c = connect(tmp_path / "w.duckdb")
    try:
        result = ingest_table(c, landing, "contacts", policy)
    finally:
        c.close()
    assert result.rows_loaded == 1 and result.source_file == "contacts.csv"


def test_redelivery_keeps_restriction(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    write_landing(home.landing, "contacts", [{"contact_id": "C1"}])
    ingest_table(con, home.landing, "contacts", policy)
    con.execute("UPDATE core.contacts SET _state = 'restricted' WHERE contact_id = 'C1'")
    write_landing(home.landing, "contacts", [{"contact_id": "C1", "city": "Brno"}])
    ingest_table(con, home.landing, "contacts", policy)
    assert con.execute("SELECT _state FROM core.contacts").fetchall() == [("restricted",)]


def test_extra_column_type_change_is_carried_as_text(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    """Extras are carried as text, so a column typed differently per delivery still loads."""
    columns, rows = full_rows("contacts", [{"contact_id": "C1"}])
    text = pa.schema([(c, pa.string()) for c in columns])
    first = pa.Table.from_pylist(rows, schema=text).append_column("points", pa.array([5]))
    pq.write_table(first, home.landing / "contacts.parquet")
    assert ingest_table(con, home.landing, "contacts", policy).ok
    columns, rows = full_rows("contacts", [{"contact_id": "C2"}])
    second = pa.Table.from_pylist(rows, schema=text).append_column("points", pa.array(["many"]))
    pq.write_table(second, home.landing / "contacts.parquet")
    result = ingest_table(con, home.landing, "contacts", policy)
    assert result.ok and result.rows_loaded == 1
    assert con.execute(
        "SELECT contact_id, points FROM core.contacts ORDER BY contact_id"
    ).fetchall() == [("C1", "5"), ("C2", "many")]


def test_landing_links_and_directories_are_refused_and_leftovers_named(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy
) -> None:
    source = write_landing(home.landing, "contacts", [{"contact_id": "C1"}])
    (home.landing / "contacts.csv.bak").write_bytes(source.read_bytes())
    source.rename(home.landing / "contacts.CSV")
    (home.landing / "consents.csv").symlink_to(home.landing / "contacts.CSV")
    (home.landing / "orders.csv").mkdir()
    for table, kind in (("consents", "a symbolic link"), ("orders", "a directory")):
        with pytest.raises(IngestError, match=f"{table}.csv: is {kind}") as info:
            ingest_table(con, home.landing, table, policy)
        assert "file refused, nothing loaded" in str(info.value) and "Errno" not in str(info.value)
    assert landing_leftovers(home.landing, policy.data_schema) == [
        "contacts.CSV (not a table's file; wrong case, the table file is contacts.csv)",
        "contacts.csv.bak (not a table's file)",
    ]
    assert len(list(home.landing.iterdir())) == 4  # nothing removed, nothing followed
    _nothing_loaded(con, "consents")
