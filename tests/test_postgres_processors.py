"""Processors and breaches on a PostgreSQL warehouse (lethe.compliance.postgres_processors),
on a real server.

The retention cases are ingested and enforced on a DuckDB warehouse and on a PostgreSQL
one. The same scenario then runs on both at the same time `NOW`, on DuckDB with the
functions the command line calls, on PostgreSQL with their PostgreSQL steps: exports to two
processors, an export after the contract end (refused, a breach opened), a revocation and
an export refused after it, a breach recorded by hand, notifications and a closing. Both
hold the same events, breaches, export log and ledger entries and wrote the same export
files (a restricted row in neither); the PostgreSQL ledger verifies. An export whose records
the database refuses leaves no file and writes nothing. Then, on the command line, an export
refused there is one line, breaches are recorded and listed, and a later `lethe run` deletes
the export files holding rows its enforcement erased, as the DuckDB pipeline's processors
asset does.
"""

from __future__ import annotations

import datetime as dt
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import retention_cases as rc
from conftest import lethe_cli
from engine_values import Plain, Warehouses

from lethe.compliance import postgres_processors as pgp
from lethe.compliance.breaches import close_breach, mark_notified, record_breach
from lethe.compliance.processors import (
    ExportRefusedError,
    export_to_processor,
    review_processors,
    revoke,
)
from lethe.declaration.policy import Policy
from lethe.engine import postgres_warehouse
from lethe.engine.enforcement import enforce
from lethe.engine.keyhash import key_hash, read_secret
from lethe.engine.postgres_warehouse import ingest_all, key_secret, open_engine, verify
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from tests.postgres import PostgresServer

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
ENDED = "monkeydata"  # its contract ended in 2022
LATER = dt.date(2040, 1, 1)  # every shared row has expired by then
REGISTERS = {
    "events": "SELECT * FROM audit.processor_events",
    "breaches": "SELECT * FROM audit.breaches",
    "export_log": "SELECT * FROM audit.export_log",
    "ledger": "SELECT run_id, as_of, action, table_name, strategy, columns, keys, key_count,"
    " reason, details FROM audit.ledger",
}
BREACH_ID = re.compile(r"B-[0-9a-f]{12}")
# A shipment kept for the contract, restricted (as a restriction request leaves it) on both
# sides: no processor receives it.
RESTRICTED = "s_ctr_open"
RESTRICT = f"UPDATE core.shipments SET _state = 'restricted' WHERE shipment_id = '{RESTRICTED}'"


@pytest.fixture(scope="module")
def both(
    postgres: PostgresServer, policy: Policy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Warehouses]:
    root = tmp_path_factory.mktemp("pgproc")
    duck = rc.prepare(root / "duck", policy)
    enforce(duck, policy, rc.T, "run-1")
    con = connect(duck.warehouse)
    try:
        con.execute(RESTRICT)
    finally:
        con.close()
    pg_home = Home(root / "pg").ensure()
    rc.write_cases(pg_home.landing)
    dsn = postgres.new_database()
    engine = open_engine(dsn)
    try:
        ingest_all(engine, pg_home.landing, policy)
        postgres_warehouse.enforce(engine, policy, rc.T, "run-1")
        engine.con.execute(RESTRICT)
        yield Warehouses(duck, pg_home, engine, dsn)
    finally:
        engine.close()


def cli(both: Warehouses, *args: str) -> Any:
    return lethe_cli(*args, home=both.pg_home.root, LETHE_WAREHOUSE=both.dsn)


def scenario(policy: Policy, ids: dict[str, str], files: list[Path], side: dict[str, Any]) -> None:
    """The scenario, through `side`'s functions (named as in lethe.compliance.processors
    and breaches); ids of exports and breaches by name into `ids`, export files into
    `files`."""
    for name in ("balikobot", "smartemailing"):
        made = side["export"](name, NOW, "run-x")
        ids[f"export-{name}"] = made.export_id
        files.append(made.path)
        assert made.rows and all(made.rows.values()), made.rows
    with pytest.raises(ExportRefusedError, match="contract ended 2022-05-27") as ended:
        side["export"](ENDED, NOW, "run-x")
    ids["refused-ended"] = BREACH_ID.search(str(ended.value)).group()  # type: ignore[union-attr]
    side["revoke"]("smartemailing", "the newsletter moved in-house", NOW)
    with pytest.raises(ExportRefusedError, match="access revoked") as revoked:
        side["export"]("smartemailing", NOW + dt.timedelta(minutes=1), "run-x")
    ids["refused-revoked"] = BREACH_ID.search(str(revoked.value)).group()  # type: ignore[union-attr]
    manual = side["record"](
        policy,
        "Label printer left logged in at a public counter",
        NOW - dt.timedelta(hours=2),
        NOW,
        processor="balikobot",
        processor_aware_at=NOW - dt.timedelta(hours=3),
        subjects_affected=4,
    )
    ids["manual"] = manual.breach_id
    assert manual.awaiting_processor
    side["notified"](manual.breach_id, "processor", NOW, NOW)
    assert side["notified"](manual.breach_id, "authority", NOW, NOW).open is False
    closed = side["close"](ids["refused-ended"], "the add-on holds no credentials any more", NOW)
    assert closed.closed_at is not None


