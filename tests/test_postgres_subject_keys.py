"""What remains of an erased subject on a PostgreSQL warehouse (SPEC "What people see"):
no raw key of theirs in Lethe's own tables, only its keyed hash, as on DuckDB.

Subjects of tests/request_cases.py: ERIN and CTRL ask for their data in a first run (the
export log names them, and so may its column statistics), ERIN is erased in a second, in
which ACC and LATE ask for theirs. The same requests are carried out on DuckDB (by the
functions the pipeline's assets call) and on PostgreSQL (by `lethe run`): Lethe's own
tables hold the same rows, ERIN named by her keyed hash on both, and no file of the
PostgreSQL database but the vault's holds her key or her values (statistics included).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import request_cases as rq
import retention_cases as rc
from conftest import TAGGED_TABLES, home_env, lethe_cli, write_landing, write_landing_set
from engine_values import Plain, Warehouses

from lethe.declaration.policy import Policy
from lethe.engine import postgres_run
from lethe.engine.engines import PostgresEngine
from lethe.engine.keyhash import key_hash, read_secret
from lethe.engine.postgres_warehouse import ingest_all, key_secret, open_engine
from lethe.operations.home import Home
from lethe.rights import postgres_requests
from lethe.rights.exports import export_dir
from tests.postgres import PostgresServer

T = rq.T
ERIN = rq.ERIN["contact_id"]
LATE = rq.person("c-late")  # no order nor consent: retention ends with his account
SUBJECTS = [rq.ERIN, rq.ACC, rq.CTRL]
FIRST = [("access", ERIN), ("access", rq.CTRL["contact_id"])]
SECOND = [("erasure", ERIN), ("access", rq.ACC["contact_id"]), ("access", LATE["contact_id"])]
# Lethe's own tables naming subjects (lethe.rights.subject_keys.key_columns), the columns
# that differ between two warehouses by nature (times, ids, run ids) left out.
OWN = {
    "requests.requests": ("request_id", "received_at", "deadline", "completed_at"),
    "requests.erasures": ("request_id", "registered_at"),
    "audit.export_log": ("exported_at", "expires_at"),
}


def landing() -> dict[str, list[dict[str, Any]]]:
    ids = [p["contact_id"] for p in SUBJECTS]
    rows = {t: [r for cid in ids for r in rq.rows_of(t, cid)] for t in TAGGED_TABLES}
    return {**rows, "contacts": [*rows["contacts"], LATE]}


@pytest.fixture(scope="module")
def both(
    postgres: PostgresServer, policy: Policy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Warehouses]:
    root = tmp_path_factory.mktemp("pgkeys")
    duck = Home(root / "duck").ensure()
    duck_ids = {}
    with home_env(duck):
        rq.build(duck, **landing())
        for requests in (FIRST, SECOND):
            made = rq.record(duck, *((kind, subject, {}) for kind, subject in requests))
            named = zip(made, requests, strict=True)
            duck_ids |= {f"{r.type} {s}": r.request_id for r, (_, s) in named}
            rq.run_steps(duck, policy, T, "run-requests")
    pg_home = Home(root / "pg").ensure()
    write_landing_set(pg_home.landing, **landing())
    dsn = postgres.new_database()
    engine = open_engine(dsn)
    both = Warehouses(duck, pg_home, engine, dsn, duck_ids=duck_ids)
    try:
        ingest_all(engine, pg_home.landing, policy)  # the subjects exist before requests
        for requests in (FIRST, SECOND):
            for kind, subject in requests:
                made = postgres_requests.record(engine, policy, kind, subject)
                both.pg_ids[f"{kind} {subject}"] = made.request_id
            done = lethe_cli("run", "--as-of", str(T), home=pg_home.root, LETHE_WAREHOUSE=dsn)
            assert done.returncode == 0, done.stderr
            both.runs.append(done)
            # As autovacuum may: column statistics sample the keys the export log holds.
            engine.con.execute("ANALYZE")
        yield both
    finally:
        engine.close()


def _pg_rows(pg: PostgresEngine, table: str) -> list[dict[str, Any]]:
    cur = pg.con.execute(f"SELECT * FROM {table}")
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def test_postgres_holds_the_erased_subjects_keyed_hash_where_duckdb_does(
    both: Warehouses,
) -> None:
    """Tokens as what they stand for, ERIN's keyed hash (each warehouse has its own
    secret) as one placeholder: a raw key left on PostgreSQL differs from it."""
    hashed = "<keyed hash of the erased subject>"
    secret = read_secret(both.duck.vault)
    duck = Plain(rc.vault_values(both.duck), {key_hash(secret, ERIN): hashed}, both.duck_ids)
    tokens = {
        t: (k, v) for t, k, v in both.pg.con.execute("SELECT token, kind, value FROM vault.tokens")
    }
    pg = Plain(tokens, {key_hash(key_secret(both.pg.con), ERIN): hashed}, both.pg_ids)
    for table, drop in OWN.items():
        want = duck.rows(rq.dicts(both.duck, f"SELECT * FROM {table}"), drop)
        got = pg.rows(_pg_rows(both.pg, table), drop)
        assert got == want, f"{table}: PostgreSQL's rows differ from DuckDB's"
        assert hashed in repr(got), f"{table} does not name the erased subject by its hash"


def holding_raw_key(pg: PostgresEngine, key: str = ERIN) -> dict[str, int]:
    """{table: rows} of the tables outside the vault holding the raw `key` anywhere."""
    tables = pg.con.execute(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables"
        " WHERE table_schema IN ('core', 'requests', 'audit', 'analytics')"
        " AND table_type = 'BASE TABLE' ORDER BY 1"
    ).fetchall()
    assert ("requests.requests",) in tables
    found = {}
    for (table,) in tables:
        (hits,) = pg.con.execute(
            f"SELECT count(*) FROM {table} t WHERE strpos(CAST(t AS text), %s) > 0", [key]
        ).fetchone()
        if hits:
            found[table] = hits
    return found


def test_no_raw_key_of_the_erased_subject_is_in_lethes_tables(both: Warehouses) -> None:
    assert holding_raw_key(both.pg) == {}


def test_no_file_of_the_database_but_the_vaults_holds_the_erased_key_or_values(
    both: Warehouses, postgres: PostgresServer
) -> None:
    """After the runs (their `VACUUM FULL`s) and a CHECKPOINT: the vault keeps the values
    its tokens stand for (the key and the name and street of invoices kept for accounting),
    by design; no other file under the database's `base/` folder holds any of them."""
    files, vault = postgres.table_files(both.pg.con)
    kept = {"email of c-ctrl": rq.CTRL["email"], "key of c-acc": rq.ACC["contact_id"]}
    assert rc.scan_files(files, kept).keys() == kept.keys()
    gone = {"key of c-erin": ERIN, **rq.values_of(rq.ERIN)}
    found = rc.scan_files(files, gone)
    assert {w: f for w, f in found.items() if not set(f) <= vault} == {}, found


