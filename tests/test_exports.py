"""Access and portability exports written by the pipeline: zip layout, the JSON document
validated against the shipped schema, CSVs, the HTML summary, logging and expiry."""

from __future__ import annotations

import copy
import csv
import datetime as dt
import html
import io
import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import TAGGED_TABLES
from request_cases import (
    ACC,
    PORT,
    Scenario,
    answer,
    dicts,
    full_name,
    hashed,
    policy,
    rows_of,
    scenario,
)

import lethe
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from lethe.rights import language as words
from lethe.rights.exports import expire_exports, schema
from lethe.rights.letter import table_label, wording

MEMBERS = {"subject.json", "index.html", *(f"{t}.csv" for t in TAGGED_TABLES)}
PROCESSORS = {"monkeydata", "balikobot", "smartemailing"}


@pytest.fixture(scope="module")
def sc(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return scenario(tmp_path_factory)


def doc(sc: Scenario, name: str) -> dict[str, Any]:
    return json.loads(sc.exports_run1[name]["subject.json"])


def by_key(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {r[key]: r for r in rows}


def csv_rows(sc: Scenario, name: str, table: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(sc.exports_run1[name][f"{table}.csv"].decode("utf-8")))
    return list(reader.fieldnames or []), list(reader)


def test_the_shipped_schema_is_a_valid_json_schema() -> None:
    s = schema()
    jsonschema.Draft202012Validator.check_schema(s)
    assert s["properties"]["kind"]["enum"] == ["access", "portability"]
    shipped = Path(lethe.__file__).parent / "schemas" / "subject_export.schema.json"
    assert json.loads(shipped.read_text(encoding="utf-8")) == s


@pytest.mark.parametrize("name", ["access", "portability", "gone_access"])
def test_zip_holds_json_one_csv_per_table_and_html(sc: Scenario, name: str) -> None:
    assert set(sc.exports_run1[name]) == MEMBERS
    document = doc(sc, name)
    jsonschema.validate(document, schema())
    assert document["kind"] == ("portability" if name == "portability" else "access")
    assert document["request"]["id"] == sc.ids[name]
    assert sc.export_names_run1[name] == f"{sc.ids[name]}-{document['kind']}.zip"
    status, ans = answer(sc.home, sc.ids[name])
    assert status == "done"
    assert ans == {"export": sc.export_names_run1[name]}


def test_schema_rejects_incomplete_documents(sc: Scenario) -> None:
    document = doc(sc, "access")
    declared = schema(policy())  # the shipped schema, requiring the policy's tables
    jsonschema.validate(document, declared)
    for broken in (
        {k: v for k, v in document.items() if k != "processors"},
        {**document, "kind": "erasure"},
        {**document, "tables": {k: v for k, v in document["tables"].items() if k != "orders"}},
        {**document, "subject": {"order_id": "c-acc"}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, declared)
    untagged = copy.deepcopy(document)
    del untagged["tables"]["contacts"][0]["_legal_bases"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(untagged, schema())


def test_access_document_holds_everything_about_the_subject(sc: Scenario) -> None:
    document = doc(sc, "access")
    assert document["subject"] == {"contact_id": "c-acc"}
    tables = document["tables"]
    (contact,) = tables["contacts"]
    for col in ("email", "phone", "first_name", "last_name", "street"):
        assert contact[col] == ACC[col]
    assert contact["_purposes"] == ["account", "contract", "newsletter"]
    assert contact["_legal_bases"] == ["contract", "consent"]
    assert contact["_retain_until"] is None  # open-ended while the order runs
    # consents with their evidence
    (consent,) = tables["consents"]
    (landing,) = rows_of("consents", "c-acc")
    for col in ("consent_id", "purpose", "ip_address", "method", "wording"):
        assert consent[col] == landing[col]
    assert consent["_purposes"] == ["newsletter", "consent_evidence"]
    assert consent["_legal_bases"] == ["consent", "legitimate_interest"]
    assert consent["_retain_until"].startswith("2031-01-01")
    # orders, including the invoice pseudonymized for accounting, re-identified
    orders = by_key(tables["orders"], "order_id")
    assert set(orders) == {"o-acc-1", "o-acc-2"}
    invoice = orders["o-acc-1"]
    assert invoice["_state"] == "pseudonymized"
    assert invoice["_purposes"] == ["accounting"]
    assert invoice["_legal_bases"] == ["legal_obligation"]
    assert invoice["_retain_until"].startswith("2030-01-10")
    assert invoice["contact_id"] == "c-acc"
    assert invoice["billing_name"] == full_name(ACC)
    assert invoice["billing_street"] == ACC["street"]
    assert orders["o-acc-2"]["_purposes"] == ["contract", "accounting"]
    # in the warehouse that invoice is pseudonymized: the export re-identified it
    assert sc.snapshots[0]["orders"]["o-acc-1"]["contact_id"].startswith("tok_")
    (shipment,) = tables["shipments"]
    assert shipment["shipment_id"] == "s-acc-2"
    assert shipment["recipient_phone"] == ACC["phone"]
    assert shipment["_purposes"] == ["contract"]
    # purposes with legal bases and retention, and the processors
    purposes = document["purposes"]
    assert {"account", "contract", "accounting", "newsletter", "consent_evidence"} <= set(purposes)
    assert purposes["accounting"]["legal_basis"] == "legal_obligation"
    assert purposes["newsletter"]["legal_basis"] == "consent"
    assert all(p["retention"] for p in purposes.values())
    assert {p["name"] for p in document["processors"]} == PROCESSORS
    assert {p["name"]: p["purpose"] for p in document["processors"]}["smartemailing"] == (
        "newsletter"
    )
    # nothing of anybody else
    dumped = json.dumps(document)
    for other in ("c-port", "c-rect", "c-other", "c-erin"):
        assert other not in dumped


def test_access_csvs_match_the_document(sc: Scenario) -> None:
    document = doc(sc, "access")
    for table in TAGGED_TABLES:
        header, rows = csv_rows(sc, "access", table)
        assert {"_purposes", "_legal_bases", "_retain_until", "_state"} <= set(header)
        key = header[0]
        assert sorted(r[key] for r in rows) == sorted(r[key] for r in document["tables"][table])
    _, orders = csv_rows(sc, "access", "orders")
    invoice = by_key(orders, "order_id")["o-acc-1"]
    assert invoice["contact_id"] == "c-acc"
    assert invoice["billing_name"] == full_name(ACC)
    assert json.loads(invoice["_purposes"]) == ["accounting"]
    _, consents = csv_rows(sc, "access", "consents")
    assert consents[0]["ip_address"] == rows_of("consents", "c-acc")[0]["ip_address"]


def test_access_csvs_hold_carried_extra_columns(sc: Scenario) -> None:
    """Carried extra columns are in the CSVs as in subject.json (values as the doc holds them)."""
    document = doc(sc, "access")
    orders = document["tables"]["orders"]
    assert orders and all("billing_email" in o for o in orders)
    header, rows = csv_rows(sc, "access", "orders")
    assert "billing_email" in header
    assert sorted(r["billing_email"] for r in rows) == sorted(
        o["billing_email"] or "" for o in orders
    )


def test_access_html_summary_is_readable(sc: Scenario) -> None:
    page = sc.exports_run1["access"]["index.html"].decode("utf-8")
    assert page.startswith("<!doctype html>")
    assert sc.ids["access"] in page
    # the letter in each language: every table by its label with its count of records, the
    # legal bases in words, the processors by name (the subject's purposes concern them all)
    tables = policy().data_schema.tables
    processors = {p.name: p for p in policy().processors}
    for lang in ("cs", "en"):
        rows = words.PHRASES[lang]["rows"]
        for table, n in (("contacts", 1), ("consents", 1), ("orders", 2), ("shipments", 1)):
            label = table_label(tables[table], lang)
            assert (
                f'<h3>{label} <span class="count">({words.count(rows, n, lang)})</span></h3>'
                in page
            )
        assert html.escape(words.LEGAL_BASES[lang]["legal_obligation"]) in page
        for name in PROCESSORS:
            assert html.escape(wording(processors[name], lang).title) in page
    assert ACC["email"] in page


def test_portability_covers_consent_and_contract_data_only(sc: Scenario) -> None:
    document = doc(sc, "portability")
    assert document["subject"] == {"contact_id": "c-port"}
    tables = document["tables"]
    assert [c["contact_id"] for c in tables["contacts"]] == ["c-port"]
    assert tables["contacts"][0]["email"] == PORT["email"]
    # the active consent (consent) is portable; the withdrawn one kept only as evidence
    # (legitimate interest) is not; the invoice kept for accounting (legal obligation) is not
    assert [c["consent_id"] for c in tables["consents"]] == ["k-port-new"]
    assert tables["orders"] == []
    assert tables["shipments"] == []
    for table in TAGGED_TABLES:
        for row in tables[table]:
            assert set(row["_legal_bases"]) & {"consent", "contract"}, (table, row)
    # the access view of the same warehouse does hold them
    held = dicts(
        sc.home,
        "SELECT consent_id FROM core.consents WHERE contact_id = 'c-port' ORDER BY 1",
    )
    assert [r["consent_id"] for r in held] == ["k-port-new", "k-port-old"]
    _, consents = csv_rows(sc, "portability", "consents")
    assert [c["consent_id"] for c in consents] == ["k-port-new"]


def test_export_is_logged_and_in_the_ledger(sc: Scenario) -> None:
    log = dicts(sc.home, "SELECT * FROM audit.export_log ORDER BY exported_at, export_id")
    logged = {r["export_id"]: r for r in log}
    for name in ("access", "portability", "gone_access"):
        entry = logged[sc.ids[name]]
        assert entry["kind"] == ("portability" if name == "portability" else "access")
        assert entry["file_name"] == sc.export_names_run1[name]
        assert entry["recipient"] == "data subject"
        delta = entry["expires_at"] - entry["exported_at"]
        assert dt.timedelta(days=29) < delta <= dt.timedelta(days=31)
    assert logged[sc.ids["access"]]["subject_key"] == "c-acc"
    exports = [e for e in sc.ledger_after_run2 if e["action"] == "export"]
    assert len(exports) == 3
    by_request = {e["reason"].split(":")[0]: e for e in exports}
    entry = by_request[sc.ids["access"]]
    assert list(entry["keys"]) == [hashed(sc.home, "c-acc")]
    assert entry["run_id"] == sc.runs[0].run_id
    # the log and the ledger hold keys and file names, never the exported values
    dumped = repr(log) + repr(exports)
    for value in (ACC["email"], ACC["phone"], ACC["last_name"], PORT["email"]):
        assert value not in dumped


def test_exports_expire(sc: Scenario, tmp_path: Path) -> None:
    # A copy of the home (warehouse and exports), so the shared scenario stays as it is.
    home = Home(tmp_path / "home").ensure()
    shutil.copy2(sc.home.warehouse, home.warehouse)
    shutil.copytree(sc.home.exports / "requests", home.exports / "requests")
    zips = sorted(p.name for p in (home.exports / "requests").glob("*.zip"))
    assert zips == sorted([sc.export_names_run1["access"], sc.export_names_run1["portability"]])
    now = dt.datetime.now(dt.UTC)
    con = connect(home.warehouse)
    try:
        assert expire_exports(con, home, now=now + dt.timedelta(days=29)) == 0
        assert sorted(p.name for p in (home.exports / "requests").glob("*.zip")) == zips
        assert expire_exports(con, home, now=now + dt.timedelta(days=31)) == 2
    finally:
        con.close()
    assert list((home.exports / "requests").glob("*.zip")) == []
