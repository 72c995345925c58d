"""PostgreSQL's column of the benchmark: the enforcement plans on a server, erasure at a source.

- `pg_plans` / `duck_plans`: the same enforcement plans (`enforcement_plan` of every tagged
  table as of the reference date, the `_tokens` relation, the ledger query and the enforced
  tables written as new tables), one transaction, run by `PostgresEngine` on the ingested
  fixture's core tables copied into the server (COPY and ANALYZE, not timed) and by
  `DuckDBEngine` on a copy of the same file.
- `pg_enforce`: the whole enforcement on a PostgreSQL warehouse
  (`lethe.engine.postgres_warehouse.enforce`: staging, vault tokens, ledger, rewrite of the
  changed tables, VACUUM FULL) on the scale's landing files ingested there with
  `ingest_all` (not timed); the report sets it against the DuckDB `enforce` stage.
- `pg_erasure`: 10,000 erasures carried back to a shop database the way the product does
  it (`lethe.sources.propagation`: the change set planned in the warehouse, then one COPY
  and one statement per table and action, one transaction).
- `pg_per_subject`: the same erasures the way request-driven platforms do them: per
  subject, a DELETE or UPDATE per table over one connection, then a commit; a sample,
  extrapolated like the DuckDB per-subject baseline.

The shop database holds the ingested fixture's rows under the e-shop's column names, with
a unique index on every key and an index on every foreign key, as an operational database
has them (unique indexes rather than PRIMARY KEY constraints: the policy erases the key
of an anonymized order, which a primary key's NOT NULL refuses).

The harness starts one throwaway server (tests/postgres.py) with the settings PostgreSQL
ships with (fsync and synchronous commit on) when any of these stages runs, gives the
stage processes its DSN in `SERVER_ENV`, and stops it at the end, also on failure. Copies
that every repetition of a scale starts from are kept on the server as template databases.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import yaml
from psycopg.conninfo import make_conninfo

from bench.stages import (
    POLICY,
    REFERENCE,
    Context,
    Stage,
    StageResult,
    Timed,
    erasure_batch,
    record_requests,
    subjects_from,
)
from lethe.declaration.policy import Policy, load_policy
from lethe.declaration.strategies import quote
from lethe.engine.ddl import core_table_ddl, ensure_schemas
from lethe.engine.engines import DuckDBEngine, PostgresEngine
from lethe.engine.plan import Plan
from lethe.engine.retention import TOKENS, enforcement_plan, wanted_tokens_select
from lethe.engine.tagging import tagged_tables
from lethe.engine.vault import attach
from lethe.engine.warehouse import connect, table_columns
from tests.postgres import ServerMissing, copy_from_duckdb, running_server, server_binaries

SERVER_ENV = "LETHE_BENCH_POSTGRES"  # the server's DSN, for the stage processes
SHOP_DSN_ENV = "LETHE_BENCH_SHOP_DSN"  # the shop database, as the shop's policy declares it
SHOP = "shop"  # the schema of the shop's tables
RESTRICT_COLUMN = "restricted"  # the orders' flag a restriction sets at the source
PG_PER_SUBJECT_SAMPLE = 1000  # subjects erased one by one, then extrapolated


class PostgresStage(Stage):
    """A stage that needs the benchmark's PostgreSQL server."""

    def missing(self) -> str | None:
        if server_binaries() is None:
            return "no PostgreSQL server installed (make bench installs Debian's postgresql)"
        return super().missing()


@contextlib.contextmanager
def server_for(stages: Iterable[Stage]) -> Iterator[None]:
    """A throwaway server while `stages` run, if any of them needs one; its DSN in
    SERVER_ENV for the stage processes. Stopped and removed afterwards, also on failure."""
    if not any(isinstance(s, PostgresStage) for s in stages):
        yield
        return
    with running_server(durable=True) as server:
        os.environ[SERVER_ENV] = server.dsn()
        try:
            yield
        finally:
            os.environ.pop(SERVER_ENV, None)


def _admin() -> psycopg.Connection:
    if SERVER_ENV not in os.environ:
        raise ServerMissing(f"{SERVER_ENV} is not set: run the stage from the harness")
    return psycopg.connect(os.environ[SERVER_ENV], autocommit=True)


