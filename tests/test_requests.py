"""Data-subject requests: intake and deadlines on small warehouses, and every request type
carried out by the real pipeline on the hand-made scenario of `request_cases`."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import subprocess
import unicodedata
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import yaml
from conftest import (
    DEFAULT_POLICY,
    REPO,
    TABLES,
    TAGGED_TABLES,
    lethe_cli,
    write_landing_set,
)
from renaming import Renaming, suffixed
from request_cases import (
    ACC,
    BAD_CONTACTS,
    BAD_ORDERS,
    BAD_SHIPMENTS,
    CONSENTS,
    ERIN,
    GONE,
    HELD,
    HOLDS,
    OBJ,
    ORDERS,
    OTHER,
    RECT,
    RECT_NEW,
    RESTR,
    SHIPMENTS,
    XTRA,
    Scenario,
    T,
    answer,
    dicts,
    full_name,
    hashed,
    ledger,
    person,
    query,
    read_zip,
    rows_of,
    scenario,
)

from assets.requests import NOTHING_OVERDUE, request_assets
from lethe.declaration.policy import Policy, load_policy
from lethe.declaration.schema import default_schema, load_schema
from lethe.engine.ddl import ensure_schemas
from lethe.engine.ingest import ingest_table
from lethe.engine.tagging import tag_all
from lethe.engine.warehouse import connect, table_columns
from lethe.eshop import SCHEMA_FILE
from lethe.operations.home import Home
from lethe.rights.answers import answer_pending
from lethe.rights.holds import place_hold
from lethe.rights.requests import (
    RequestError,
    apply_pending,
    extend_request,
    list_requests,
    parse_changes,
    record_request,
    rectifiable_columns,
)
from lethe.rights.subjects import UnknownSubjectError, resolve_subject
from pipelines.resources import PolicyResource, WarehouseResource

SCHEMA = default_schema()
ONE = person("c-one")
TWO = person("c-two")
TAGS = ("_purposes", "_legal_bases", "_retain_until", "_state", "_ingested_at")
TOKEN_PREFIX = "tok_"


@pytest.fixture(scope="module")
def sc(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return scenario(tmp_path_factory)


@pytest.fixture
def small(home: Home, warehouse) -> duckdb.DuckDBPyConnection:
    """A tagged warehouse with two contacts (no pipeline run)."""
    write_landing_set(home.landing, contacts=[ONE, TWO])
    return warehouse(T)


def requests_rows(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute(
        "SELECT request_id, type, subject_key, received_at, deadline, status, extended,"
        " extension_reason, reason FROM requests.requests ORDER BY received_at"
    ).fetchall()


def request_ledger(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute(
        "SELECT action, keys, reason FROM audit.ledger WHERE action = 'request' ORDER BY seq"
    ).fetchall()


def lethe(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    return lethe_cli(*args, home=home.root, timeout=120)


def plain(row: dict[str, Any]) -> dict[str, Any]:
    """A core row without Lethe's tag columns."""
    return {k: v for k, v in row.items() if k not in TAGS}


def text(value: Any) -> str:
    return value if isinstance(value, str) else ""


# --- intake: deadlines, extension, unknown subjects, invalid input -----------------------------


def test_deadline_is_one_calendar_month(small: duckdb.DuckDBPyConnection) -> None:
    cases = {
        dt.datetime(2026, 1, 31, 10, 30): dt.datetime(2026, 2, 28, 10, 30),
        dt.datetime(2028, 1, 31, 10, 30): dt.datetime(2028, 2, 29, 10, 30),  # leap year
        dt.datetime(2026, 3, 15, 8, 0): dt.datetime(2026, 4, 15, 8, 0),
    }
    made = {}
    for received, expected in cases.items():
        request = record_request(small, SCHEMA, "access", "c-one", now=received)
        assert request.deadline == expected
        assert request.status == "pending" and not request.extended
        made[request.request_id] = (received, expected)
    stored = {r[0]: (r[3], r[4]) for r in requests_rows(small)}
    assert stored == made
    assert {r[2] for r in requests_rows(small)} == {"c-one"}


def test_extension_adds_two_months_once_with_the_reason(small: duckdb.DuckDBPyConnection) -> None:
    request = record_request(small, SCHEMA, "access", "c-one", now=dt.datetime(2026, 3, 15, 8, 0))
    extended = extend_request(small, request.request_id, "many requests this month")
    assert extended.deadline == dt.datetime(2026, 6, 15, 8, 0)
    assert extended.extended
    row = small.execute(
        "SELECT deadline, extended, extension_reason FROM requests.requests WHERE request_id = ?",
        [request.request_id],
    ).fetchone()
    assert row == (dt.datetime(2026, 6, 15, 8, 0), True, "many requests this month")
    with pytest.raises(RequestError, match="already extended once"):
        extend_request(small, request.request_id, "still busy")
    # the refused second extension changed nothing
    assert small.execute(
        "SELECT deadline, extension_reason FROM requests.requests WHERE request_id = ?",
        [request.request_id],
    ).fetchone() == (dt.datetime(2026, 6, 15, 8, 0), "many requests this month")
    reasons = [r[2] for r in request_ledger(small)]
    assert reasons == [
        f"{request.request_id}: access request received",
        f"{request.request_id}: deadline extended by two months",
    ]


def test_extension_needs_a_reason(small: duckdb.DuckDBPyConnection) -> None:
    request = record_request(small, SCHEMA, "erasure", "c-one")
    for reason in ("", "   "):
        with pytest.raises(RequestError, match="needs a reason"):
            extend_request(small, request.request_id, reason)
    assert not small.execute(
        "SELECT extended FROM requests.requests WHERE request_id = ?", [request.request_id]
    ).fetchone()[0]


