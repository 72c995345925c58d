"""Data-subject requests on a PostgreSQL warehouse (lethe.rights.postgres_requests), on a
real server.

The requests of tests/request_cases.py (access, portability, rectification, objection by
e-mail, restriction, erasure by e-mail of a subject with orders kept for accounting and
quarantined copies) are recorded on a DuckDB warehouse and carried out by the functions the
pipeline's assets call, in their order (Dagster itself adds seconds and nothing to compare),
and recorded with `lethe request` on a PostgreSQL warehouse and carried out by `lethe run`
there: the same rows, requests, ledger entries and export files, and none of the erased
subject's values left in the database's table files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import request_cases as rq
import retention_cases as rc
from conftest import TAGGED_TABLES, home_env, lethe_cli, write_landing_set
from engine_values import Plain, Warehouses

from lethe.declaration.policy import Policy
from lethe.engine import postgres_run
from lethe.engine.engines import PostgresEngine
from lethe.engine.keyhash import key_hash, read_secret
from lethe.engine.postgres_warehouse import ingest_all, key_secret, open_engine, verify
from lethe.operations.home import Home
from lethe.rights import postgres_requests
from lethe.rights.exports import export_dir
from lethe.rights.requests import (
    EXTENDED_DEADLINE,
    RequestError,
    deadline_for,
)
from lethe.rights.subjects import UnknownSubjectError
from tests.postgres import PostgresServer

T = rq.T
SUBJECTS = [rq.ACC, rq.PORT, rq.RECT, rq.OBJ, rq.RESTR, rq.ERIN, rq.OTHER, rq.CTRL, rq.HELD]
# (name, type, subject as given, changes): recorded in this order on both warehouses.
REQUESTS = [
    ("erasure", "erasure", rq.ERIN["email"].upper(), None),
    ("rectification", "rectification", rq.RECT["contact_id"], dict(rq.RECT_NEW)),
    ("access", "access", rq.ACC["contact_id"], None),
    ("portability", "portability", rq.PORT["contact_id"], None),
    ("objection", "objection", rq.OBJ["email"], None),
    ("restriction", "restriction", rq.RESTR["contact_id"], None),
]
ON_CLI = ("erasure",)  # recorded with `lethe request` on PostgreSQL (the rest in-process)
RUN = "run-requests"


def landing() -> dict[str, list[dict[str, Any]]]:
    ids = [p["contact_id"] for p in SUBJECTS]
    rows = {t: [r for cid in ids for r in rq.rows_of(t, cid)] for t in TAGGED_TABLES}
    rows["contacts"] += rq.BAD_CONTACTS
    rows["orders"] += rq.BAD_ORDERS
    rows["shipments"] += rq.BAD_SHIPMENTS
    return {**rows, "holds": rq.HOLDS}


@pytest.fixture(scope="module")
def both(
    postgres: PostgresServer, policy: Policy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Warehouses]:
    root = tmp_path_factory.mktemp("pgreq")
    duck = Home(root / "duck").ensure()
    with home_env(duck):
        rq.build(duck, **landing())
        made = rq.record(
            duck,
            *((kind, subject, {"changes": c} if c else {}) for _, kind, subject, c in REQUESTS),
        )
        rq.run_steps(duck, policy, T, RUN)
    duck_ids = {name: r.request_id for (name, *_), r in zip(REQUESTS, made, strict=True)}

    pg_home = Home(root / "pg").ensure()
    write_landing_set(pg_home.landing, **landing())
    dsn = postgres.new_database()
    engine = open_engine(dsn)
    both = Warehouses(duck, pg_home, engine, dsn, duck_ids)
    try:
        ingest_all(engine, pg_home.landing, policy)
        for name, kind, subject, changes in REQUESTS:
            if name in ON_CLI:
                sets = [f"--set={c}={v}" for c, v in (changes or {}).items()]
                done = cli(both, "request", kind, "--subject", subject, *sets)
                assert done.returncode == 0, done.stderr
                both.pg_ids[name] = done.stdout.split(":", 1)[0]
            else:
                recorded = postgres_requests.record(engine, policy, kind, subject, changes)
                both.pg_ids[name] = recorded.request_id
        both.cli["run"] = cli(both, "run", "--as-of", str(T))
        both.cli["requests"] = cli(both, "requests")
        yield both
    finally:
        engine.close()


def cli(both: Warehouses, *args: str) -> Any:
    return lethe_cli(*args, home=both.pg_home.root, LETHE_WAREHOUSE=both.dsn)


# --- reading both sides alike ---------------------------------------------------------------


def _pg_dicts(pg: PostgresEngine, sql: str) -> list[dict[str, Any]]:
    cur = pg.con.execute(sql)
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _key_names(secret: bytes) -> dict[str, str]:
    """{keyed hash: key} of every key the landing set holds, with a warehouse's secret."""
    keys = [r[rq.TABLES[t].key] for t, rows in landing().items() for r in rows]
    return {key_hash(secret, k): k for k in keys}


