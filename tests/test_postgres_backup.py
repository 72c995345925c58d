"""Backups and restore on a PostgreSQL warehouse (lethe.operations.postgres_backup), on a
real server, against the same scenario on DuckDB.

Both warehouses: a run, a backup, then an erasure (of a subject with an invoice kept for
accounting) and a rectification of another subject, a run, and a restore of the backup. The
restore re-applies the erasure (the subject stays erased, nothing of it in the database's
table files), brings back what the backup held for the rest (the rectified street too: a
rectification made since is not re-applied, as on DuckDB), records itself in a ledger that
verifies, and gives the rows DuckDB's restore gives.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import request_cases as rq
import retention_cases as rc
from conftest import LETHE_BIN, TAGGED_TABLES, lethe_cli, lethe_env, write_landing_set
from engine_values import Plain
from test_postgres_subject_keys import holding_raw_key

from lethe.declaration.policy import Policy
from lethe.engine import postgres_run
from lethe.engine.engines import PostgresEngine
from lethe.engine.keyhash import key_hash, read_secret
from lethe.engine.postgres_warehouse import key_secret, open_engine, verify
from lethe.operations import postgres_backup
from lethe.operations.backup import BackupError, create_backup
from lethe.operations.home import Home
from lethe.operations.restore import restore
from lethe.rights import postgres_requests
from tests.postgres import PostgresServer

# Every run as of today: a restore re-applies retention as of the latest date in the ledger,
# and recording a request dates its entry today.
T = dt.datetime.now(dt.UTC).date()
SUBJECTS = [rq.ACC, rq.ERIN, rq.OTHER, rq.CTRL]
NEW_STREET = "Nová 99"
# Recorded after the backup, in this order: (name, type, subject as given, --set).
REQUESTS = [
    ("erasure", "erasure", rq.ERIN["email"], None),
    ("rectification", "rectification", rq.OTHER["contact_id"], {"street": NEW_STREET}),
]


def landing() -> dict[str, list[dict[str, Any]]]:
    ids = [p["contact_id"] for p in SUBJECTS]
    rows = {t: [r for cid in ids for r in rq.rows_of(t, cid)] for t in TAGGED_TABLES}
    rows["contacts"] += rq.BAD_CONTACTS
    rows["orders"] += rq.BAD_ORDERS
    return rows


@dataclass
class Restored:
    """The scenario on DuckDB (`duck`) and on PostgreSQL (`pg`, LETHE_HOME `pg_home`)."""

    duck: Home
    pg_home: Home
    pg: PostgresEngine
    dsn: str
    ids: dict[str, dict[str, str]] = field(default_factory=dict)  # side: {name: id}
    at_backup: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # core tables
    cli: dict[str, Any] = field(default_factory=dict)  # completed `lethe` commands by name
    seq_at_backup: int = 0  # the ledger's last entry when the backup was taken


def cli(r: Restored, *args: str) -> Any:
    return lethe_cli(*args, home=r.pg_home.root, LETHE_WAREHOUSE=r.dsn)


def _backups(folder: Path) -> list[str]:
    """The backups in `folder`, which holds nothing else (no scratch copy)."""
    names = sorted(p.name for p in folder.iterdir())
    assert all(re.fullmatch(r"\d{8}T\d{6}Z", n) for n in names), names
    return names


def _backup_id(done: Any) -> str:
    assert done.returncode == 0, done.stderr
    found = re.search(r"backup (\d{8}T\d{6}Z) written", done.stdout)
    assert found, done.stdout
    return found.group(1)


@pytest.fixture(scope="module")
def restored(
    postgres: PostgresServer, policy: Policy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Restored]:
    root = tmp_path_factory.mktemp("pgbackup")
    duck = Home(root / "duck").ensure()
    rq.build(duck, **landing())
    rq.run_steps(duck, policy, T, "run-1")
    duck_backup = create_backup(duck)
    made = rq.record(duck, *((k, s, {"changes": c} if c else {}) for _, k, s, c in REQUESTS))
    rq.run_steps(duck, policy, T, "run-2")
    restore(duck, duck_backup.id, policy)
    duck_ids = {name: m.request_id for (name, *_), m in zip(REQUESTS, made, strict=True)}

    pg_home = Home(root / "pg").ensure()
    write_landing_set(pg_home.landing, **landing())
    dsn = postgres.new_database()
    engine = open_engine(dsn)
    r = Restored(duck, pg_home, engine, dsn, {"duck": {**duck_ids, "backup": duck_backup.id}})
    try:
        postgres_run.run(dsn, pg_home, policy, T)
        # Expired by `lethe backup` (a run expires them too).
        old = dt.datetime.now(dt.UTC) - dt.timedelta(days=81)
        assert postgres_backup.backup(engine, pg_home, policy, now=old).path.is_dir()
        r.cli["backup"] = cli(r, "backup")
        pg_ids = {"backup": _backup_id(r.cli["backup"])}
        r.at_backup = {t: _pg_dicts(engine, f"SELECT * FROM core.{t}") for t in TAGGED_TABLES}
        (r.seq_at_backup,) = engine.con.execute("SELECT max(seq) FROM audit.ledger").fetchone()
        for name, kind, subject, changes in REQUESTS:
            recorded = postgres_requests.record(engine, policy, kind, subject, changes)
            pg_ids[name] = recorded.request_id
        assert postgres_run.run(dsn, pg_home, policy, T).requests["erasure"] == 1
        r.cli["restore"] = cli(r, "restore", pg_ids["backup"])
        r.ids["pg"] = pg_ids
        yield r
    finally:
        engine.close()


# --- reading both sides alike ---------------------------------------------------------------


def _pg_dicts(pg: PostgresEngine, sql: str) -> list[dict[str, Any]]:
    cur = pg.con.execute(sql)
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _key_names(secret: bytes) -> dict[str, str]:
    keys = [r[rq.TABLES[t].key] for t, rows in landing().items() for r in rows]
    return {key_hash(secret, k): k for k in keys}


def _duck_plain(r: Restored) -> Plain:
    return Plain(rc.vault_values(r.duck), _key_names(read_secret(r.duck.vault)), r.ids["duck"])


def _pg_plain(r: Restored) -> Plain:
    tokens = {
        t: (k, v) for t, k, v in r.pg.con.execute("SELECT token, kind, value FROM vault.tokens")
    }
    return Plain(tokens, _key_names(key_secret(r.pg.con)), r.ids["pg"])


# --- the tests ------------------------------------------------------------------------------


def test_backup_and_restore_run_on_postgres(restored: Restored) -> None:
    done = restored.cli["restore"]
    assert done.returncode == 0, done.stderr
    assert f"restored {restored.ids['pg']['backup']}; re-applied retention as of" in (done.stdout)
    # The same backups/<id>/ as on DuckDB, and no scratch copy left under LETHE_HOME; the
    # backup past the 80 days is gone.
    assert "1 backup(s) past retention deleted" in restored.cli["backup"].stdout
    backups = restored.pg_home.backups
    assert restored.ids["pg"]["backup"] in _backups(backups)  # beside the runs' own
    backup = backups / restored.ids["pg"]["backup"]
    assert sorted(p.name for p in backup.iterdir()) == ["manifest.json", "warehouse.duckdb.gz"]
    assert (backup / "warehouse.duckdb.gz").stat().st_mode & 0o077 == 0
    manifest = json.loads((backup / "manifest.json").read_text())
    assert manifest["ledger_seq"] == restored.seq_at_backup > 0
    # Not vacuous: the backup holds the subject erased since.
    with gzip.open(backup / "warehouse.duckdb.gz") as fh:
        assert rq.ERIN["email"].encode() in fh.read()


def test_restore_on_postgres_keeps_the_erased_subject_erased(
    restored: Restored, postgres: PostgresServer
) -> None:
    """No value of the subject erased since the backup in any core table, nor in any file of
    the database's folder under `base/` but the vault's (the name and street of its invoice
    kept for accounting are the values of their pseudonyms there, by design), nor in any
    file under LETHE_HOME but the backup."""
    pg = restored.pg.con
    erin = rq.values_of(rq.ERIN)
    text = "\n".join(
        repr(row) for t in TAGGED_TABLES for row in pg.execute(f"SELECT * FROM core.{t}")
    )
    text += "\n".join(repr(row) for row in pg.execute("SELECT * FROM core.quarantine"))
    assert {what for what, value in erin.items() if value in text} == set()
    duck = "\n".join(map(repr, rq.query(restored.duck, "SELECT * FROM core.quarantine")))
    assert {what for what, value in erin.items() if value in duck} == set()
    files, vault = postgres.table_files(pg)
    kept = {"email of c-ctrl": rq.CTRL["email"], "street of c-other": rq.OTHER["street"]}
    assert rc.scan_files(files, kept).keys() == kept.keys()
    found = rc.scan_files(files, erin)
    assert {what for what, where in found.items() if not set(where) <= vault} == set(), found
    assert rc.scan_files(restored.pg_home.root, erin, skip=("backups",)) == {}
    # Lethe's own tables name the subject by keyed hash, as after the run that erased them.
    assert holding_raw_key(restored.pg, rq.ERIN[rq.TABLES["contacts"].key]) == {}


def test_restore_brings_back_the_backups_rows_of_everyone_else(restored: Restored) -> None:
    """Every row but the erased subject's (kept ones pseudonymized, the contact anonymized
    under a surrogate key) is as the backup held it: the street rectified since is the old
    one again."""
    erin = rq.ERIN["contact_id"]
    for table in TAGGED_TABLES:
        key = rq.TABLES[table].key
        erins = {r[key] for r in rq.rows_of(table, erin)}
        now = _pg_dicts(restored.pg, f"SELECT * FROM core.{table}")
        now = [r for r in now if r[key] not in erins and r["_state"] != "anonymized"]
        want = [r for r in restored.at_backup[table] if r[key] not in erins]
        assert sorted(map(repr, now)) == sorted(map(repr, want)), table
    (other,) = _pg_dicts(
        restored.pg,
        f"SELECT street FROM core.contacts WHERE contact_id = '{rq.OTHER['contact_id']}'",
    )
    assert other["street"] == rq.OTHER["street"] != NEW_STREET


def test_restore_on_postgres_gives_duckdbs_rows(restored: Restored) -> None:
    duck, pg = _duck_plain(restored), _pg_plain(restored)
    times = ("_ingested_at", "request_id", "received_at", "deadline", "completed_at")
    for table in [*(f"core.{t}" for t in TAGGED_TABLES), "requests.requests"]:
        want = duck.rows(rq.dicts(restored.duck, f"SELECT * FROM {table}"), times)
        got = pg.rows(_pg_dicts(restored.pg, f"SELECT * FROM {table}"), times)
        assert got == want, f"{table}: PostgreSQL's rows differ from DuckDB's"
    quarantine = "SELECT table_name, row_number, column_name, reason FROM core.quarantine"
    assert pg.rows(_pg_dicts(restored.pg, quarantine)) == duck.rows(
        rq.dicts(restored.duck, quarantine)
    )
    ledger = (
        "SELECT action, table_name, strategy, columns, keys, key_count, reason FROM audit.ledger"
    )
    assert pg.rows(_pg_dicts(restored.pg, ledger)) == duck.rows(rq.dicts(restored.duck, ledger))


def test_the_ledger_records_the_restore_and_verifies(restored: Restored) -> None:
    assert verify(restored.pg.con).ok
    (action, reason, run_id) = restored.pg.con.execute(
        "SELECT action, reason, run_id FROM audit.ledger ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    assert action == "restore" and run_id.startswith("restore-")
    assert restored.ids["pg"]["backup"] in reason
    checked = cli(restored, "audit", "verify")
    assert checked.returncode == 0 and "chain intact" in checked.stdout, checked.stderr


def _state(r: Restored) -> dict[str, list[str]]:
    tables = [*(f"core.{t}" for t in TAGGED_TABLES), "audit.ledger", "vault.tokens"]
    return {t: sorted(map(repr, r.pg.con.execute(f"SELECT * FROM {t}"))) for t in tables}


def test_a_bad_backup_id_is_one_line_and_changes_nothing(
    restored: Restored, policy: Policy
) -> None:
    before = _state(restored)
    refused = cli(restored, "restore", "yesterday")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "'yesterday' is not a backup id" in refused.stderr
    with pytest.raises(BackupError, match="20200101T000000Z: no such backup"):
        postgres_backup.restore(restored.pg, restored.pg_home, "20200101T000000Z", policy)
    assert _state(restored) == before


def test_a_killed_restore_leaves_the_database_as_it_was_and_a_rerun_works(
    restored: Restored,
) -> None:
    """Killed while it prepares the restored tables: the database is as before, the scratch
    copy is removed by the next writer, and the restore run again completes."""
    before = _state(restored)
    backups = restored.pg_home.backups
    env = lethe_env(restored.pg_home.root, LETHE_WAREHOUSE=restored.dsn)
    proc = subprocess.Popen(
        [str(LETHE_BIN), "restore", restored.ids["pg"]["backup"]],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(backups.glob(".restore-*.partial")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the restore ended before it could be killed"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    (leftover,) = backups.glob(".restore-*.partial")
    assert leftover.stat().st_mode & 0o077 == 0  # the copies of the tables are owner-only
    assert _state(restored) == before
    again = cli(restored, "restore", restored.ids["pg"]["backup"])
    assert again.returncode == 0, again.stderr
    assert restored.ids["pg"]["backup"] in _backups(backups)
    assert verify(restored.pg.con).ok
    (action,) = restored.pg.con.execute(
        "SELECT action FROM audit.ledger ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    assert action == "restore"


def test_a_subject_erased_before_the_restore_and_delivered_again_is_erased_again(
    restored: Restored, policy: Policy
) -> None:
    """The restore leaves the erasure register naming the subject by its key, which is how
    the database's runs match a row delivered again."""
    rq.redeliver(restored.pg_home, contacts=[rq.ERIN])
    again = postgres_run.run(restored.dsn, restored.pg_home, policy, T)
    assert again.ingested["contacts"].rows_loaded == 1
    text = "\n".join(map(repr, restored.pg.con.execute("SELECT * FROM core.contacts")))
    assert {w for w, v in rq.values_of(rq.ERIN).items() if v in text} == set()
