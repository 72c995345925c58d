"""Hostile input: the corpus under tests/data/hostile plus large and odd files made here.

Every landing file ends either in a clear error (the file is refused as a whole, nothing
loads, the file stays in landing/, the message names the file and never quotes a value)
or in quarantine (bad rows in core.quarantine with a reason, good rows loaded, nothing
else touched). Hostile strings in ids and names load as plain data and never reach SQL
except as bound parameters; path-like ids never become paths; look-alike e-mails never
resolve to someone else; hostile policies are refused with the key named, before any data
is touched.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import shutil
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DEFAULT_POLICY, TABLES, ingest_all, write_landing_set
from reliability import copy_home, ledger_ok, run_cli, scratch_home

from lethe.declaration.policy import PolicyError, load_policy, parse_policy
from lethe.engine.ingest import MAX_TEXT, IngestError, ingest_table
from lethe.engine.warehouse import connect
from lethe.errors import LetheError
from lethe.operations.home import Home
from lethe.rights.requests import record_request
from lethe.rights.subjects import UnknownSubjectError, email_key, resolve_subject
from pipelines.launch import run_pipeline

CORPUS = Path(__file__).parent / "data" / "hostile"
POLICY = load_policy(DEFAULT_POLICY)
T = dt.date(2026, 3, 1)
OUT_OF_RANGE = "date out of range: expected 1900-01-01 to before 2200-01-01"
SQL_STRINGS = (
    "'; DROP TABLE core.contacts; --",
    "Robert'); DROP TABLE core.orders;--",
    "x' OR '1'='1@example.test",
    "'; DELETE FROM audit.ledger; --",
    'x"); DELETE FROM requests.requests; --',
    "Praha'||(SELECT 1)||'",
    "marketing'; DROP TABLE core.consents; --",
)
TRAVERSAL = (
    "../../etc/passwd",
    "..\\..\\windows\\win.ini",
    "/etc/shadow",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "exports/../../../tmp/x",
)


@dataclass(frozen=True)
class Refused:
    message: str


@dataclass(frozen=True)
class Loads:
    keys: frozenset[str]
    problems: tuple[tuple[str, int], ...] = ()


def loads(*keys: str, **problems: int) -> Loads:
    return Loads(frozenset(keys), tuple(problems.items()))


def loads_with(keys: set[str], problems: dict[str, int]) -> Loads:
    return Loads(frozenset(keys), tuple(problems.items()))


# file -> expected outcome (the table is the file name's prefix)
CORPUS_CASES: dict[str, Refused | Loads] = {
    "contacts_ragged.csv": Refused("line 3: missing columns"),
    "contacts_late_header.csv": Refused("line 4: too many columns"),
    "contacts_bad_quote.csv": Refused("line 3: "),
    "contacts_latin1.csv": Refused("not UTF-8 text"),
    "contacts_semicolon.csv": Refused("missing required column"),
    "contacts_duplicate_header.csv": Refused("duplicate column names ['email']"),
    "contacts_missing_column.csv": Refused("missing required column 'email'"),
    "contacts_empty.csv": Refused("no header row"),
    "contacts_bom.csv": loads("G1", "G2"),
    "contacts_crlf.csv": loads("G1", "G2"),
    "contacts_header_only.csv": loads(),
    "contacts_wrong_types.csv": loads_with(
        {"G1", "G2"},
        {
            "not an ISO 3166-1 alpha-2 code": 1,
            "unparsable date: expected date": 1,
            "unparsable date: expected timestamp": 2,
        },
    ),
    "contacts_dates_out_of_range.csv": loads_with({"G1"}, {OUT_OF_RANGE: 6}),
    "contacts_duplicate_keys.csv": loads_with(
        {"G1", "G2"}, {"duplicate key (first at row 1)": 1, "duplicate key (first at row 2)": 1}
    ),
    "contacts_control_chars.csv": loads_with({"G1", "G2", "X6"}, {"control characters": 5}),
    "contacts_sql_injection.csv": loads(
        "'; DROP TABLE core.contacts; --", "1 OR 1=1", 'x"); DELETE FROM requests.requests; --'
    ),
    "contacts_path_traversal.csv": loads(*TRAVERSAL),
    "contacts_lookalikes.csv": loads(*(f"L{i}" for i in range(1, 8))),
    "contacts_hostile_header.csv": loads("G1"),
    "orders_wrong_types.csv": loads_with(
        {"OK1", "OK2"}, {"more than 2 decimal places": 1, "wrong type: expected decimal": 5}
    ),
    "orders_orphans.csv": loads_with(
        {"OK1"}, {"missing value": 1, "orphan foreign key: no contacts.contact_id": 2}
    ),
    "consents_unknown_purpose.csv": loads_with(
        {"KOK"}, {"missing value": 1, "unknown purpose (not in the policy)": 3}
    ),
}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A warehouse with a few good rows (contacts B1-B3 with an order, consent, shipment)."""
    home = Home(tmp_path_factory.mktemp("hostile") / "baseline").ensure()
    write_landing_set(
        home.landing,
        contacts=[
            {"contact_id": f"B{i}", "last_active_at": "2025-06-01T00:00:00"} for i in (1, 2, 3)
        ],
        consents=[{"consent_id": "KB1", "contact_id": "B1", "granted_at": "2025-01-01T00:00:00"}],
        orders=[{"order_id": "OB1", "contact_id": "B1", "completed_at": None}],
        shipments=[{"shipment_id": "SB1", "order_id": "OB1"}],
        holds=[],
    )
    con = connect(home.warehouse)
    try:
        assert all(r.ok for r in ingest_all(con, home.landing, POLICY).values())
    finally:
        con.close()
    return home


