"""The analysts' datasets on a PostgreSQL warehouse (lethe.compliance.postgres_analytics), on
a real server: the same shop run on a DuckDB warehouse and on a PostgreSQL one releases the
same analytics tables, register rows and Parquet extracts, and suppresses, generalizes and
checks k-anonymity the same way."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow.parquet as pq
import pytest
from conftest import ingest_all, lethe_cli, write_landing, write_landing_set

from lethe.compliance import postgres_analytics
from lethe.compliance.analytics import (
    KCheck,
    Release,
    check_k_anonymity,
    datasets,
    exports_dir,
    k_of,
    release,
)
from lethe.declaration.policy import Policy
from lethe.engine.enforcement import enforce
from lethe.engine.engines import PostgresEngine
from lethe.engine.postgres_run import run as run_postgres
from lethe.engine.postgres_warehouse import open_engine
from lethe.engine.tagging import tag_all
from lethe.engine.warehouse import connect
from lethe.eshop.generate import generate
from lethe.operations.home import Home
from tests.postgres import PostgresServer

AS_OF = dt.date(2026, 3, 1)
REGISTER = (
    "SELECT dataset, k, rows, records, generalized, suppressed, suppressed_cells,"
    " excluded_restricted, excluded_held, excluded_pseudonymized, excluded_other"
    " FROM analytics.releases"
)


def _normal(value: Any) -> Any:
    if isinstance(value, float | decimal.Decimal):
        return round(float(value), 9)
    return value


def _sorted(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted((tuple(_normal(v) for v in r) for r in rows), key=repr)


def _on_duckdb(
    home: Home, policy: Policy
) -> tuple[duckdb.DuckDBPyConnection, dict[str, tuple[Release, KCheck]]]:
    """Ingest, tag, enforce and release every dataset on a DuckDB warehouse, as the
    pipeline's assets do; the open warehouse and what each release did."""
    con = connect(home.warehouse)
    ingest_all(con, home.landing, policy)
    tag_all(con, policy, AS_OF)
    con.close()
    enforce(home, policy, AS_OF, "duck")
    con = connect(home.warehouse)
    out = {}
    for name, dataset in datasets(policy).items():
        result = release(con, home, policy, dataset, as_of=AS_OF)
        out[name] = (result, check_k_anonymity(con, dataset, k_of(policy, dataset)))
    return con, out


def _both(
    root: Path, postgres: PostgresServer, policy: Policy, deliver: Callable[[Path], object]
) -> tuple[Home, duckdb.DuckDBPyConnection, dict, Home, PostgresEngine, dict]:
    """The same landing files run on DuckDB (`root/duck`) and PostgreSQL (`root/pg`)."""
    duck_home, pg_home = Home(root / "duck").ensure(), Home(root / "pg").ensure()
    for home in (duck_home, pg_home):
        deliver(home.landing)
    con, duck = _on_duckdb(duck_home, policy)
    dsn = postgres.new_database()
    pg = run_postgres(dsn, pg_home, policy, AS_OF).releases
    return duck_home, con, duck, pg_home, open_engine(dsn), pg


def _assert_same_releases(
    duck_home: Home,
    con: duckdb.DuckDBPyConnection,
    duck: dict[str, tuple[Release, KCheck]],
    pg_home: Home,
    engine: PostgresEngine,
    pg: dict[str, tuple[Release, KCheck]],
) -> None:
    assert pg.keys() == duck.keys()
    for name, (want, want_check) in duck.items():
        got, got_check = pg[name]
        assert got_check == want_check, name
        assert (got.rows, got.records, got.generalized, got.suppressed) == (
            want.rows,
            want.records,
            want.generalized,
            want.suppressed,
        ), name
        assert (got.suppressed_cells, got.excluded, got.min_subjects, got.k) == (
            want.suppressed_cells,
            want.excluded,
            want.min_subjects,
            want.k,
        ), name
        table = f"SELECT * FROM analytics.{name}"
        assert _sorted(engine.con.execute(table).fetchall()) == _sorted(
            con.execute(table).fetchall()
        ), f"analytics.{name}: PostgreSQL's rows differ from DuckDB's"
        assert got.path == exports_dir(pg_home) / f"{name}.parquet"
        duck_extract, pg_extract = pq.read_table(want.path), pq.read_table(got.path)
        assert pg_extract.schema.equals(duck_extract.schema, check_metadata=True), name
        assert _sorted([tuple(r.values()) for r in pg_extract.to_pylist()]) == _sorted(
            [tuple(r.values()) for r in duck_extract.to_pylist()]
        ), f"{name}.parquet: PostgreSQL's extract differs from DuckDB's"
    assert _sorted(engine.con.execute(REGISTER).fetchall()) == _sorted(
        con.execute(REGISTER).fetchall()
    )


def test_generated_shop_releases_the_same_datasets_on_postgres(
    postgres: PostgresServer, policy: Policy, tmp_path: Path
) -> None:
    """A generated shop (anonymized, pseudonymized and held rows among them): every
    declared dataset the same on both engines, tables, register and extracts."""

    def deliver(landing: Path) -> None:
        generate(landing, 150, seed=5, reference=AS_OF)
        write_landing(landing, "holds", [{"contact_id": "C00000007"}])

    duck_home, con, duck, pg_home, engine, pg = _both(tmp_path, postgres, policy, deliver)
    try:
        _assert_same_releases(duck_home, con, duck, pg_home, engine, pg)
        assert all(check.passed for _, check in pg.values())
        assert any(r.rows for r, _ in pg.values()), "nothing released: the test proves nothing"
        excluded = {k for r, _ in pg.values() for k, n in r.excluded.items() if n}
        assert {"held", "pseudonymized"} <= excluded, excluded
        assert not pg_home.vault.exists()
    finally:
        engine.close()
        con.close()


