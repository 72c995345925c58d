"""Scaling out: the Dagster instance on a real PostgreSQL server (LETHE_DAGSTER_PG_URL,
tests/postgres.py), and the deployment files under deploy/, checked as far as they can be
without a cluster: the instance configs load and run against the server, the Kubernetes
run launcher's config passes its schema, the Helm values carry what the official chart
reads, and the image is built where docker runs (marked slow)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

# The Kubernetes run launcher cannot be instantiated outside a cluster (it loads the
# in-cluster config), so its config is checked against its schema, as Dagster would.
from dagster._config import process_config
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.test_utils import create_run_for_test
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)
from dagster_k8s import K8sRunLauncher

from lethe.errors import LetheError
from lethe.operations.home import Home
from lethe.operations.shards import SHARDS_ENV, WORKERS_ENV
from pipelines.definitions import defs
from pipelines.instance import INSTANCE_CONFIG, PG_URL_ENV, prepare_instance
from pipelines.jobs import PIPELINE_JOB, union_job
from pipelines.resources import PARTITION_TAG
from tests.conftest import REPO, lethe_cli, lethe_env
from tests.postgres import SUPERUSER, PostgresServer, _free_port

DEPLOY = REPO / "deploy"
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


def _passwords(config: object) -> list[object]:
    """The values of every `password` key in a parsed YAML document."""
    if isinstance(config, dict):
        own = [v for k, v in config.items() if k == "password"]
        return own + [p for v in config.values() for p in _passwords(v)]
    if isinstance(config, list):
        return [p for v in config for p in _passwords(v)]
    return []


def _set_instance_env(monkeypatch: pytest.MonkeyPatch, postgres: PostgresServer, name: str):
    """The variables deploy/'s instance configs read, pointing at database `name`."""
    for key, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(postgres.port),
        "DAGSTER_PG_USERNAME": SUPERUSER,
        "DAGSTER_PG_PASSWORD": PASSWORD,
        "DAGSTER_PG_DB": name,
    }.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("example", ["dagster.yaml", "dagster-k8s.yaml"])
