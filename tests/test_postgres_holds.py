"""Litigation holds on a PostgreSQL warehouse (lethe.rights.postgres_holds), on a real server.

The retention cases without their landing holds are ingested on a DuckDB warehouse and on a
PostgreSQL one. A hold is placed on a subject everything of which has expired (by e-mail),
then each side runs as of a later date: on DuckDB `place_hold`, tagging and enforcement (what
the pipeline's assets call), on PostgreSQL `lethe hold add` and `lethe run`. The held
subject's rows stay as they are, every other expired row is enforced, and both sides hold
the same rows and ledger; then the hold is released and the next run enforces the subject,
alike on both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import retention_cases as rc
from conftest import TAGGED_TABLES, lethe_cli
from engine_values import Plain, Warehouses

from lethe.declaration.policy import Policy
from lethe.engine.enforcement import enforce
from lethe.engine.keyhash import key_hash, read_secret
from lethe.engine.postgres_warehouse import ingest_all, key_secret, open_engine, verify
from lethe.engine.tagging import tag_all
from lethe.engine.warehouse import connect
from lethe.errors import LetheError
from lethe.operations.home import Home
from lethe.rights import postgres_holds
from lethe.rights.holds import place_hold, release_hold
from lethe.rights.subjects import UnknownSubjectError
from tests.postgres import PostgresServer

SUBJECT = "held_released"  # its landing hold is left out: everything of it has expired
EMAIL = "zx-held_released@example.test"
REASON = "case 7/2026"
# A hold placed now holds from now on and its release ends it now: the runs are as of a
# date after both (two days ahead, safe across midnight UTC).
LATER = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=2)
# Stamped with the time each command ran (and the hold's retention date, from its release).
HOLD_TIMES = ("placed_at", "released_at", "_retain_until")
LEDGER = (
    "SELECT action, table_name, strategy, columns, keys, key_count, reason, details"
    " FROM audit.ledger"
)


@pytest.fixture(scope="module")
def both(
    postgres: PostgresServer, policy: Policy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Warehouses]:
    root = tmp_path_factory.mktemp("pgholds")
    duck = rc.prepare(root / "duck", policy, as_of=LATER, holds=False)
    pg_home = Home(root / "pg").ensure()
    rc.write_cases(pg_home.landing, holds=False)
    dsn = postgres.new_database()
    engine = open_engine(dsn)
    try:
        ingest_all(engine, pg_home.landing, policy)
        yield Warehouses(duck, pg_home, engine, dsn)
    finally:
        engine.close()


def cli(both: Warehouses, *args: str) -> Any:
    return lethe_cli(*args, home=both.pg_home.root, LETHE_WAREHOUSE=both.dsn)


def run_on_duckdb(home: Home, policy: Policy, act, run_id: str) -> None:
    """`act(con)` on the DuckDB warehouse, then what the pipeline's tagging and enforcement
    assets do as of LATER."""
    con = connect(home.warehouse)
    try:
        act(con)
        tag_all(con, policy, LATER)
    finally:
        con.close()
    enforce(home, policy, LATER, run_id)


def _hashes(secret: bytes) -> dict[str, str]:
    """{keyed hash: key} of every key of the cases, with a warehouse's secret."""
    cases = {"contacts": rc.CONTACTS, "consents": rc.CONSENTS, "orders": rc.ORDERS}
    keys = [r[rc.TABLES[t].key] for t, rows in cases.items() for r in rows]
    keys += [r["shipment_id"] for r in rc.SHIPMENTS]
    return {key_hash(secret, k): k for k in keys}


def _duck(both: Warehouses, sql: str) -> tuple[Plain, list[dict[str, Any]]]:
    con = rc.read_only(both.duck)
    try:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()
    return Plain(rc.vault_values(both.duck), _hashes(read_secret(both.duck.vault))), rows


