"""Forensic check of an erasure request: after the run, none of the subject's values is in
any file under LETHE_HOME (raw bytes), except young backups and what a legal obligation
still keeps (the pseudonymized invoices' billing name and street, in the vault only)."""

from __future__ import annotations

import pytest
from request_cases import (
    CTRL,
    ERIN,
    GONE,
    SCANNED,
    XTRA,
    Scenario,
    files_under,
    full_name,
    scenario,
    values_of,
)

from lethe.engine.warehouse import connect

ERIN_VALUES = values_of(ERIN)
GONE_VALUES = values_of(GONE)
CONTROL = {"email of c-ctrl": CTRL["email"], "street of c-ctrl": CTRL["street"]}
# Kept by a legal obligation (accounting): the invoices' billing name (which holds the
# surname) and billing street, as the values of vault tokens.
IN_VAULT_BY_DESIGN = {"last_name of c-erin", "street of c-erin"}


@pytest.fixture(scope="module")
def sc(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return scenario(tmp_path_factory)


def test_values_are_findable_in_raw_bytes_before_the_erasure(sc: Scenario) -> None:
    """The scan works on the uncompressed warehouse: every value is found before."""
    for what in (*ERIN_VALUES, *GONE_VALUES, *CONTROL):
        assert sc.before_scan.get(what) == ["warehouse.duckdb"], what


def test_no_value_of_the_erased_subject_is_left_in_any_file(sc: Scenario) -> None:
    found = sc.scan_after_run2
    for what in ERIN_VALUES:
        if what in IN_VAULT_BY_DESIGN:
            assert found.get(what) == ["vault.duckdb"], (what, found.get(what))
        else:
            assert what not in found, (what, found[what])
    for what in GONE_VALUES:  # nothing kept at all, and the access export is gone
        assert what not in found, (what, found[what])


def test_the_scan_still_finds_a_kept_contact(sc: Scenario) -> None:
    found = sc.scan_after_run2
    for what in CONTROL:
        assert "warehouse.duckdb" in found.get(what, []), what


def test_scan_covers_the_whole_home(sc: Scenario) -> None:
    """The scan looked at every file the runs wrote, not only the warehouse."""
    names = {str(p.relative_to(sc.home.root)).split("/")[0] for p in files_under(sc.home.root)}
    assert {"warehouse.duckdb", "vault.duckdb", "exports", "dagster", "backups"} <= names
    assert any((sc.home.exports / "requests").glob("*.zip"))
    assert list(sc.home.landing.iterdir()) == []  # landing files are consumed


def test_values_kept_by_design_are_only_vault_token_values(sc: Scenario) -> None:
    con = connect(sc.home.vault, read_only=True)
    try:
        rows = con.execute(
            "SELECT kind, value, token FROM tokens WHERE subject = 'c-erin' ORDER BY kind"
        ).fetchall()
    finally:
        con.close()
    values = {kind: value for kind, value, _ in rows}
    assert values == {
        "user.contact.address.street": ERIN["street"],
        "user.unique_id": "c-erin",
        "user.name": full_name(ERIN),
    }
    tokens = {token for _, _, token in rows}
    orders = sc.snapshots[1]["orders"]
    used = {
        orders[o][c]
        for o in ("o-erin-1", "o-erin-2")
        for c in ("contact_id", "billing_name", "billing_street")
    }
    assert used == tokens  # every kept token is used by a kept invoice


def test_redelivery_does_not_bring_the_values_back(sc: Scenario) -> None:
    found = sc.scan_after_run4
    for what in ERIN_VALUES:
        if what in IN_VAULT_BY_DESIGN:
            assert found.get(what) == ["vault.duckdb"], (what, found.get(what))
        else:
            assert what not in found, (what, found[what])
    for what in CONTROL:
        assert "warehouse.duckdb" in found.get(what, []), what


def test_extra_column_copies_are_erased_too(sc: Scenario) -> None:
    what = f"email of {XTRA['contact_id']}"
    assert SCANNED[what] == XTRA["email"]
    assert sc.before_scan.get(what) == ["warehouse.duckdb"]
    assert what not in sc.scan_after_run2, sc.scan_after_run2[what]