def _duck_plain(both: Warehouses) -> Plain:
    return Plain(
        rc.vault_values(both.duck), _key_names(read_secret(both.duck.vault)), both.duck_ids
    )


def _pg_plain(both: Warehouses) -> Plain:
    tokens = {
        t: (k, v) for t, k, v in both.pg.con.execute("SELECT token, kind, value FROM vault.tokens")
    }
    return Plain(tokens, _key_names(key_secret(both.pg.con)), both.pg_ids)


def _duck_dicts(both: Warehouses, sql: str) -> list[dict[str, Any]]:
    return rq.dicts(both.duck, sql)


# --- the tests ------------------------------------------------------------------------------


def test_lethe_request_and_run_carry_out_requests_on_postgres(both: Warehouses) -> None:
    run = both.cli["run"]
    assert run.returncode == 0, run.stderr
    carried = "access 1, portability 1, erasure 1, rectification 1, restriction 1, objection 1"
    # The summary wraps at 80 columns: its words, in order.
    assert f"requests carried out: {carried}" in " ".join(run.stdout.split()), run.stdout
    assert "answers: 2 exports written, 1 erasures answered" in run.stdout, run.stdout
    listed = both.cli["requests"]
    assert listed.returncode == 0, listed.stderr
    for name in ("access", "portability"):
        rid = both.pg_ids[name]
        assert re.search(rf"{rid}\s+exports/requests/{rid}-{name}\.zip", listed.stdout), (
            listed.stdout
        )
    assert listed.stdout.count("done") == len(REQUESTS), listed.stdout


def test_postgres_rows_and_requests_are_duckdbs(both: Warehouses) -> None:
    duck, pg = _duck_plain(both), _pg_plain(both)
    for table in TAGGED_TABLES:
        want = duck.rows(_duck_dicts(both, f"SELECT * FROM core.{table}"), ("_ingested_at",))
        got = pg.rows(_pg_dicts(both.pg, f"SELECT * FROM core.{table}"), ("_ingested_at",))
        assert got == want, f"core.{table}: PostgreSQL's rows differ from DuckDB's"
    quarantine = "SELECT table_name, row_number, column_name, reason FROM core.quarantine"
    assert pg.rows(_pg_dicts(both.pg, quarantine)) == duck.rows(_duck_dicts(both, quarantine))
    times = ("request_id", "received_at", "deadline", "completed_at")
    requests = "SELECT * FROM requests.requests"
    want = duck.rows(_duck_dicts(both, requests), times)
    assert pg.rows(_pg_dicts(both.pg, requests), times) == want
    assert {r[0] for r in both.pg.con.execute("SELECT status FROM requests.requests")} == {"done"}


LEDGER = (
    "SELECT action, table_name, strategy, columns, keys, key_count, reason, details"
    " FROM audit.ledger"
)


def test_postgres_ledger_records_duckdbs_actions_and_verifies(both: Warehouses) -> None:
    duck, pg = _duck_plain(both), _pg_plain(both)
    want = duck.rows(_duck_dicts(both, LEDGER))
    got = pg.rows(_pg_dicts(both.pg, LEDGER))
    assert got == want
    assert verify(both.pg.con).ok


def _zip(home: Home, request_id: str) -> dict[str, bytes]:
    (path,) = export_dir(home).glob(f"{request_id}-*.zip")
    return rq.read_zip(path)


def test_postgres_exports_hold_what_duckdbs_hold(both: Warehouses) -> None:
    for name in ("access", "portability"):
        want = _zip(both.duck, both.duck_ids[name])
        got = _zip(both.pg_home, both.pg_ids[name])
        assert sorted(got) == sorted(want)
        for member in want:
            w, g = want[member].decode(), got[member].decode()
            w = w.replace(both.duck_ids[name], "<id>")
            g = g.replace(both.pg_ids[name], "<id>")
            if member == "subject.json":
                wd, gd = json.loads(w), json.loads(g)
                for doc in (wd, gd):
                    doc.pop("generated_at")
                    doc["request"] = {"id": doc["request"]["id"]}
                    for table, rows in doc["tables"].items():
                        doc["tables"][table] = sorted(rows, key=repr)
                assert gd == wd, f"{name} {member}"
            elif member.endswith(".csv"):
                assert sorted(g.splitlines()) == sorted(w.splitlines()), f"{name} {member}"
            else:  # the letter: rows in the order the database returned them
                assert sorted(_undated(g).splitlines()) == sorted(_undated(w).splitlines()), (
                    f"{name} {member}"
                )


