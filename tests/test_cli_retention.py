"""The retention commands of `lethe`, run as a user would: holds around `lethe run`, ledger
verification (and tampering), backup and restore, bad subjects. One LETHE_HOME is carried
through the steps in order."""

from __future__ import annotations

import datetime as dt
import re
import subprocess

import pytest
import retention_cases as rc
from conftest import lethe_cli

from lethe.declaration.policy import Policy
from lethe.engine.audit import verify
from lethe.engine.warehouse import connect
from lethe.operations.home import Home

SUBJECT = "held_released"  # everything about it has long expired
EMAIL = "zx-held_released@example.test"
# A hold placed now holds from now on, and its release ends it now: the runs are as of a
# date after both (two days ahead, so that a test run across midnight UTC still works).
LATER = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)).isoformat()


def lethe(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    return lethe_cli(*args, home=home.root, timeout=180)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def subject(home: Home) -> dict[str, list[dict]]:
    con = rc.read_only(home)
    try:
        rows = rc.subject_rows(con, SUBJECT)
    finally:
        con.close()
    return {t: [{c: r[c] for c in rc.TABLES[t].column_names} for r in v] for t, v in rows.items()}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, policy: Policy) -> Home:
    """The cases ingested and tagged (no landing holds); no run yet."""
    return rc.prepare(tmp_path_factory.mktemp("cli") / "home", policy, holds=False)


@pytest.fixture(scope="module")
def held_run(home: Home) -> tuple[dict, dict]:
    """`hold add` then `lethe run`: the subject's rows before and after the run."""
    out = ok(lethe(home, "hold", "add", "--subject", EMAIL, "--reason", "case 12/2026"))
    assert re.search(r"hold H-[0-9a-f]{12} placed", out), out
    before = subject(home)
    ok(lethe(home, "run", "--as-of", LATER))
    return before, subject(home)


def test_hold_add_then_run_keeps_the_contact(home: Home, held_run: tuple[dict, dict]) -> None:
    before, after = held_run
    assert [len(before[t]) for t in ("contacts", "consents", "orders", "shipments")] == [1] * 4
    for table in ("contacts", "consents", "orders", "shipments"):
        assert after[table] == before[table], table
    con = rc.read_only(home)
    try:
        assert con.execute(  # the run did enforce everybody else
            "SELECT count(*) FROM core.contacts WHERE contact_id = 'gone'"
        ).fetchone() == (0,)
    finally:
        con.close()


def test_hold_release_then_run_enforces(home: Home, held_run: tuple[dict, dict]) -> None:
    ok(lethe(home, "hold", "release", "--subject", SUBJECT, "--reason", "case closed"))
    ok(lethe(home, "run", "--as-of", LATER))
    after = subject(home)
    assert after["contacts"] == after["consents"] == after["orders"] == after["shipments"] == []
    con = rc.read_only(home)
    try:
        actions = con.execute(
            "SELECT action FROM audit.ledger WHERE table_name = 'holds' ORDER BY seq"
        ).fetchall()
    finally:
        con.close()
    assert actions == [("hold",), ("release",)]


def test_audit_verify_backup_and_restore(home: Home, held_run: tuple[dict, dict]) -> None:
    out = ok(lethe(home, "audit", "verify"))
    assert "chain intact" in out
    out = ok(lethe(home, "backup"))
    backup_id = re.search(r"backup (\d{8}T\d{6}Z) written", out).group(1)
    assert (home.backups / backup_id / "warehouse.duckdb.gz").exists()
    out = ok(lethe(home, "restore", backup_id))
    assert f"restored {backup_id}" in out
    con = rc.read_only(home)
    try:
        last = con.execute(
            "SELECT action, reason FROM audit.ledger ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    finally:
        con.close()
    assert last[0] == "restore" and backup_id in last[1]
    con = rc.read_only(home)
    try:
        assert con.execute("SELECT count(*) FROM core.contacts").fetchone()[0] > 0
        assert verify(con).ok
    finally:
        con.close()


def test_unknown_subject_is_one_line(home: Home, held_run: tuple[dict, dict]) -> None:
    for args in (
        ("hold", "add", "--subject", "nobody@example.test", "--reason", "x"),
        ("hold", "release", "--subject", "nobody@example.test", "--reason", "x"),
    ):
        line = one_line_error(lethe(home, *args))
        assert "--subject" in line, line
        assert "nobody@example.test" not in line  # the message never echoes an e-mail


def test_audit_verify_fails_on_a_tampered_entry(home: Home, held_run: tuple[dict, dict]) -> None:
    con = connect(home.warehouse)
    try:
        con.execute("UPDATE audit.ledger SET key_count = key_count + 1 WHERE seq = 1")
    finally:
        con.close()
    line = one_line_error(lethe(home, "audit", "verify"))
    assert re.search(r"\bentry 1\b", line), line
