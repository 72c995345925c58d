"""The warehouse in a PostgreSQL database (lethe.engine.postgres_warehouse), on a real server.

The retention cases (tests/retention_cases.py) are ingested and enforced as of T on a DuckDB
warehouse and on a PostgreSQL one: the same rows, the same ledger, a chain that verifies,
and no erased value left in the database's table files.
"""

from __future__ import annotations

import decimal
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import retention_cases as rc
from conftest import TAGGED_TABLES, lethe_cli, write_landing, write_landing_set
from conftest import ingest_all as ingest_all_duckdb

from lethe.declaration.policy import Policy
from lethe.engine.enforcement import EnforcementResult, enforce
from lethe.engine.engines import PostgresEngine
from lethe.engine.ingest import IngestError
from lethe.engine.keyhash import key_hash
from lethe.engine.postgres_warehouse import (
    NOT_BUILT,
    WarehouseError,
    ingest_all,
    key_secret,
    open_engine,
    verify,
)
from lethe.engine.postgres_warehouse import enforce as enforce_postgres
from lethe.engine.postgres_warehouse import (
    ingest_table as pg_ingest_table,
)
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from tests.postgres import PostgresServer

T = rc.T
LEDGER = "SELECT action, table_name, strategy, columns, keys, key_count, details FROM audit.ledger"


@dataclass
class Warehouses:
    """The cases enforced as of T on DuckDB (`home`) and on PostgreSQL (`pg`), and what each
    enforcement did."""

    home: Home
    duck: EnforcementResult
    pg: PostgresEngine
    pg_result: EnforcementResult


@pytest.fixture(scope="module")
def warehouses(
    postgres: PostgresServer, policy: Policy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Warehouses]:
    """The retention cases ingested and enforced as of T on DuckDB and on PostgreSQL."""
    root = tmp_path_factory.mktemp("pgwh")
    home = rc.prepare(root / "duck", policy)
    duck = enforce(home, policy, T, "run-T")
    landing = root / "pg" / "landing"
    landing.mkdir(parents=True)
    rc.write_cases(landing)
    dsn = postgres.new_database()
    pg = open_engine(dsn)
    try:
        results = ingest_all(pg, landing, policy)
        assert all(r.rows_loaded for r in results.values()), results
        assert not list(landing.iterdir()), "loaded landing files are removed"
        yield Warehouses(home, duck, pg, enforce_postgres(pg, policy, T, "run-T"))
    finally:
        pg.close()


def _pg_rows(pg: PostgresEngine, table: str) -> list[dict[str, Any]]:
    cur = pg.con.execute(f"SELECT * FROM core.{table}")
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _comparable(rows: list[dict[str, Any]], tokens: dict[str, tuple[str, str]]) -> list:
    """Rows without their ingest time, tokens as the (kind, value) they stand for and
    surrogates as a placeholder, sorted: two warehouses built alike compare equal."""

    def plain(value: Any) -> Any:
        if isinstance(value, str) and rc.TOKEN.fullmatch(value):
            return ("token", *tokens.get(value, ("?", "?")))
        if isinstance(value, str) and rc.SURROGATE.fullmatch(value):
            return "<surrogate>"
        if isinstance(value, decimal.Decimal):
            return str(value)
        if isinstance(value, list):
            return tuple(value)
        return value

    out = [tuple(sorted((k, plain(v)) for k, v in r.items() if k != "_ingested_at")) for r in rows]
    return sorted(out, key=repr)


def test_postgres_warehouse_holds_the_rows_duckdb_holds(warehouses) -> None:
    both = warehouses
    duck_tokens = rc.vault_values(both.home)
    pg_tokens = {
        t: (k, v) for t, k, v in both.pg.con.execute("SELECT token, kind, value FROM vault.tokens")
    }
    assert pg_tokens, "nothing pseudonymized: the cases do not exercise the vault"
    assert sorted(pg_tokens.values()) == sorted(duck_tokens.values())
    con = rc.read_only(both.home)
    try:
        for table in TAGGED_TABLES:
            want = _comparable(rc.rows(con, table), duck_tokens)
            got = _comparable(_pg_rows(both.pg, table), pg_tokens)
            assert got == want, f"core.{table}: PostgreSQL's rows differ from DuckDB's"
    finally:
        con.close()


def _ledger(rows: list[tuple], names: dict[str, str]) -> list[tuple]:
    """Ledger entries with their keys named (each warehouse hashes with its own secret)."""
    return sorted(
        (
            action,
            table,
            strategy,
            tuple(columns),
            tuple(sorted(names[k] for k in keys)),
            count,
            tuple(sorted((json.loads(details) if isinstance(details, str) else details).items())),
        )
        for action, table, strategy, columns, keys, count, details in rows
    )


def test_the_postgres_vault_keeps_one_token_per_value_by_a_unique_index(warehouses) -> None:
    # PostgreSQL can have concurrent writers; DuckDB's vault has one and no index.
    indexes = warehouses.pg.con.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = 'vault' AND tablename = 'tokens'"
    ).fetchall()
    assert [d for (d,) in indexes if "UNIQUE" in d and "(kind, value)" in d], indexes