def _undated(text: str) -> str:
    return re.sub(r"\d{1,2}\. ?\d{1,2}\. ?\d{4}|\d{4}-\d{2}-\d{2}[ T][\d:.]+", "<date>", text)


def test_no_value_of_the_erased_subject_is_left_in_the_table_files(
    both: Warehouses, postgres: PostgresServer
) -> None:
    """After the run (its `VACUUM FULL`s) and a CHECKPOINT, none of the erased subject's
    values, nor the values the rectification replaced, is in any file of the database's
    folder under `base/` but the vault's: the name and street of invoices kept for
    accounting are the values of their pseudonyms there, by design (as in vault.duckdb).
    The values kept are found (else the scan would prove nothing)."""
    files, vault = postgres.table_files(both.pg.con)
    erin = rq.values_of(rq.ERIN)
    gone = {**erin, **rq.values_of(rq.RECT, ("email", "last_name", "street"))}
    kept = {"email of c-ctrl": rq.CTRL["email"], "new street of c-rect": rq.RECT_NEW["street"]}
    assert rc.scan_files(files, kept).keys() == kept.keys()
    found = rc.scan_files(files, gone)
    in_vault = {f"{c} of c-erin" for c in ("last_name", "street")}
    assert {what for what, where in found.items() if set(where) <= vault} == in_vault, found
    assert found.keys() == in_vault, found


def test_a_second_run_changes_nothing(both: Warehouses, policy: Policy) -> None:
    tables = [*(f"core.{t}" for t in TAGGED_TABLES), "requests.requests", "audit.ledger"]
    before = {t: sorted(map(repr, both.pg.con.execute(f"SELECT * FROM {t}"))) for t in tables}
    again = postgres_run.run(both.dsn, both.pg_home, policy, T)
    assert not any(again.requests.values())
    assert again.answers is not None and again.answers.exports == again.answers.erasures == 0
    after = {t: sorted(map(repr, both.pg.con.execute(f"SELECT * FROM {t}"))) for t in tables}
    assert after == before


def test_an_unknown_subject_is_one_line_and_records_nothing(
    both: Warehouses, policy: Policy
) -> None:
    (count,) = both.pg.con.execute("SELECT count(*) FROM requests.requests").fetchone()
    address = "nobody@example.test"
    refused = cli(both, "request", "access", "--subject", address)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "--subject: no contacts row has that e-mail address" in refused.stderr
    assert address not in refused.stderr
    # A dry run records nothing (this policy declares no PostgreSQL source to preview).
    dry = cli(both, "request", "erasure", "--subject", rq.CTRL["contact_id"], "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "no change for any PostgreSQL source" in dry.stdout
    with pytest.raises(UnknownSubjectError, match="no contacts row has that contact_id"):
        postgres_requests.record(both.pg, policy, "erasure", "c-nobody")
    assert both.pg.con.execute("SELECT count(*) FROM requests.requests").fetchone() == (count,)


def test_a_request_is_due_in_a_month_and_extends_once(both: Warehouses, policy: Policy) -> None:
    """Deadlines by `lethe.rights.requests`' rules, on the database, each step in the ledger."""
    (entries,) = both.pg.con.execute("SELECT count(*) FROM audit.ledger").fetchone()
    recorded = postgres_requests.record(both.pg, policy, "access", rq.CTRL["email"])
    assert recorded.subject_key == rq.CTRL["contact_id"]
    assert recorded.deadline == deadline_for(recorded.received_at)
    extended = postgres_requests.extend(both.pg, policy, recorded.request_id, "many files")
    assert extended.deadline == EXTENDED_DEADLINE.add_to(recorded.received_at)
    (stored,) = both.pg.con.execute(
        "SELECT deadline, extended, extension_reason FROM requests.requests WHERE request_id = %s",
        [recorded.request_id],
    ).fetchall()
    assert stored == (extended.deadline, True, "many files")
    with pytest.raises(RequestError, match="already extended once"):
        postgres_requests.extend(both.pg, policy, recorded.request_id, "again")
    assert both.pg.con.execute("SELECT count(*) FROM audit.ledger").fetchone() == (entries + 2,)
    assert verify(both.pg.con).ok
    listed = postgres_requests.listing(both.pg)
    assert [r[5] for r in listed if r[0] == recorded.request_id] == ["pending"]
