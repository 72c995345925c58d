"""The harness: every stage at every scale, each repetition in a fresh process, then report.

    python -m bench [--scale 1m] [--scales 10k,100k,1m] [--reps N] [--out DIR]
                    [--workdir DIR] [--keep-work] [--profile STAGE]

`--scale S` runs the three decades up to S (S/100, S/10, S; at least 1,000 contacts) so
the growth of every stage shows in one run: 1m runs 10k, 100k and 1m; 10m runs 100k, 1m
and 10m. Writes latest.json, latest.md and growth.png into the output directory and
prints the Markdown. Exits 1 if any stage failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from bench import postgres_stages, report
from bench.stages import STAGES, Stage

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results"
MIN_SCALE = 1000
BIG_SCALE = 1_000_000  # above it one repetition by default: a 10m stage takes minutes


def parse_scale(text: str) -> int:
    """'100k' -> 100000, '1m' -> 1000000, '2000' -> 2000."""
    text = text.strip().lower().replace("_", "")
    multiplier = {"k": 1000, "m": 1_000_000}.get(text[-1:], 1)
    number = text[:-1] if multiplier > 1 else text
    try:
        value = round(float(number) * multiplier)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a scale like 100k, 1m or 2000") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a scale is at least 1 contact")
    return value


def ladder(top: int) -> list[int]:
    """Three decades ending at `top` (none below MIN_SCALE, unless `top` itself is)."""
    return sorted({top, *(max(MIN_SCALE, top // d) for d in (10, 100) if top >= MIN_SCALE)})


def default_reps(contacts: int) -> int:
    return 3 if contacts <= BIG_SCALE else 1


def run_child(
    stage: Stage, contacts: int, fixtures: Path, work: Path, profile: Path | None = None
) -> dict[str, Any]:
    """One repetition in a fresh interpreter; its measurement, or {'error': ...}."""
    cmd = [sys.executable, "-m", "bench.child", stage.name, "--contacts", str(contacts)]
    cmd += ["--fixtures", str(fixtures), "--work", str(work)]
    if profile:
        cmd += ["--profile", str(profile)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return {"error": f"killed by {name}{hint}"}
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        return {"error": lines[-1][:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and spread of the repetitions; the first error fails the stage."""
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        return {"status": "failed", "reason": errors[0]}
    seconds = [r["seconds"] for r in runs]
    return {
        "status": "ok",
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "runs_s": seconds,
        "reps": len(runs),
        "measured_median_s": statistics.median(r["measured_seconds"] for r in runs),
        "cpu_median_s": statistics.median(r["cpu_seconds"] for r in runs),
        "factor": runs[0]["factor"],
        "basis": runs[0]["basis"],
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "peak_rss_scope": runs[0]["peak_rss_scope"],
        "details": runs[0]["details"],
    }


def bench_scale(
    contacts: int,
    reps: int,
    root: Path,
    unavailable: dict[str, str],
    log: Callable[[str], None],
    profile: tuple[str, Path] | None = None,
) -> dict[str, Any]:
    """Every stage at one scale, in rounds: each round runs every stage once, in order.

    Rounds keep a stage's repetitions apart in time and each stage next to its baseline
    (floor right after enforcement), so a burst of load on a shared machine hits one
    repetition, and paired ratios compare runs made seconds apart. The first round's
    `generate`, `ingest` and `enforce` leave the fixtures (landing, ingested warehouse,
    enforced home) the other stages start from. `unavailable` maps stages whose core
    function has not landed to why.
    """
    label = report.format_scale(contacts)
    base = root / str(contacts)
    fixtures = base / "fixtures"
    fixtures.mkdir(parents=True, exist_ok=True)
    runnable = [s for s in STAGES.values() if s.name not in unavailable]
    runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in runnable}
    for name, why in unavailable.items():
        log(f"[{label}] {name}: {report.NOT_AVAILABLE} ({why})")
    for rep in range(1, reps + 1):
        for stage in runnable:
            if any("error" in r for r in runs[stage.name]):
                continue  # failed once: its figures would mean nothing
            work = base / f"{stage.name}-{rep}"
            out = run_child(stage, contacts, fixtures, work)
            if "error" not in out and stage.produces:
                made, fixture = work / stage.produces[0], fixtures / stage.produces[1]
                if not fixture.exists():
                    os.replace(made, fixture)
            shutil.rmtree(work, ignore_errors=True)
            runs[stage.name].append(out)
            if "error" in out:
                log(f"[{label}] {stage.name} {rep}/{reps}: FAILED {out['error']}")
                continue
            timed = f", {out['measured_seconds']:.3f} s timed" if out["factor"] != 1 else ""
            log(
                f"[{label}] {stage.name} {rep}/{reps}: {out['seconds']:.3f} s{timed}"
                f" (peak RSS {out['peak_rss_bytes'] / (1 << 20):,.0f} MiB)"
            )
    if profile and profile[0] in runs and not any("error" in r for r in runs[profile[0]]):
        work = base / f"{profile[0]}-profile"
        out = run_child(STAGES[profile[0]], contacts, fixtures, work, profile=profile[1])
        shutil.rmtree(work, ignore_errors=True)
        log(f"[{label}] {profile[0]} profile: {out.get('error') or profile[1]}")
    stages: dict[str, Any] = {}
    for stage in STAGES.values():
        if stage.name in unavailable:
            stages[stage.name] = {"status": report.NOT_AVAILABLE, "reason": unavailable[stage.name]}
        else:
            stages[stage.name] = summarize(runs[stage.name])
    generated = stages["generate"].get("details", {}).get("rows", {})
    return {"contacts": contacts, "reps": reps, "rows": generated, "stages": stages}


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' (uncommitted changes)' if dirty else ''}" if head else "unknown"