def test_postgres_ledger_records_what_duckdbs_records_and_verifies(warehouses) -> None:
    both = warehouses
    pg_result = both.pg_result
    assert pg_result.counts == both.duck.counts
    assert pg_result.ledger_entries == both.duck.ledger_entries > 0
    con = rc.read_only(both.home)
    try:
        want = _ledger(con.execute(LEDGER).fetchall(), rc.key_names(both.home))
    finally:
        con.close()
    secret = key_secret(both.pg.con)
    keys = [r[rc.TABLES[t].key] for t, rows in _cases().items() for r in rows]
    pg_names = {key_hash(secret, k): k for k in keys}
    assert _ledger(both.pg.con.execute(LEDGER).fetchall(), pg_names) == want
    assert verify(both.pg.con).ok
    # An edited entry is found, by the same rules as on DuckDB.
    with both.pg.transaction():
        both.pg.con.execute("UPDATE audit.ledger SET reason = 'edited' WHERE seq = 2")
        result = verify(both.pg.con)
        both.pg.con.execute("ROLLBACK")
    assert not result.ok and result.seq == 2 and "edited" in (result.problem or "")


def _cases() -> dict[str, list[dict[str, Any]]]:
    return {
        "contacts": rc.CONTACTS,
        "consents": rc.CONSENTS,
        "orders": rc.ORDERS,
        "shipments": rc.SHIPMENTS,
    }


def test_enforcing_the_same_date_again_changes_nothing(warehouses, policy: Policy) -> None:
    both = warehouses
    before = {t: _comparable(_pg_rows(both.pg, t), {}) for t in TAGGED_TABLES}
    (entries,) = both.pg.con.execute("SELECT count(*) FROM audit.ledger").fetchone()
    again = enforce_postgres(both.pg, policy, T, "run-T-again")
    assert again.ledger_entries == 0 and again.forgotten_tokens == 0
    assert {t: _comparable(_pg_rows(both.pg, t), {}) for t in TAGGED_TABLES} == before
    assert both.pg.con.execute("SELECT count(*) FROM audit.ledger").fetchone() == (entries,)


def test_no_erased_value_is_left_in_the_table_files(warehouses, postgres: PostgresServer) -> None:
    """After enforcement (and its `VACUUM FULL`) and a CHECKPOINT, no erased value is in any
    file of the database's folder under `base/` (its tables, indexes, TOAST and the vault).

    PostgreSQL's write-ahead log (`pg_wal/`) still holds the replaced values until its
    segments are recycled by later checkpoints (and a WAL archive or replica keeps its own
    copy): this test makes no claim about it.
    """
    both = warehouses
    erased = rc.erased_values()
    kept = rc.kept_values()
    files, _ = postgres.table_files(both.pg.con)
    assert rc.scan_files(files, kept), "the scan finds no kept value: it would find nothing"
    assert rc.scan_files(files, erased) == {}


def test_column_statistics_keep_no_erased_value(
    postgres: PostgresServer, policy: Policy, tmp_path: Path
) -> None:
    """ANALYZE (as autovacuum runs it) before and after enforcement: `pg_statistic` keeps
    sample values that VACUUM FULL leaves (and that are stored compressed, out of reach of
    the file scan), so the columns holding personal data gather none; Lethe's tag columns
    keep theirs."""
    rc.write_cases(tmp_path)
    pg = open_engine(postgres.new_database())
    try:
        ingest_all(pg, tmp_path, policy)
        pg.con.execute("ANALYZE")
        enforce_postgres(pg, policy, T, "run-T")
        stats = " ".join(
            str(row)
            for row in pg.con.execute(
                "SELECT tablename, attname, most_common_vals::text, histogram_bounds::text"
                " FROM pg_stats WHERE schemaname IN ('core', 'requests', 'vault')"
            ).fetchall()
        )
    finally:
        pg.close()
    assert "'_state'" in stats and "active" in stats, "no statistics at all: proves nothing"
    assert not [d for d, value in rc.erased_values().items() if value in stats]
    assert not [d for d, value in rc.kept_values().items() if value in stats]


def test_a_wrong_dsn_is_one_line_naming_the_warehouse_without_its_password(
    postgres: PostgresServer,
) -> None:
    password = "pw-never-shown-93b1"
    closed = f"postgresql://lethe:{password}@127.0.0.1:1/shop"
    with pytest.raises(WarehouseError) as down:
        open_engine(closed)
    message = str(down.value)
    assert "\n" not in message and password not in message
    assert "PostgreSQL warehouse postgresql://lethe@127.0.0.1:1/shop" in message
    assert "connection refused" in message
    missing = f"postgresql://lethe_test:{password}@127.0.0.1:{postgres.port}/no_such_db"
    with pytest.raises(WarehouseError) as absent:
        open_engine(missing)
    message = str(absent.value)
    assert "\n" not in message and password not in message
    assert message.endswith("the database does not exist"), message