def warehouse_state(home: Home) -> dict[str, list]:
    con = connect(home.warehouse, read_only=True)
    try:
        out = {
            t: sorted(
                con.execute(f"SELECT * EXCLUDE (_ingested_at) FROM core.{t}").fetchall(), key=repr
            )
            for t in TABLES
        }
        out["quarantine"] = con.execute("SELECT count(*) FROM core.quarantine").fetchall()
        out["ledger"] = con.execute("SELECT count(*) FROM audit.ledger").fetchall()
        return out
    finally:
        con.close()


def keys(home: Home, table: str) -> set[str]:
    con = connect(home.warehouse, read_only=True)
    try:
        key = TABLES[table].key
        return {r[0] for r in con.execute(f"SELECT {key} FROM core.{table}").fetchall()}
    finally:
        con.close()


def file_values(path: Path) -> set[str]:
    """Every cell of a corpus file with at least 5 characters (to look for in messages)."""
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace") if path.suffix == ".csv" else ""
    cells = {c for row in csv.reader(io.StringIO(text), strict=False) for c in row}
    return {c for c in cells if len(c) >= 5}


@dataclass
class Outcome:
    error: str | None
    result: object | None


def ingest_file(home: Home, src: Path | None, table: str, data: bytes | None = None) -> Outcome:
    target = home.landing / f"{table}{src.suffix if src else '.csv'}"
    if src is not None:
        shutil.copyfile(src, target)
    elif data is not None:
        target.write_bytes(data)
    con = connect(home.warehouse)
    try:
        return Outcome(None, ingest_table(con, home.landing, table, POLICY))
    except IngestError as exc:
        return Outcome(str(exc), None)
    finally:
        con.close()


def check_outcome(
    baseline: Home, home: Home, table: str, name: str, expected: Refused | Loads, outcome: Outcome
) -> None:
    before = warehouse_state(baseline)
    if isinstance(expected, Refused):
        assert outcome.error is not None, f"{name}: loaded, expected a refusal"
        assert name.split(".")[0] in outcome.error or table in outcome.error
        assert expected.message in outcome.error, outcome.error
        assert "\n" not in outcome.error
        assert warehouse_state(home) == before  # nothing loaded, nothing quarantined
        assert any(home.landing.iterdir()), "a refused file stays in landing/"
        return
    assert outcome.error is None, f"{name}: refused: {outcome.error}"
    result = outcome.result
    assert result.problems == dict(expected.problems), result.problems
    assert result.rows_loaded == len(expected.keys)
    baseline_keys = keys(baseline, table)
    assert keys(home, table) == baseline_keys | expected.keys
    after = warehouse_state(home)
    for other in TABLES:
        if other != table:
            assert after[other] == before[other], f"{name} touched core.{other}"
    assert after["ledger"] == before["ledger"]
    assert not any(home.landing.iterdir()), "a loaded file is removed from landing/"


