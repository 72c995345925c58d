"""Ingest of sources as their schema declares them: the example shop's exports (Czech
headers, `;`-separated windows-1250, decimal commas, `d.m.Y H:M` Prague times) load with
every value exact; a declared header missing from a file is refused naming it."""

from __future__ import annotations

import csv
import datetime as dt
import shutil
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from conftest import REPO

from lethe.declaration.policy import Policy, load_policy, parse_policy
from lethe.engine.ingest import IngestError, ingest_table
from lethe.engine.warehouse import connect
from lethe.operations.home import Home

SHOP = REPO / "examples" / "shop"


@pytest.fixture(scope="module")
def shop_policy() -> Policy:
    return load_policy(SHOP / "policy.yaml")


def _rows(path: Path, encoding: str = "cp1250") -> list[dict[str, str]]:
    with path.open(encoding=encoding, newline="") as fh:
        return list(csv.DictReader(fh, delimiter=";"))


@pytest.fixture
def shop_home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home").ensure()
    for f in (SHOP / "landing").glob("*.csv"):
        shutil.copy(f, home.landing / f.name)
    return home


def _ingest_all(home: Home, policy: Policy) -> None:
    con = connect(home.warehouse)
    try:
        for table in policy.data_schema.tables:
            result = ingest_table(con, home.landing, table, policy)
            assert result.rows_quarantined == 0, (table, result.examples)
    finally:
        con.close()


def test_example_shop_files_load_exactly(shop_home: Home, shop_policy: Policy) -> None:
    source = {f.stem: _rows(f) for f in (SHOP / "landing").glob("*.csv")}
    _ingest_all(shop_home, shop_policy)
    con = connect(shop_home.warehouse, read_only=True)
    try:
        people = dict(
            con.execute("SELECT cislo_zakaznika, prijmeni FROM core.zakaznici").fetchall()
        )
        amounts = dict(
            con.execute("SELECT cislo_objednavky, castka FROM core.objednavky").fetchall()
        )
        ordered = dict(
            con.execute("SELECT cislo_objednavky, objednano FROM core.objednavky").fetchall()
        )
        born = dict(
            con.execute("SELECT cislo_zakaznika, datum_narozeni FROM core.zakaznici").fetchall()
        )
    finally:
        con.close()
    customers = source["zakaznici"]
    assert len(people) == len(customers)
    # Diacritics survive the windows-1250 round trip, letter for letter.
    assert {r["Číslo zákazníka"]: r["Příjmení"] for r in customers} == people
    assert any(set(name) & set("ěščřžýáíéůúňťď") for name in people.values())
    # Decimal commas are exact amounts.
    assert {
        r["Číslo objednávky"]: Decimal(r["Částka celkem"].replace(",", "."))
        for r in source["objednavky"]
    } == amounts
    # Prague wall-clock times are stored in UTC (CET +1, CEST +2).
    prague = ZoneInfo("Europe/Prague")
    for row in source["objednavky"]:
        local = dt.datetime.strptime(row["Objednáno"], "%d.%m.%Y %H:%M").replace(tzinfo=prague)
        assert ordered[row["Číslo objednávky"]] == local.astimezone(dt.UTC).replace(tzinfo=None)
    for row in customers:
        text = row["Datum narození"]
        expected = dt.datetime.strptime(text, "%d.%m.%Y").date() if text else None
        assert born[row["Číslo zákazníka"]] == expected


def test_declared_header_missing_from_the_file_is_refused(
    shop_home: Home, shop_policy: Policy
) -> None:
    path = shop_home.landing / "zakaznici.csv"
    text = path.read_text(encoding="cp1250").replace("Příjmení", "Prijmeni", 1)
    path.write_text(text, encoding="cp1250")
    con = connect(shop_home.warehouse)
    try:
        with pytest.raises(IngestError) as info:
            ingest_table(con, shop_home.landing, "zakaznici", shop_policy)
    finally:
        con.close()
    message = str(info.value)
    assert message == (
        f"{path}: missing column 'Příjmení' (for prijmeni) (file refused, nothing loaded)"
    )
    assert path.exists()


def test_file_not_in_its_declared_encoding_is_refused(shop_home: Home, shop_policy: Policy) -> None:
    path = shop_home.landing / "zakaznici.csv"
    # 0x81 is no character in windows-1250.
    path.write_bytes(path.read_bytes().replace(b"C00000001", b"C0000\x810001", 1))
    con = connect(shop_home.warehouse)
    try:
        with pytest.raises(IngestError, match=r"zakaznici\.csv: not windows-1250 text"):
            ingest_table(con, shop_home.landing, "zakaznici", shop_policy)
    finally:
        con.close()