def test_the_run_summary_fits_80_columns_and_counts_every_request_carried_out(
    both: Warehouses,
) -> None:
    first, second = (run.stdout for run in both.runs)
    for line in (first + second).splitlines():
        assert len(line) <= 80, line
    assert "requests carried out: access 2\n" in first, first
    assert "requests carried out: access 2, erasure 1\n" in second, second


def test_an_erased_subject_delivered_again_is_erased_again(
    both: Warehouses, policy: Policy
) -> None:
    """The erasure register names ERIN by her keyed hash: a source delivering her row again
    (same key) has it named by her key once more, erased by the next run, then hashed."""
    write_landing(both.pg_home.landing, "contacts", [rq.ERIN])
    postgres_run.run(both.dsn, both.pg_home, policy, T)
    (left,) = both.pg.con.execute(
        "SELECT count(*) FROM core.contacts WHERE contact_id = %s OR email = %s",
        [ERIN, rq.ERIN["email"]],
    ).fetchone()
    assert left == 0
    assert holding_raw_key(both.pg) == {}


def test_retention_ending_hashes_the_key_and_deletes_the_subjects_export(
    both: Warehouses, policy: Policy
) -> None:
    """Last (it changes the warehouse): years later retention anonymizes LATE, whose
    access export the second run wrote; the export log names him by his keyed hash only,
    and his export file is deleted with him, as on DuckDB."""
    (export,) = both.pg.con.execute(
        "SELECT file_name FROM audit.export_log WHERE subject_key = %s", [LATE["contact_id"]]
    ).fetchone()
    assert (export_dir(both.pg_home) / export).exists()
    postgres_run.run(both.dsn, both.pg_home, policy, T.replace(year=T.year + 30))
    (hashed,) = both.pg.con.execute(
        "SELECT subject_key FROM audit.export_log WHERE file_name = %s", [export]
    ).fetchone()
    assert hashed == key_hash(key_secret(both.pg.con), LATE["contact_id"])
    assert not (export_dir(both.pg_home) / export).exists()
