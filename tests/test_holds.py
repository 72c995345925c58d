"""Litigation holds: a held contact's rows stay exactly as they are in every table, although
everything else about it has expired; once the hold is released, the next run enforces."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import retention_cases as rc

from lethe.compliance.inspection import held_rows_touched
from lethe.declaration.policy import Policy
from lethe.engine.enforcement import enforce
from lethe.engine.tagging import tag_all
from lethe.engine.warehouse import connect
from lethe.errors import LetheError
from lethe.rights.holds import place_hold, release_hold

T = rc.T
SUBJECT = "held_released"  # its landing hold ended before T; everything of it has expired
EMAIL = "zx-held_released@example.test"
# A hold placed now holds from now on and its release ends it now: runs about it are as of
# a date after both (two days ahead, safe across midnight UTC), when every case of the
# landing set except the open holds has long expired.
LATER = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)


def snapshot(home, contact_id: str) -> dict[str, list[dict]]:
    con = rc.read_only(home)
    try:
        return rc.subject_rows(con, contact_id)
    finally:
        con.close()


def test_open_holds_from_landing_freeze_every_row(tmp_path: Path, policy: Policy) -> None:
    home = rc.prepare(tmp_path / "home", policy)
    before = {cid: snapshot(home, cid) for cid in rc.HELD}
    for cid, tables in before.items():  # a row in every table, none kept by a purpose
        for table in ("contacts", "consents", "orders", "shipments"):
            assert len(tables[table]) == 1, (cid, table)
            assert tables[table][0]["_purposes"] == ["litigation_hold"]
    enforce(home, policy, T, "run-T")
    for cid in rc.HELD:  # released_at NULL, and released_at after T
        assert snapshot(home, cid) == before[cid], cid
    con = rc.read_only(home)
    try:
        assert held_rows_touched(con, policy, "run-T") == 0
        # released before T: enforced like any other
        assert rc.subject_rows(con, SUBJECT)["contacts"] == []
        assert rc.subject_rows(con, SUBJECT)["orders"] == []
        assert con.execute(
            "SELECT count(*) FROM core.shipments WHERE shipment_id = 's_held_released'"
        ).fetchone() == (0,)
    finally:
        con.close()


def test_hold_released_after_t_is_enforced_by_the_next_run(tmp_path: Path, policy: Policy) -> None:
    home = rc.prepare(tmp_path / "home", policy)
    enforce(home, policy, T, "run-T")
    frozen = snapshot(home, "held_future")
    still_held = snapshot(home, "held")
    enforce(home, policy, dt.date(2026, 5, 31), "run-before-release")
    assert snapshot(home, "held_future") == frozen
    enforce(home, policy, dt.date(2026, 6, 1), "run-at-release")  # released_at == as_of
    after = snapshot(home, "held_future")
    assert after["contacts"] == after["consents"] == after["orders"] == after["shipments"] == []
    assert snapshot(home, "held") == still_held  # still open: untouched
    names = rc.key_names(home)  # the ledger stores keyed hashes
    con = rc.read_only(home)
    try:
        keys = [
            names[k]
            for (k,) in con.execute(
                "SELECT unnest(keys) FROM audit.ledger WHERE run_id = 'run-at-release'"
            ).fetchall()
        ]
    finally:
        con.close()
    assert {"held_future", "o_held_future", "s_held_future", "k_held_future"} <= set(keys)
    assert "held" not in keys


def place(home, policy: Policy, subject: str, retag: dt.date | None) -> str:
    con = connect(home.warehouse)
    try:
        hold_id = place_hold(con, policy, subject, "case 7/2026")
        if retag:
            tag_all(con, policy, retag)
    finally:
        con.close()
    return hold_id


def test_place_hold_then_run_keeps_then_release_then_run_enforces(
    tmp_path: Path, policy: Policy
) -> None:
    home = rc.prepare(tmp_path / "home", policy, as_of=LATER, holds=False)
    # the pipeline re-tags after a hold is placed; then enforcement freezes the subject
    place(home, policy, EMAIL, retag=LATER)
    before = snapshot(home, SUBJECT)
    assert [len(before[t]) for t in ("contacts", "consents", "orders", "shipments")] == [1] * 4
    assert before["contacts"][0]["_purposes"] == ["litigation_hold"]
    enforce(home, policy, LATER, "run-held")
    assert snapshot(home, SUBJECT) == before
    con = connect(home.warehouse)
    try:
        assert held_rows_touched(con, policy, "run-held") == 0
        assert (
            con.execute(  # everyone else expired: enforcement did run
                "SELECT count(*) FROM audit.ledger WHERE run_id = 'run-held'"
            ).fetchone()[0]
            > 0
        )
        assert release_hold(con, policy, SUBJECT, "case closed") == 1
        with pytest.raises(LetheError, match="no open hold"):
            release_hold(con, policy, SUBJECT, "again")
        ledger = con.execute(
            "SELECT action, keys FROM audit.ledger WHERE table_name = 'holds' ORDER BY seq"
        ).fetchall()
        tag_all(con, policy, LATER)  # the next pipeline run re-tags
    finally:
        con.close()
    names = rc.key_names(home)  # the ledger stores keyed hashes
    hashed = {k: h for h, k in names.items()}[SUBJECT]
    assert ledger == [("hold", [hashed]), ("release", [hashed])]
    enforce(home, policy, LATER, "run-released")
    after = snapshot(home, SUBJECT)
    assert after["contacts"] == after["consents"] == after["orders"] == after["shipments"] == []
    # the hold record itself stays, naming the anonymized subject by its keyed hash only
    assert after["holds"] == []
    assert len(snapshot(home, hashed)["holds"]) == 1
    con = rc.read_only(home)
    try:
        keys = {
            names[k]
            for (k,) in con.execute(
                "SELECT unnest(keys) FROM audit.ledger WHERE run_id = 'run-released'"
            ).fetchall()
        }
    finally:
        con.close()
    assert {SUBJECT, "o_held_released", "s_held_released", "k_held_released"} <= keys


def test_hold_placed_after_tagging_is_honoured_by_enforce(tmp_path: Path, policy: Policy) -> None:
    home = rc.prepare(tmp_path / "home", policy, as_of=LATER, holds=False)
    before = snapshot(home, SUBJECT)
    place(home, policy, EMAIL, retag=None)  # tags are as of LATER already
    enforce(home, policy, LATER, "run-held")
    assert data_columns(snapshot(home, SUBJECT)) == data_columns(before)


def data_columns(tables: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The input columns of a subject's rows (tags left out: placing a hold re-tags)."""
    return {
        t: [{c: r[c] for c in rc.TABLES[t].column_names} for r in tables[t]]
        for t in ("contacts", "consents", "orders", "shipments")
    }
