"""Every kind of generated plan runs on PostgreSQL and gives DuckDB's rows (SPEC "Engines and
scale"): run on a real server (tests/postgres.py), never only parsed.

A small generated shop is ingested, tagged and enforced once on DuckDB (so rows are
anonymized, pseudonymized, restricted and held), then its tables are copied to a fresh
PostgreSQL database (the core tables created from `lethe.engine.ddl` rendered for it). Each
plan then runs on both engines as of a later date and the rows are compared after sorting.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlglot
from conftest import DEFAULT_POLICY, ingest_all, write_landing

from lethe.compliance.analytics import datasets, release_plan
from lethe.compliance.consent_health import consent_health_plan
from lethe.declaration.policy import load_policy
from lethe.declaration.strategies import quote
from lethe.engine.ddl import core_table_ddl
from lethe.engine.enforcement import enforce
from lethe.engine.engines import DuckDBEngine, PostgresEngine
from lethe.engine.plan import Plan
from lethe.engine.rendering import DUCKDB, POSTGRES, render
from lethe.engine.retention import TOKENS, enforcement_plan, wanted_tokens_select
from lethe.engine.tagging import tag_all, tagged_tables
from lethe.engine.vault import attach
from lethe.engine.warehouse import TAG_COLUMNS, connect, table_columns
from lethe.eshop.generate import generate
from lethe.operations.home import Home
from lethe.operations.lock import LockedError
from tests.postgres import PostgresServer, copy_from_duckdb

POLICY = load_policy(DEFAULT_POLICY)
FIRST = dt.date(2025, 6, 1)  # the first enforcement, on DuckDB
AS_OF = dt.date(2026, 3, 1)  # the plans compared
# Random surrogates (`anon-` and 32 hex digits) differ between any two runs.
SURROGATE = re.compile(r"^anon-[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def engines(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DuckDBEngine, PostgresEngine]]:
    """(DuckDB, PostgreSQL) holding the same enforced warehouse and vault tokens."""
    home = Home(tmp_path_factory.mktemp("plans") / "home")
    home.root.mkdir()
    generate(home.landing, 120, seed=3, reference=FIRST)
    write_landing(home.landing, "holds", [{"contact_id": "C00000007"}])
    con = connect(home.warehouse)
    ingest_all(con, home.landing, POLICY)
    tag_all(con, POLICY, FIRST)
    con.execute("INSERT INTO requests.erasures VALUES ('R1', 'C00000002', now())")
    con.close()
    enforce(home, POLICY, FIRST, "first")
    duck = DuckDBEngine(home.warehouse)
    # Open erasure requests as of AS_OF: one for a subject already restricted, two new.
    duck.con.execute(
        "INSERT INTO requests.erasures VALUES ('R1', 'C00000002', now()),"
        " ('R2', 'C00000003', now()), ('R3', 'C00000007', now())"
    )
    attach(duck.con, home.vault)
    pg = PostgresEngine(postgres.new_database())
    for schema in ("core", "requests", "vault"):
        pg.con.execute(f"CREATE SCHEMA {schema}")
    for table in POLICY.data_schema.tables.values():
        copy_from_duckdb(duck.con, pg.con, "core", table.name, core_table_ddl(table))
    for schema, table in (("requests", "erasures"), ("vault", "tokens")):
        copy_from_duckdb(duck.con, pg.con, schema, table)
    try:
        yield duck, pg
    finally:
        pg.close()
        duck.close()


def _normal(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_normal(v) for v in value)
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, decimal.Decimal):
        return round(float(value), 9)
    if isinstance(value, str) and SURROGATE.match(value):
        return "anon-…"
    return value


def _sorted(rows: list[tuple[Any, ...]] | None) -> list[tuple[Any, ...]]:
    assert rows is not None, "the statement returned no rows"
    return sorted((tuple(_normal(v) for v in row) for row in rows), key=repr)


def _same_rows(engines: tuple[DuckDBEngine, PostgresEngine], plan: Plan) -> list[Any]:
    """Run `plan` on both engines; the last statement's rows, equal on both after sorting."""
    duck, pg = engines
    want = _sorted(duck.run(plan)[-1])
    got = _sorted(pg.run(plan)[-1])
    assert got == want, f"{plan.name}: PostgreSQL's rows differ from DuckDB's"
    return want


def _columns_of(duck: DuckDBEngine, relation: str, leave_out: tuple[str, ...] = ()) -> str:
    names = [d[0] for d in duck.con.execute(f"SELECT * FROM {relation} LIMIT 0").description]
    return ", ".join(quote(n) for n in names if n not in leave_out)


