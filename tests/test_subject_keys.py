"""No raw key of an erased or anonymized subject is left under LETHE_HOME (young backups
aside): the ledger stores keyed hashes only, and the rewrite that makes a subject gone
replaces its key by the same hash in requests, erasure register, logs and released holds.
A restore from an older backup still erases the subject, matching its rows by the hash.

Keys here are distinctive (`qk7…`), so a byte search cannot match anything else.
"""

from __future__ import annotations

import datetime as dt
import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import retention_cases as rc
from conftest import DEFAULT_POLICY, home_env, lethe_cli
from request_cases import build, dicts, hashed, query, read_zip, record, scan

from lethe.compliance.inspection import held_rows_touched
from lethe.declaration.policy import Policy
from lethe.engine.audit import LedgerEntry, append, verify
from lethe.engine.keyhash import key_hash, read_secret, short
from lethe.engine.warehouse import connect
from lethe.operations.backup import list_backups
from lethe.operations.home import Home
from lethe.operations.restore import restore
from pipelines.launch import run_pipeline

T1, T2 = dt.date(2026, 3, 1), dt.date(2026, 4, 1)
RECENT = "2026-01-15T00:00:00"  # keeps an account (2 years) at T1 and T2
ERASED = "qk7erased93f1"  # asks for access at T1, for erasure at T2
RELEASED = "qk7released58c2"  # expired long ago; held until between T1 and T2
KEPT = "qk7kept40d7"  # an active account: its key must still be found
KEYS = {"erased": ERASED, "released": RELEASED, "kept": KEPT}
SKIP = ("backups",)  # young backups may keep anything


def landing() -> dict[str, list[dict]]:
    return {
        "contacts": [
            rc.contact(ERASED, RECENT),
            rc.contact(RELEASED),
            rc.contact(KEPT, RECENT),
        ],
        "consents": [rc.consent("k1", ERASED, "2025-06-01T00:00:00")],
        "orders": [rc.order("o1", ERASED, "2012-01-01T00:00:00", "2012-01-05T00:00:00")],
        "shipments": [rc.shipment("s1", "o1")],
        "holds": [
            {
                "hold_id": "h1",
                "contact_id": RELEASED,
                "reason": "court case 3/2020",
                "placed_at": "2020-01-01T00:00:00",
                "released_at": "2026-03-15T00:00:00",
            }
        ],
    }


@dataclass
class Erased:
    home: Home
    before: dict[str, list[str]]
    after_t1: dict[str, list[str]]
    after_t2: dict[str, list[str]]
    backup_t1: str
    exports_t1: dict[str, str]  # zip name: its subject.json


def run(home: Home, as_of: dt.date) -> None:
    outcome = run_pipeline(home, as_of, str(DEFAULT_POLICY))
    assert outcome.success, outcome.errors


@pytest.fixture(scope="module")
def erased(tmp_path_factory: pytest.TempPathFactory) -> Erased:
    home = Home(tmp_path_factory.mktemp("keys") / "home").ensure()
    with home_env(home):
        build(home, uncompressed=True, **landing())
        before = scan(home.root, KEYS)
        record(home, ("access", ERASED, {}))
        run(home, T1)
        after_t1 = scan(home.root, KEYS, skip=SKIP)
        exports_t1 = {
            p.name: read_zip(p)["subject.json"].decode()
            for p in (home.exports / "requests").glob("*.zip")
        }
        (backup_t1,) = [b.id for b in list_backups(home)]
        record(home, ("erasure", ERASED, {}))
        run(home, T2)
        after_t2 = scan(home.root, KEYS, skip=SKIP)
    return Erased(home, before, after_t1, after_t2, backup_t1, exports_t1)


def test_the_search_finds_every_key_while_the_subjects_are_held(erased: Erased) -> None:
    assert erased.before == {what: ["warehouse.duckdb"] for what in KEYS}
    # after T1: the access export names the subject, the hold is still open
    assert "warehouse.duckdb" in erased.after_t1["erased"]
    (export,) = erased.exports_t1.values()  # compressed: read, not searched
    assert f'"contact_id": "{ERASED}"' in export
    assert "warehouse.duckdb" in erased.after_t1["released"]


