"""Concurrency on one LETHE_HOME: never two writers.

Three scenarios run side by side, each on its own copy of a home that was enforced once
and has a pending access request:

- two `lethe run` started at once: one runs, the other refuses in one line (the lock);
- `lethe run` while the request sensor is evaluated again and again (as the daemon does
  every minute, here without pause);
- `lethe run` while the pipeline job is launched the way the daemon launches a sensor's or
  schedule's run (the job executed directly, not through `lethe run`): it waits for the
  LETHE_HOME lock and starts its first step only after the other run has ended.

A run that may not wait refuses before its first step, in one line.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pytest
from conftest import DEFAULT_POLICY, ingest_all
from reliability import PYTHON, cli_env, copy_home, ledger_ok, leftovers, lock_held

from lethe.compliance.inspection import rows_past_retention
from lethe.declaration.policy import load_policy
from lethe.engine.enforcement import enforce
from lethe.engine.tagging import tag_all
from lethe.engine.warehouse import connect
from lethe.eshop.generate import generate
from lethe.operations.home import Home
from lethe.rights.requests import record_request

T0, T = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
LETHE = str(Path(PYTHON).with_name("lethe"))
POLICY = load_policy(DEFAULT_POLICY)
LAUNCHED_JOB = """
import os, sys
import dagster as dg
from pipelines.definitions import defs
from pipelines.jobs import PIPELINE_JOB
home = os.environ["LETHE_HOME"]
os.environ["DAGSTER_HOME"] = os.path.join(home, "dagster")
instance = dg.DagsterInstance.get()
result = defs().resolve_job_def(PIPELINE_JOB).execute_in_process(
    instance=instance,
    raise_on_error=False,
    run_config={"resources": {"warehouse": {"config": {"home": home}},
                              "policy": {"config": {"as_of": sys.argv[1], "path": ""}}}},
    tags={"lethe/trigger": "requests"},
)
for event in result.all_events:
    if event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE"):
        error = event.step_failure_data.error if event.is_failure else None
        print(event.event_type_value, event.step_key, (error.message if error else "")[:300]
              .replace(chr(10), " "), flush=True)