@pytest.fixture
def case_home(baseline: Home, tmp_path: Path) -> Home:
    return copy_home(baseline, tmp_path / "home")


@pytest.mark.parametrize("name", sorted(CORPUS_CASES))
def test_corpus_file_is_refused_or_quarantined(baseline: Home, case_home: Home, name: str) -> None:
    table = name.split("_")[0]
    src = CORPUS / name
    outcome = ingest_file(case_home, src, table)
    check_outcome(baseline, case_home, table, name, CORPUS_CASES[name], outcome)
    told = outcome.error or " ".join(outcome.result.examples)
    leaked = [v for v in file_values(src) if v in told and v not in TABLES[table].column_names]
    assert leaked == [], f"the message quotes input values: {leaked}"


def test_every_corpus_file_has_an_expected_outcome() -> None:
    files = {p.name for p in CORPUS.glob("*.csv")}
    assert files == set(CORPUS_CASES)


def test_a_1mb_value_is_quarantined_and_a_3mb_line_refused(baseline: Home, tmp_path: Path) -> None:
    header = ",".join(TABLES["contacts"].column_names)

    def row(cid: str, first: str) -> str:
        return (
            f"{cid},{cid.lower()}@example.test,+420,{first},Novák,Dlouhá 1,Praha,11000,CZ,"
            "1980-01-01,2020-01-01,"
        )

    big = copy_home(baseline, tmp_path / "big")
    data = "\n".join(
        [header, row("G1", "Jan"), row("M1", "A" * 1_000_000), row("G2", "B" * MAX_TEXT)]
    )
    outcome = ingest_file(big, None, "contacts", (data + "\n").encode())
    check_outcome(
        baseline,
        big,
        "contacts",
        "1 MB value",
        loads_with({"G1", "G2"}, {f"value too long (over {MAX_TEXT} characters)": 1}),
        outcome,
    )
    huge = copy_home(baseline, tmp_path / "huge")
    data = "\n".join([header, row("G1", "Jan"), row("M2", "A" * 3_000_000)])
    outcome = ingest_file(huge, None, "contacts", (data + "\n").encode())
    check_outcome(
        baseline, huge, "contacts", "3 MB line", Refused("line 3: line size over maximum"), outcome
    )


def test_a_landing_symlink_to_a_system_file_is_refused(baseline: Home, case_home: Home) -> None:
    (case_home.landing / "contacts.csv").symlink_to("/etc/passwd")
    outcome = ingest_file(case_home, None, "contacts")
    check_outcome(
        baseline,
        case_home,
        "contacts",
        "symlink",
        Refused("(file refused, nothing loaded)"),
        outcome,
    )
    assert "root:" not in (outcome.error or "")
    assert Path("/etc/passwd").exists()


def test_parquet_with_odd_types_is_quarantined_or_carried_as_text(
    baseline: Home, case_home: Home
) -> None:
    n = 4
    columns = {c: pa.array([f"{c}-{i}" for i in range(n)]) for c in TABLES["contacts"].column_names}
    columns["contact_id"] = pa.array(["P1", "P2", "P3", "P4"])
    columns["country"] = pa.array(["CZ"] * n)
    columns["birth_date"] = pa.array([dt.date(1980, 1, 1), None, None, None], pa.date32())
    # Epoch numbers, a float and a bool where timestamps belong.
    columns["created_at"] = pa.array(
        [dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 1), dt.datetime(9999, 12, 31), None],
        pa.timestamp("us"),
    )
    columns["last_active_at"] = pa.array([None, 1_700_000_000, None, None], pa.int64())
    columns["postal_code"] = pa.array([11000.0, 60200.5, None, None])
    columns["nested"] = pa.array(
        [{"a": 1, "b": "x"}] * n, pa.struct([("a", pa.int64()), ("b", pa.string())])
    )
    columns["blob"] = pa.array([b"\x00\x01binary"] * n, pa.binary())
    pq.write_table(pa.table(columns), case_home.landing / "contacts.parquet")
    outcome = ingest_file(case_home, None, "contacts")
    assert outcome.error is None, outcome.error
    result = outcome.result
    # P2: an epoch number is no timestamp; P3: 9999 is out of range; P4: created_at missing.
    assert result.problems == {
        "unparsable date: expected timestamp": 1,
        OUT_OF_RANGE: 1,
        "missing value": 1,
    }, result.problems
    assert result.rows_loaded == 1
    con = connect(case_home.warehouse, read_only=True)
    try:
        row = con.execute(
            "SELECT postal_code, nested, blob FROM core.contacts WHERE contact_id = 'P1'"
        ).fetchone()
    finally:
        con.close()
    assert row == ("11000.0", "{'a': 1, 'b': x}", "\\x00\\x01binary")  # carried as text