def test_enforcement_as_of_a_later_date_only_rewrites_what_changes(
    warehouses, policy: Policy
) -> None:
    both = warehouses
    later = enforce_postgres(both.pg, policy, rc.T2, "run-T2")
    assert later.counts.get("orders", {}).get("pseudonymize"), later.counts
    assert verify(both.pg.con).ok


def test_ingest_quarantines_and_retries_as_on_duckdb(
    postgres: PostgresServer, policy: Policy, tmp_path: Path
) -> None:
    """Bad rows go to the quarantine, an order waits for its contact and loads once it
    arrives, a refused file stays in landing/: on PostgreSQL as on DuckDB."""
    duck_home, pg_landing = Home(tmp_path / "duck").ensure(), tmp_path / "pg" / "landing"
    first = {
        "contacts": [rc.contact("c1"), rc.contact("c2", birth_date="not-a-date")],
        "orders": [rc.order("o1", "c1", OLD_ORDER, None), rc.order("o9", "c9", OLD_ORDER, None)],
    }
    second = {"contacts": [rc.contact("c9")]}
    pg = open_engine(postgres.new_database())
    duck = connect(duck_home.warehouse)
    try:
        for delivery in (first, second):
            for landing in (duck_home.landing, pg_landing):
                write_landing_set(landing, **delivery)
            ingest_all_duckdb(duck, duck_home.landing, policy)
            ingest_all(pg, pg_landing, policy)
            for table in ("contacts", "orders"):
                want = duck.execute(f"SELECT {KEYS[table]} FROM core.{table} ORDER BY 1")
                got = pg.con.execute(f"SELECT {KEYS[table]} FROM core.{table} ORDER BY 1")
                assert got.fetchall() == want.fetchall(), table
            want = duck.execute(QUARANTINE).fetchall()
            assert pg.con.execute(QUARANTINE).fetchall() == want
        assert [r[:3] for r in want] == [("contacts", 2, "birth_date")]
        assert not list(pg_landing.iterdir())
        # A re-delivered row replaces the stored one, whose values leave the table files.
        write_landing_set(pg_landing, contacts=[rc.contact("c1", email="new-c1@example.test")])
        ingest_all(pg, pg_landing, policy)
        files, _ = postgres.table_files(pg.con)
        old = {"the replaced e-mail": rc.contact("c1")["email"]}
        assert rc.scan_files(files, {"the new e-mail": "new-c1@example.test"})
        assert rc.scan_files(files, old) == {}
        write_landing(pg_landing, "contacts", [rc.contact("c3")], omit=("email",))
        with pytest.raises(IngestError) as refused:
            pg_ingest_table(pg, pg_landing, "contacts", policy)
        assert str(refused.value).startswith(str(pg_landing / "contacts.csv"))
        assert (pg_landing / "contacts.csv").exists()
    finally:
        duck.close()
        pg.close()


OLD_ORDER = "2025-01-01T00:00:00"
KEYS = {"contacts": "contact_id, _state", "orders": "order_id, contact_id"}
QUARANTINE = (
    "SELECT table_name, row_number, column_name, reason FROM core.quarantine ORDER BY 1, 2, 3"
)


def test_lethe_run_on_a_postgres_warehouse(postgres: PostgresServer, tmp_path: Path) -> None:
    """`LETHE_WAREHOUSE=postgresql://…`: `lethe run` ingests and enforces there, `lethe audit
    verify` checks its ledger, what is not built there is refused in one line before any
    change, and the URL's password is never printed or written under LETHE_HOME."""
    password = "pw-kept-out-5d2e"
    database = postgres.new_database().rsplit("/", 1)[1]
    dsn = f"postgresql://lethe_test:{password}@127.0.0.1:{postgres.port}/{database}"
    home = Home(tmp_path / "home").ensure()
    rc.write_cases(home.landing)
    runs = [lethe_cli("run", "--as-of", str(T), home=home.root, LETHE_WAREHOUSE=dsn)]
    first = runs[0]
    assert first.returncode == 0, first.stderr
    assert "enforce contacts: anonymize 14" in first.stdout
    assert f"not run on PostgreSQL yet: {NOT_BUILT}" in first.stdout
    assert not home.warehouse.exists() and not home.vault.exists()
    runs.append(lethe_cli("audit", "verify", home=home.root, LETHE_WAREHOUSE=dsn))
    assert runs[-1].returncode == 0 and "9 entries, chain intact" in runs[-1].stdout
    for args in (("demo",),):
        refused = lethe_cli(*args, home=home.root, LETHE_WAREHOUSE=dsn)
        runs.append(refused)
        assert refused.returncode == 1
        assert refused.stderr.count("\n") == 1, refused.stderr
        assert f"lethe {args[0]} does not run on a PostgreSQL warehouse yet" in refused.stderr
    assert not home.warehouse.exists()
    assert not any(password in r.stdout + r.stderr for r in runs)
    assert rc.scan_files(home.root, {"password": password}) == {}
