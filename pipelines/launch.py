"""Run the pipeline job in-process against the Dagster instance under LETHE_HOME."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

import dagster as dg
from dagster._utils.error import SerializableErrorInfo

from assets.ingest import ACCEPTED_CHECK
from assets.landing import LEFTOVERS_CHECK
from lethe.declaration.policy import load_policy
from lethe.operations.home import Home
from pipelines.definitions import build_definitions
from pipelines.instance import prepare_instance
from pipelines.jobs import PIPELINE_JOB
from pipelines.resources import AS_OF_TAG

# Failed checks that fail the run: a refused landing file or a leftover in landing/ does not
# stop the run's other steps, but the run must not look successful while it stays there.
REFUSALS = frozenset({ACCEPTED_CHECK, LEFTOVERS_CHECK})


@dataclass
class RunOutcome:
    """What the CLI reports about one run (no personal data)."""

    run_id: str
    success: bool
    errors: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)
    # Failed blocking checks: the assets after them were not produced in this run.
    blocking: list[str] = field(default_factory=list)


def run_pipeline(
    home: Home,
    as_of: dt.date,
    policy_path: str | None = None,
    *,
    job: str = PIPELINE_JOB,
    instance_home: Home | None = None,
    tags: dict[str, str] | None = None,
    partition_key: str | None = None,
) -> RunOutcome:
    """Execute the pipeline job (or `job`) of the definitions built from `policy_path`
    (default: LETHE_POLICY, else the default policy), so that the run shows in `dagster dev`
    afterwards as the run of that policy's assets; in the Dagster instance of
    `instance_home` (default: `home`'s)."""
    policy = load_policy(policy_path)
    defs = build_definitions(policy)
    instance = prepare_instance(instance_home or home)
    policy_file = defs.resources["policy"].path
    policy_config = {"as_of": as_of.isoformat(), "path": policy_file}
    run_config = {
        "resources": {
            "warehouse": {"config": {"home": str(home.root)}},
            "policy": {"config": policy_config},
        },
        # The CLI reports failures in one line; the full events stay in the instance.
        "loggers": {"console": {"config": {"log_level": "CRITICAL"}}},
    }
    result = defs.resolve_job_def(job).execute_in_process(
        run_config=run_config,
        instance=instance,
        partition_key=partition_key,
        raise_on_error=False,
        tags={
            AS_OF_TAG: as_of.isoformat(),
            "lethe/trigger": "cli",
            "lethe/policy": policy_file,
            **(tags or {}),
        },
    )
    errors = [
        f"{ev.step_key}: {_failure_message(ev)}"
        for ev in result.all_events
        if ev.event_type == dg.DagsterEventType.STEP_FAILURE and not _blocked(ev)
    ] + [
        # A run that cannot take the LETHE_HOME lock fails before its first step.
        _root_message(ev.engine_event_data.error)
        for ev in result.all_events
        if ev.event_type == dg.DagsterEventType.RESOURCE_INIT_FAILURE
    ]
    checks = [
        ev.asset_check_evaluation_data
        for ev in result.all_events
        if ev.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ]
    failed = [c for c in checks if not c.passed]
    errors += [c.description for c in failed if c.check_name in REFUSALS]
    failed_checks = [_line(c) for c in failed if c.check_name not in REFUSALS]
    blocking = [_line(c) for c in failed if c.blocking and c.check_name not in REFUSALS]
    # A run whose only failed step is a blocking check's failed as it should: that is
    # reported as the check, not as a crash.
    done = result.success or not any(
        ev.event_type == dg.DagsterEventType.STEP_FAILURE and not _blocked(ev)
        for ev in result.all_events
    )
    return RunOutcome(
        result.run_id, done and not errors and not blocking, errors, failed_checks, blocking
    )


def _line(check: dg.AssetCheckEvaluation) -> str:
    """One line naming the asset, the check and what it found (names and counts only)."""
    description = " ".join((check.description or "failed").split())
    return f"{check.asset_key.to_user_string()} {check.check_name}: {description}"


def _blocked(event: dg.DagsterEvent) -> bool:
    """Whether a step failed only because one of its blocking checks did."""
    error = event.step_failure_data.error
    return error is not None and error.cls_name == "DagsterAssetCheckFailedError"


def _failure_message(event: dg.DagsterEvent) -> str:
    data = event.step_failure_data
    if data.user_failure_data and data.user_failure_data.description:
        return data.user_failure_data.description
    return _root_message(data.error)


def _root_message(err: SerializableErrorInfo | None) -> str:
    """The first line of the innermost error, without its exception's qualified name."""
    while err and err.cause:
        err = err.cause
    if not err:
        return "failed"
    return re.sub(r"^[\w.]+: ", "", err.message.strip().splitlines()[0])