starts = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_START)
print("FIRST_STEP_AT", min(e.timestamp for e in starts), flush=True)
"""


@dataclass
class Scenario:
    home: Home
    outputs: list[subprocess.CompletedProcess] = field(default_factory=list)
    sensor: list[str] = field(default_factory=list)
    launched: str = ""  # the launched job's own report (stdout)
    launched_log: str = ""  # the tail of its Dagster log (stderr)


def start_run(home: Home) -> subprocess.Popen:
    return subprocess.Popen(
        [LETHE, "run", "--as-of", T.isoformat()],
        cwd=Path(__file__).resolve().parent.parent,
        env=cli_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for_lock(home: Home, proc: subprocess.Popen) -> None:
    """Until `proc` holds the LETHE_HOME lock (probed without ever holding it for long)."""
    while proc.poll() is None and not lock_held(home.lock):
        time.sleep(0.05)


def two_runs(home: Home) -> Scenario:
    scenario = Scenario(home)
    procs = [start_run(home), start_run(home)]
    scenario.outputs = [finish(p) for p in procs]
    return scenario


def sensor_during_run(home: Home) -> Scenario:
    from sensors.requests import pending_requests_sensor

    scenario = Scenario(home)
    proc = start_run(home)
    wait_for_lock(home, proc)
    old = os.environ.get("LETHE_HOME")
    os.environ["LETHE_HOME"] = str(home.root)  # the sensor reads it (one thread does this)
    try:
        while proc.poll() is None:
            try:
                result = pending_requests_sensor(dg.build_sensor_context(cursor=None))
                scenario.sensor.append(type(result).__name__)
            except Exception as exc:  # noqa: BLE001 - what a tick may raise is the point
                scenario.sensor.append(f"raised {type(exc).__name__}: {exc}")
    finally:
        if old is None:
            os.environ.pop("LETHE_HOME", None)
        else:
            os.environ["LETHE_HOME"] = old
    scenario.outputs = [finish(proc)]
    return scenario


def launched_during_run(home: Home) -> Scenario:
    scenario = Scenario(home)
    proc = start_run(home)
    wait_for_lock(home, proc)
    launched = subprocess.run(
        [str(PYTHON), "-c", LAUNCHED_JOB, T.isoformat()],
        cwd=Path(__file__).resolve().parent.parent,
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    scenario.outputs = [finish(proc)]
    scenario.launched, scenario.launched_log = launched.stdout, launched.stderr[-2000:]
    return scenario


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Scenario]:
    root = tmp_path_factory.mktemp("concurrency")
    base = Home(root / "base").ensure()
    generate(base.landing, 500, seed=3, reference=T0)
    con = connect(base.warehouse)
    try:
        ingest_all(con, base.landing, POLICY)
        tag_all(con, POLICY, T0)
    finally:
        con.close()
    enforce(base, POLICY, T0, "before")
    con = connect(base.warehouse)
    try:
        record_request(con, POLICY.data_schema, "access", "C00000001")
    finally:
        con.close()
    jobs = {"two runs": two_runs, "sensor": sensor_during_run, "launched": launched_during_run}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {
            name: pool.submit(job, copy_home(base, root / name.replace(" ", "-")))
            for name, job in jobs.items()
        }
        return {name: f.result() for name, f in futures.items()}


def consistent(home: Home, enforced: bool = True) -> None:
    """The ledger verifies, no scratch file is left, and (after a completed run) nothing is
    past retention."""
    ok, problem = ledger_ok(home.warehouse)
    assert ok, problem
    assert leftovers(home.root) == []
    if enforced:
        con = connect(home.warehouse, read_only=True)
        try:
            assert sum(rows_past_retention(con, POLICY).values()) == 0
        finally:
            con.close()


def test_two_runs_at_once_one_runs_and_the_other_refuses_in_one_line(
    scenarios: dict[str, Scenario],
) -> None:
    scenario = scenarios["two runs"]
    codes = sorted(o.returncode for o in scenario.outputs)
    assert codes == [0, 1], [o.stderr[-500:] for o in scenario.outputs]
    refused = next(o for o in scenario.outputs if o.returncode == 1)
    assert refused.stderr.strip().count("\n") == 0, refused.stderr
    assert "another lethe run is in progress" in refused.stderr
    runs = [p for p in (scenario.home.dagster / "history" / "runs").glob("*.db")]
    assert len([p for p in runs if p.name != "index.db"]) == 1  # the refused one never started
    consistent(scenario.home)


def test_a_run_during_another_leaves_a_consistent_warehouse(
    scenarios: dict[str, Scenario],
) -> None:
    """Whatever else happened, the ledger verifies and no scratch file is left, in every
    scenario; where the `lethe run` completed, nothing is past retention."""
    for name, scenario in scenarios.items():
        try:
            consistent(scenario.home, enforced=scenario.outputs[0].returncode == 0)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


def test_sensor_ticks_during_a_run_neither_break_it_nor_request_another(
    scenarios: dict[str, Scenario],
) -> None:
    scenario = scenarios["sensor"]
    assert scenario.sensor, "the sensor was never evaluated during the run"
    assert not [s for s in scenario.sensor if s.startswith("raised")], scenario.sensor[:3]
    run = scenario.outputs[0]
    assert run.returncode == 0, run.stderr[-1000:]
    assert "RunRequest" not in scenario.sensor


def test_job_launched_during_a_run_waits_for_it(scenarios: dict[str, Scenario]) -> None:
    scenario = scenarios["launched"]
    assert scenario.outputs[0].returncode == 0, scenario.outputs[0].stderr[-1000:]
    steps = [ln.split(" ", 2) for ln in scenario.launched.splitlines() if ln.startswith("STEP_")]
    assert steps and all(s[0] == "STEP_SUCCESS" for s in steps), (
        scenario.launched[-1000:] + scenario.launched_log
    )
    first_step = float(scenario.launched.split("FIRST_STEP_AT ")[1].split()[0])
    instance = dg.DagsterInstance.from_config(str(scenario.home.dagster))
    try:
        (cli_run,) = instance.get_run_records(dg.RunsFilter(tags={"lethe/trigger": "cli"}))
        assert first_step > instance.get_run_stats(cli_run.dagster_run.run_id).end_time
    finally:
        instance.dispose()


def test_a_run_that_may_not_wait_refuses_before_its_first_step(tmp_path: Path) -> None:
    from pipelines.definitions import defs
    from pipelines.jobs import PIPELINE_JOB

    home = Home(tmp_path / "home").ensure()
    generate(home.landing, 20, seed=1, reference=T0)
    fd = os.open(home.lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as another process's run would
    try:
        job = defs().resolve_job_def(PIPELINE_JOB)
        result = job.execute_in_process(
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
            run_config={
                "resources": {
                    "warehouse": {"config": {"home": str(home.root), "lock_wait_seconds": 0.3}},
                    "policy": {"config": {"as_of": T.isoformat(), "path": ""}},
                },
                "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
            },
        )
    finally:
        os.close(fd)
    assert not result.success
    types = [ev.event_type for ev in result.all_events]
    assert dg.DagsterEventType.STEP_START not in types
    (failure,) = [
        ev for ev in result.all_events if ev.event_type == dg.DagsterEventType.RESOURCE_INIT_FAILURE
    ]
    assert "another lethe run is in progress" in failure.engine_event_data.error.message
    assert not home.warehouse.exists()
    assert len(list(home.landing.iterdir())) == 4  # nothing was taken from the drop zone