# --- hostile strings end to end ------------------------------------------------------------


class RecordingConnection:
    """A DuckDB connection that records the text of every statement it is given."""

    def __init__(self, con: duckdb.DuckDBPyConnection, log: list[str]) -> None:
        self._con, self._log = con, log

    def execute(self, query: str, parameters: object = None) -> object:
        self._log.append(query)
        return (
            self._con.execute(query, parameters)
            if parameters is not None
            else self._con.execute(query)
        )

    def executemany(self, query: str, parameters: object = None) -> object:
        self._log.append(query)
        return self._con.executemany(query, parameters)

    def sql(self, query: str, *args: object, **kwargs: object) -> object:
        self._log.append(query)
        return self._con.sql(query, *args, **kwargs)

    query = sql

    def table(self, name: str) -> object:
        self._log.append(name)
        return self._con.table(name)

    def __getattr__(self, name: str) -> object:
        return getattr(self._con, name)

    def __enter__(self) -> RecordingConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._con.close()


@pytest.fixture
def recorded_sql(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every SQL text Lethe sends to DuckDB while the test runs (in this process)."""
    log: list[str] = []
    real = duckdb.connect

    def connect_recording(*args: object, **kwargs: object) -> RecordingConnection:
        return RecordingConnection(real(*args, **kwargs), log)

    monkeypatch.setattr(duckdb, "connect", connect_recording)
    yield log


def test_hostile_strings_reach_sql_only_as_bound_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded_sql: list[str]
) -> None:
    """SQL-looking and path-like ids and names go through a whole pipeline run (ingest,
    requests, tagging, enforcement, exports, analytics, backup): they load as data, no SQL
    text contains them, no file appears outside LETHE_HOME/exports, the ledger verifies."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))
    home = Home(tmp_path / "home").ensure()
    rows = [*csv.DictReader((CORPUS / "contacts_sql_injection.csv").open(encoding="utf-8"))]
    rows += [*csv.DictReader((CORPUS / "contacts_path_traversal.csv").open(encoding="utf-8"))]
    for row in rows:
        row["last_active_at"] = "2025-06-01T00:00:00"
    orders = [
        {
            "order_id": f"../../order-{i}",
            "contact_id": row["contact_id"],
            "completed_at": None,
            "billing_name": "Robert'); DROP TABLE core.orders;--",
        }
        for i, row in enumerate(rows)
    ]
    write_landing_set(home.landing, contacts=rows, orders=orders)
    con = connect(home.warehouse)
    try:
        results = ingest_all(con, home.landing, POLICY)
        assert all(r.ok for r in results.values()), {t: r.problems for t, r in results.items()}
        record_request(con, POLICY.data_schema, "access", "../../etc/passwd")
        record_request(con, POLICY.data_schema, "portability", "exports/../../../tmp/x")
        record_request(con, POLICY.data_schema, "erasure", "'; DROP TABLE core.contacts; --")
        record_request(
            con,
            POLICY.data_schema,
            "rectification",
            "/etc/shadow",
            {"first_name": "'; DROP TABLE core.contacts; --"},
        )
    finally:
        con.close()
    outside_before = sorted(p for p in tmp_path.rglob("*") if home.root not in p.parents)
    recorded_sql.clear()
    outcome = run_pipeline(home, T)
    assert outcome.success, outcome.errors
    assert recorded_sql, "no SQL was recorded"
    markers = [*SQL_STRINGS, *TRAVERSAL, "../../order-"]
    found = {m for m in markers for sql in recorded_sql if m in sql}
    assert found == set(), f"input strings in SQL text: {found}"
    # The data is there, as data; the erased subject is gone; the tables all exist.
    con = connect(home.warehouse, read_only=True)
    try:
        ids = {r[0] for r in con.execute("SELECT contact_id FROM core.contacts").fetchall()}
        assert set(TRAVERSAL) <= ids and "1 OR 1=1" in ids
        assert "'; DROP TABLE core.contacts; --" not in ids
        assert con.execute(
            "SELECT first_name FROM core.contacts WHERE contact_id = '/etc/shadow'"
        ).fetchone() == ("'; DROP TABLE core.contacts; --",)
        assert con.execute("SELECT count(*) FROM core.orders").fetchone()[0] == len(orders)
    finally:
        con.close()
    assert ledger_ok(home.warehouse)[0]
    exports = [p for p in home.exports.rglob("*") if p.is_file() and "requests" in p.parts]
    assert len(exports) == 2 and all(p.name.startswith("R-") for p in exports), exports
    assert sorted(p for p in tmp_path.rglob("*") if home.root not in p.parents) == outside_before
    assert not Path("/tmp/lethe-pwned").exists()


def test_hostile_column_names_are_quoted_and_cannot_set_lethes_columns(
    baseline: Home, case_home: Home
) -> None:
    outcome = ingest_file(case_home, CORPUS / "contacts_hostile_header.csv", "contacts")
    assert outcome.error is None, outcome.error
    con = connect(case_home.warehouse, read_only=True)
    try:
        cols = [r[0] for r in con.execute("DESCRIBE core.contacts").fetchall()]
        row = con.execute(
            'SELECT _state, _purposes, "x""; DROP TABLE core.contacts; --" FROM core.contacts'
            " WHERE contact_id = 'G1'"
        ).fetchone()
    finally:
        con.close()
    assert 'x"; DROP TABLE core.contacts; --' in cols  # carried, as a quoted identifier
    assert row == ("active", None, "payload")  # the file cannot mark rows or claim purposes
    assert "_row" not in cols[len(TABLES["contacts"].columns) :]


# --- look-alike e-mails -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "contact"),
    [
        ("jan.novak@example.test", "L1"),
        ("JAN.NOVAK@EXAMPLE.TEST", "L1"),
        ("j\u0430n.novak@example.test", "L2"),
        ("karel@example.test", "L3"),
        ("Karel@Example.Test", "L3"),
        ("\u212aarel@example.test", "L4"),
        ("eva@ex\u0430mple.test", "L5"),
        ("eva@example.test", None),
        ("\u0130van@example.test", "L6"),
        ("I\u0307van@example.test", "L6"),  # İ decomposed: still not ivan
        ("\u212aAREL@example.test", None),  # a Kelvin-sign address matches only as stored
        ("ivan@example.test", "L7"),
        ("IVAN@example.test", "L7"),
        ("../../etc/passwd", None),
        ("'; DROP TABLE core.contacts; --", None),
    ],
)
def test_lookalike_emails_resolve_only_to_their_own_contact(
    baseline: Home, tmp_path_factory: pytest.TempPathFactory, subject: str, contact: str | None
) -> None:
    home = _lookalike_home(baseline, tmp_path_factory)
    con = connect(home.warehouse, read_only=True)
    try:
        if contact is None:
            with pytest.raises(UnknownSubjectError) as info:
                resolve_subject(con, POLICY.data_schema, subject)
            assert subject not in str(info.value)  # never echoed
        else:
            assert resolve_subject(con, POLICY.data_schema, subject) == contact
    finally:
        con.close()