@pytest.mark.parametrize("subject", ["nobody.secret@example.test", "c-nobody"])
def test_unknown_subject_is_refused_and_nothing_recorded(
    small: duckdb.DuckDBPyConnection, subject: str
) -> None:
    with pytest.raises(UnknownSubjectError) as err:
        record_request(small, SCHEMA, "erasure", subject)
    message = str(err.value)
    assert message.startswith("--subject: no contact")
    assert "\n" not in message
    assert "nobody.secret" not in message  # an e-mail is never echoed
    assert requests_rows(small) == []
    assert request_ledger(small) == []


def test_subject_given_by_email_is_resolved(small: duckdb.DuckDBPyConnection) -> None:
    request = record_request(small, SCHEMA, "access", "  " + TWO["email"].upper() + " ")
    assert request.subject_key == "c-two"
    assert [r[2] for r in requests_rows(small)] == ["c-two"]


def nfc(value: str) -> str:
    return unicodedata.normalize("NFC", value)


def nfd(value: str) -> str:
    return unicodedata.normalize("NFD", value)


CZECH = person("c-czech", email=nfc("zdeněk.dvořák@seznam.cz"))
# Stored decomposed and in mixed case, as some sources deliver it.
GREEK = person("c-greek", email=nfd("Ödön.Σοφός@Example.Test"))


@pytest.mark.parametrize(
    ("subject", "contact"),
    [
        (nfd("zdeněk.dvořák@seznam.cz"), "c-czech"),
        (nfc("ZDENĚK.DVOŘÁK@SEZNAM.CZ"), "c-czech"),
        (nfd("ZDENĚK.Dvořák@Seznam.cz"), "c-czech"),
        (nfc("ödön.σοφός@example.test"), "c-greek"),
        (nfc("ÖDÖN.ΣΟΦΌΣ@EXAMPLE.TEST"), "c-greek"),
    ],
)
def test_subject_email_matches_across_normalization_and_case(
    home: Home, warehouse, policy: Policy, subject: str, contact: str
) -> None:
    write_landing_set(home.landing, contacts=[ONE, CZECH, GREEK])
    con = warehouse(T)
    assert resolve_subject(con, SCHEMA, subject) == contact
    assert record_request(con, SCHEMA, "access", subject).subject_key == contact
    place_hold(con, policy, subject, "pending lawsuit")
    assert con.execute("SELECT contact_id FROM core.holds").fetchall() == [(contact,)]


def test_rectification_to_another_contacts_email_is_refused(
    home: Home, small: duckdb.DuckDBPyConnection
) -> None:
    taken = nfd(TWO["email"].upper())
    with pytest.raises(RequestError) as err:
        record_request(small, SCHEMA, "rectification", "c-one", changes={"email": taken})
    message = str(err.value)
    assert "e-mail" in message and "\n" not in message
    assert TWO["email"] not in message.lower() and taken not in message
    assert requests_rows(small) == []
    # a new spelling of one's own address is no conflict
    own = record_request(
        small, SCHEMA, "rectification", "c-one", changes={"email": ONE["email"].upper()}
    )
    assert [r[0] for r in requests_rows(small)] == [own.request_id]
    small.close()
    result = lethe(
        home, "request", "rectification", "--subject", "c-one", "--set", f"email={taken}"
    )
    assert result.returncode == 1, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "e-mail" in result.stderr


def test_rectification_refused_when_another_contact_took_the_email_meanwhile(
    small: duckdb.DuckDBPyConnection, policy
) -> None:
    new = "shared.new@example.test"
    first = record_request(small, SCHEMA, "rectification", "c-one", changes={"email": new})
    second = record_request(
        small, SCHEMA, "rectification", "c-two", changes={"email": new.upper(), "city": "Brno"}
    )
    done = apply_pending(small, policy, T, "run-1")
    assert done["rectification"] == 2
    statuses = dict(small.execute("SELECT request_id, status FROM requests.requests").fetchall())
    assert statuses == {first.request_id: "done", second.request_id: "refused"}
    # nothing of the refused request is applied, not even its other columns
    assert small.execute(
        "SELECT email, city FROM core.contacts WHERE contact_id = 'c-two'"
    ).fetchone() == (TWO["email"], TWO["city"])
    assert resolve_subject(small, SCHEMA, new) == "c-one"
    assert resolve_subject(small, SCHEMA, TWO["email"]) == "c-two"
    (changes, ans) = small.execute(
        "SELECT changes, answer FROM requests.requests WHERE request_id = ?", [second.request_id]
    ).fetchone()
    assert changes is None and "e-mail" in json.loads(ans)["refused"]
    refused = small.execute(
        "SELECT reason FROM audit.ledger WHERE reason LIKE ? ORDER BY seq",
        [f"{second.request_id}:%"],
    ).fetchall()
    assert len(refused) == 2 and "refused" in refused[-1][0]
    assert new not in repr(refused)


def test_every_loaded_contact_id_can_be_given_as_subject(home: Home, warehouse) -> None:
    # Ingest keeps a non-blank key as delivered; --subject must find it as given, and
    # still forgive whitespace typed around an id that has none.
    write_landing_set(home.landing, contacts=[ONE, person(" c-pad\t")])
    con = warehouse(T)
    assert resolve_subject(con, SCHEMA, " c-pad\t") == " c-pad\t"
    assert resolve_subject(con, SCHEMA, "\u3000c-one\n") == "c-one"
    with pytest.raises(UnknownSubjectError, match="empty subject"):
        resolve_subject(con, SCHEMA, " \t\u00a0")