def _orders(landing: Path) -> None:
    """Five buyers in Prague (one cell of k = 5) and one alone in Brno, and a held buyer."""
    specs = [{}] * 5 + [{"postal": "60200", "amount": "99.00"}, {}]
    contacts, orders = [], []
    for i, spec in enumerate(specs, start=1):
        contacts.append({"contact_id": f"C{i}", "last_active_at": "2025-06-01T00:00:00"})
        orders.append(
            {
                "order_id": f"O{i}",
                "contact_id": f"C{i}",
                "ordered_at": "2026-01-10T10:00:00",
                "completed_at": None,
                "total_amount": spec.get("amount", "700.00"),
                "billing_postal_code": spec.get("postal", "11000"),
            }
        )
    write_landing_set(landing, contacts=contacts, orders=orders, holds=[{"contact_id": "C7"}])


def test_a_small_cell_is_suppressed_and_a_violation_found_as_on_duckdb(
    postgres: PostgresServer, policy: Policy, tmp_path: Path
) -> None:
    duck_home, con, duck, pg_home, engine, pg = _both(tmp_path, postgres, policy, _orders)
    try:
        _assert_same_releases(duck_home, con, duck, pg_home, engine, pg)
        orders, check = pg["orders_by_month"]
        rows = engine.con.execute("SELECT * FROM analytics.orders_by_month").fetchall()
        assert rows == [("2026-01", "CZ-1", "CZK 500-1000", "CZK", 5, 5, decimal.Decimal(3500))]
        assert (orders.records, orders.suppressed, orders.suppressed_cells) == (6, 1, 1)
        assert orders.excluded["held"] == 1 and check.passed
        # A row under k, a repeated combination and an identifier column, on both engines.
        dataset = datasets(policy)["orders_by_month"]
        for sql in (
            "INSERT INTO analytics.orders_by_month VALUES ('2026-02', 'CZ-1', 'x', 'CZK', 2, 2, 1)",
            "INSERT INTO analytics.orders_by_month SELECT * FROM analytics.orders_by_month",
            "ALTER TABLE analytics.orders_by_month ADD COLUMN contact_id VARCHAR",
        ):
            con.execute(sql)
            engine.con.execute(sql)
            want = check_k_anonymity(con, dataset, 5)
            assert postgres_analytics.check_k_anonymity(engine, dataset, 5) == want
            assert not want.passed
        assert (want.violations, want.duplicates, want.unexpected_columns) == (
            2,
            2,
            ("contact_id",),
        )
        # A k above the six buyers in scope suppresses every cell, on both.
        strict = policy.model_copy(update={"k_anonymity": 7})
        got = postgres_analytics.release(engine, pg_home, strict, dataset, AS_OF)
        want_release = release(con, duck_home, strict, dataset, AS_OF)
        assert (got.k, got.rows, got.suppressed) == (want_release.k, 0, 6) == (7, 0, 6)
        assert pq.read_table(got.path).num_rows == 0
    finally:
        engine.close()
        con.close()


def test_lethe_run_on_postgres_releases_the_datasets(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    home = Home(tmp_path / "home").ensure()
    _orders(home.landing)
    dsn = postgres.new_database()
    done = lethe_cli("run", "--as-of", str(AS_OF), home=home.root, LETHE_WAREHOUSE=dsn)
    assert done.returncode == 0, done.stderr
    lines = "analytics orders_by_month: 1 rows (k = 5);\n    1 of 6 records suppressed in 1 cells"
    assert lines in done.stdout
    assert "not run on PostgreSQL yet: analytics" not in done.stdout
    extract = pq.read_table(exports_dir(home) / "orders_by_month.parquet")
    assert extract.num_rows == 1 and extract.schema.metadata[b"lethe.as_of"] == b"2026-03-01"
    assert not home.warehouse.exists()


def test_the_release_is_one_transaction(
    postgres: PostgresServer, policy: Policy, tmp_path: Path
) -> None:
    """A release that fails midway (the register refuses its row) leaves the previous
    release, its register row and its extract as they were."""
    name = "orders_by_month"
    home = Home(tmp_path / "home").ensure()
    _orders(home.landing)
    dsn = postgres.new_database()
    run_postgres(dsn, home, policy, AS_OF)
    engine = open_engine(dsn)
    try:
        before = engine.con.execute(f"SELECT * FROM analytics.{name}").fetchall()
        register = engine.con.execute(REGISTER).fetchall()
        extract = (exports_dir(home) / f"{name}.parquet").read_bytes()
        engine.con.execute("ALTER TABLE analytics.releases ADD CHECK (k < 6)")
        strict = policy.model_copy(update={"k_anonymity": 6})
        with pytest.raises(psycopg.errors.CheckViolation):
            postgres_analytics.release(engine, home, strict, datasets(policy)[name], AS_OF)
        assert engine.con.execute(f"SELECT * FROM analytics.{name}").fetchall() == before
        assert engine.con.execute(REGISTER).fetchall() == register
        assert (exports_dir(home) / f"{name}.parquet").read_bytes() == extract
        leftover = engine.con.execute(
            "SELECT count(*) FROM pg_class WHERE relname LIKE '\\_an\\_%' AND relpersistence = 't'"
        ).fetchone()
        assert leftover == (0,)
    finally:
        engine.close()
