"""Run one repetition of one stage in this (fresh) process and print its measurement.

`python -m bench.child STAGE --contacts N --fixtures DIR --work DIR [--profile FILE]`
runs the stage's untimed set-up, then times its run (wall and CPU time) and reads the
process's peak RSS during the run. The last stdout line is one JSON object; the parent
parses only that.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import time
from pathlib import Path

from bench.stages import STAGES, Context


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux ≥ 4.0), so set-up does not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes(reset: bool) -> int:
    """Peak RSS since the reset (VmHWM), or over the process's life if it could not reset."""
    if reset:
        status = Path("/proc/self/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            return int(match.group(1)) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _cpu_seconds() -> float:
    """User + system CPU time of this process, DuckDB's worker threads included, and of
    the child processes it waited for (a stage's work may run in worker processes)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.child")
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--contacts", type=int, required=True)
    parser.add_argument("--fixtures", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile of the run")
    args = parser.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    timed = STAGES[args.stage].prepare(Context(args.contacts, args.fixtures, args.work))
    gc.collect()
    reset = _reset_peak_rss()
    profiler = None
    if args.profile:
        from pyinstrument import Profiler  # optional: only installed with the bench extra

        profiler = Profiler(interval=0.01)
        profiler.start()
    cpu_start, start = _cpu_seconds(), time.perf_counter()
    result = timed()
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    if profiler is not None:
        profiler.stop()
        args.profile.write_text(profiler.output_text(unicode=True, show_all=False))
        profiler.write_html(args.profile.with_suffix(".html"))
    measured = result.seconds if result.seconds is not None else wall
    print(
        json.dumps(
            {
                "seconds": measured * result.factor,
                "measured_seconds": wall,
                "cpu_seconds": cpu * result.factor,
                "factor": result.factor,
                "basis": result.basis,
                "peak_rss_bytes": _peak_rss_bytes(reset),
                "peak_rss_scope": "run" if reset else "process",
                "details": result.details,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