def _dsn(database: str) -> str:
    return make_conninfo(os.environ[SERVER_ENV], dbname=database)


def _database(name: str, template: str) -> str:
    """A fresh copy of the `template` database under `name` (a leftover of the previous
    repetition is dropped first); its DSN."""
    with _admin() as con:
        con.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        con.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return _dsn(name)


def _template(name: str, build: Callable[[str], None]) -> str:
    """The template database `name`, built by `build(dsn)` by the first repetition of a
    scale that needs it (under another name until it is complete); its name."""
    with _admin() as con:
        if con.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            return name
        con.execute(f"DROP DATABASE IF EXISTS {name}_building")
        con.execute(f"CREATE DATABASE {name}_building")
    build(_dsn(f"{name}_building"))
    with _admin() as con:
        con.execute(f"ALTER DATABASE {name}_building RENAME TO {name}")
    return name


# --- enforcement plans on PostgreSQL and on DuckDB -------------------------------------


def _plans_warehouse(ctx: Context) -> tuple[Path, duckdb.DuckDBPyConnection]:
    """A copy of the ingested fixture with the requests schema and an empty vault attached:
    what the plans read besides the core tables."""
    path = ctx.work / "plans.duckdb"
    shutil.copyfile(ctx.ingested, path)
    con = connect(path)
    ensure_schemas(con, load_policy(POLICY).data_schema)
    attach(con, ctx.work / "vault.duckdb")
    return path, con


def _run_enforcement(
    engine: DuckDBEngine | PostgresEngine, policy: Policy, columns: dict[str, list[str]]
) -> dict[str, Any]:
    """The enforcement plans of every tagged table in one transaction: stage the actions,
    tokens for the values to pseudonymize, the ledger rows, the enforced tables."""
    plans = {t: enforcement_plan(policy, t, columns[t], REFERENCE) for t in columns}
    # Tokens made in SQL (the vault's issuing is DuckDB's and not what is compared here).
    tokens = (
        f"CREATE OR REPLACE TEMP TABLE {TOKENS} AS SELECT DISTINCT kind, value,"
        f" 'tok-' || md5(kind || value) AS token FROM ({wanted_tokens_select(policy)}) w"
    )
    actions: dict[str, int] = {}
    with engine.transaction():
        for t, plan in plans.items():
            engine.run(Plan(f"stage {t}", plan.statements[:1]))
        engine.run(Plan("tokens", (tokens,)))
        for t, plan in plans.items():
            for action, *_, n in engine.run(Plan(f"ledger {t}", plan.statements[1:2]))[0] or []:
                actions[f"{t}.{action}"] = actions.get(f"{t}.{action}", 0) + n
            target = f"core.{quote('_enforced_' + t)}"
            engine.run(Plan(f"enforce {t}", (f"CREATE TABLE {target} AS {plan.statements[2]}",)))
    return {"actions": actions}  # rows per table and action: the same on both engines


def duck_plans_stage(ctx: Context) -> Timed:
    """The enforcement plans run by DuckDBEngine on a copy of the ingested warehouse."""
    policy = load_policy(POLICY)
    path, con = _plans_warehouse(ctx)
    columns = {t: table_columns(con, "core", t) for t in tagged_tables(policy)}
    engine = DuckDBEngine(path, con)

    def run() -> StageResult:
        return StageResult(details=_run_enforcement(engine, policy, columns))

    return run


