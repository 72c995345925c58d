"""Data-subject requests: intake and deadlines on small warehouses, and every request type
carried out by the real pipeline on the hand-made scenario of `request_cases`."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import unicodedata
from typing import Any

import dagster as dg
import duckdb
import pytest
from conftest import DEFAULT_POLICY, LETHE_BIN, write_landing_set
from request_cases import (
    ERIN,
    GONE,
    HELD,
    OBJ,
    RECT,
    RECT_NEW,
    XTRA,
    Scenario,
    T,
    answer,
    full_name,
    ledger,
    person,
    query,
    rows_of,
    scenario,
)

from assets.requests import NOTHING_OVERDUE, request_assets
from lethe.holds import place_hold
from lethe.home import Home
from lethe.policy import Policy, load_policy
from lethe.requests import (
    RequestError,
    apply_pending,
    extend_request,
    list_requests,
    parse_changes,
    record_request,
)
from lethe.subjects import UnknownSubjectError, resolve_subject
from lethe.tables import TABLES, TAGGED_TABLES
from lethe.warehouse import connect
from pipelines.resources import PolicyResource, WarehouseResource

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
        "SELECT request_id, type, contact_id, received_at, deadline, status, extended,"
        " extension_reason, reason FROM requests.requests ORDER BY received_at"
    ).fetchall()


def request_ledger(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute(
        "SELECT action, keys, reason FROM audit.ledger WHERE action = 'request' ORDER BY seq"
    ).fetchall()


def lethe(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LETHE_POLICY", "DAGSTER_HOME")}
    env.update(LETHE_HOME=str(home.root), COLUMNS="200", NO_COLOR="1", TERM="dumb")
    return subprocess.run(
        [str(LETHE_BIN), *args],
        cwd=home.root.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


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
        request = record_request(small, "access", "c-one", now=received)
        assert request.deadline == expected
        assert request.status == "pending" and not request.extended
        made[request.request_id] = (received, expected)
    stored = {r[0]: (r[3], r[4]) for r in requests_rows(small)}
    assert stored == made
    assert {r[2] for r in requests_rows(small)} == {"c-one"}


def test_extension_adds_two_months_once_with_the_reason(small: duckdb.DuckDBPyConnection) -> None:
    request = record_request(small, "access", "c-one", now=dt.datetime(2026, 3, 15, 8, 0))
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
    request = record_request(small, "erasure", "c-one")
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
        record_request(small, "erasure", subject)
    message = str(err.value)
    assert message.startswith("--subject: no contact")
    assert "\n" not in message
    assert "nobody.secret" not in message  # an e-mail is never echoed
    assert requests_rows(small) == []
    assert request_ledger(small) == []


def test_subject_given_by_email_is_resolved(small: duckdb.DuckDBPyConnection) -> None:
    request = record_request(small, "access", "  " + TWO["email"].upper() + " ")
    assert request.contact_id == "c-two"
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
    assert resolve_subject(con, subject) == contact
    assert record_request(con, "access", subject).contact_id == contact
    place_hold(con, policy, subject, "pending lawsuit")
    assert con.execute("SELECT contact_id FROM core.holds").fetchall() == [(contact,)]


def test_rectification_to_another_contacts_email_is_refused(
    home: Home, small: duckdb.DuckDBPyConnection
) -> None:
    taken = nfd(TWO["email"].upper())
    with pytest.raises(RequestError) as err:
        record_request(small, "rectification", "c-one", changes={"email": taken})
    message = str(err.value)
    assert "e-mail" in message and "\n" not in message
    assert TWO["email"] not in message.lower() and taken not in message
    assert requests_rows(small) == []
    # a new spelling of one's own address is no conflict
    own = record_request(small, "rectification", "c-one", changes={"email": ONE["email"].upper()})
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
    first = record_request(small, "rectification", "c-one", changes={"email": new})
    second = record_request(
        small, "rectification", "c-two", changes={"email": new.upper(), "city": "Brno"}
    )
    done = apply_pending(small, policy, T, "run-1")
    assert done["rectification"] == 2
    statuses = dict(small.execute("SELECT request_id, status FROM requests.requests").fetchall())
    assert statuses == {first.request_id: "done", second.request_id: "refused"}
    # nothing of the refused request is applied, not even its other columns
    assert small.execute(
        "SELECT email, city FROM core.contacts WHERE contact_id = 'c-two'"
    ).fetchone() == (TWO["email"], TWO["city"])
    assert resolve_subject(small, new) == "c-one"
    assert resolve_subject(small, TWO["email"]) == "c-two"
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
    assert resolve_subject(con, " c-pad\t") == " c-pad\t"
    assert resolve_subject(con, "\u3000c-one\n") == "c-one"
    with pytest.raises(UnknownSubjectError, match="empty subject"):
        resolve_subject(con, " \t\u00a0")


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
        parse_changes([pair])
    message = str(err.value)
    assert names in message
    assert "\n" not in message
    assert "Secret" not in message and "1980-02-30" not in message


def test_valid_rectification_is_parsed() -> None:
    assert parse_changes(["email=new@example.test", "country=SK", "birth_date=1980-02-29"]) == {
        "email": "new@example.test",
        "country": "SK",
        "birth_date": "1980-02-29",
    }
    with pytest.raises(RequestError, match="at least one"):
        parse_changes([])


def test_set_only_with_rectification(small: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(RequestError, match="rectification requests only"):
        record_request(small, "erasure", "c-one", changes={"email": "a@example.test"})
    with pytest.raises(RequestError, match="at least one"):
        record_request(small, "rectification", "c-one")
    with pytest.raises(RequestError, match="unknown request type"):
        record_request(small, "forget-me", "c-one")
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
        small, "rectification", "c-one", changes={"city": "Brno"}, now=dt.datetime(2025, 1, 10)
    )
    fresh = record_request(small, "objection", "c-two")
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
    assert list(entries[0]["keys"]) == ["c-rect"]
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
    assert [list(e["keys"]) for e in restrict] == [["c-restr"]]


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
        sc.home, "SELECT contact_id, type FROM requests.requests WHERE request_id = ?", [rid]
    ) == [("c-erin", "erasure")]


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
        and list(e["keys"]) == ["c-erin"]
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
    assert {k for e in erased for k in e["keys"]} >= {p["contact_id"] for p in (ERIN, GONE)}
    answered = [e for e in steps if e["reason"].endswith("erasure answered")]
    assert sorted(k for e in answered for k in e["keys"]) == sorted(sc.erasures)
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
            resolve_subject(con, ERIN["email"])
    finally:
        con.close()