def _pg(both: Warehouses, sql: str) -> tuple[Plain, list[dict[str, Any]]]:
    tokens = {
        t: (k, v) for t, k, v in both.pg.con.execute("SELECT token, kind, value FROM vault.tokens")
    }
    cur = both.pg.con.execute(sql)
    names = [d.name for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return Plain(tokens, _hashes(key_secret(both.pg.con))), rows


def assert_alike(both: Warehouses) -> None:
    """Both warehouses hold the same rows in every table and the same ledger entries."""
    for table in TAGGED_TABLES:
        drop = ("_ingested_at", *(HOLD_TIMES if table == "holds" else ()))
        duck, want = _duck(both, f"SELECT * FROM core.{table}")
        pg, got = _pg(both, f"SELECT * FROM core.{table}")
        assert pg.rows(got, drop) == duck.rows(want, drop), f"core.{table} differs"
    duck, want = _duck(both, LEDGER)
    pg, got = _pg(both, LEDGER)
    assert pg.rows(got) == duck.rows(want)
    assert verify(both.pg.con).ok


def subject_rows(both: Warehouses, key: str) -> dict[str, list[tuple]]:
    """The subject's rows on PostgreSQL in its four data tables: their values, not their
    tags (PostgreSQL tags at enforcement)."""
    where = {
        "contacts": "contact_id = %s",
        "consents": "contact_id = %s",
        "orders": "contact_id = %s",
        "shipments": "order_id IN (SELECT order_id FROM core.orders WHERE contact_id = %s)",
    }
    out = {}
    for table, condition in where.items():
        cur = both.pg.con.execute(f"SELECT * FROM core.{table} WHERE {condition}", [key])
        names = [d.name for d in cur.description]
        out[table] = sorted(
            tuple((n, v) for n, v in zip(names, r, strict=True) if not n.startswith("_"))
            for r in cur.fetchall()
        )
    return out


def test_a_hold_freezes_the_subject_then_its_release_lets_the_next_run_act(
    both: Warehouses, policy: Policy
) -> None:
    before = subject_rows(both, SUBJECT)
    assert all(len(rows) == 1 for rows in before.values()), before

    placed = cli(both, "hold", "add", "--subject", EMAIL, "--reason", REASON)
    assert placed.returncode == 0, placed.stderr
    assert "placed; the subject's rows are frozen from the next run" in placed.stdout
    assert EMAIL not in placed.stdout + placed.stderr
    held = cli(both, "run", "--as-of", str(LATER))
    assert held.returncode == 0, held.stderr
    assert "enforce contacts: anonymize" in held.stdout, held.stdout  # everyone else expired
    assert subject_rows(both, SUBJECT) == before
    (purposes,) = both.pg.con.execute(
        "SELECT _purposes FROM core.contacts WHERE contact_id = %s", [SUBJECT]
    ).fetchone()
    assert purposes == ["litigation_hold"]
    run_on_duckdb(both.duck, policy, lambda con: place_hold(con, policy, EMAIL, REASON), "run-held")
    assert_alike(both)

    released = cli(both, "hold", "release", "--subject", SUBJECT, "--reason", "case closed")
    assert released.returncode == 0, released.stderr
    assert "1 hold(s) released" in released.stdout
    acted = cli(both, "run", "--as-of", str(LATER))
    assert acted.returncode == 0, acted.stderr
    gone = subject_rows(both, SUBJECT)
    assert gone == {"contacts": [], "consents": [], "orders": [], "shipments": []}
    run_on_duckdb(
        both.duck,
        policy,
        lambda con: release_hold(con, policy, SUBJECT, "case closed"),
        "run-released",
    )
    assert_alike(both)
    # The hold entries name the subject by its keyed hash, as on DuckDB.
    hashed = key_hash(key_secret(both.pg.con), SUBJECT)
    entries = both.pg.con.execute(
        "SELECT action, keys FROM audit.ledger WHERE action IN ('hold', 'release') ORDER BY seq"
    ).fetchall()
    assert entries == [("hold", [hashed]), ("release", [hashed])]


def test_an_unknown_subject_or_no_open_hold_is_one_line_and_records_nothing(
    both: Warehouses, policy: Policy
) -> None:
    state = "SELECT (SELECT count(*) FROM core.holds), (SELECT count(*) FROM audit.ledger)"
    before = both.pg.con.execute(state).fetchone()
    address = "nobody@example.test"
    refused = cli(both, "hold", "add", "--subject", address, "--reason", REASON)
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "--subject: no contacts row has that e-mail address" in refused.stderr
    assert address not in refused.stderr
    with pytest.raises(UnknownSubjectError, match="no contacts row has that contact_id"):
        postgres_holds.place(both.pg, policy, "c-nobody", REASON)
    with pytest.raises(LetheError, match="that subject has no open hold"):
        postgres_holds.release(both.pg, policy, "acc_keep", "done")
    assert both.pg.con.execute(state).fetchone() == before