@pytest.mark.parametrize(
    ("pair", "names"),
    [
        ("password=Secret-Value-1", "'password'"),
        ("contact_id=Secret-Value-1", "'contact_id'"),
        ("email=Secret-Value-1", "e-mail address"),
        ("country=Secret-Value-1", "ISO 3166-1"),
        ("birth_date=1980-02-30", "birth_date"),
        ("first_name=Secret\nValue-1", "control characters"),
        ("last_name=", "empty"),
        ("street", "expected column=value"),
    ],
)
def test_invalid_rectification_is_refused_without_echo(pair: str, names: str) -> None:
    with pytest.raises(RequestError) as err:
        parse_changes(SCHEMA, [pair])
    message = str(err.value)
    assert names in message
    assert "\n" not in message
    assert "Secret" not in message and "1980-02-30" not in message


def test_valid_rectification_is_parsed() -> None:
    assert parse_changes(
        SCHEMA, ["email=new@example.test", "country=SK", "birth_date=1980-02-29"]
    ) == {
        "email": "new@example.test",
        "country": "SK",
        "birth_date": "1980-02-29",
    }
    with pytest.raises(RequestError, match="at least one"):
        parse_changes(SCHEMA, [])


def test_rectifiable_columns_and_checks_follow_the_declared_schema() -> None:
    """The example shop's subject table: its own column names, the checks by category."""
    shop = load_schema(REPO / "examples" / "shop" / "shop.schema.yaml")
    assert rectifiable_columns(SCHEMA) == [
        "email",
        "phone",
        "first_name",
        "last_name",
        "street",
        "city",
        "postal_code",
        "country",
        "birth_date",
    ]
    assert rectifiable_columns(shop) == [
        "email",
        "telefon",
        "jmeno",
        "prijmeni",
        "ulice",
        "mesto",
        "psc",
        "zeme",
        "datum_narozeni",
    ]
    assert parse_changes(shop, ["prijmeni=Dvořák", "zeme=SK"]) == {
        "prijmeni": "Dvořák",
        "zeme": "SK",
    }
    for pair, names in (
        ("zeme=cz", "ISO 3166-1"),  # a country by its category
        ("email=nobody", "e-mail address"),
        ("datum_narozeni=1980-02-30", "datum_narozeni"),
        ("cislo_zakaznika=Z1", "'cislo_zakaznika'"),  # the key
        ("zalozeno=2024-01-01", "'zalozeno'"),  # system.operations
        ("posledni_aktivita=2024-01-01", "'posledni_aktivita'"),  # user.behavior
        ("first_name=Jan", "'first_name'"),  # the default schema's name
    ):
        with pytest.raises(RequestError, match=re.escape(names)):
            parse_changes(shop, [pair])


def test_old_request_tables_get_the_subject_key_column(tmp_path: Path) -> None:
    """A warehouse written before subjects were named by their key: its requests keep
    their subjects under the new column name, and the migration runs once."""
    con = connect(tmp_path / "old.duckdb")
    try:
        con.execute("CREATE SCHEMA requests")
        con.execute(
            "CREATE TABLE requests.requests (request_id VARCHAR PRIMARY KEY, type VARCHAR NOT"
            " NULL, contact_id VARCHAR NOT NULL, received_at TIMESTAMP NOT NULL, deadline"
            " TIMESTAMP NOT NULL, extended BOOLEAN NOT NULL DEFAULT false, extension_reason"
            " VARCHAR, status VARCHAR NOT NULL, completed_at TIMESTAMP, reason VARCHAR,"
            " changes JSON, answer JSON)"
        )
        con.execute(
            "CREATE TABLE requests.erasures (request_id VARCHAR NOT NULL,"
            " contact_id VARCHAR NOT NULL, registered_at TIMESTAMP)"
        )
        con.execute(
            "INSERT INTO requests.requests (request_id, type, contact_id, received_at,"
            " deadline, status) VALUES ('R-000000000001', 'erasure', 'c-one', TIMESTAMP"
            " '2026-01-01', TIMESTAMP '2026-02-01', 'pending')"
        )
        con.execute("INSERT INTO requests.erasures VALUES ('R-000000000001', 'c-one', NULL)")
        for _ in range(2):
            ensure_schemas(con)
        for table in ("requests", "erasures"):
            assert "subject_key" in table_columns(con, "requests", table)
            assert "contact_id" not in table_columns(con, "requests", table)
        assert [r[:3] for r in list_requests(con)] == [("R-000000000001", "erasure", "c-one")]
        assert con.execute("SELECT subject_key FROM requests.erasures").fetchall() == [("c-one",)]
    finally:
        con.close()


