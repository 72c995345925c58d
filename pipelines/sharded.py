"""A run over subject shards (LETHE_SHARDS > 1): split the landing delivery by subject, run
each shard's job as a run of its partition (one after another; the warehouse resource
points a partition's run at the shard's LETHE_HOME), build the union of the shards in the
top LETHE_HOME and run the analytics and compliance job over it. Every run shows in the
top LETHE_HOME's Dagster instance.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection

from lethe.declaration.policy import load_policy
from lethe.operations.home import Home
from lethe.operations.routing import split_landing
from lethe.operations.shards import (
    build_union,
    check_layout,
    check_sources,
    shard_count,
    shard_homes,
)
from pipelines.jobs import SHARD_JOB, UNION_JOB
from pipelines.launch import RunOutcome, run_pipeline


def run_sharded(
    home: Home,
    as_of: dt.date,
    policy_path: str | None = None,
    only: Collection[str] | None = None,
) -> RunOutcome:
    """Run every shard (or the shards named in `only`, e.g. those a request concerns: the
    others' files are only read), then the union job; one outcome, shard failures named
    by shard."""
    policy = load_policy(policy_path)
    n = shard_count()
    check_sources(policy)
    check_layout(home, n)
    # A run of some shards leaves landing/ to the next full run: the other shards would
    # not load their part now.
    errors = [] if only is not None else split_landing(home, policy, n).refused
    failed: list[str] = []
    blocking: list[str] = []
    success = True
    for shard in shard_homes(home, n):
        name = shard.root.name
        if only is not None and name not in only:
            continue
        shard.ensure()
        outcome = run_pipeline(home, as_of, policy_path, job=SHARD_JOB, partition_key=name)
        success &= outcome.success
        errors += [f"shard {name}: {e}" for e in outcome.errors]
        failed += [f"shard {name}: {c}" for c in outcome.failed_checks]
        blocking += [f"shard {name}: {c}" for c in outcome.blocking]
    if blocking:
        # As in one warehouse: analytics and exports wait until the blocking check passes.
        return RunOutcome("", False, errors, failed, blocking)
    build_union(home, policy, n)
    union = run_pipeline(home, as_of, policy_path, job=UNION_JOB)
    return RunOutcome(
        union.run_id,
        success and union.success and not errors,
        errors + union.errors,
        failed + union.failed_checks,
        blocking + union.blocking,
    )
