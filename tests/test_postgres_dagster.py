"""Dagster runs on a PostgreSQL warehouse (`LETHE_WAREHOUSE=postgresql://…`), on a real
server: the pipeline job of `build_definitions` runs the PostgreSQL steps, leaves the same
core rows as `lethe.engine.postgres_run.run`, shows the tables' counts on the core assets,
checks the ledger chain there, and the request sensor reads pending requests from it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from conftest import write_landing
from engine_values import Plain

from assets.enforcement import ENFORCEMENT, LEDGER_CHAIN, PAST_RETENTION, holds_untouched
from assets.ingest import ACCEPTED_CHECK
from assets.metadata import PURPOSE_COUNTS, core_key, ingest_key
from assets.requests import NOTHING_OVERDUE
from lethe.compliance.consent_health import build_consent_health
from lethe.compliance.inspection import rows_past_retention
from lethe.compliance.summary import summarize
from lethe.declaration.policy import HOLD_PURPOSE, Policy
from lethe.engine import audit, postgres_run
from lethe.engine.ddl import ensure_schemas
from lethe.engine.engines import PostgresEngine
from lethe.engine.postgres_warehouse import Rendered, append, ingest_all, open_engine, pull
from lethe.engine.states import STORED_STATES
from lethe.engine.tagging import tagged_tables
from lethe.engine.warehouse import connect
from lethe.eshop.generate import generate
from lethe.operations.backup import list_backups
from lethe.operations.home import Home
from lethe.rights import postgres_holds, postgres_requests
from pipelines.definitions import build_definitions
from pipelines.jobs import PIPELINE_JOB
from sensors.requests import pending_requests
from tests.postgres import PostgresServer

AS_OF = dt.date(2026, 11, 1)
CONTACTS = 30
# Columns that differ between two loads of the same files (when they were loaded).
LOAD_TIMES = ("_ingested_at",)


@dataclass
class Runs:
    """The same landing files and erasure request, run by the Dagster pipeline job on one
    database (`engine`, LETHE_HOME `home`; its `result`) and by `postgres_run.run` on
    another (`direct`)."""

    home: Home
    engine: PostgresEngine
    direct: PostgresEngine
    result: dg.ExecuteInProcessResult


def landed(root: Path) -> Home:
    """A LETHE_HOME with the generated landing files of 30 contacts."""
    home = Home(root).ensure()
    generate(home.landing, CONTACTS, seed=7, reference=AS_OF)
    return home


def erasure_of_first_subject(engine: PostgresEngine, home: Home, policy: Policy) -> None:
    """Load the landing files and record an erasure of the first subject by key."""
    ingest_all(engine, home.landing, policy)
    subject = policy.data_schema.subject_table
    (key,) = engine.con.execute(
        f'SELECT "{subject.key}" FROM core."{subject.name}" ORDER BY 1 LIMIT 1'
    ).fetchone()
    postgres_requests.record(engine, policy, "erasure", str(key))


def run_job(policy: Policy, as_of: dt.date = AS_OF) -> dg.ExecuteInProcessResult:
    """The pipeline job of the definitions built for the environment's warehouse."""
    defs = build_definitions(policy)
    config = {"as_of": as_of.isoformat(), "path": defs.resources["policy"].path}
    return defs.resolve_job_def(PIPELINE_JOB).execute_in_process(
        run_config={"resources": {"policy": {"config": config}}},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


@pytest.fixture(scope="module")
def runs(
    postgres: PostgresServer, policy: Policy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Runs]:
    root = tmp_path_factory.mktemp("pgdagster")
    direct_dsn, dsn = postgres.new_database(), postgres.new_database()
    direct_home, home = landed(root / "direct"), landed(root / "dagster")
    direct, engine = open_engine(direct_dsn), open_engine(dsn)
    with pytest.MonkeyPatch.context() as env:
        try:
            erasure_of_first_subject(direct, direct_home, policy)
            postgres_run.run(direct_dsn, direct_home, policy, AS_OF)
            erasure_of_first_subject(engine, home, policy)
            env.setenv("LETHE_HOME", str(home.root))
            env.setenv("LETHE_WAREHOUSE", dsn)
            env.delenv("LETHE_SHARDS", raising=False)
            yield Runs(home, engine, direct, run_job(policy))
        finally:
            engine.close()
            direct.close()


def _checks(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], Any]:
    return {
        (c.asset_key.to_user_string(), c.check_name): c
        for c in (
            ev.asset_check_evaluation_data
            for ev in result.all_events
            if ev.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
        )
    }


