"""Subject shards in the benchmark: a first load on one warehouse against 4 shards, and an
erasure of 20 subjects on 16 shards against a full rewrite of one warehouse.

Every stage goes through the product's own entry points, as `lethe run` does:
`pipelines.launch.run_pipeline` for one warehouse, `pipelines.sharded.run_sharded` with
LETHE_SHARDS for shards (the split of the landing, each shard's run, the union and the
analytics over it). Whether the shards ran one after another or side by side is read
afterwards from the start and end times of the shard runs in the Dagster instance, so the
figures follow whatever `run_sharded` does.

- `first_load_one` / `first_load_shards`: the landing fixture loaded and enforced as of
  the reference date into a fresh LETHE_HOME, without and with 4 shards.
- `full_erasure` / `shard_erasure`: 20 erasure requests recorded (set-up) in a copy of a
  first-loaded home, then one run: the whole pipeline on one warehouse, or the runs of the
  shards holding those subjects (`lethe run --shard NN` for each) and the union.
  Rewritten shards are counted from their warehouse files' modification times.

Below `SMALL` contacts the erasure runs on 4 shards instead of 16: a tiny run checks the
harness (each shard run costs seconds of Dagster set-up, whatever its size), and the
target is judged only on 16 shards.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.stages import (
    POLICY,
    REFERENCE,
    Context,
    Stage,
    StageResult,
    Timed,
    subjects_from,
)
from lethe.declaration.policy import load_policy
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from lethe.operations.shards import SHARDS_ENV, shard_homes, subject_shard
from lethe.rights.requests import record_request

LOAD_SHARDS = 4
ERASURE_SHARDS = 16
SMALL = 10_000  # below it, the erasure runs on LOAD_SHARDS shards (see the module docstring)
ERASURES = 20
PARTITION_TAG = "dagster/partition"
SAMPLE_INTERVAL = 0.5  # seconds between samples of workers' memory (a scan: ~6 ms)
STEPS_LOOKED_AT = 1000  # step starts read per shard run, for the pids that ran them


def erasure_shards(contacts: int) -> int:
    """Shards of the erasure stage's warehouse at this scale."""
    return ERASURE_SHARDS if contacts >= SMALL else LOAD_SHARDS


def _first_load(home: Home, shards: int) -> Any:
    """The landing under `home` loaded and enforced as of REFERENCE, as `lethe run` does it
    (LETHE_SHARDS set for this process: the product reads it at every call)."""
    from pipelines.launch import run_pipeline
    from pipelines.sharded import run_sharded

    os.environ[SHARDS_ENV] = str(shards)
    if shards == 1:
        return run_pipeline(home, REFERENCE, str(POLICY))
    return run_sharded(home, REFERENCE, str(POLICY))


def _checked(outcome: Any, what: str) -> None:
    """A run that did not succeed fails the stage: its time would mean nothing."""
    if not outcome.success:
        problems = [*outcome.errors, *outcome.blocking, *outcome.failed_checks] or ["failed"]
        raise RuntimeError(f"{what}: {problems[0]}")


def _fixture(name: str, shards: int) -> str:
    return f"{name}-{shards}"


def _first_loaded(ctx: Context, shards: int) -> Home:
    """A copy of the first-loaded home with `shards` shards (built once per scale, set-up)."""
    fixture = ctx.fixtures / _fixture("first-load", shards)
    if not fixture.exists():
        building = Home(ctx.work / "building").ensure()
        shutil.copytree(ctx.landing, building.landing, dirs_exist_ok=True)
        _checked(_first_load(building, shards), f"first load on {shards} shard(s)")
        os.replace(building.root, fixture)
    home = Home(ctx.work / "home")
    shutil.copytree(fixture, home.root, symlinks=True)
    os.environ[SHARDS_ENV] = str(shards)
    return home


def _fresh_home(ctx: Context) -> Home:
    home = ctx.home()
    shutil.copytree(ctx.landing, home.landing, dirs_exist_ok=True)
    return home


