"""Audit tampering: an entry edited, deleted, reordered or forged directly in DuckDB.

After enforcement and a request, each tampering is done on a copy of the warehouse with plain
SQL (what someone with write access to the file could do). Then `lethe audit verify`
must fail in one line naming the entry, and so must the enforcement asset's
`ledger_chain_intact` check on the next materialization.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from pathlib import Path

import dagster as dg
import pytest
from conftest import DEFAULT_POLICY, ingest_all
from reliability import copy_home, run_cli

from assets.enforcement import LEDGER_CHAIN, enforcement_assets
from lethe.declaration.policy import load_policy
from lethe.engine.audit import GENESIS, verify
from lethe.engine.enforcement import enforce
from lethe.engine.tagging import tag_all
from lethe.engine.warehouse import connect
from lethe.eshop.generate import generate
from lethe.operations.home import Home
from lethe.rights.requests import record_request
from pipelines.resources import PolicyResource, WarehouseResource

T = dt.date(2026, 3, 1)
POLICY = load_policy(DEFAULT_POLICY)
TARGET = 3  # the entry tampered with (the chain cannot show a cut-off tail, so not the last)

# name -> (SQL, the entry the failure must name, words of the message)
TAMPERING: dict[str, tuple[list[str], int, str]] = {
    "reason edited": (
        [f"UPDATE audit.ledger SET reason = 'routine maintenance' WHERE seq = {TARGET}"],
        TARGET,
        "edited",
    ),
    "key removed": (
        [f"UPDATE audit.ledger SET keys = keys[2:] WHERE seq = {TARGET}"],
        TARGET,
        "edited",
    ),
    "key forged": (
        [f"UPDATE audit.ledger SET keys = list_append(keys, 'C-forged') WHERE seq = {TARGET}"],
        TARGET,
        "edited",
    ),
    "entry deleted": (
        [f"DELETE FROM audit.ledger WHERE seq = {TARGET}"],
        TARGET,
        "removed",
    ),
    "entries swapped": (
        [
            f"UPDATE audit.ledger SET seq = -1 WHERE seq = {TARGET}",
            f"UPDATE audit.ledger SET seq = {TARGET} WHERE seq = {TARGET + 1}",
            f"UPDATE audit.ledger SET seq = {TARGET + 1} WHERE seq = -1",
        ],
        TARGET,
        "reordered",
    ),
    "entry moved to the end": (
        [
            "UPDATE audit.ledger SET seq = (SELECT max(seq) + 1 FROM audit.ledger)"
            f" WHERE seq = {TARGET}"
        ],
        TARGET,
        "removed",
    ),
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """A home with generated data, enforced once (anonymizations, pseudonyms, deletions,
    each a ledger entry) and a request recorded."""
    home = Home(tmp_path_factory.mktemp("tamper") / "home").ensure()
    generate(home.landing, 400, seed=3, reference=T)
    con = connect(home.warehouse)
    try:
        ingest_all(con, home.landing, POLICY)
        tag_all(con, POLICY, T)
    finally:
        con.close()
    enforce(home, POLICY, T, "run-1")
    con = connect(home.warehouse)
    try:
        subject = con.execute(
            "SELECT min(contact_id) FROM core.contacts WHERE _state = 'active'"
        ).fetchone()[0]
        record_request(con, POLICY.data_schema, "access", subject)
    finally:
        con.close()
    con = connect(home.warehouse, read_only=True)
    try:
        assert verify(con).ok
        n, keys = con.execute(
            f"SELECT (SELECT count(*) FROM audit.ledger), len(keys) FROM audit.ledger"
            f" WHERE seq = {TARGET}"
        ).fetchone()
    finally:
        con.close()
    assert n > TARGET + 1 and keys >= 2, (n, keys)
    return home


def tampered(ran: Home, tmp_path: Path, statements: list[str]) -> Home:
    home = copy_home(ran, tmp_path / "home")
    con = connect(home.warehouse)
    try:
        for sql in statements:
            con.execute(sql)
    finally:
        con.close()
    return home


@pytest.mark.parametrize("case", list(TAMPERING))
def test_verify_fails_and_names_the_entry(ran: Home, tmp_path: Path, case: str) -> None:
    statements, seq, word = TAMPERING[case]
    home = tampered(ran, tmp_path, statements)
    con = connect(home.warehouse, read_only=True)
    try:
        result = verify(con)
    finally:
        con.close()
    assert not result.ok and result.seq == seq
    assert f"entry {seq} " in result.problem and word in result.problem, result.problem


@pytest.mark.parametrize("case", ["reason edited", "entry deleted", "entries swapped"])
def test_audit_verify_cli_fails_and_names_the_entry(ran: Home, tmp_path: Path, case: str) -> None:
    statements, seq, word = TAMPERING[case]
    home = tampered(ran, tmp_path, statements)
    result = run_cli(home, "audit", "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"entry {seq} " in lines[0] and word in lines[0], lines[0]


@pytest.mark.parametrize("case", ["reason edited", "entry deleted", "entries swapped"])
def test_ledger_chain_check_fails_and_names_the_entry(ran: Home, tmp_path: Path, case: str) -> None:
    statements, seq, word = TAMPERING[case]
    home = tampered(ran, tmp_path, statements)
    result = dg.materialize(
        enforcement_assets(POLICY),
        resources={
            "warehouse": WarehouseResource(home=str(home.root)),
            "policy": PolicyResource(path=str(DEFAULT_POLICY), as_of=T.isoformat()),
        },
        raise_on_error=False,
    )
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks[LEDGER_CHAIN].passed
    assert f"entry {seq} " in checks[LEDGER_CHAIN].description
    assert word in checks[LEDGER_CHAIN].description


def test_a_rewritten_entry_with_a_recomputed_hash_breaks_the_next_link(
    ran: Home, tmp_path: Path
) -> None:
    """Someone who recomputes the edited entry's hash still breaks its successor's link."""
    home = copy_home(ran, tmp_path / "home")
    con = connect(home.warehouse)
    try:
        forged = hashlib.sha256(b"forged").hexdigest()
        con.execute(
            "UPDATE audit.ledger SET reason = 'routine maintenance', hash = ?"
            f" WHERE seq = {TARGET}",
            [forged],
        )
    finally:
        con.close()
    result = run_cli(home, "audit", "verify")
    assert result.returncode == 1
    assert f"entry {TARGET} " in result.stderr


def test_an_untampered_ledger_verifies_and_genesis_starts_it(ran: Home, tmp_path: Path) -> None:
    home = copy_home(ran, tmp_path / "home")
    result = run_cli(home, "audit", "verify")
    assert result.returncode == 0, result.stderr
    assert "chain intact" in result.stdout
    con = connect(home.warehouse, read_only=True)
    try:
        assert con.execute("SELECT prev_hash FROM audit.ledger WHERE seq = 1").fetchone() == (
            GENESIS,
        )
    finally:
        con.close()
    shutil.rmtree(home.root)