def _metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, Any]:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def _rows(engine: PostgresEngine, table: str) -> list[dict[str, Any]]:
    cur = engine.con.execute(f'SELECT * FROM core."{table}"')
    names = [d.name for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _plain(engine: PostgresEngine) -> Plain:
    tokens = {
        t: (k, v) for t, k, v in engine.con.execute("SELECT token, kind, value FROM vault.tokens")
    }
    return Plain(tokens, {})


# --- the tests ------------------------------------------------------------------------------


def test_the_pipeline_job_runs_the_postgresql_steps(runs: Runs, policy: Policy) -> None:
    assert runs.result.success
    done = {e.asset_key.to_user_string() for e in runs.result.get_asset_materialization_events()}
    tables = policy.data_schema.tables
    assert {f"ingest/{t}" for t in tables} | {f"core/{t}" for t in tables} <= done
    assert {"requests/intake", "requests/answers", "core/retention_enforcement"} <= done
    assert any(k.startswith("analytics/") for k in done), done
    # The retention of Lethe's own logs, the day's backup and the compliance documents, as
    # on DuckDB; tagging is enforcement's there.
    assert {"audit/log_retention", "backups/warehouse_backup"} <= done
    assert {"compliance/processors", "compliance/breaches"} <= done, done
    made = _metadata(runs.result, dg.AssetKey(["backups", "warehouse_backup"]))["backup_id"]
    assert [b.id for b in list_backups(runs.home)] == [made]
    # It holds the enforced warehouse: the ledger up to the run's erasure entries.
    (last,) = runs.engine.con.execute(
        "SELECT max(seq) FROM audit.ledger WHERE action <> 'release'"
    ).fetchone()
    manifest = json.loads((runs.home.backups / made / "manifest.json").read_text())
    assert manifest["ledger_seq"] >= last > 0
    # The erasure recorded in the database was carried out and answered by the run.
    statuses = runs.engine.con.execute("SELECT status FROM requests.requests").fetchall()
    assert statuses == [("done",)]
    # Nothing was written to a DuckDB warehouse under LETHE_HOME.
    assert not runs.home.warehouse.exists()


def test_dagster_leaves_the_rows_postgres_run_leaves(runs: Runs, policy: Policy) -> None:
    dagster, direct = _plain(runs.engine), _plain(runs.direct)
    for table in policy.data_schema.tables:
        got = dagster.rows(_rows(runs.engine, table), drop=LOAD_TIMES)
        want = direct.rows(_rows(runs.direct, table), drop=LOAD_TIMES)
        assert got == want, table
    ledger = "SELECT table_name, action, count(*) FROM audit.ledger GROUP BY 1, 2 ORDER BY 1, 2"
    assert runs.engine.con.execute(ledger).fetchall() == runs.direct.con.execute(ledger).fetchall()


def test_core_asset_counts_are_the_tables(runs: Runs, policy: Policy) -> None:
    for table in policy.data_schema.tables:
        shown = _metadata(runs.result, core_key(table))
        (rows,) = runs.engine.con.execute(f'SELECT count(*) FROM core."{table}"').fetchone()
        assert shown["dagster/row_count"] == rows, table
        if table not in tagged_tables(policy):
            continue
        states = dict(
            runs.engine.con.execute(f'SELECT _state, count(*) FROM core."{table}" GROUP BY 1')
        )
        for state in STORED_STATES:
            assert shown[f"rows_{state.value}"] == states.get(state.value, 0), (table, state)
        kept = {
            r["purpose"]: r["rows kept"] for r in (x.data for x in shown[PURPOSE_COUNTS].records)
        }
        assert set(kept) == {p.name for p in policy.purposes_for(table)}
        for purpose, n in kept.items():
            (count,) = runs.engine.con.execute(
                f'SELECT count(*) FROM core."{table}" WHERE %s = ANY(_purposes)', [purpose]
            ).fetchone()
            assert n == count, (table, purpose)


def test_checks_pass_on_postgres(runs: Runs) -> None:
    checks = _checks(runs.result)
    enforcement = ENFORCEMENT.to_user_string()
    for key in (
        (enforcement, LEDGER_CHAIN),
        (enforcement, PAST_RETENTION),
        ("requests/answers", NOTHING_OVERDUE),
    ):
        assert checks[key].passed, key


def test_past_retention_and_overdue_counts_fail_on_postgres(runs: Runs, policy: Policy) -> None:
    """What the two checks count, read from the database: a row no purpose keeps and an
    overdue request each count (inside a transaction rolled back afterwards)."""
    subject = policy.data_schema.subject_table
    reader = Rendered(runs.engine.con)
    with pytest.raises(RuntimeError, match="roll back"), runs.engine.transaction():
        runs.engine.con.execute(
            f'UPDATE core."{subject.name}" SET _purposes = %s WHERE "{subject.key}" = (SELECT'
            f' min("{subject.key}") FROM core."{subject.name}" WHERE _state = %s)',
            [[], "active"],
        )
        assert rows_past_retention(reader, policy)[subject.name] == 1
        runs.engine.con.execute(
            "INSERT INTO requests.requests (request_id, type, subject_key, received_at,"
            " deadline, extended, status) VALUES ('R-overdue', 'access', 'x',"
            " now() - interval '40 days', now() - interval '9 days', false, 'pending')"
        )
        assert postgres_requests.counts(runs.engine)["overdue"] == 1
        raise RuntimeError("roll back")
    assert sum(rows_past_retention(reader, policy).values()) == 0
    assert postgres_requests.counts(runs.engine)["overdue"] == 0


def test_request_sensor_reads_pending_requests_from_postgres(runs: Runs, policy: Policy) -> None:
    sensor = pending_requests(1)
    context = dg.build_sensor_context()
    assert isinstance(sensor(context), dg.SkipReason)  # the run answered the erasure
    subject = policy.data_schema.subject_table
    (key,) = runs.engine.con.execute(
        f'SELECT "{subject.key}" FROM core."{subject.name}" WHERE _state = %s ORDER BY 1 LIMIT 1',
        ["active"],
    ).fetchone()
    made = postgres_requests.record(runs.engine, policy, "access", str(key))
    launched = sensor(context)
    assert isinstance(launched, dg.RunRequest)
    assert launched.run_key == made.request_id and launched.job_name == PIPELINE_JOB
    assert isinstance(sensor(context), dg.SkipReason)  # launched once


def test_request_sensor_skips_while_the_warehouse_is_unreachable(
    runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 1 on the local host: nothing listens there.
    monkeypatch.setenv("LETHE_WAREHOUSE", "postgresql://lethe:s3cret@127.0.0.1:1/shop")
    skipped = pending_requests(1)(dg.build_sensor_context())
    assert isinstance(skipped, dg.SkipReason)
    message = skipped.skip_message or ""
    assert "postgresql://lethe@127.0.0.1:1/shop" in message and "retrying" in message
    assert "s3cret" not in message


def test_a_refused_file_fails_its_check_and_the_run_goes_on(
    postgres: PostgresServer,
    policy: Policy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = Home(tmp_path / "home").ensure()
    bad = write_landing(home.landing, "consents", [{"consent_id": "K3", "contact_id": "C3"}])
    bad.write_text(bad.read_text().replace(",purpose,", ",purpose ,", 1))
    monkeypatch.setenv("LETHE_HOME", str(home.root))
    monkeypatch.setenv("LETHE_WAREHOUSE", postgres.new_database())
    result = run_job(policy)
    check = _checks(result)[("ingest/consents", ACCEPTED_CHECK)]
    assert not check.passed and "consents.csv" in (check.description or "")
    assert _metadata(result, ingest_key("consents"))["rows_waiting_in_quarantine"] == 0
    assert _metadata(result, core_key("consents"))["dagster/row_count"] == 0
    assert bad.exists()  # left in place


def test_definitions_on_postgres_load_with_the_daily_schedule(policy: Policy, runs: Runs) -> None:
    defs = build_definitions(policy)
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    # No asset reads or writes a DuckDB file there: none says it does.
    assert not [k for k in graph.get_all_asset_keys() if "duckdb" in graph.get(k).kinds]
    for key in (ENFORCEMENT, core_key(policy.data_schema.subject_table.name)):
        assert "postgres" in graph.get(key).kinds
    assert "VACUUM FULL" in (graph.get(ENFORCEMENT).description or "")
    schedule = defs.resolve_schedule_def("daily_retention")
    assert schedule.job_name == PIPELINE_JOB
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_a_run_waits_for_the_advisory_lock_then_fails_in_one_line(
    runs: Runs, policy: Policy, postgres: PostgresServer
) -> None:
    defs = build_definitions(policy)
    other = open_engine(postgres.dsn(runs.engine.con.info.dbname))
    try:
        with other.lock():
            result = defs.resolve_job_def(PIPELINE_JOB).execute_in_process(
                run_config={"resources": {"warehouse": {"config": {"lock_wait_seconds": 1}}}},
                instance=dg.DagsterInstance.ephemeral(),
                raise_on_error=False,
            )
    finally:
        other.close()
    assert not result.success
    failures = [
        ev.engine_event_data.error.message
        for ev in result.all_events
        if ev.event_type == dg.DagsterEventType.RESOURCE_INIT_FAILURE
    ]
    assert any("another Lethe process is writing" in m for m in failures), failures
    assert not result.get_asset_materialization_events()


def test_held_rows_check_on_postgres(runs: Runs, policy: Policy) -> None:
    subject = policy.data_schema.subject_table
    (key,) = runs.engine.con.execute(
        f'SELECT "{subject.key}" FROM core."{subject.name}" WHERE _state = %s ORDER BY 1 LIMIT 1',
        ["active"],
    ).fetchone()
    postgres_holds.place(runs.engine, policy, str(key), "case 1")
    # As of a day after the hold was placed (now): the hold applies.
    again = run_job(policy, dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1))
    (held,) = runs.engine.con.execute(
        f'SELECT count(*) FROM core."{subject.name}" WHERE %s = ANY(_purposes)', [HOLD_PURPOSE]
    ).fetchone()
    assert held == 1
    check = _checks(again)[(ENFORCEMENT.to_user_string(), holds_untouched(policy))]
    assert check.passed, check.description
    # A ledger entry naming the held subject's row makes the same count fail.
    forged = audit.LedgerEntry(
        run_id="forged-run",
        as_of=AS_OF,
        action="erase",
        reason="test",
        table_name=subject.name,
        keys=[str(key)],
    )
    with runs.engine.transaction():
        append(runs.engine.con, [forged])
    assert postgres_holds.held_rows_touched(runs.engine, policy, "forged-run") == 1
    assert postgres_holds.held_rows_touched(runs.engine, policy, again.run_id) == 0


def test_ledger_check_fails_after_an_edited_entry(runs: Runs, policy: Policy) -> None:
    runs.engine.con.execute(
        "UPDATE audit.ledger SET reason = reason || ' (edited)'"
        " WHERE seq = (SELECT min(seq) FROM audit.ledger)"
    )
    again = run_job(policy)
    check = _checks(again)[(ENFORCEMENT.to_user_string(), LEDGER_CHAIN)]
    assert not check.passed
    assert check.description


def test_compliance_documents_read_the_same_from_postgres_as_from_duckdb(
    runs: Runs, policy: Policy, tmp_path: Path
) -> None:
    """The table summaries of the record of processing and the consent-health list, read
    from the database after the Dagster run, equal what they read from a DuckDB copy of the
    same tables."""
    assert {"compliance/record_of_processing", "compliance/consent_health"} <= {
        e.asset_key.to_user_string() for e in runs.result.get_asset_materialization_events()
    }
    duck = connect(tmp_path / "copy.duckdb")
    try:
        ensure_schemas(duck, policy.data_schema)
        for table in policy.data_schema.tables:
            pull(runs.engine.con, duck, f"core.{table}")
        pg = Rendered(runs.engine.con)
        assert summarize(pg, policy) == summarize(duck, policy)  # type: ignore[arg-type]
        assert any(s.rows for s in summarize(duck, policy))
        on_pg = build_consent_health(pg, Home(tmp_path / "pg"), policy, AS_OF)  # type: ignore[arg-type]
        on_duck = build_consent_health(duck, Home(tmp_path / "duck"), policy, AS_OF)
        assert on_pg.counts == on_duck.counts and sum(on_duck.counts.values()) > 0
        assert on_pg.path.read_bytes() == on_duck.path.read_bytes()
    finally:
        duck.close()
