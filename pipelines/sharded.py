"""A run over subject shards (LETHE_SHARDS > 1): split the landing delivery by subject, run
each shard's job as a run of its partition, side by side, each in a process of its own (up
to LETHE_SHARD_WORKERS at once; the warehouse resource points a partition's run at the
shard's LETHE_HOME), then build the union of the shards in the top LETHE_HOME and run the
analytics and compliance job over it. Every run shows in the top LETHE_HOME's Dagster
instance.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import resource
import signal
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

from lethe.declaration.policy import load_policy
from lethe.operations.home import Home
from lethe.operations.routing import split_landing
from lethe.operations.shards import (
    build_union,
    check_layout,
    check_sources,
    shard_count,
    shard_homes,
    worker_count,
)
from pipelines.instance import prepare_instance
from pipelines.jobs import SHARD_JOB, UNION_JOB
from pipelines.launch import RunOutcome, run_pipeline
from pipelines.resources import SPLIT_TAG, UNION_TAG


@dataclass
class ShardRun:
    """How one shard's run went (names and counts only)."""

    shard: str
    success: bool
    seconds: float
    # The worker process's peak resident memory (0 when it died before reporting it).
    peak_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)


def _shard_worker(
    send: Connection, root: str, as_of: dt.date, policy_path: str | None, shard: str
) -> None:
    """In a process of its own: run `shard`'s partition of the shard job; send its outcome
    and the process's peak memory back."""
    os.umask(0o077)
    try:
        home = Home(Path(root))
        home.shard(shard).ensure()
        outcome = run_pipeline(
            home,
            as_of,
            policy_path,
            job=SHARD_JOB,
            partition_key=shard,
            tags={SPLIT_TAG: "done"},
        )
        result = (outcome.success, outcome.errors, outcome.failed_checks, outcome.blocking)
    except Exception as exc:  # noqa: BLE001 - reported by the parent in one line, as a bug
        first = (str(exc).strip().splitlines() or [""])[0]
        result = (False, [f"{type(exc).__name__}: {first}"], [], [])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    send.send((*result, peak))
    send.close()


def run_shards(
    home: Home,
    as_of: dt.date,
    policy_path: str | None,
    shards: list[str],
    workers: int,
    progress: Callable[[ShardRun], None] | None = None,
) -> list[ShardRun]:
    """Run each of `shards` in a process of its own, up to `workers` at once; a shard
    whose run fails or whose process dies does not stop the others. In the order they
    finish."""
    # A fresh interpreter per shard: no lock, thread or open file of this process is
    # inherited, and each worker's peak memory is its shard's.
    context = multiprocessing.get_context("spawn")
    waiting = list(shards)
    running: dict[int, tuple[str, multiprocessing.process.BaseProcess, Connection, float]] = {}
    received: dict[str, tuple | None] = {}
    done: list[ShardRun] = []
    while waiting or running:
        while waiting and len(running) < workers:
            shard = waiting.pop(0)
            recv, send = context.Pipe(duplex=False)
            process = context.Process(
                target=_shard_worker,
                args=(send, str(home.root), as_of, policy_path, shard),
                name=f"lethe-shard-{shard}",
            )
            process.start()
            send.close()
            running[process.sentinel] = (shard, process, recv, time.monotonic())
        unread = {id(r[2]): r for r in running.values() if r[0] not in received}
        ready = wait([*running, *(r[2] for r in unread.values())])
        for item in ready:
            if not isinstance(item, int):
                shard, _, recv, _ = unread[id(item)]
                received[shard] = _receive(recv)
        for item in ready:
            if isinstance(item, int):
                shard, process, recv, started = running.pop(item)
                process.join()
                if shard not in received and recv.poll():
                    received[shard] = _receive(recv)
                recv.close()
                run = _finished(shard, process.exitcode, received.get(shard), started)
                done.append(run)
                if progress:
                    progress(run)
    return done


def _receive(recv: Connection) -> tuple | None:
    """A worker's outcome, or None when it died before sending one."""
    try:
        return recv.recv()
    except EOFError:
        return None


def _finished(shard: str, exitcode: int | None, result: tuple | None, started: float) -> ShardRun:
    seconds = time.monotonic() - started
    if result is None:
        how = (
            f"killed by {signal.Signals(-exitcode).name}"
            if exitcode and exitcode < 0
            else f"exit code {exitcode}"
        )
        # Its shard is wholly before this run or wholly after it (a shard's run is as
        # crash-safe as one warehouse's); the next run completes it.
        return ShardRun(shard, False, seconds, errors=[f"its worker stopped ({how})"])
    success, errors, failed_checks, blocking, peak = result
    return ShardRun(shard, success, seconds, peak, errors, failed_checks, blocking)


def run_sharded(
    home: Home,
    as_of: dt.date,
    policy_path: str | None = None,
    only: Collection[str] | None = None,
    progress: Callable[[ShardRun], None] | None = None,
) -> RunOutcome:
    """Run every shard (or the shards named in `only`, e.g. those a request concerns: the
    others' files are only read) side by side, then the union job; one outcome, shard
    failures named by shard. `progress` hears of each shard as it finishes."""
    policy = load_policy(policy_path)
    n = shard_count()
    workers = worker_count()
    check_sources(policy)
    check_layout(home, n)
    # A run of some shards leaves landing/ to the next full run: the other shards would
    # not load their part now.
    errors = [] if only is not None else split_landing(home, policy, n).refused
    _create_storage(home)
    names = [s.root.name for s in shard_homes(home, n) if only is None or s.root.name in only]
    runs = sorted(run_shards(home, as_of, policy_path, names, workers, progress), key=_shard)
    errors += [f"shard {r.shard}: {e}" for r in runs for e in r.errors]
    failed = [f"shard {r.shard}: {c}" for r in runs for c in r.failed_checks]
    blocking = [f"shard {r.shard}: {c}" for r in runs for c in r.blocking]
    # Every shard is wholly before this run or wholly after it, and each subject lives in
    # one shard, so the union is always each subject's latest state: rebuilt even after a
    # failure, so that what a shard erased leaves the top warehouse too.
    build_union(home, policy, n)
    if errors or blocking or not all(r.success for r in runs):
        # As in one warehouse when a step fails: no analysts' datasets or documents from a
        # day on which a shard did not enforce.
        return RunOutcome("", False, errors, failed, blocking)
    union = run_pipeline(home, as_of, policy_path, job=UNION_JOB, tags={UNION_TAG: "built"})
    return RunOutcome(
        union.run_id,
        union.success and not union.errors,
        union.errors,
        failed + union.failed_checks,
        union.blocking,
    )


def _create_storage(home: Home) -> None:
    """Create the Dagster instance's storage (opening it does) before the workers open it:
    workers creating the same SQLite databases at once race on their schema versions."""
    prepare_instance(home).dispose()


def _shard(run: ShardRun) -> str:
    return run.shard