def test_values_not_in_the_declared_format_are_quarantined(
    shop_home: Home, shop_policy: Policy
) -> None:
    path = shop_home.landing / "objednavky.csv"
    rows = path.read_text(encoding="cp1250").splitlines()
    first = rows[1].split(";")
    first[2] = "2024-02-29T14:30:00"  # ISO, not the declared d.m.Y H:M
    first[5] = "12.50"  # a decimal point where the shop writes a comma
    rows[1] = ";".join(first)
    path.write_text("\r\n".join(rows) + "\r\n", encoding="cp1250")
    _ingest_all_but_orders(shop_home, shop_policy)
    con = connect(shop_home.warehouse)
    try:
        result = ingest_table(con, shop_home.landing, "objednavky", shop_policy)
        reasons = con.execute(
            "SELECT column_name, reason FROM core.quarantine ORDER BY column_name"
        ).fetchall()
    finally:
        con.close()
    assert result.rows_quarantined == 1
    assert reasons == [
        ("castka", "wrong type: expected decimal"),
        ("objednano", "unparsable date: expected timestamp (%d.%m.%Y %H:%M)"),
    ]


def _ingest_all_but_orders(home: Home, policy: Policy) -> None:
    con = connect(home.warehouse)
    try:
        ingest_table(con, home.landing, "zakaznici", policy)
    finally:
        con.close()


def test_integer_and_boolean_columns(tmp_path: Path) -> None:
    schema = {
        "version": 1,
        "timezone": "Europe/Prague",
        "tables": {
            "members": {
                "key": "member_no",
                "subject": True,
                "columns": {
                    "member_no": {
                        "type": "integer",
                        "category": "user.unique_id",
                        "required": True,
                    },
                    "vip": {"type": "boolean", "category": "user.behavior"},
                    "joined": {"type": "timestamp", "category": "system.operations"},
                },
            },
            "member_holds": {
                "key": "hold_no",
                "optional": True,
                "references": {"member_no": "members"},
                "columns": {
                    "hold_no": {"type": "text", "category": "system.operations", "required": True},
                    "member_no": {"type": "integer", "category": "user.unique_id"},
                    "why": {"type": "text", "category": "user.content.private"},
                    "lifted": {"type": "timestamp", "category": "system.operations"},
                },
            },
        },
    }
    (tmp_path / "members.schema.yaml").write_text(yaml.safe_dump(schema))
    policy_text = yaml.safe_dump(
        {
            "schema": "members.schema.yaml",
            "purposes": {
                "membership": {
                    "legal_basis": "contract",
                    "description": "Membership.",
                    "keeps": {"members": "*"},
                    "retention": {"from": "members.joined", "keep": "1y"},
                }
            },
            "litigation_hold": {
                "legal_basis": "legitimate_interest",
                "description": "Holds.",
                "keeps": {"members": "*"},
                "retention": {"from": "member_holds.lifted", "keep": "0d", "open_while_null": True},
            },
            "when_unkept": {"members": {"row": "delete"}},
            "operations": {
                "backups": "80d",
                "access_log": "30d",
                "exports": "30d",
                "export_log": {"keep": "90d", "purge_when_over": 1000, "every": "1w"},
            },
        }
    )
    policy = parse_policy(policy_text, "members.yaml", tmp_path)
    home = Home(tmp_path / "home").ensure()
    (home.landing / "members.csv").write_text(
        "member_no,vip,joined\n7,true,2024-07-01 12:00:00\n8,false,2024-07-01T12:00:00+00:00\n"
        "x9,maybe,2024-01-01\n"
    )
    con = connect(home.warehouse)
    try:
        result = ingest_table(con, home.landing, "members", policy)
        rows = con.execute("SELECT member_no, vip, joined FROM core.members ORDER BY 1").fetchall()
        reasons = sorted(con.execute("SELECT column_name, reason FROM core.quarantine").fetchall())
    finally:
        con.close()
    assert result.rows_loaded == 2
    assert rows == [
        (7, True, dt.datetime(2024, 7, 1, 10, 0)),  # Prague summer time is UTC+2
        (8, False, dt.datetime(2024, 7, 1, 12, 0)),  # an explicit offset wins
    ]
    assert reasons == [
        ("member_no", "wrong type: expected integer"),
        ("vip", "wrong type: expected boolean"),
    ]