def _vm_hwm(pid: int | str) -> int:
    """A process's resident-set high-water mark (bench.child resets its own before the
    run); 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


class DescendantPeaks:
    """Samples the peak RSS of every descendant of this process while a run is under way:
    worker processes that ran shards are found afterwards by the pids their steps logged,
    and the kernel keeps no per-process peak of a child once it has been waited for."""

    def __init__(self, interval: float = SAMPLE_INTERVAL) -> None:
        self.interval = interval
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _descendants(self) -> list[int]:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    # The command name may hold spaces; the parent's pid follows its ')'.
                    parents[int(entry.name)] = int(
                        (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                    )
                except (OSError, IndexError, ValueError):
                    continue
        found, frontier = [], [os.getpid()]
        while frontier:
            parent = frontier.pop()
            children = [pid for pid, ppid in parents.items() if ppid == parent]
            found += children
            frontier += children
        return found

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in self._descendants():
                self.peaks[pid] = max(self.peaks.get(pid, 0), _vm_hwm(pid))

    def __enter__(self) -> DescendantPeaks:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class ShardRuns:
    """The shard runs one timed run made, as the Dagster instance recorded them."""

    spans: list[tuple[str, float, float]]  # (shard, start, end), by start
    pids: set[int]  # the processes that ran their steps

    def at_once(self) -> int:
        """The most shard runs that were under way at the same moment."""
        events = sorted([(s, 1) for _, s, _ in self.spans] + [(e, -1) for _, _, e in self.spans])
        most = current = 0
        for _, step in events:
            current += step
            most = max(most, current)
        return most

    def order(self) -> str:
        if not self.spans:
            return "shard runs not found in the Dagster instance"
        most = self.at_once()
        if most <= 1:
            return f"{len(self.spans)} shard runs one after another"
        return f"{len(self.spans)} shard runs side by side (up to {most} at once)"

    def seconds(self) -> float:
        return sum(end - start for _, start, end in self.spans)

    def workers(self, sampled: DescendantPeaks) -> tuple[str, int | None]:
        """Where the shard runs' steps ran, and the peak RSS per worker (None: a worker
        ended before it was sampled)."""
        others = self.pids - {os.getpid()}
        if not others:
            return "the stage process", _vm_hwm("self")
        peaks = [sampled.peaks.get(pid, 0) for pid in others]
        where = f"{len(others)} worker processes"
        return where, max(peaks) if all(peaks) else None


def _shard_runs(home: Home, before: set[str]) -> ShardRuns:
    """The shard runs recorded in the Dagster instance of `home` since the run ids in
    `before`: their spans and the pids their steps logged."""
    import dagster as dg

    from pipelines.instance import prepare_instance
    from pipelines.jobs import SHARD_JOB

    instance = prepare_instance(home)
    spans, pids = [], set()
    for record in instance.get_run_records():
        run = record.dagster_run
        if run.run_id in before or run.job_name != SHARD_JOB:
            continue
        if record.start_time is not None and record.end_time is not None:
            spans.append((run.tags.get(PARTITION_TAG, "?"), record.start_time, record.end_time))
        steps = instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.STEP_START, limit=STEPS_LOOKED_AT
        ).records
        pids |= {r.event_log_entry.dagster_event.pid for r in steps}
    return ShardRuns(sorted(spans, key=lambda r: r[1]), pids)


def _run_ids(home: Home) -> set[str]:
    if not home.dagster.exists():
        return set()
    from pipelines.instance import prepare_instance

    return {r.dagster_run.run_id for r in prepare_instance(home).get_run_records()}


def _mib(value: int | None) -> str:
    return "not sampled" if value is None else f"{value / (1 << 20):,.0f} MiB"


def first_load_one_stage(ctx: Context) -> Timed:
    """First load on one warehouse: `lethe run` on the landing (ingest, tag, enforce,
    answers, backups, analytics, compliance), as of REFERENCE."""
    home = _fresh_home(ctx)
    os.environ[SHARDS_ENV] = "1"

    def run() -> StageResult:
        _checked(_first_load(home, 1), "first load on one warehouse")
        return StageResult(basis="one warehouse, one run")

    return run


def first_load_shards_stage(ctx: Context) -> Timed:
    """First load on 4 shards: `lethe run` with LETHE_SHARDS=4 (split of the landing by
    subject, each shard's run, the union and the analytics over it), as of REFERENCE."""
    home = _fresh_home(ctx)

    def run() -> StageResult:
        with DescendantPeaks() as sampled:
            start = time.perf_counter()
            _checked(_first_load(home, LOAD_SHARDS), f"first load on {LOAD_SHARDS} shards")
            seconds = time.perf_counter() - start
        runs = _shard_runs(home, set())
        where, peak = runs.workers(sampled)
        return StageResult(
            seconds=seconds,
            basis=f"{LOAD_SHARDS} shards: {runs.order()} in {where};"
            f" peak RSS per worker {_mib(peak)}",
            details={
                "shards": LOAD_SHARDS,
                "shard_runs": len(runs.spans),
                "at_once": runs.at_once(),
                "workers": where,
                "peak_rss_per_worker_bytes": peak,
                "shard_runs_s": runs.seconds(),
            },
        )

    return run


def _request_erasures(home: Home, subjects: list[str], shards: int) -> set[str]:
    """An erasure request per subject, recorded where `lethe request` records it (the
    subject's shard with shards); the names of the shards that got one."""
    schema = load_policy(POLICY).data_schema
    now = dt.datetime(REFERENCE.year, REFERENCE.month, REFERENCE.day)
    got = set()
    for subject in subjects:
        where = home if shards == 1 else subject_shard(home, schema, subject, shards)
        con = connect(where.warehouse)
        try:
            record_request(con, schema, "erasure", subject, now=now)
        finally:
            con.close()
        got.add(where.root.name)
    return got


def full_erasure_stage(ctx: Context) -> Timed:
    """20 erasures on one warehouse: the whole pipeline run, which rewrites the warehouse."""
    from pipelines.launch import run_pipeline

    home = _first_loaded(ctx, 1)
    _request_erasures(home, subjects_from(home.warehouse, ERASURES), 1)

    def run() -> StageResult:
        _checked(run_pipeline(home, REFERENCE, str(POLICY)), "erasure run on one warehouse")
        return StageResult(
            basis=f"{ERASURES} erasures, one warehouse rewritten", details={"subjects": ERASURES}
        )

    return run


def shard_erasure_stage(ctx: Context) -> Timed:
    """20 erasures on 16 shards: the requests recorded in their subjects' shards (set-up),
    then `lethe run --shard NN` for those shards (one run, then the union)."""
    from pipelines.sharded import run_sharded

    shards = erasure_shards(ctx.contacts)
    home = _first_loaded(ctx, shards)
    subjects = subjects_from(home.warehouse, ERASURES)  # the union: every subject
    affected = _request_erasures(home, subjects, shards)
    files = [s.warehouse for s in shard_homes(home, shards)]
    stamps = {f: f.stat().st_mtime_ns for f in files}
    before = _run_ids(home)

    def run() -> StageResult:
        with DescendantPeaks() as sampled:
            start = time.perf_counter()
            outcome = run_sharded(home, REFERENCE, str(POLICY), only=affected)
            seconds = time.perf_counter() - start
        _checked(outcome, "erasure on shards")
        rewritten = sum(f.stat().st_mtime_ns != stamps[f] for f in files)
        runs = _shard_runs(home, before)
        where, peak = runs.workers(sampled)
        return StageResult(
            seconds=seconds,
            basis=f"{ERASURES} erasures on {shards} shards, {rewritten} rewritten"
            f" (modification times): {runs.order()} in {where}, then the union",
            details={
                "subjects": len(subjects),
                "shards": shards,
                "shards_with_requests": len(affected),
                "shards_rewritten": rewritten,
                "at_once": runs.at_once(),
                "workers": where,
                "peak_rss_per_worker_bytes": peak,
                "shard_runs_s": runs.seconds(),
            },
        )

    return run


SHARD_STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "first_load_one",
            "first load, one warehouse",
            "lethe",
            first_load_one_stage,
            requires=("pipelines.sharded", "run_sharded"),
            produces=("home", _fixture("first-load", 1)),
        ),
        Stage(
            "first_load_shards",
            f"first load, {LOAD_SHARDS} shards",
            "lethe",
            first_load_shards_stage,
            requires=("pipelines.sharded", "run_sharded"),
            produces=("home", _fixture("first-load", LOAD_SHARDS)),
        ),
        Stage(
            "full_erasure",
            f"erasure of {ERASURES}, full rewrite",
            "baseline",
            full_erasure_stage,
            requires=("pipelines.sharded", "run_sharded"),
        ),
        Stage(
            "shard_erasure",
            f"erasure of {ERASURES} on {ERASURE_SHARDS} shards",
            "lethe",
            shard_erasure_stage,
            requires=("pipelines.sharded", "run_sharded"),
        ),
    )
}
