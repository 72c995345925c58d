"""Retention of Lethe's own data on a PostgreSQL warehouse: a run purges the access log, the
export log and the quarantine as on DuckDB (`purge_logs`, the same rows left, the same
ledger entries), the purged rows leave the database's files, and a run writes the day's
backup and deletes those past retention, as the DuckDB pipeline's backup asset does (and
the compliance documents, as its compliance assets do)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import retention_cases as rc

from lethe.declaration.policy import Policy
from lethe.engine import postgres_run
from lethe.engine.ddl import ensure_schemas, ensure_vault
from lethe.engine.postgres_warehouse import create, open_engine, verify
from lethe.engine.warehouse import connect
from lethe.operations import postgres_backup, postgres_logs
from lethe.operations.activity_logs import purge_logs
from lethe.operations.backup import list_backups
from lethe.operations.home import Home
from tests.postgres import PostgresServer

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
OLD_VALUE = "stara.adresa@example.cz"  # in a quarantined row past retention
NEW_VALUE = "nova.adresa@example.cz"  # in a quarantined row within retention
LOGS = ("audit.access_log", "audit.export_log", "audit.log_purges", "core.quarantine")


def _naive(t: dt.datetime) -> dt.datetime:
    return t.replace(tzinfo=None)


def _quarantined(value: str, at: dt.datetime) -> tuple:
    record = json.dumps({"email": value})
    return ("contacts", "contacts.csv", 7, "email", "not an e-mail address", record, _naive(at))


# Rows of each log, inserted alike into both engines: some past retention, some not.
ROWS: dict[str, list[tuple]] = {
    "audit.access_log": [
        (_naive(NOW - 31 * DAY), "dpo", "read", "C1", None),
        (_naive(NOW - DAY), "dpo", "read", "C2", None),
    ],
    "audit.export_log": [
        (
            _naive(NOW - (200 if i < 600 else 5) * DAY),
            f"x{i}",
            "access",
            f"C{i}",
            None,
            "x.zip",
            None,
        )
        for i in range(1100)
    ],
    "core.quarantine": [
        _quarantined(OLD_VALUE, NOW - 400 * DAY),
        _quarantined(NEW_VALUE, NOW - 10 * DAY),
    ],
}


def _fill(execute, placeholder: str) -> None:
    for table, rows in ROWS.items():
        marks = ", ".join([placeholder] * len(rows[0]))
        for row in rows:
            execute(f"INSERT INTO {table} VALUES ({marks})", row)


def _rows(fetch, table: str) -> list[str]:
    def text(v: object) -> str:  # PostgreSQL gives a JSON column parsed, DuckDB as its text
        return json.dumps(v) if isinstance(v, dict) else str(v)

    return sorted(repr(tuple(map(text, row))) for row in fetch(f"SELECT * FROM {table}"))


def _ledger(fetch) -> list[tuple]:
    def details(d: object) -> object:  # parsed by PostgreSQL, text from DuckDB
        return d if isinstance(d, dict) else json.loads(str(d))

    rows = fetch("SELECT action, table_name, columns, reason, details FROM audit.ledger")
    return sorted(((a, t, tuple(c or ()), r, details(d)) for a, t, c, r, d in rows), key=repr)


def test_a_purge_on_postgres_leaves_what_duckdb_leaves(
    postgres: PostgresServer, policy: Policy, tmp_path: Path
) -> None:
    duck = connect(tmp_path / "warehouse.duckdb")
    duck.execute("ATTACH ':memory:' AS vault")
    ensure_vault(duck)
    duck.execute("INSERT INTO vault.key_secret VALUES (?, now())", [b"s" * 32])
    ensure_schemas(duck, policy.data_schema)
    _fill(duck.execute, "?")
    on_duck = purge_logs(duck, policy, NOW, run_id="r", as_of=NOW.date())

    engine = open_engine(postgres.new_database())
    try:
        create(engine, policy.data_schema)
        with engine.transaction():
            _fill(engine.con.execute, "%s")
        on_pg = postgres_logs.purge(engine, policy, NOW, "r", NOW.date())
        assert on_pg == on_duck
        assert (on_pg.access_log, on_pg.export_log, on_pg.quarantine) == (1, 600, 1)
        pg_fetch = lambda sql: engine.con.execute(sql).fetchall()  # noqa: E731
        for table in LOGS:
            assert _rows(pg_fetch, table) == _rows(lambda sql: duck.execute(sql).fetchall(), table)
        purges = _ledger(pg_fetch)
        assert [e[0] for e in purges] == ["purge"]
        assert purges == _ledger(lambda sql: duck.execute(sql).fetchall())
        assert verify(engine.con).ok
        # The purged row left the table files (VACUUM FULL); the kept one is still there.
        files, _ = postgres.table_files(engine.con)
        found = rc.scan_files(files, {"old": OLD_VALUE, "new": NEW_VALUE})
        assert found.keys() == {"new"}, found
    finally:
        engine.close()
        duck.close()


def test_a_run_on_postgres_writes_the_backup_and_deletes_those_past_retention(
    postgres: PostgresServer, policy: Policy, tmp_path: Path
) -> None:
    home = Home(tmp_path / "home").ensure()
    dsn = postgres.new_database()
    engine = open_engine(dsn)
    try:
        old = postgres_backup.backup(engine, home, policy, now=dt.datetime.now(dt.UTC) - 81 * DAY)
        kept = postgres_backup.backup(engine, home, policy, now=dt.datetime.now(dt.UTC) - 79 * DAY)
    finally:
        engine.close()
    result = postgres_run.run(dsn, home, policy, dt.date.today())
    assert result.backup is not None and result.expired_backups == [old.id]
    assert sorted(b.id for b in list_backups(home)) == sorted([kept.id, result.backup.id])
    manifest = json.loads((result.backup.path / "manifest.json").read_text())
    assert manifest["ledger_seq"] >= 0
    # The compliance documents, as the DuckDB pipeline's assets write them.
    assert result.consent_health is not None and result.consent_health.path.is_file()
    assert sorted(result.record) == ["html", "json", "md"]
    assert all(path.is_file() for path in result.record.values())