def test_no_raw_key_of_a_gone_subject_is_left_in_any_file(erased: Erased) -> None:
    found = erased.after_t2
    assert "erased" not in found, found.get("erased")
    assert "released" not in found, found.get("released")
    assert "warehouse.duckdb" in found["kept"]  # the search still sees a held subject's key
    root = erased.home.root
    files = {str(p.relative_to(root)).split("/")[0] for p in root.rglob("*")}
    assert {"warehouse.duckdb", "vault.duckdb", "dagster", "exports", "backups"} <= files
    assert not list((root / "exports" / "requests").glob("*.zip"))  # the access export too


def test_gone_subjects_are_named_by_their_keyed_hash(erased: Erased) -> None:
    home = erased.home
    gone, released = hashed(home, ERASED), hashed(home, RELEASED)
    assert sorted(query(home, "SELECT type, subject_key FROM requests.requests")) == [
        ("access", gone),
        ("erasure", gone),
    ]
    assert query(home, "SELECT DISTINCT subject_key FROM requests.erasures") == [(gone,)]
    assert query(home, "SELECT subject_key FROM audit.export_log") == [(gone,)]
    # the released hold stays on record, under the hash
    assert query(home, "SELECT hold_id, contact_id FROM core.holds") == [("h1", released)]
    ledger = dicts(home, "SELECT action, table_name, keys FROM audit.ledger")
    assert {"action": "anonymize", "table_name": "contacts", "keys": [released]} in ledger
    assert any(gone in e["keys"] for e in ledger if e["action"] == "anonymize")
    con = connect(home.warehouse, read_only=True)
    try:
        assert verify(con).ok
    finally:
        con.close()


def copy(erased: Erased, root: Path) -> Home:
    shutil.copytree(erased.home.root, root)
    return Home(root)


def test_restore_from_an_older_backup_erases_the_subjects_again(
    erased: Erased, tmp_path: Path, policy: Policy
) -> None:
    home = copy(erased, tmp_path / "home")
    with gzip.open(home.backups / erased.backup_t1 / "warehouse.duckdb.gz") as fh:
        data = fh.read()
    assert ERASED.encode() in data and RELEASED.encode() in data  # not vacuous
    restore(home, erased.backup_t1, policy)
    rows = query(
        home, "SELECT count(*) FROM core.contacts WHERE contact_id IN (?, ?)", [ERASED, RELEASED]
    )
    assert rows == [(0,)]
    found = scan(home.root, KEYS, skip=SKIP)
    assert set(found) == {"kept"}, found
    # the backup's rows were matched by the hash, erased again, and named by the hash again
    assert query(home, "SELECT contact_id FROM core.holds") == [(hashed(home, RELEASED),)]
    assert query(home, "SELECT DISTINCT subject_key FROM requests.erasures") == [
        (hashed(home, ERASED),)
    ]
    con = connect(home.warehouse, read_only=True)
    try:
        assert verify(con).ok
    finally:
        con.close()


def test_cli_lists_gone_subjects_by_hash_and_holds_active_ones(
    erased: Erased, tmp_path: Path
) -> None:
    home = copy(erased, tmp_path / "home")
    listed = lethe_cli("requests", home=home.root)
    assert listed.returncode == 0, listed.stderr
    assert ERASED not in listed.stdout
    assert listed.stdout.count(short(hashed(home, ERASED))) == 2  # access and erasure
    verified = lethe_cli("audit", "verify", home=home.root)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for command in ("add", "release"):
        held = lethe_cli(
            "hold", command, "--subject", KEPT, "--reason", "case 4/2026", home=home.root
        )
        assert held.returncode == 0, held.stdout + held.stderr
    assert query(
        home, "SELECT contact_id, released_at IS NOT NULL FROM core.holds WHERE hold_id <> 'h1'"
    ) == [(KEPT, True)]


def test_held_rows_touched_compares_keys_by_their_hash(tmp_path: Path, policy: Policy) -> None:
    home = rc.prepare(tmp_path / "home", policy)
    con = connect(home.warehouse)
    try:
        assert held_rows_touched(con, policy, "run-x") == 0
        entry = LedgerEntry(
            run_id="run-x",
            as_of=T1,
            action="erase",
            reason="test",
            table_name="contacts",
            keys=["held"],
        )
        append(con, [entry])
        assert con.execute("SELECT keys FROM audit.ledger").fetchall() == [
            ([key_hash(read_secret(home.vault), "held")],)
        ]
        assert held_rows_touched(con, policy, "run-x") == 1
    finally:
        con.close()