def _caseless(value: str) -> str:
    """Unicode's canonical caseless form (Python's casefold between NFC steps)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", value).casefold())


def test_email_key_never_matches_more_than_unicode_caseless_matching() -> None:
    """Every letter of the first two planes against its upper, lower and decomposed forms:
    the lookup key may keep look-alikes apart (ß and SS, the Kelvin sign and k, ﬁ and fi),
    but never equates two spellings that canonical caseless matching tells apart, and it
    equates every case and NFD pair of the letters Czech, Slovak, Polish, German, Greek
    and Russian addresses use."""
    pairs = {
        (letter, other)
        for letter in map(chr, range(0x80, 0x20000))
        if unicodedata.category(letter).startswith("L")
        for other in (
            letter.upper(),
            letter.lower(),
            unicodedata.normalize("NFD", letter),
            unicodedata.normalize("NFD", letter.upper()),
        )
        if other != letter
    }
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE p (a VARCHAR, b VARCHAR)")
        con.execute(
            "INSERT INTO p SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[])",
            [[a for a, _ in pairs], [b for _, b in pairs]],
        )
        same = con.execute(f"SELECT a, b FROM p WHERE {email_key('a')} = {email_key('b')}")
        matched = set(same.fetchall())
    finally:
        con.close()
    assert [(a, b) for a, b in matched if _caseless(a) != _caseless(b)] == []
    common = (
        "áčďéěíňóřšťúůýžäöüąćęłńśźżľĺŕô"
        "αβγδεζηθικλμνξοπρστυφχψωάέήίόύώ"
        "абвгдежзийклмнопрстуфхцчшщъыьэюяё"
    )
    missed = [(a, b) for a, b in pairs if a in common and (a, b) not in matched]
    assert missed == []


_LOOKALIKES: dict[str, Home] = {}


def _lookalike_home(baseline: Home, factory: pytest.TempPathFactory) -> Home:
    if "home" not in _LOOKALIKES:
        home = copy_home(baseline, factory.mktemp("lookalikes") / "home")
        assert ingest_file(home, CORPUS / "contacts_lookalikes.csv", "contacts").error is None
        _LOOKALIKES["home"] = home
    return _LOOKALIKES["home"]


def test_cli_request_for_a_lookalike_records_the_right_subject(
    baseline: Home, tmp_path_factory: pytest.TempPathFactory
) -> None:
    home = _lookalike_home(baseline, tmp_path_factory)
    work = copy_home(home, tmp_path_factory.mktemp("lookalike-cli") / "home")
    result = run_cli(work, "request", "access", "--subject", "karel@example.test")
    assert result.returncode == 0, result.stderr
    con = connect(work.warehouse, read_only=True)
    try:
        assert con.execute("SELECT subject_key FROM requests.requests").fetchall() == [("L3",)]
    finally:
        con.close()


# --- hostile policies ---------------------------------------------------------------------


def _default_text() -> str:
    return DEFAULT_POLICY.read_text(encoding="utf-8")


def derived_policies() -> dict[str, tuple[str, str]]:
    """name -> (policy text, what the refusal must say), made from the default policy."""
    base = _default_text()
    newsletter = "  newsletter:\n    legal_basis"
    assert newsletter in base and "keep: 2y" in base
    return {
        "unknown top-level key": (
            base.replace("version: 1", "version: 1\nretain_forever: true", 1),
            "retain_forever: Extra inputs are not permitted",
        ),
        "unknown nested key": (
            base.replace(
                "    legal_basis: contract\n", "    legal_basis: contract\n    colour: red\n", 1
            ),
            "purposes.account.colour: Extra inputs are not permitted",
        ),
        "SQL in a purpose name": (
            base.replace(newsletter, "  \"x'] || [(SELECT 'INJECTED')] || ['\":\n    legal_basis"),
            "a purpose name is lower-case letters, digits and _",
        ),
        "quote in a purpose name": (
            base.replace(newsletter, '  "news\'letter":\n    legal_basis'),
            "a purpose name is lower-case letters, digits and _",
        ),
        "absurd duration": (
            base.replace("keep: 2y", "keep: 100000000y", 1),
            "purposes.account.retention.keep: 100000000y is longer than 200 years",
        ),
        "absurd days": (
            base.replace("keep: 2y", "keep: 99999999999999999999d", 1),
            "is longer than 200 years",
        ),
        "deep nesting": ("purposes: " + "[" * 50_000 + "]" * 50_000, "nested too deeply"),
        "huge key count": (
            "purposes:\n" + "".join(f"  p{i}: {{}}\n" for i in range(20_000)),
            "purposes.p0",
        ),
    }


CORPUS_POLICIES = {
    "alias_bomb.yaml": "aliases are not allowed in a policy",
    "merge_key_alias.yaml": "aliases are not allowed in a policy",
    "python_tag.yaml": "could not determine a constructor",
    "not_a_mapping.yaml": "a policy is a YAML mapping",
    "nul_bytes.yaml": "not valid YAML",
    "tabs_and_garbage.yaml": "not valid YAML",
}


@pytest.mark.parametrize("name", sorted(CORPUS_POLICIES))
def test_corpus_policy_is_refused_naming_the_problem(name: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(CORPUS / "policies" / name)
    assert CORPUS_POLICIES[name] in str(info.value)
    assert name in str(info.value) and "\n" not in str(info.value)
    assert not Path("/tmp/lethe-pwned").exists()


@pytest.mark.parametrize("case", sorted(derived_policies()))
def test_derived_policy_is_refused_naming_the_key(case: str) -> None:
    text, message = derived_policies()[case]
    with pytest.raises(PolicyError) as info:
        parse_policy(text, f"{case}.yaml")
    assert message in str(info.value), str(info.value)


def test_run_with_a_hostile_policy_touches_nothing(baseline: Home, case_home: Home) -> None:
    """`lethe run --policy` refuses a bomb or a bad policy in one line before any step."""
    before = warehouse_state(case_home)
    shutil.copyfile(CORPUS / "contacts_bom.csv", case_home.landing / "contacts.csv")
    bad = case_home.root.parent / "sql-name.yaml"
    bad.write_text(derived_policies()["SQL in a purpose name"][0], encoding="utf-8")
    # The renamed purpose is also a processor's unknown purpose: two problems, one line each.
    for policy, problems in ((CORPUS / "policies" / "alias_bomb.yaml", 1), (bad, 2)):
        result = run_cli(case_home, "run", "--as-of", T.isoformat(), "--policy", str(policy))
        assert result.returncode == 1, result.stderr
        errors = result.stderr.strip().splitlines()
        assert len(errors) == problems, result.stderr
        assert all(e.startswith(f"error: {policy}:") for e in errors), result.stderr
        assert warehouse_state(case_home) == before
        assert (case_home.landing / "contacts.csv").exists()
        assert not (case_home.dagster / "history").exists()  # no run was even started


def test_policy_check_cli_names_the_key_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "unknown.yaml"
    bad.write_text(derived_policies()["unknown nested key"][0], encoding="utf-8")
    with scratch_home() as home:
        result = run_cli(home, "policy", "check", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "purposes.account.colour" in result.stderr


def test_subject_and_backup_ids_never_become_paths(tmp_path: Path) -> None:
    """`--subject` and `lethe restore ID` take ids, not paths: traversal is refused in one
    line and nothing outside LETHE_HOME is read or written."""
    with scratch_home() as home:
        write_landing_set(home.landing, contacts=[{"contact_id": "C1"}])
        con = connect(home.warehouse)
        try:
            ingest_all(con, home.landing, POLICY)
            with pytest.raises(LetheError):
                record_request(con, POLICY.data_schema, "access", "../../etc/passwd")
        finally:
            con.close()
        for args in (
            ("restore", "../../../../etc"),
            ("restore", "20260101T000000Z/../../../etc"),
            ("request", "access", "--subject", "../../../etc/passwd"),
            ("hold", "add", "--subject", "/etc/shadow", "--reason", "x"),
        ):
            result = run_cli(home, *args)
            assert result.returncode == 1, (args, result.stderr)
            assert result.stderr.strip().count("\n") == 0, result.stderr
        assert not any(p.name == "etc" for p in home.root.rglob("*"))
    assert os.path.exists("/etc/passwd")
