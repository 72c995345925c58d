"""Scaling out: the Dagster instance on a real PostgreSQL server (LETHE_DAGSTER_PG_URL,
tests/postgres.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from lethe.errors import LetheError
from lethe.operations.home import Home
from pipelines.instance import INSTANCE_CONFIG, PG_URL_ENV, prepare_instance
from pipelines.jobs import PIPELINE_JOB
from tests.conftest import REPO, lethe_cli, lethe_env
from tests.postgres import SUPERUSER, PostgresServer, _free_port

DAGSTER_BIN = Path(sys.executable).with_name("dagster")
# The servers of the tests trust local connections, so this password is never checked:
# it is there to show that no file Lethe writes holds it.
PASSWORD = "not-a-secret-5Kq"


def instance_database(postgres: PostgresServer) -> tuple[str, str]:
    """A fresh database: (its URL with a password, its name)."""
    dsn = postgres.new_database()
    return dsn.replace(f"{SUPERUSER}@", f"{SUPERUSER}:{PASSWORD}@"), dsn.rsplit("/", 1)[1]


def test_lethe_run_keeps_runs_events_and_schedules_in_postgres(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """Two real `lethe run`s and an operator stopping the daily schedule, with the instance
    on PostgreSQL: the server holds both runs, their events and the schedule's state;
    LETHE_HOME holds no SQLite run storage and no password."""
    url, database = instance_database(postgres)
    home = tmp_path / "home"
    assert lethe_cli("generate", "--contacts", "30", "--seed", "1", home=home).returncode == 0
    first = lethe_cli("run", "--as-of", "2026-01-01", home=home, **{PG_URL_ENV: url})
    assert first.returncode == 0, first.stderr[-2000:]
    stop = subprocess.run(
        [str(DAGSTER_BIN), "schedule", "stop", "daily_retention", "-w", "workspace.yaml"],
        cwd=REPO,
        env=lethe_env(home, DAGSTER_HOME=str(home / "dagster"), **{PG_URL_ENV: url}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stop.returncode == 0, stop.stderr[-2000:]
    second = lethe_cli("run", "--as-of", "2026-01-02", home=home, **{PG_URL_ENV: url})
    assert second.returncode == 0, second.stderr[-2000:]

    with postgres.connect(database) as con:
        runs = con.execute(
            "SELECT run_id, status FROM runs WHERE pipeline_name = %s ORDER BY id",
            (PIPELINE_JOB,),
        ).fetchall()
        assert [status for _, status in runs] == ["SUCCESS", "SUCCESS"]
        for (run_id, _), result in zip(runs, (first, second), strict=True):
            assert f"(run {run_id[:8]})" in result.stdout  # the run the command reported
            events = {
                kind
                for (kind,) in con.execute(
                    "SELECT DISTINCT dagster_event_type FROM event_logs WHERE run_id = %s",
                    (run_id,),
                )
            }
            assert {"PIPELINE_START", "ASSET_MATERIALIZATION", "PIPELINE_SUCCESS"} <= events
        schedules = [
            (status, dg.deserialize_value(body).instigator_name)
            for status, body in con.execute(
                "SELECT status, instigator_body FROM instigators WHERE instigator_type = %s",
                ("SCHEDULE",),
            )
        ]
        assert schedules == [("STOPPED", "daily_retention")]

    config = yaml.safe_load((home / "dagster" / "dagster.yaml").read_text())
    assert config["storage"] == {"postgres": {"postgres_url": {"env": PG_URL_ENV}}}
    assert not [p.name for p in (home / "dagster").rglob("*.db")]  # no SQLite run storage
    holding = [p for p in home.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert not holding


def test_instance_config_follows_the_variable_and_leaves_a_users_own_alone(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))  # restored after the test
    monkeypatch.delenv(PG_URL_ENV, raising=False)
    home = Home(tmp_path / "home").ensure()
    config = home.dagster / "dagster.yaml"
    prepare_instance(home).dispose()
    assert config.read_text() == INSTANCE_CONFIG  # SQLite, as `make demo` always had

    url, _ = instance_database(postgres)
    monkeypatch.setenv(PG_URL_ENV, url)
    instance = prepare_instance(home)
    try:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    finally:
        instance.dispose()
    monkeypatch.delenv(PG_URL_ENV)
    prepare_instance(home).dispose()
    assert config.read_text() == INSTANCE_CONFIG  # Lethe's own config follows the variable

    own = INSTANCE_CONFIG + "# tuned by hand\n"
    config.write_text(own)
    prepare_instance(home).dispose()
    assert config.read_text() == own
    monkeypatch.setenv(PG_URL_ENV, url)
    with pytest.raises(LetheError, match=f"{PG_URL_ENV} is set but .*dagster.yaml"):
        prepare_instance(home)
    assert config.read_text() == own


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://someone:{PASSWORD}@127.0.0.1:{{port}}/nothing",
        f"mysql://someone:{PASSWORD}@127.0.0.1:{{port}}/nothing",
        f"postgresql//someone:{PASSWORD}@127.0.0.1:{{port}}/nothing",
    ],
    ids=["nothing-listens", "not-postgresql", "malformed"],
)
def test_an_instance_database_that_cannot_be_used_is_one_line_without_the_password(
    url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    url = url.format(port=_free_port())
    result = lethe_cli("run", "--as-of", "2026-01-01", home=home, **{PG_URL_ENV: url})
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1
    assert len(errors) == 1 and errors[0].startswith(f"error: {PG_URL_ENV}"), result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert not (home / "dagster" / "dagster.yaml").exists()