def pg_plans_stage(ctx: Context) -> Timed:
    """The same plans run by PostgresEngine on the same rows copied into the server."""
    policy = load_policy(POLICY)
    _, duck = _plans_warehouse(ctx)
    columns = {t: table_columns(duck, "core", t) for t in tagged_tables(policy)}

    def build(dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as pg:
            for schema in ("core", "requests", "vault"):
                pg.execute(f"CREATE SCHEMA {schema}")
            for table in policy.data_schema.tables.values():  # holds included
                copy_from_duckdb(duck, pg, "core", table.name, core_table_ddl(table))
            copy_from_duckdb(duck, pg, "requests", "erasures")
            copy_from_duckdb(duck, pg, "vault", "tokens")
            pg.execute("VACUUM ANALYZE")  # as autovacuum would have left a loaded database

    template = _template(f"plans_{ctx.contacts}", build)
    duck.close()
    engine = PostgresEngine(_database("plans_run", template))

    def run() -> StageResult:
        return StageResult(details=_run_enforcement(engine, policy, columns))

    return run


# --- the whole enforcement on a PostgreSQL warehouse ---------------------------------


def pg_enforce_stage(ctx: Context) -> Timed:
    """`postgres_warehouse.enforce` as of the reference date on a fresh copy of the
    scale's landing files ingested into a PostgreSQL warehouse."""
    from lethe.engine.postgres_warehouse import enforce, ingest_all, open_engine

    policy = load_policy(POLICY)

    def build(dsn: str) -> None:
        landing = ctx.work / "pg_landing"  # ingest removes the files it loaded
        shutil.copytree(ctx.landing, landing)
        engine = open_engine(dsn)
        try:
            ingest_all(engine, landing, policy)
        finally:
            engine.con.close()

    template = _template(f"warehouse_{ctx.contacts}", build)
    engine = open_engine(_database("warehouse_run", template))

    def run() -> StageResult:
        result = enforce(engine, policy, REFERENCE, run_id="bench")
        return StageResult(
            details={"counts": result.counts, "ledger_entries": result.ledger_entries}
        )

    return run


# --- erasure at a PostgreSQL source ----------------------------------------------------


def shop_policy(folder: Path) -> Policy:
    """The default policy on the e-shop schema whose tagged tables are read from (and
    written back to) the shop database's tables of the same names."""
    schema = yaml.safe_load((POLICY.parent.parent / "lethe" / "eshop" / "schema.yaml").read_text())
    for name in tagged_tables(load_policy(POLICY)):
        source: dict[str, Any] = {"dsn_env": SHOP_DSN_ENV, "table": f"{SHOP}.{name}"}
        source["writable"] = True
        if name == "orders":
            source["restrict_column"] = RESTRICT_COLUMN
        schema["tables"][name]["source"] = {"postgres": source}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shop.schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    (folder / "policy.yaml").write_text("schema: shop.schema.yaml\n" + POLICY.read_text())
    return load_policy(folder / "policy.yaml")


def _shop_template(ctx: Context, policy: Policy) -> str:
    """The shop database of this scale: the ingested rows, keys and foreign-key indexes."""

    def build(dsn: str) -> None:
        duck = duckdb.connect()
        try:
            duck.execute("ATTACH ? AS w (READ_ONLY)", [str(ctx.ingested)])
            duck.execute(f"CREATE SCHEMA {SHOP}")
            with psycopg.connect(dsn, autocommit=True) as pg:
                pg.execute(f"CREATE SCHEMA {SHOP}")
                for name in tagged_tables(policy):
                    table = policy.data_schema.tables[name]
                    columns = ", ".join(quote(c) for c in table.column_names)
                    duck.execute(
                        f"CREATE VIEW {SHOP}.{name} AS SELECT {columns} FROM w.core.{name}"
                    )
                    copy_from_duckdb(duck, pg, SHOP, name)
                    # A unique index, not a PRIMARY KEY: the policy erases the key of an
                    # anonymized order, which a key's NOT NULL would refuse.
                    pg.execute(f"CREATE UNIQUE INDEX ON {SHOP}.{name} ({quote(table.key)})")
                    for column in table.references:
                        pg.execute(f"CREATE INDEX ON {SHOP}.{name} ({quote(column)})")
                pg.execute(
                    f"ALTER TABLE {SHOP}.orders"
                    f" ADD COLUMN {RESTRICT_COLUMN} boolean NOT NULL DEFAULT false"
                )
                pg.execute("VACUUM ANALYZE")
        finally:
            duck.close()

    return _template(f"shop_{ctx.contacts}", build)


def pg_erasure_stage(ctx: Context) -> Timed:
    """Erasure of 10,000 subjects carried back to the shop database as the product does it:
    the change set planned from the enforcement plans, then carried set-based."""
    from lethe.rights.requests import apply_pending
    from lethe.sources.propagation import plan_erasures, propagate

    policy = shop_policy(ctx.work / "policy")
    template = _shop_template(ctx, policy)
    home = ctx.home_with_enforced_warehouse()
    subjects = subjects_from(home.warehouse, erasure_batch(ctx.contacts))
    record_requests(home, "erasure", subjects)
    con = connect(home.warehouse)
    apply_pending(con, policy, REFERENCE, "bench", vault=home.vault)
    os.environ[SHOP_DSN_ENV] = _database("shop_set_based", template)

    def run() -> StageResult:
        start = time.perf_counter()
        planned = plan_erasures(con, policy, REFERENCE, home.vault)
        carry = time.perf_counter()
        (outcome,) = propagate(con, policy, "bench", REFERENCE)
        done = time.perf_counter()
        if not outcome.ok:
            raise RuntimeError(outcome.reason)
        return StageResult(
            details={
                "subjects": len(subjects),
                "change_rows": planned,
                "rows_changed_at_source": sum(c.at_source or 0 for c in outcome.changes),
                "plan_s": carry - start,
                "carry_s": done - carry,
            }
        )

    return run


def _per_subject_statements(policy: Policy) -> list[str]:
    """One subject's erasure at the shop database: the rows that reach the subject deleted
    or, for the invoices kept for accounting, their buyer's personal columns cleared and
    the order restricted; the contact's personal columns cleared."""
    spec = policy.data_schema.tables
    subject = policy.data_schema.subject_table
    personal = [c for c in subject.column_names if c not in (subject.key, "created_at")]
    orders = [c for c in spec["orders"].column_names if c.startswith("billing_")]
    return [
        f"DELETE FROM {SHOP}.shipments WHERE order_id IN"
        f" (SELECT order_id FROM {SHOP}.orders WHERE contact_id = %(s)s)",
        f"DELETE FROM {SHOP}.consents WHERE contact_id = %(s)s",
        f"UPDATE {SHOP}.orders SET {', '.join(f'{c} = NULL' for c in orders)},"
        f" {RESTRICT_COLUMN} = true WHERE contact_id = %(s)s",
        f"UPDATE {SHOP}.contacts SET {', '.join(f'{c} = NULL' for c in personal)}"
        f" WHERE {subject.key} = %(s)s",
    ]


def pg_per_subject_stage(ctx: Context) -> Timed:
    """Per-subject erasure at the shop database, one transaction per subject over one
    connection, on a sample of the batch; extrapolated linearly to the batch."""
    policy = shop_policy(ctx.work / "policy")
    template = _shop_template(ctx, policy)
    batch = erasure_batch(ctx.contacts)
    subjects = subjects_from(ctx.enforced.warehouse, batch)[:PG_PER_SUBJECT_SAMPLE]
    statements = _per_subject_statements(policy)
    pg = psycopg.connect(_database("shop_per_subject", template))

    def run() -> StageResult:
        for subject in subjects:
            for sql in statements:
                pg.execute(sql, {"s": subject})
            pg.commit()
        return StageResult(
            factor=batch / len(subjects),
            basis=f"{len(subjects)} subjects timed, x{batch / len(subjects):g} for {batch:,}",
            details={"sample": len(subjects), "batch": batch},
        )

    return run


POSTGRES_STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        PostgresStage("duck_plans", "enforcement plans on DuckDB", "lethe", duck_plans_stage),
        PostgresStage("pg_plans", "enforcement plans on PostgreSQL", "lethe", pg_plans_stage),
        PostgresStage(
            "pg_enforce",
            "enforcement on a PostgreSQL warehouse",
            "lethe",
            pg_enforce_stage,
            requires=("lethe.engine.postgres_warehouse", "enforce"),
        ),
        PostgresStage(
            "pg_erasure",
            "erasure at a PostgreSQL source",
            "lethe",
            pg_erasure_stage,
            requires=("lethe.sources.propagation", "propagate"),
        ),
        PostgresStage(
            "pg_per_subject",
            "per-subject erasure at a PostgreSQL source",
            "baseline",
            pg_per_subject_stage,
        ),
    )
}
