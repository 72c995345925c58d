"""Backups: compressed, expired after 80 days; a restore re-applies every erasure made since
the backup before the data is visible again, and the ledger records it."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import retention_cases as rc

from lethe.declaration.duration import Duration
from lethe.declaration.policy import Policy
from lethe.engine.audit import verify
from lethe.engine.compaction import wal_path
from lethe.engine.enforcement import enforce
from lethe.engine.warehouse import connect
from lethe.operations.backup import create_backup, decompress, expire_backups, list_backups
from lethe.operations.home import Home
from lethe.operations.restore import restore
from lethe.rights.holds import place_hold

T, T2 = rc.T, rc.T2
NOW = dt.datetime(2026, 11, 20, 2, 0, tzinfo=dt.UTC)
# Contacts some purpose keeps at T but none at T2 (their values are erased after a backup
# taken between the two runs), and shipments likewise.
ERASED_AT_T2 = ("acc_in", "ctr_in", "two_runs", "nl_in", "nl_wd_after", "held_future")


def erased_at_t2() -> dict[str, str]:
    contacts = rc.by_key(rc.CONTACTS, "contacts")
    out = {}
    for cid in ERASED_AT_T2:
        out[f"email of {cid}"] = contacts[cid]["email"]
        out[f"first_name of {cid}"] = contacts[cid]["first_name"]
    for cid in ("acc_in", "ctr_in", "two_runs", "held_future"):
        out[f"last_name of {cid}"] = contacts[cid]["last_name"]
        out[f"street of {cid}"] = contacts[cid]["street"]
    out["recipient of s_ctr_in"] = "Recipient-s_ctr_in-x"
    return out


def test_backup_is_a_compressed_copy_of_the_warehouse(tmp_path: Path, policy: Policy) -> None:
    home = rc.prepare(tmp_path / "home", policy)
    enforce(home, policy, T, "run-T")
    backup = create_backup(home, now=NOW)
    assert backup.id == "20261120T020000Z"
    gz = backup.path / "warehouse.duckdb.gz"
    assert gz.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    assert gz.stat().st_size < home.warehouse.stat().st_size / 3
    assert gz.stat().st_mode & 0o077 == 0
    manifest = json.loads((backup.path / "manifest.json").read_text())
    con = rc.read_only(home)
    try:
        seq = con.execute("SELECT max(seq) FROM audit.ledger").fetchone()[0]
        live = rc.comparable(home)
    finally:
        con.close()
    assert manifest["ledger_seq"] == backup.ledger_seq == seq
    # it decompresses into the same warehouse
    copy = Home(tmp_path / "copy").ensure()
    decompress(backup, copy.warehouse)
    shutil.copy(home.vault, copy.vault)
    assert rc.comparable(copy) == live
    assert [b.id for b in list_backups(home)] == [backup.id]
    assert create_backup(home, now=NOW).id == backup.id  # same second: the same backup


def test_backups_expire_after_80_days(tmp_path: Path, policy: Policy) -> None:
    home = rc.prepare(tmp_path / "home", policy)
    keep = policy.operations.backups
    assert keep == Duration.parse("80d")
    ages = {
        "old": dt.timedelta(days=200),
        "exactly_80d": dt.timedelta(days=80),
        "80d_minus_1s": dt.timedelta(days=80) - dt.timedelta(seconds=1),
        "young": dt.timedelta(days=1),
    }
    ids = {name: create_backup(home, now=NOW - age).id for name, age in ages.items()}
    partial = home.backups / ".20261120T010000Z.partial"
    partial.mkdir()
    gone = expire_backups(home, keep, now=NOW)
    assert sorted(gone) == sorted([ids["old"], ids["exactly_80d"]])
    assert [b.id for b in list_backups(home)] == sorted([ids["80d_minus_1s"], ids["young"]])
    assert sorted(p.name for p in home.backups.iterdir()) == sorted(
        [ids["80d_minus_1s"], ids["young"]]
    )
    assert expire_backups(home, keep, now=NOW) == []  # nothing more to do


@dataclass
class Restored:
    home: Home
    backup_id: str
    live: dict  # the warehouse right before the restore
    ledger_before: int


@pytest.fixture(scope="module")
def restored(tmp_path_factory: pytest.TempPathFactory, policy: Policy) -> Restored:
    """Enforce at T, back up, enforce at T2 (erasing more), then restore the backup."""
    home = rc.prepare(tmp_path_factory.mktemp("restore") / "home", policy)
    enforce(home, policy, T, "run-T")
    backup = create_backup(home)
    # not vacuous: the backup holds the values erased at T2
    with gzip.open(backup.path / "warehouse.duckdb.gz") as fh:
        data = fh.read()
    assert all(v.encode() in data for v in erased_at_t2().values())
    enforce(home, policy, T2, "run-T2")
    live = rc.comparable(home, drop=("_retain_until",))
    con = rc.read_only(home)
    try:
        ledger_before = con.execute("SELECT count(*) FROM audit.ledger").fetchone()[0]
    finally:
        con.close()
    restore(home, backup.id, policy)
    return Restored(home, backup.id, live, ledger_before)


def test_restore_does_not_bring_back_values_erased_since_the_backup(restored: Restored) -> None:
    con = rc.read_only(restored.home)
    try:
        text = "\n".join(line for t in rc.TAGGED_TABLES for line in rc.all_text(con, "core", t))
    finally:
        con.close()
    assert "zx-acc_keep@example.test" in text  # kept values are back
    assert {w for w, v in erased_at_t2().items() if v in text} == set()
    # not in the file's bytes either, nor in any other file but the (young) backup
    assert rc.scan_files(restored.home.root, erased_at_t2(), skip=("backups",)) == {}
    assert rc.scan_files(restored.home.root, rc.erased_values(), skip=("backups",)) == {}
    assert sorted(p.name for p in restored.home.root.iterdir() if p.is_file()) == [
        "vault.duckdb",
        "warehouse.duckdb",
    ]


def test_restored_warehouse_equals_the_live_one(restored: Restored) -> None:
    assert rc.comparable(restored.home, drop=("_retain_until",)) == restored.live


def test_restore_is_recorded_and_the_ledger_verifies(restored: Restored) -> None:
    con = rc.read_only(restored.home)
    try:
        result = verify(con)
        entries = con.execute(
            "SELECT seq, run_id, action, reason, as_of FROM audit.ledger ORDER BY seq"
        ).fetchall()
        runs = [r for (r,) in con.execute("SELECT DISTINCT run_id FROM audit.ledger").fetchall()]
    finally:
        con.close()
    assert result.ok, result.problem
    assert len(entries) > restored.ledger_before  # the live ledger, carried over, plus more
    assert {"run-T", "run-T2"} <= set(runs)  # entries made after the backup are kept
    seq, run_id, action, reason, as_of = entries[-1]
    assert action == "restore"
    assert restored.backup_id in reason
    assert as_of == T2  # retention re-applied as of the latest enforced date
    assert run_id.startswith("restore-")


def test_restore_keeps_a_hold_placed_after_the_backup(tmp_path: Path, policy: Policy) -> None:
    home = rc.prepare(tmp_path / "home", policy)
    enforce(home, policy, T, "run-T")
    backup = create_backup(home)
    con = connect(home.warehouse)
    try:
        place_hold(con, policy, "zx-ctr_in@example.test", "case 9/2026")
    finally:
        con.close()
    later = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)
    enforce(home, policy, later, "run-held")  # ctr_in's contract is over, but it is held
    con = rc.read_only(home)
    try:
        held = rc.subject_rows(con, "ctr_in")
    finally:
        con.close()
    assert len(held["contacts"]) == len(held["orders"]) == len(held["shipments"]) == 1
    restore(home, backup.id, policy)
    con = rc.read_only(home)
    try:
        after = rc.subject_rows(con, "ctr_in")
    finally:
        con.close()
    assert {t: after[t] for t in ("contacts", "orders", "shipments")} == {
        t: held[t] for t in ("contacts", "orders", "shipments")
    }


def test_restore_over_writes_left_in_the_wal_carries_them_and_leaves_no_wal(
    tmp_path: Path, policy: Policy
) -> None:
    """A run cut short after its ingest or intake leaves their writes in the warehouse's WAL
    (they wait for its rewrite): a restore carries what it carries over from them, and the
    old WAL goes with the old file (DuckDB would refuse the restored file beside it)."""
    home = rc.prepare(tmp_path / "home", policy)
    enforce(home, policy, T, "run-T")
    backup = create_backup(home)
    con = connect(home.warehouse, defer_checkpoint=True)
    try:
        place_hold(con, policy, "zx-ctr_in@example.test", "case 9/2026")
    finally:
        con.close()
    wal = wal_path(home.warehouse)
    assert wal.exists()
    restore(home, backup.id, policy)
    assert not wal.exists()
    con = rc.read_only(home)
    try:
        assert ("case 9/2026",) in con.execute("SELECT reason FROM core.holds").fetchall()
    finally:
        con.close()