def duck_side(home: Home, policy: Policy) -> dict[str, Any]:
    def on(fn):
        def call(*args: Any, **kwargs: Any) -> Any:
            con = connect(home.warehouse)
            try:
                return fn(con, *args, **kwargs)
            finally:
                con.close()

        return call

    return {
        "export": on(
            lambda con, name, now, run: export_to_processor(con, home, policy, name, now, run)
        ),
        "revoke": on(lambda con, name, why, now: revoke(con, policy, name, why, now)),
        "record": on(record_breach),
        "notified": on(mark_notified),
        "close": on(close_breach),
    }


def pg_side(both: Warehouses, policy: Policy) -> dict[str, Any]:
    e = both.pg
    return {
        "export": lambda name, now, run: pgp.export(e, both.pg_home, policy, name, now, run),
        "revoke": lambda name, why, now: pgp.revoke_access(e, policy, name, why, now),
        "record": lambda p, *args, **kwargs: pgp.record(e, p, *args, **kwargs),
        "notified": lambda bid, party, at, now: pgp.notified(e, policy, bid, party, at, now),
        "close": lambda bid, why, now: pgp.close(e, policy, bid, why, now),
    }


def _hashes(secret: bytes) -> dict[str, str]:
    cases = {"contacts": rc.CONTACTS, "consents": rc.CONSENTS, "orders": rc.ORDERS}
    keys = [r[rc.TABLES[t].key] for t, rows in cases.items() for r in rows]
    keys += [r["shipment_id"] for r in rc.SHIPMENTS]
    return {key_hash(secret, k): k for k in keys}


def _rows(cur: Any, names: list[str]) -> list[dict[str, Any]]:
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def duck_rows(both: Warehouses, sql: str) -> list[tuple]:
    plain = Plain(rc.vault_values(both.duck), _hashes(read_secret(both.duck.vault)), both.duck_ids)
    con = rc.read_only(both.duck)
    try:
        cur = con.execute(sql)
        return plain.rows(_rows(cur, [d[0] for d in cur.description]))
    finally:
        con.close()


def pg_rows(both: Warehouses, sql: str) -> list[tuple]:
    tokens = {
        t: (k, v) for t, k, v in both.pg.con.execute("SELECT token, kind, value FROM vault.tokens")
    }
    plain = Plain(tokens, _hashes(key_secret(both.pg.con)), both.pg_ids)
    cur = both.pg.con.execute(sql)
    return plain.rows(_rows(cur, [d.name for d in cur.description]))


def members(path: Path) -> dict[str, bytes]:
    """An export's CSV files by name (the zip's own times differ)."""
    with zipfile.ZipFile(path) as archive:
        return {n: archive.read(n) for n in sorted(archive.namelist())}


def test_the_same_scenario_gives_the_same_rows_and_files_on_both_engines(
    both: Warehouses, policy: Policy
) -> None:
    both.files = {"duck": [], "pg": []}
    scenario(policy, both.duck_ids, both.files["duck"], duck_side(both.duck, policy))
    scenario(policy, both.pg_ids, both.files["pg"], pg_side(both, policy))

    for duck_file, pg_file in zip(both.files["duck"], both.files["pg"], strict=True):
        assert pg_file.is_relative_to(both.pg_home.exports / "processors")
        assert members(pg_file) == members(duck_file), pg_file.name
    shipments = members(both.files["pg"][0])["shipments.csv"].decode()
    assert set(re.findall(r"^s_\w+", shipments, re.M)) == set(rc.KEPT_SHIPMENTS) - {RESTRICTED}
    for name, sql in REGISTERS.items():
        assert pg_rows(both, sql) == duck_rows(both, sql), f"{name} differs"
    refused = pg_rows(
        both, "SELECT processor, breach_id FROM audit.processor_events WHERE event = 'refused'"
    )
    assert len(refused) == 2, refused
    (entries,) = both.pg.con.execute(
        "SELECT count(*) FROM audit.ledger WHERE action = 'export'"
    ).fetchone()
    assert entries == 2  # one per shared table of the two exports
    assert verify(both.pg.con).ok