def test_deploy_instance_configs_load_and_store_a_run_in_postgres(
    example: str, postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each example is a valid instance config whose storage, from environment variables
    only, records a run in the server; the Kubernetes run launcher's config passes its
    schema; neither holds a password nor lets two runs go at once."""
    assert _passwords(yaml.safe_load((DEPLOY / example).read_text())) == [
        {"env": "DAGSTER_PG_PASSWORD"}
    ]
    _, database = instance_database(postgres)
    _set_instance_env(monkeypatch, postgres, database)
    shutil.copy(DEPLOY / example, tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    try:

        @dg.asset
        def probe() -> int:
            return 1

        result = dg.materialize([probe], instance=instance)
        assert result.success
        ref = instance.get_ref()
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 1
        if example == "dagster-k8s.yaml":
            launcher = ref.run_launcher_data
            assert (launcher.module_name, launcher.class_name) == ("dagster_k8s", "K8sRunLauncher")
            checked = process_config(
                dg.Shape(K8sRunLauncher.config_type()), yaml.safe_load(launcher.config_yaml)
            )
            assert checked.success, [e.message for e in checked.errors]
            mounts = checked.value["volume_mounts"]
            assert {m["mount_path"] for m in mounts} == {_image_lethe_home()}
    finally:
        instance.dispose()
    with postgres.connect(database) as con:
        stored = con.execute("SELECT run_id, status FROM runs").fetchall()
    assert stored == [(result.run_id, "SUCCESS")]


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _image_lethe_home() -> str:
    envs = " ".join(args for op, args in _dockerfile() if op == "ENV")
    return re.search(r"LETHE_HOME=(\S+)", envs).group(1)


def test_dockerfile_installs_every_package_and_serves_the_definitions() -> None:
    """What can be checked without building: every package the project installs is copied
    in before `pip install`, each copied path exists, LETHE_HOME is the declared volume,
    and the command serves pipelines.definitions (which loads here)."""
    steps = _dockerfile()
    pyproject = (REPO / "pyproject.toml").read_text()
    packages = re.search(r"include = \[(.*?)\]", pyproject).group(1)
    needed = {name.strip(' "*') for name in packages.split(",")}
    install = next(i for i, (op, args) in enumerate(steps) if op == "RUN" and "pip install" in args)
    copied_before = {
        source for op, args in steps[:install] if op == "COPY" for source in args.split()[:-1]
    }
    assert needed <= copied_before, needed - copied_before
    for op, args in steps:
        if op == "COPY":
            for source in args.split()[:-1]:
                assert (REPO / source).exists(), source
    home = _image_lethe_home()
    assert ("VOLUME", home) in steps
    command = json.loads(next(args for op, args in steps if op == "CMD"))
    assert "-m pipelines.definitions" in command[-1]
    assert "umask 077" in command[-1]
    assert defs().resolve_job_def(PIPELINE_JOB)


def test_helm_values_for_the_official_chart() -> None:
    """The keys the official Dagster chart reads (its values.schema.json): one user
    deployment serving the image's definitions with LETHE_HOME on a shared claim, the
    Kubernetes run launcher, one run at a time, an external PostgreSQL whose password
    stays in a Secret."""
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    user = values["dagster-user-deployments"]
    assert user["enabled"] and user["enableSubchart"]
    (deployment,) = user["deployments"]
    assert set(deployment) >= {"name", "image", "port"}
    assert set(deployment["image"]) == {"repository", "tag", "pullPolicy"}
    assert deployment["image"]["pullPolicy"] in {"Always", "IfNotPresent", "Never"}
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "pipelines.definitions"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["LETHE_HOME"] == _image_lethe_home()
    (mount,) = deployment["volumeMounts"]
    assert mount["mountPath"] == env["LETHE_HOME"]
    (volume,) = deployment["volumes"]
    assert volume["name"] == mount["name"]
    claim = yaml.safe_load((DEPLOY / "helm" / "lethe-home-pvc.yaml").read_text())
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    assert coordinator["config"]["queuedRunCoordinator"]["maxConcurrentRuns"] == 1
    database = values["postgresql"]
    assert database["enabled"] is False and database["postgresqlHost"]
    assert "postgresqlPassword" not in database
    assert values["generatePostgresqlPasswordSecret"] is False


@pytest.mark.slow
def test_image_builds_and_loads_the_definitions() -> None:
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "info"], capture_output=True, timeout=60).returncode:
        pytest.skip("no usable docker daemon")
    tag = "lethe-test:scaling-out"
    build = subprocess.run(
        ["docker", "build", "-f", str(DEPLOY / "Dockerfile"), "-t", tag, str(REPO)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    try:
        check = subprocess.run(
            ["docker", "run", "--rm", tag, "dagster", "definitions", "validate", "-m",
             "pipelines.definitions"],
            capture_output=True,
            text=True,
            timeout=600,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr[-3000:]
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_the_run_queue_starts_shards_side_by_side_but_never_one_shard_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With shards the daemon's own dequeue logic, over Lethe's instance config, starts runs
    of different shards together (up to LETHE_SHARD_WORKERS), a second run of a shard only
    after the first ended, and one union at a time."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))  # restored after the test
    monkeypatch.delenv(PG_URL_ENV, raising=False)
    monkeypatch.setenv(SHARDS_ENV, "4")
    monkeypatch.setenv(WORKERS_ENV, "3")
    instance = prepare_instance(Home(tmp_path / "home").ensure())
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    origin = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("lethe"), "__repository__")

    def queue(tags: dict[str, str]) -> str:
        run = create_run_for_test(
            instance,
            job_name="queued",
            status=dg.DagsterRunStatus.QUEUED,
            tags=tags,
            remote_job_origin=origin.get_job_origin("queued"),
        )
        return run.run_id

    def dequeued() -> list[str]:
        runs = daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)
        return [r.run_id for r in runs]

    def status(run_id: str, to: dg.DagsterRunStatus) -> None:
        instance.run_storage.handle_run_event(
            run_id,
            dg.DagsterEvent(
                {
                    dg.DagsterRunStatus.STARTED: "PIPELINE_START",
                    dg.DagsterRunStatus.SUCCESS: "PIPELINE_SUCCESS",
                }[to],
                job_name="queued",
            ),
        )

    try:
        first, again, other, third = (queue({PARTITION_TAG: s}) for s in ("00", "00", "01", "02"))
        unions = [queue(dict(union_job.tags)) for _ in range(2)]
        assert dequeued() == [first, other, third]
        for run_id in (first, other, third):
            status(run_id, dg.DagsterRunStatus.STARTED)
        assert dequeued() == []  # three workers busy
        status(first, dg.DagsterRunStatus.SUCCESS)
        assert dequeued() == [again]  # shard 00 again once its first run ended
        status(again, dg.DagsterRunStatus.STARTED)
        for run_id in (other, third):
            status(run_id, dg.DagsterRunStatus.SUCCESS)
        assert dequeued() == unions[:1]  # two workers free, one union at a time
    finally:
        instance.dispose()