def test_enforcement_plans_give_the_same_rows_on_postgres(engines) -> None:
    duck, pg = engines
    plans = {
        t: enforcement_plan(POLICY, t, table_columns(duck.con, "core", t), AS_OF)
        for t in tagged_tables(POLICY)
    }
    for t, plan in plans.items():
        for engine in engines:
            engine.run(Plan(f"stage {t}", plan.statements[:1]))
        # The staged actions, without the row ids (DuckDB's rowid, PostgreSQL's ctid).
        columns = _columns_of(duck, f"_act_{t}", leave_out=("_rid",))
        assert _same_rows(engines, Plan(f"staged {t}", (f"SELECT {columns} FROM _act_{t}",)))
    wanted = _same_rows(engines, Plan("wanted tokens", (wanted_tokens_select(POLICY),)))
    assert wanted, "nothing to pseudonymize: the data does not exercise the vault tokens"
    pairs = sorted({(kind, value) for _, kind, value in wanted})
    tokens = [(kind, value, f"tok-{i}") for i, (kind, value) in enumerate(pairs)]
    columns = "kind VARCHAR, value VARCHAR, token VARCHAR"
    for engine in engines:
        engine.run(Plan("tokens", (f"CREATE OR REPLACE TEMP TABLE {TOKENS} ({columns})",)))
    duck.con.executemany(f"INSERT INTO {TOKENS} VALUES (?, ?, ?)", tokens)
    with pg.con.cursor() as cur:
        cur.executemany(f"INSERT INTO {TOKENS} VALUES (%s, %s, %s)", tokens)
    actions: set[str] = set()
    for t, plan in plans.items():
        ledger = _same_rows(engines, Plan(f"ledger {t}", plan.statements[1:2]))
        actions |= {row[0] for row in ledger}
        assert _same_rows(engines, Plan(f"enforce {t}", plan.statements[2:]))
    assert actions >= {"anonymize", "pseudonymize", "retain"}, actions


def test_consent_health_plan_gives_the_same_rows_on_postgres(engines) -> None:
    assert _same_rows(engines, consent_health_plan(POLICY, AS_OF))


@pytest.mark.parametrize("name", list(datasets(POLICY)))
def test_release_plans_give_the_same_rows_on_postgres(engines, name: str) -> None:
    duck, pg = engines
    plan = release_plan(POLICY, datasets(POLICY)[name])
    for engine in engines:
        engine.run(plan)
    assert _same_rows(engines, Plan("released", ("SELECT * FROM _an_released",)))
    records = _columns_of(duck, "_an_all", leave_out=("_row",))
    _same_rows(engines, Plan("records", (f"SELECT {records} FROM _an_all",)))
    suppressed = _columns_of(duck, "_an_suppressed", leave_out=("_row",))
    _same_rows(engines, Plan("suppressed", (f"SELECT {suppressed} FROM _an_suppressed",)))


def test_a_function_postgres_lacks_fails_there(engines) -> None:
    duck, pg = engines
    plan = Plan("duckdb only", ("SELECT hamming('lethe', 'lotte')",))
    assert duck.run(plan) == [[(2,)]]
    with pytest.raises(psycopg.errors.UndefinedFunction):
        pg.run(plan)


def test_duckdb_gets_the_plan_text_unchanged_and_postgres_its_rewrites() -> None:
    columns = [*POLICY.data_schema.tables["contacts"].column_names, *TAG_COLUMNS]
    plan = enforcement_plan(POLICY, "contacts", columns, AS_OF)
    assert render(plan.statements, DUCKDB) == list(plan.statements)
    rendered = render(plan.statements, POSTGRES)
    assert rendered[0].startswith("DROP TABLE IF EXISTS _act_contacts")
    for sql in rendered:
        tree = sqlglot.parse_one(sql, read="postgres")
        assert not any(c.name.lower() == "rowid" for c in tree.find_all(sqlglot.exp.Column))
        assert "GROUP BY ALL" not in sql and "CONTAINS(" not in sql and "OR REPLACE" not in sql


def test_postgres_purge_leaves_no_erased_value_in_the_table_files(
    postgres: PostgresServer,
) -> None:
    pg = PostgresEngine(postgres.new_database())
    secret = "purge-me-7f3a9c"
    try:
        pg.con.execute("CREATE TABLE public.people (id int, email text)")
        pg.con.execute("INSERT INTO public.people VALUES (1, %s), (2, 'kept')", [secret])
        pg.con.execute("UPDATE public.people SET email = NULL WHERE id = 1")
        files, _ = postgres.table_files(pg.con)
        assert _holding(files, secret), "the dead row's value should still be on disk"
        pg.purge([("public", "people")])
        pg.con.execute("CHECKPOINT")
        assert not _holding(files, secret)
        assert pg.con.execute("SELECT count(*) FROM public.people").fetchone() == (2,)
    finally:
        pg.close()


def _holding(folder: Path, value: str) -> list[str]:
    return [p.name for p in folder.iterdir() if p.is_file() and value.encode() in p.read_bytes()]


def test_postgres_lock_refuses_a_second_writer(postgres: PostgresServer) -> None:
    dsn = postgres.new_database()
    first, second = PostgresEngine(dsn), PostgresEngine(dsn)
    try:
        with first.lock(), pytest.raises(LockedError), second.lock():
            pass
        with second.lock():
            pass
    finally:
        first.close()
        second.close()


def test_check_refuses_a_broken_statement() -> None:
    with pytest.raises(sqlglot.errors.ParseError):
        Plan("broken", ("SELECT CASE WHEN FROM core.contacts",)).check()