REFUSE_LOG = """CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'the export log is read-only today'; END $$"""


def test_an_export_whose_records_do_not_commit_leaves_no_file(both: Warehouses) -> None:
    """The database refuses the export log (a trigger): one line, no file, nothing written."""
    state = (
        "SELECT (SELECT count(*) FROM audit.ledger), (SELECT count(*) FROM audit.export_log),"
        " (SELECT count(*) FROM audit.processor_events)"
    )
    before = both.pg.con.execute(state).fetchone()
    files = sorted((both.pg_home.exports / "processors").rglob("*"))
    trigger = "CREATE TRIGGER refuse BEFORE INSERT ON audit.export_log EXECUTE FUNCTION refuse()"
    with both.pg.con.transaction():
        both.pg.con.execute(REFUSE_LOG)
        both.pg.con.execute(trigger)
    try:
        failed = cli(both, "processor", "export", "balikobot")
    finally:
        with both.pg.con.transaction():
            both.pg.con.execute("DROP TRIGGER refuse ON audit.export_log")
            both.pg.con.execute("DROP FUNCTION public.refuse()")
    assert failed.returncode == 1, failed.stdout
    assert failed.stderr.count("\n") == 1, failed.stderr
    assert "exporting to the processor stopped" in failed.stderr
    assert "refused by a trigger or rule" in failed.stderr
    assert sorted((both.pg_home.exports / "processors").rglob("*")) == files
    assert both.pg.con.execute(state).fetchone() == before


def test_on_the_command_line_and_in_a_run(both: Warehouses, policy: Policy) -> None:
    listed = cli(both, "processor", "list")
    assert listed.returncode == 0, listed.stderr
    assert "contract ended 2022-05-27" in listed.stdout and "access revoked" in listed.stdout

    before = both.pg.con.execute("SELECT count(*) FROM audit.breaches").fetchone()[0]
    refused = cli(both, "processor", "export", ENDED)
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert f"export to {ENDED} refused: contract ended 2022-05-27; breach record B-" in (
        refused.stderr
    )
    assert both.pg.con.execute("SELECT count(*) FROM audit.breaches").fetchone()[0] == before + 1
    assert not (both.pg_home.exports / "processors" / ENDED).exists()

    breaches = cli(both, "breach", "list")
    assert breaches.returncode == 0, breaches.stderr
    assert both.pg_ids["manual"] in breaches.stdout and "refused export" in breaches.stdout
    recorded = cli(
        both,
        "breach",
        "record",
        "--description=A courier's scanner was lost",
        "--processor=balikobot",
        f"--processor-aware-at={NOW:%Y-%m-%dT%H:%M}",
    )
    assert recorded.returncode == 0, recorded.stderr
    assert "balikobot must notify you by" in recorded.stdout
    (breach_id,) = BREACH_ID.findall(recorded.stdout)
    notified = cli(both, "breach", "notified", breach_id, "--party", "processor")
    assert notified.returncode == 0, notified.stderr
    (controller_notified,) = both.pg.con.execute(
        "SELECT controller_notified_at FROM audit.breaches WHERE breach_id = %s", [breach_id]
    ).fetchone()
    assert controller_notified is not None
    missing = cli(both, "breach", "close", "B-000000000000", "--reason", "x")
    assert missing.returncode == 1 and "no breach 'B-000000000000'" in missing.stderr

    made = cli(both, "processor", "export", "balikobot")
    assert made.returncode == 0, made.stderr
    files = sorted((both.pg_home.exports / "processors").glob("*/*.zip"))
    assert len(files) == 3, files  # two of the scenario, this one

    # Every shared row expires by LATER: the run's enforcement erases them, and the export
    # files holding them go, as the processors asset deletes them after a DuckDB run.
    enforce(both.duck, policy, LATER, "run-later")
    con = connect(both.duck.warehouse)
    try:
        on_duckdb = review_processors(con, both.duck, policy, dt.datetime.now(dt.UTC))
    finally:
        con.close()
    assert on_duckdb.expired_exports == 2
    ran = cli(both, "run", "--as-of", str(LATER))
    assert ran.returncode == 0, ran.stderr
    assert "of 3 with access; 3 export files deleted" in ran.stdout, ran.stdout
    assert not list((both.pg_home.exports / "processors").glob("*/*.zip"))
    # The refusal of the revoked export and this one await assessment: the check says so.
    assert ran.stderr.count("compliance/processors no_unassessed_refused_export") == 2
    verified = cli(both, "audit", "verify")
    assert verified.returncode == 0 and "chain intact" in verified.stdout, verified.stderr