def test_set_only_with_rectification(small: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(RequestError, match="rectification requests only"):
        record_request(small, SCHEMA, "erasure", "c-one", changes={"email": "a@example.test"})
    with pytest.raises(RequestError, match="at least one"):
        record_request(small, SCHEMA, "rectification", "c-one")
    with pytest.raises(RequestError, match="unknown request type"):
        record_request(small, SCHEMA, "forget-me", "c-one")
    assert requests_rows(small) == []


def test_cli_refuses_bad_input_in_one_line_and_records_nothing(
    home: Home, small: duckdb.DuckDBPyConnection
) -> None:
    small.close()
    bad = [
        ("request", "rectification", "--subject", "c-one", "--set", "email=Secret-Value-1"),
        ("request", "rectification", "--subject", "c-one", "--set", "password=Secret-Value-1"),
        ("request", "erasure", "--subject", "secret.person@example.test"),
    ]
    for args in bad:
        result = lethe(home, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "Secret" not in result.stderr + result.stdout
        assert "secret.person" not in result.stderr + result.stdout
    con = connect(home.warehouse, read_only=True)
    try:
        assert requests_rows(con) == []
    finally:
        con.close()
    ok = lethe(home, "request", "rectification", "--subject", "c-one", "--set", "city=Brno")
    assert ok.returncode == 0, ok.stderr
    assert "rectification request recorded" in ok.stdout


def test_overdue_request_is_listed_and_fails_the_check(
    home: Home, small: duckdb.DuckDBPyConnection
) -> None:
    old = record_request(
        small,
        SCHEMA,
        "rectification",
        "c-one",
        changes={"city": "Brno"},
        now=dt.datetime(2025, 1, 10),
    )
    fresh = record_request(small, SCHEMA, "objection", "c-two")
    overdue = list_requests(small, overdue_only=True)
    assert [r[0] for r in overdue] == [old.request_id]
    assert {r[0]: r[6] for r in list_requests(small)} == {
        old.request_id: True,
        fresh.request_id: False,
    }
    small.close()

    listed = lethe(home, "requests", "--overdue")
    assert listed.returncode == 0, listed.stderr
    assert old.request_id in listed.stdout
    assert "2025-02-10" in listed.stdout  # the deadline
    assert "overdue" in listed.stdout
    assert fresh.request_id not in listed.stdout
    everything = lethe(home, "requests")
    assert old.request_id in everything.stdout and fresh.request_id in everything.stdout

    # The answers asset of a run (rectifications are carried out by intake, which this
    # run does not include, so the request stays pending and overdue).
    answers = request_assets(load_policy(DEFAULT_POLICY))[-1]
    result = dg.materialize(
        [answers],
        resources={
            "warehouse": WarehouseResource(home=str(home.root)),
            "policy": PolicyResource(path=str(DEFAULT_POLICY), as_of=T.isoformat()),
        },
        raise_on_error=False,
    )
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    check = checks[NOTHING_OVERDUE]
    assert not check.passed
    assert check.description.startswith("1 overdue requests")
    assert check.metadata["overdue"].value == 1
    mat = result.asset_materializations_for_node("requests__answers")[0]
    assert mat.metadata["overdue_requests"].value == 1
    assert mat.metadata["open_requests"].value == 2


# --- the pipeline scenario --------------------------------------------------------------------


def test_request_runs_pass_the_request_checks(sc: Scenario) -> None:
    for outcome in sc.runs:
        assert outcome.success
        assert not [c for c in outcome.failed_checks if c.startswith("requests/")], (
            outcome.failed_checks
        )
    statuses = query(sc.home, "SELECT status, count(*) FROM requests.requests GROUP BY ALL")
    assert statuses == [("done", 56)]  # 6 in run 1, 50 erasures in run 2


def test_rectification_corrects_the_contact_and_its_copies(sc: Scenario) -> None:
    mine = sc.subjects_after_run1["c-rect"]
    (contact,) = mine["contacts"]
    for col, value in RECT_NEW.items():
        assert contact[col] == value
    assert contact["first_name"] == RECT["first_name"]  # not asked: unchanged
    new_name = f"{RECT['first_name']} {RECT_NEW['last_name']}"
    (order,) = mine["orders"]
    assert order["billing_name"] == new_name
    assert order["billing_street"] == RECT_NEW["street"]
    (shipment,) = mine["shipments"]
    assert shipment["recipient_name"] == new_name
    assert shipment["street"] == RECT_NEW["street"]
    assert shipment["recipient_phone"] == RECT["phone"]  # not asked: unchanged
    status, ans = answer(sc.home, sc.ids["rect"])
    assert status == "done"
    assert ans == {
        "rectified": [
            "contacts.email",
            "contacts.last_name",
            "contacts.street",
            "orders.billing_email",
            "orders.billing_name",
            "orders.billing_street",
            "shipments.recipient_name",
            "shipments.street",
        ]
    }
    # the request keeps no value once done; the ledger names columns, never values
    (changes,) = query(
        sc.home, "SELECT changes FROM requests.requests WHERE request_id = ?", [sc.ids["rect"]]
    )[0]
    assert changes is None
    entries = [e for e in ledger(sc.home) if e["action"] == "rectify"]
    assert len(entries) == 1
    assert list(entries[0]["keys"]) == [hashed(sc.home, "c-rect")]
    assert "contacts.email" in entries[0]["columns"]
    dumped = repr(entries)
    for value in (*RECT_NEW.values(), RECT["email"], RECT["last_name"], RECT["street"]):
        assert value not in dumped


def test_rectification_corrects_copies_in_extra_columns(sc: Scenario) -> None:
    (order,) = sc.subjects_after_run1["c-rect"]["orders"]
    assert order["billing_email"] == RECT_NEW["email"]
    old = RECT["email"]
    for table in TAGGED_TABLES:
        for row in sc.snapshots[0][table].values():
            assert old not in map(text, row.values()), (table, row)


def test_objection_ends_the_newsletter_but_keeps_the_evidence(sc: Scenario) -> None:
    mine = sc.subjects_after_run1["c-obj"]
    (contact,) = mine["contacts"]
    assert "newsletter" not in contact["_purposes"]
    assert contact["_purposes"] == ["account"]  # the account is not marketing
    assert contact["email"] == OBJ["email"]
    (consent,) = mine["consents"]
    assert consent["consent_id"] == "k-obj"
    assert consent["withdrawn_at"] == dt.datetime(2026, 3, 1)
    assert consent["_purposes"] == ["consent_evidence"]
    assert consent["_legal_bases"] == ["legitimate_interest"]
    (landing,) = rows_of("consents", "c-obj")
    for col in ("ip_address", "method", "wording"):
        assert consent[col] == landing[col]
    assert consent["granted_at"] == dt.datetime.fromisoformat(landing["granted_at"])
    status, ans = answer(sc.home, sc.ids["obj"])
    assert status == "done"
    assert ans == {"stopped_purposes": ["newsletter"], "consent_evidence": "kept"}
    # the evidence outlasts later runs
    assert sc.snapshots[-1]["consents"]["k-obj"]["ip_address"] == landing["ip_address"]


def _restricted_rows(snap: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    keys = {
        "contacts": ["c-restr"],
        "consents": ["k-restr"],
        "orders": ["o-restr-1"],
        "shipments": ["s-restr-1"],
    }
    return {t: [snap[t][k] for k in ks] for t, ks in keys.items()}


def test_restriction_marks_every_row_restricted_and_keeps_it(sc: Scenario) -> None:
    for i, snap in enumerate(sc.snapshots):
        # run 1: the request; run 2: its rows delivered again; runs 3 and 4: later runs
        for table, found in _restricted_rows(snap).items():
            (row,) = found
            assert row["_state"] == "restricted", (i, table)
            (landing,) = rows_of(table, "c-restr")
            key = TABLES[table].key
            assert row[key] == landing[key]
            for col in ("email", "billing_name", "recipient_name", "ip_address"):
                if col in landing:
                    assert row[col] == landing[col], (i, table, col)
    status, ans = answer(sc.home, sc.ids["restr"])
    assert status == "done"
    assert ans == {"restricted": ["contacts", "consents", "orders", "shipments"]}
    restrict = [e for e in ledger(sc.home) if e["action"] == "restrict"]
    assert [list(e["keys"]) for e in restrict] == [[hashed(sc.home, "c-restr")]]


def test_restricted_rows_were_delivered_again(sc: Scenario) -> None:
    """The restriction test above is only meaningful if run 2 did re-load the rows."""
    loads = query(
        sc.home,
        "SELECT table_name, rows_loaded FROM core.ingest_log WHERE rows_loaded = 1"
        " ORDER BY table_name",
    )
    assert ("contacts", 1) in loads and ("orders", 1) in loads
    after1 = _restricted_rows(sc.snapshots[0])["contacts"][0]["_ingested_at"]
    after2 = _restricted_rows(sc.snapshots[1])["contacts"][0]["_ingested_at"]
    assert after2 > after1


# --- erasure -----------------------------------------------------------------------------------


def erin_rows(snap: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every row of any table that holds one of ERIN's values."""
    values = {ERIN[c] for c in ("email", "phone", "last_name", "street", "contact_id")}
    values.add(full_name(ERIN))
    return [
        (table, row)
        for table in TAGGED_TABLES
        for row in snap[table].values()
        if values & {text(v) for v in row.values()}
    ]


def test_erasure_subject_given_by_email(sc: Scenario) -> None:
    rid = sc.erasures["c-erin"]
    assert sc.erasure_subjects["c-erin"] == ERIN["email"]
    assert query(
        sc.home, "SELECT subject_key, type FROM requests.requests WHERE request_id = ?", [rid]
    ) == [(hashed(sc.home, "c-erin"), "erasure")]  # gone: named by its keyed hash only


def test_erasure_anonymizes_the_contact_and_deletes_consents_and_shipments(sc: Scenario) -> None:
    before, after = sc.snapshots[0], sc.snapshots[1]
    assert erin_rows(before)  # the subject was there
    assert erin_rows(after) == []  # no row holds any of its values
    assert "c-erin" not in after["contacts"]
    assert "k-erin" not in after["consents"]
    assert "s-erin-2" not in after["shipments"]
    # the contact row is kept anonymized (surrogate id, no identifiers)
    anonymized = [
        e
        for e in sc.ledger_after_run2
        if e["action"] == "anonymize"
        and e["table_name"] == "contacts"
        and list(e["keys"]) == [hashed(sc.home, "c-erin")]
    ]
    assert len(anonymized) == 1
    assert anonymized[0]["reason"] == f"erasure request {sc.erasures['c-erin']}"
    n_anonymized = [
        sum(r["_state"] == "anonymized" for r in s["contacts"].values()) for s in (before, after)
    ]
    assert n_anonymized[1] - n_anonymized[0] == 49  # ERIN, GONE and 47 more (not HELD)
    for row in after["contacts"].values():
        if row["_state"] == "anonymized":
            assert row["contact_id"].startswith("anon-")
            assert all(row[c] is None for c in ("email", "phone", "last_name", "street"))


def test_erasure_keeps_invoices_pseudonymized_for_accounting(sc: Scenario) -> None:
    after = sc.snapshots[1]
    for oid in ("o-erin-1", "o-erin-2"):
        row = after["orders"][oid]
        assert row["_purposes"] == ["accounting"]
        assert row["_legal_bases"] == ["legal_obligation"]
        for col in ("contact_id", "billing_name", "billing_street"):
            assert row[col].startswith(TOKEN_PREFIX), (oid, col)
        assert row["invoice_number"] == f"FV-{oid}"
        assert str(row["total_amount"]) == "1234.50"
        assert row["billing_city"] == ERIN["city"]
    assert after["orders"]["o-erin-1"]["_retain_until"] == dt.datetime(2030, 1, 10, 9, 0)
    assert after["orders"]["o-erin-2"]["_retain_until"] == dt.datetime(2035, 12, 1, 9, 0)
    # the order whose contract the erasure ended is restricted
    assert after["orders"]["o-erin-2"]["_state"] == "restricted"
    # both invoices carry the same pseudonym for the same subject
    assert after["orders"]["o-erin-1"]["contact_id"] == after["orders"]["o-erin-2"]["contact_id"]


def test_erasure_restricts_invoices_pseudonymized_earlier(sc: Scenario) -> None:
    assert sc.snapshots[0]["orders"]["o-erin-1"]["_state"] == "pseudonymized"  # run 1
    assert sc.snapshots[1]["orders"]["o-erin-1"]["_state"] == "restricted"  # after erasure


def test_erasure_answer_says_what_is_kept_and_until_when(sc: Scenario) -> None:
    status, ans = answer(sc.home, sc.erasures["c-erin"])
    assert status == "done"
    kept = ans["kept"]
    assert kept, ans
    assert {k["table"] for k in kept} == {"orders"}
    assert len(kept) == 2  # one entry per kept row
    for k in kept:
        assert k["kept_for"] == ["accounting"]
        until = dt.datetime.fromisoformat(k["until"])
        assert until in (dt.datetime(2030, 1, 10, 9, 0), dt.datetime(2035, 12, 1, 9, 0))
    assert max(dt.datetime.fromisoformat(k["until"]) for k in kept) == dt.datetime(
        2035, 12, 1, 9, 0
    )
    assert ans["earlier_exports_deleted"] == 0
    # nothing kept at all: the answer says so
    status, ans = answer(sc.home, sc.erasures[XTRA["contact_id"]])
    assert status == "done"
    assert {k["table"] for k in ans["kept"]} <= {"orders"}
    status, ans = answer(sc.home, sc.erasures["c-bulk-05"])
    assert set(ans.pop("letter")) == {"cs", "en"}  # the answer to the subject, both languages
    assert ans == {"kept": [], "earlier_exports_deleted": 0}


def test_erasure_answer_names_each_kept_order(sc: Scenario) -> None:
    _, ans = answer(sc.home, sc.erasures["c-erin"])
    dumped = json.dumps(ans)
    assert "o-erin-1" in dumped and "o-erin-2" in dumped
    assert "2030-01-10" in dumped and "2035-12-01" in dumped


def test_erasure_deletes_earlier_exports(sc: Scenario) -> None:
    gone = sc.export_names_run1["gone_access"]
    doc = json.loads(sc.exports_run1["gone_access"]["subject.json"])
    assert doc["subject"] == {"contact_id": GONE["contact_id"]}  # asked by e-mail
    assert gone not in sc.exports_after_run2
    assert not (sc.home.exports / "requests" / gone).exists()
    # other subjects' exports stay
    assert sc.export_names_run1["access"] in sc.exports_after_run2
    assert sc.export_names_run1["portability"] in sc.exports_after_run2
    status, ans = answer(sc.home, sc.erasures["c-gone"])
    assert status == "done"
    assert set(ans.pop("letter")) == {"cs", "en"}
    assert ans == {"kept": [], "earlier_exports_deleted": 1}


def test_erasure_deletes_the_subjects_quarantined_rows(sc: Scenario) -> None:
    assert sc.quarantine_before == [
        ("contacts", 58, "birth_date"),
        ("orders", 12, "total_amount"),
        ("orders", 13, "total_amount"),
        ("shipments", 8, "shipped_at"),
    ]
    left = query(sc.home, "SELECT table_name, record FROM core.quarantine")
    assert len(left) == 1
    table, record = left[0]
    assert table == "orders"
    assert json.loads(record)["order_id"] == "o-other-bad"  # not the erased subject's


def test_erasure_under_hold_keeps_every_row(sc: Scenario) -> None:
    after = sc.snapshots[1]
    for table, rows in sc.held_before.items():
        assert rows, table
        key = TABLES[table].key
        for before in rows:
            now = after[table][before[key]]
            assert plain(now) == plain(before), table
            assert "litigation_hold" in now["_purposes"]
    status, ans = answer(sc.home, sc.erasures["c-held"])
    assert status == "done"
    assert {k["table"] for k in ans["kept"]} == set(TAGGED_TABLES)
    for k in ans["kept"]:
        assert k["kept_for"] == ["litigation_hold"]
        assert k["until"] == "until the hold is released"
    assert HELD["email"] == after["contacts"]["c-held"]["email"]


def test_fifty_erasures_in_one_run_make_one_rewrite(sc: Scenario) -> None:
    run2 = sc.runs[1].run_id
    assert len(sc.erasures) == 50
    assert sc.materialized_run2.count("core/retention_enforcement") == 1
    assert sc.materialized_run2.count("requests/answers") == 1
    ids = set(sc.erasures.values())
    steps = [
        e
        for e in sc.ledger_after_run2
        if any(rid in e["reason"] for rid in ids) and "request received" not in e["reason"]
    ]
    assert {e["run_id"] for e in steps} == {run2}
    erased = [e for e in steps if e["action"] in ("erase", "anonymize", "pseudonymize", "delete")]
    assert {k for e in erased for k in e["keys"]} >= {
        hashed(sc.home, p["contact_id"]) for p in (ERIN, GONE)
    }
    answered = [e for e in steps if e["reason"].endswith("erasure answered")]
    assert sorted(k for e in answered for k in e["keys"]) == sorted(
        hashed(sc.home, k) for k in sc.erasures
    )
    registered = [e for e in steps if "erasure registered" in e["reason"]]
    assert len(registered) == 50
    done = query(
        sc.home,
        "SELECT count(*) FROM requests.requests WHERE type = 'erasure' AND status = 'done'"
        " AND answer IS NOT NULL AND completed_at IS NOT NULL",
    )
    assert done == [(50,)]


def test_second_erasure_run_records_nothing(sc: Scenario) -> None:
    run3 = sc.runs[2].run_id
    steps = [
        e
        for e in ledger(sc.home)
        if e["run_id"] == run3
        and e["action"] in ("erase", "anonymize", "pseudonymize", "delete", "request", "export")
    ]
    assert steps == []
    assert sorted(sc.snapshots[2]["contacts"]) == sorted(sc.snapshots[1]["contacts"])


def test_second_erasure_run_is_a_no_op(sc: Scenario) -> None:
    before, after = sc.snapshots[1], sc.snapshots[2]
    changed = [
        (table, key, col, row[col], after[table][key][col])
        for table in TAGGED_TABLES
        for key, row in before[table].items()
        for col in row
        if key in after[table] and after[table][key][col] != row[col]
    ]
    assert changed == []
    assert {t: sorted(map(str, s)) for t, s in after.items()} == {
        t: sorted(map(str, s)) for t, s in before.items()
    }


def test_erased_orders_stay_kept_only_for_accounting(sc: Scenario) -> None:
    for snap in sc.snapshots[1:]:
        row = snap["orders"]["o-erin-2"]
        assert row["_purposes"] == ["accounting"]
        assert row["_retain_until"] == dt.datetime(2035, 12, 1, 9, 0)


def test_redelivered_erased_contact_does_not_come_back(sc: Scenario) -> None:
    loaded = query(
        sc.home,
        "SELECT rows_loaded FROM core.ingest_log WHERE table_name = 'contacts'"
        " ORDER BY ingested_at DESC LIMIT 1",
    )
    assert loaded == [(1,)]  # run 4 did load the row again
    after = sc.snapshots[3]
    assert "c-erin" not in after["contacts"]
    assert erin_rows(after) == []
    assert not [r for r in after["contacts"].values() if r["email"] == ERIN["email"]]
    n = [sum(r["_state"] == "anonymized" for r in s["contacts"].values()) for s in sc.snapshots]
    assert n[3] == n[2] + 1  # the re-delivered row was anonymized in its turn
    # a new request by the erased e-mail finds nobody
    con = connect(sc.home.warehouse, read_only=True)
    try:
        with pytest.raises(UnknownSubjectError):
            resolve_subject(con, SCHEMA, ERIN["email"])
    finally:
        con.close()


# --- the same requests on a renamed schema ------------------------------------------------------

RENAMED_PEOPLE = [ACC, RECT, OBJ, RESTR, ERIN, HELD, OTHER]


def _renamed_policy(root: Path) -> tuple[Policy, Renaming]:
    """The default policy and schema with every table and column renamed (`_x`)."""
    raw_schema = yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))
    renaming = suffixed(raw_schema)
    root.mkdir(parents=True, exist_ok=True)
    (root / "schema.yaml").write_text(yaml.safe_dump(renaming.schema(raw_schema), sort_keys=False))
    raw_policy = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    policy_file = root / "policy.yaml"
    policy_file.write_text(
        yaml.safe_dump(renaming.policy(raw_policy, "schema.yaml"), sort_keys=False)
    )
    return load_policy(policy_file), renaming


def _write_people(landing: Path, renaming: Renaming | None) -> None:
    """The landing set of RENAMED_PEOPLE (with rejected rows), headers renamed if asked."""
    mine = {p["contact_id"] for p in RENAMED_PEOPLE}
    orders = [o for o in [*ORDERS, *BAD_ORDERS] if o["contact_id"] in mine]
    ids = {o["order_id"] for o in orders}
    tables = {
        "contacts": [*RENAMED_PEOPLE, *BAD_CONTACTS],
        "consents": [c for c in CONSENTS if c["contact_id"] in mine],
        "orders": orders,
        "shipments": [s for s in [*SHIPMENTS, *BAD_SHIPMENTS] if s["order_id"] in ids],
        "holds": HOLDS,
    }
    if renaming is None:
        write_landing_set(landing, **tables)
        return
    staged = landing.parent / "default-landing"
    write_landing_set(staged, **tables)
    for name in tables:
        with (staged / f"{name}.csv").open(encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
        header = [renaming.columns.get((name, c), c) for c in rows[0]]  # extras keep theirs
        with (landing / f"{renaming.table(name)}.csv").open(
            "w", encoding="utf-8", newline=""
        ) as fh:
            csv.writer(fh).writerows([header, *rows[1:]])


def _requests_on(
    root: Path, policy: Policy, renaming: Renaming | None, tagged_from: Path | None
) -> Home:
    """Ingest RENAMED_PEOPLE, tag them, record every kind of request and carry them out
    and answer them (no enforcement between: the answers see the rows as they were).

    Tagging the renamed tables is not what is tested here: they get the tags of the
    default warehouse `tagged_from`, row by row.
    """
    home = Home(root).ensure()
    _write_people(home.landing, renaming)
    schema = policy.data_schema
    col = (lambda t, c: c) if renaming is None else renaming.column
    con = connect(home.warehouse)
    try:
        for table in schema.tables:
            assert ingest_table(con, home.landing, table, policy).rows_loaded, table
        if renaming is None:
            tag_all(con, policy, T)
        else:
            con.execute("ATTACH ? AS d (READ_ONLY)", [str(tagged_from)])
            for table in TAGGED_TABLES:
                new, key = renaming.table(table), TABLES[table].key
                con.execute(
                    f"UPDATE core.{new} r SET _purposes = x._purposes, _legal_bases ="
                    " x._legal_bases, _retain_until = x._retain_until, _state = x._state"
                    f" FROM d.core.{table} x WHERE x.{key} = r.{col(table, key)}"
                )
            con.execute("DETACH d")
        changes = {col("contacts", c): v for c, v in RECT_NEW.items()}
        for kind, subject, kw in (
            ("rectification", RECT["contact_id"], {"changes": changes}),
            ("objection", OBJ["email"], {}),
            ("restriction", RESTR["contact_id"], {}),
            ("access", ACC["email"].upper(), {}),
            ("erasure", ERIN["email"], {}),
            ("erasure", HELD["contact_id"], {}),
        ):
            record_request(con, schema, kind, subject, **kw)
        apply_pending(con, policy, T, "run-1", vault=home.vault)
        answer_pending(con, home, policy, T, "run-1")
    finally:
        con.close()
    return home


def _outcome(home: Home, renaming: Renaming | None) -> dict[str, Any]:
    """Everything the requests changed or answered, in the default schema's names."""
    tables = {t: t for t in TABLES} if renaming is None else renaming.tables
    back = {new: old for old, new in tables.items()}
    columns = {} if renaming is None else {(t, new): c for (t, c), new in renaming.columns.items()}

    def name(table: str, column: str) -> str:
        return columns.get((table, column), column)

    def dotted(ref: str) -> str:
        table, column = ref.split(".")
        return f"{back[table]}.{name(back[table], column)}"

    out: dict[str, Any] = {}
    for table, new in tables.items():
        rows = dicts(home, f"SELECT * EXCLUDE (_ingested_at) FROM core.{new}")
        renamed = ({name(table, k): v for k, v in r.items()} for r in rows)
        out[table] = sorted(renamed, key=lambda r: repr(sorted(r.items())))
    answers = {}
    for kind, subject, status, text in query(
        home, "SELECT type, subject_key, status, answer FROM requests.requests"
    ):
        ans = json.loads(text)
        if "rectified" in ans:
            ans["rectified"] = [dotted(ref) for ref in ans["rectified"]]
        if "restricted" in ans:
            ans["restricted"] = [back[t] for t in ans["restricted"]]
        for kept in ans.get("kept", []):
            kept["table"] = back[kept["table"]]
        ans.pop("export", None)  # named by the request id
        # the letter names tables by their labels, which a renamed schema does not carry
        if "letter" in ans:
            assert set(ans.pop("letter")) == {"cs", "en"}
        answers[kind, subject] = (status, ans)
    out["answers"] = answers
    out["erasures"] = sorted(query(home, "SELECT subject_key FROM requests.erasures"))
    out["quarantine"] = sorted(
        (back[t], row, name(back[t], c))
        for t, row, c in query(
            home, "SELECT table_name, row_number, column_name FROM core.quarantine"
        )
    )
    (export,) = (home.exports / "requests").glob("*-access.zip")
    files = read_zip(export)
    doc = json.loads(files["subject.json"])
    out["subject"] = {name("contacts", k): v for k, v in doc["subject"].items()}
    out["exported"] = {
        back[t]: [{name(back[t], k): v for k, v in row.items()} for row in rows]
        for t, rows in doc["tables"].items()
    }
    out["csv"] = {}
    for t in doc["tables"]:
        reader = csv.DictReader(io.StringIO(files[f"{t}.csv"].decode("utf-8")))
        out["csv"][back[t]] = [{name(back[t], k): v for k, v in r.items()} for r in reader]
    return out


def test_requests_on_a_renamed_schema_give_the_same_results(tmp_path: Path, policy) -> None:
    default = _requests_on(tmp_path / "default", policy, None, None)
    renamed_policy, renaming = _renamed_policy(tmp_path / "renamed-policy")
    renamed = _requests_on(tmp_path / "renamed", renamed_policy, renaming, default.warehouse)
    expected, got = _outcome(default, None), _outcome(renamed, renaming)
    # the requests did something: a rectified copy, a withdrawn consent, a restricted row,
    # an exported invoice, kept rows named in the erasure answers, forgotten rejected rows
    assert expected["answers"]["rectification", "c-rect"][1]["rectified"] == [
        "contacts.email",
        "contacts.last_name",
        "contacts.street",
        "orders.billing_email",
        "orders.billing_name",
        "orders.billing_street",
        "shipments.recipient_name",
        "shipments.street",
    ]
    assert expected["answers"]["objection", "c-obj"][1]["stopped_purposes"] == ["newsletter"]
    assert {r["_state"] for r in expected["shipments"] if r["shipment_id"] == "s-restr-1"} == {
        "restricted"
    }
    assert expected["subject"] == {"contact_id": "c-acc"}
    assert {o["order_id"] for o in expected["exported"]["orders"]} == {"o-acc-1", "o-acc-2"}
    assert expected["answers"]["erasure", "c-held"][1]["kept"]
    # of four rejected rows, only OTHER's order stays: the others copy ERIN's values
    assert [(t, c) for t, _, c in expected["quarantine"]] == [("orders", "total_amount")]
    assert expected["erasures"] == [("c-erin",), ("c-held",)]
    for part, value in expected.items():
        assert got[part] == value, part