def _load() -> str:
    """Load averages over 1, 5 and 15 minutes: other work on the machine skews wall times."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def _machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return f"{os.cpu_count()} cores, {memory:.1f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scale",
        type=parse_scale,
        default=parse_scale("1m"),
        help="largest scale (100k, 1m, 10m); runs the three decades up to it (default 1m)",
    )
    parser.add_argument(
        "--scales",
        type=lambda t: sorted({parse_scale(s) for s in t.split(",")}),
        help="explicit comma-separated scales instead of the ladder of --scale",
    )
    parser.add_argument("--reps", type=int, help="repetitions at every scale (default 3, 1 >1m)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default bench/results")
    parser.add_argument("--workdir", type=Path, help="where the scratch directory goes (temp)")
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--profile",
        choices=sorted(STAGES),
        help="also profile this stage once at the largest scale (pyinstrument)",
    )
    parser.add_argument(
        "--stages",
        type=lambda t: t.split(","),
        help="run only these comma-separated stages (the later stages need generate, ingest"
        " and enforce for their fixtures); the others are reported as not run",
    )
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    if args.stages and (unknown := set(args.stages) - set(STAGES)):
        parser.error(f"--stages: unknown stage(s) {', '.join(sorted(unknown))}")

    scales = args.scales or ladder(args.scale)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    # A fresh directory of our own, even inside --workdir: it is removed afterwards.
    root = Path(tempfile.mkdtemp(prefix="lethe-bench-", dir=args.workdir))
    # On SIGTERM too, so the scratch data (gigabytes at 10m) does not stay behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    meta = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "polars": pl.__version__,
        "commit": _commit(),
        "scales": scales,
        "load_before": _load(),
    }

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # Detected once, before any work: a module that lands broken fails the run at once.
    unavailable = {s.name: why for s in STAGES.values() if (why := s.missing())}
    for name in STAGES if args.stages else ():
        if name not in args.stages:
            unavailable.setdefault(name, "not selected (--stages)")
    results = []
    runnable = [s for s in STAGES.values() if s.name not in unavailable]
    try:
        with postgres_stages.server_for(runnable):  # a server only if a stage needs one
            for contacts in scales:
                reps = args.reps or default_reps(contacts)
                profile = None
                if args.profile and contacts == scales[-1]:
                    profile = (args.profile, args.out / f"profile-{args.profile}.txt")
                results.append(bench_scale(contacts, reps, root, unavailable, log, profile))
    finally:
        if not args.keep_work:
            shutil.rmtree(root, ignore_errors=True)
    meta["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    meta["load_after"] = _load()

    full = report.build(meta, results)
    (args.out / "latest.json").write_text(json.dumps(full, indent=2, default=str) + "\n")
    text = report.markdown(full)
    (args.out / "latest.md").write_text(text)
    report.plot(full, args.out / "growth.png")
    print(text)
    failed = any(st["status"] == "failed" for s in results for st in s["stages"].values())
    return 1 if failed else 0
