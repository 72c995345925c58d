"""Turn raw stage measurements into ratios, growth verdicts, target lines, Markdown and a plot.

Absolute seconds are noisy on a shared 2-core machine, so every figure is also given as
a ratio to a baseline measured in the same run: the floor (a plain CTAS rewrite) for
every stage, and the per-subject and Python-masking baselines where they do the same job.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.shard_stages import ERASURE_SHARDS, ERASURES
from bench.stages import STAGES

NOT_AVAILABLE = "not available"
FLOOR = "floor"
GIB = 1 << 30
# Slope of log(time) over log(contacts) between the two largest scales: 1 is linear.
SUPER_LINEAR = 1.2
SUB_LINEAR = 0.8
GROWTH_LIMIT = 1.1  # the target: no stage's slope above it
MILLION = 1_000_000

Scale = dict[str, Any]


def _ok(stage: dict[str, Any] | None) -> bool:
    return bool(stage) and stage.get("status") == "ok"


def _stage(scale: Scale, name: str) -> dict[str, Any] | None:
    stage = scale["stages"].get(name)
    return stage if _ok(stage) else None


def format_scale(contacts: int) -> str:
    """1000000 -> '1m', 100000 -> '100k', 2500 -> '2.5k'."""
    for unit, size in (("m", MILLION), ("k", 1000)):
        if contacts >= size:
            return f"{contacts / size:g}{unit}"
    return str(contacts)


def _seconds(value: float) -> str:
    return f"{value:.3g} s" if value < 100 else f"{value:,.0f} s"


def _bytes(value: int) -> str:
    return f"{value / GIB:.2f} GiB" if value >= GIB else f"{value / (1 << 20):,.0f} MiB"


def _ratio(value: float) -> str:
    return f"{value:.3g}×"


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Stage `a`'s time over stage `b`'s.

    The median of per-round ratios when both ran every round: each pair was measured
    minutes apart at most, so load on a shared machine mostly cancels out. Otherwise the
    ratio of the medians.
    """
    ra, rb = a.get("runs_s") or [], b.get("runs_s") or []
    if ra and len(ra) == len(rb) and all(t > 0 for t in rb):
        return statistics.median(x / y for x, y in zip(ra, rb, strict=True))
    return a["median_s"] / b["median_s"]


def add_floor_ratios(scale: Scale) -> None:
    """Each stage's time as a multiple of the floor's, measured in the same run."""
    floor = _stage(scale, FLOOR)
    for stage in scale["stages"].values():
        if _ok(stage) and floor and floor["median_s"] > 0:
            stage["x_floor"] = ratio(stage, floor)


def comparisons(scale: Scale) -> list[dict[str, Any]]:
    """Lethe against the baseline that does the same job, as 'N× faster' (or the floor ratio)."""
    enforce, floor = _stage(scale, "enforce"), _stage(scale, FLOOR)
    per_subject, mask = _stage(scale, "per_subject"), _stage(scale, "python_mask")
    erasure = _stage(scale, "erasure")
    out: list[dict[str, Any]] = []

    def add(what: str, value: float, how: str) -> None:
        out.append({"what": what, "ratio": value, "how": how})

    if enforce and floor:
        add("enforcement ÷ floor", ratio(enforce, floor), "what policy logic costs")
        add(
            "enforcement ÷ floor, CPU time",
            enforce["cpu_median_s"] / floor["cpu_median_s"],
            "the same, less sensitive to other load on the machine",
        )
    if enforce and per_subject:
        subjects = enforce["details"]["subjects_changed"]
        add(
            "per-subject retention ÷ enforcement",
            ratio(per_subject, enforce) * subjects / per_subject["details"]["batch"],
            f"per-subject cost × the {subjects:,} contacts enforcement changed",
        )
    if enforce and mask:
        add(
            "Python masking ÷ enforcement",
            ratio(mask, enforce),
            "masking contacts and orders cell by cell vs the whole enforcement run",
        )
    if erasure and per_subject:
        add(
            "per-subject erasure ÷ erasure batch",
            ratio(per_subject, erasure),
            f"the same {per_subject['details']['batch']:,} subjects",
        )
    pg_plans, duck_plans = _stage(scale, "pg_plans"), _stage(scale, "duck_plans")
    if pg_plans and duck_plans:
        add(
            "PostgreSQL ÷ DuckDB, enforcement plans",
            ratio(pg_plans, duck_plans),
            "the same plans on the same rows (above 1: DuckDB is faster)",
        )
    pg_enforce = _stage(scale, "pg_enforce")
    if pg_enforce and enforce:
        add(
            "PostgreSQL warehouse ÷ DuckDB, enforcement",
            ratio(pg_enforce, enforce),
            "the whole enforcement on the same landing (above 1: DuckDB is faster)",
        )
    pg_erasure, pg_per_subject = _stage(scale, "pg_erasure"), _stage(scale, "pg_per_subject")
    if pg_erasure and pg_per_subject:
        add(
            "per-subject ÷ set-based erasure at a PostgreSQL source",
            ratio(pg_per_subject, pg_erasure),
            f"the same {pg_per_subject['details']['batch']:,} subjects",
        )
    one, shards = _stage(scale, "first_load_one"), _stage(scale, "first_load_shards")
    if one and shards:
        add(
            f"one warehouse ÷ {shards['details']['shards']} shards, first load",
            ratio(one, shards),
            f"the speed-up of shards: {shards['basis']}",
        )
    full, shard_erasure = _stage(scale, "full_erasure"), _stage(scale, "shard_erasure")
    if full and shard_erasure:
        details = shard_erasure["details"]
        add(
            f"full rewrite ÷ erasure on {details['shards']} shards",
            ratio(full, shard_erasure),
            f"{details['subjects']} subjects; {details['shards_rewritten']} of"
            f" {details['shards']} shards rewritten, then the union",
        )
    return out


def _slope(points: list[tuple[int, float]]) -> float | None:
    """log-log slope between the two largest scales; None with fewer than two timings."""
    if len(points) < 2 or points[-2][1] <= 0 or points[-1][1] <= 0:
        return None
    (n1, t1), (n2, t2) = points[-2], points[-1]
    return math.log(t2 / t1) / math.log(n2 / n1)


def growth(scales: list[Scale]) -> dict[str, dict[str, Any]]:
    """Per stage: microseconds per contact at each scale, log-log slopes, a verdict.

    The slope of wall time is judged together with the slope of CPU time: wall time
    that grows faster than CPU time means waiting (other load, I/O, spilling), not
    more work per row.
    """
    out: dict[str, dict[str, Any]] = {}
    for name in STAGES:
        ran = [
            (s["contacts"], stage)
            for s in sorted(scales, key=lambda s: s["contacts"])
            if (stage := _stage(s, name))
        ]
        points = [(n, st["median_s"]) for n, st in ran]
        slope = _slope(points)
        cpu_slope = _slope([(n, st["cpu_median_s"]) for n, st in ran if "cpu_median_s" in st])
        if slope is None:
            verdict = "n/a (fewer than two scales)"
        elif slope > SUPER_LINEAR and cpu_slope is not None and cpu_slope <= SUPER_LINEAR:
            verdict = "linear in CPU; wall time super-linear (load, I/O or spilling)"
        elif slope > SUPER_LINEAR:
            verdict = "SUPER-LINEAR"
        elif slope < SUB_LINEAR:
            verdict = "sub-linear (fixed costs or fixed-size work)"
        else:
            verdict = "linear"
        out[name] = {
            "points": points,
            "us_per_contact": {format_scale(n): t * MILLION / n for n, t in points},
            "slope": slope,
            "cpu_slope": cpu_slope,
            "verdict": verdict,
        }
    return out


def _at(scales: list[Scale], contacts: int, name: str) -> tuple[dict[str, Any] | None, str]:
    """The stage at that scale, or None and why not."""
    scale = next((s for s in scales if s["contacts"] == contacts), None)
    if scale is None:
        return None, f"scale {format_scale(contacts)} not run"
    stage = scale["stages"].get(name, {})
    if not _ok(stage):
        return None, f"{name}: {stage.get('status', 'missing')} {stage.get('reason', '')}".strip()
    return stage, ""


def _ran(scales: list[Scale], *names: str) -> list[Scale]:
    """The scales at which all of these stages ran."""
    return [s for s in scales if all(_stage(s, n) for n in names)]


def _largest(scales: list[Scale], *names: str) -> Scale | None:
    """The largest scale at which all of these stages ran."""
    ran = _ran(scales, *names)
    return max(ran, key=lambda s: s["contacts"]) if ran else None


def targets(scales: list[Scale]) -> list[dict[str, Any]]:
    """The issue's targets, each PASS, MISS or N/A with the measured value."""
    lines: list[dict[str, Any]] = []

    def line(target: str, passed: bool | None, value: str) -> None:
        status = "N/A" if passed is None else ("PASS" if passed else "MISS")
        lines.append({"target": target, "status": status, "value": value})

    def absolute(target: str, contacts: int, name: str, limit: float) -> None:
        stage, why = _at(scales, contacts, name)
        if stage is None:
            line(target, None, why)
        else:
            line(target, stage["median_s"] < limit, _seconds(stage["median_s"]))

    def relative(target: str, num: str, den: str, test: Callable[[float], bool]) -> None:
        scale = _largest(scales, num, den)
        if scale is None:
            line(target, None, f"{num} or {den} did not run")
            return
        value = ratio(scale["stages"][num], scale["stages"][den])
        line(target, test(value), f"{_ratio(value)} at {format_scale(scale['contacts'])}")

    def at_1m(target: str, num: str, den: str, limit: float, key: str = "median_s") -> None:
        a, why = _at(scales, MILLION, num)
        b, why_b = _at(scales, MILLION, den)
        if a is None or b is None:
            line(target, None, why or why_b)
            return
        value = ratio(a, b) if key == "median_s" else a[key] / b[key]
        line(target, value <= limit, f"{_ratio(value)} at 1m")

    absolute("generate 1m < 60 s", MILLION, "generate", 60)
    absolute("ingest 1m < 20 s", MILLION, "ingest", 20)
    at_1m("enforcement ≤ 1.5× floor at 1m", "enforce", FLOOR, 1.5)
    at_1m("enforcement ≤ 1.5× floor at 1m, CPU time", "enforce", FLOOR, 1.5, "cpu_median_s")
    ingest, why = _at(scales, 10 * MILLION, "ingest")
    enforce, why_e = _at(scales, 10 * MILLION, "enforce")
    if ingest is None or enforce is None:
        line("first load at 10m (ingest + tag + enforce) < 4 min", None, why or why_e)
    else:
        first = ingest["median_s"] + enforce["median_s"]
        line("first load at 10m (ingest + tag + enforce) < 4 min", first < 240, _seconds(first))
    absolute("daily run 1m < 15 s", MILLION, "daily", 15)
    at_1m("daily run 1m ≤ plain load of the landing + one rewrite", "daily", "load_rewrite", 1)
    absolute("daily run 10m < 120 s", 10 * MILLION, "daily", 120)
    daily, why = _at(scales, 10 * MILLION, "daily")
    if daily is None:
        line("daily run 10m peak memory < 8 GiB", None, why)
    else:
        peak = daily["peak_rss_bytes"]
        line("daily run 10m peak memory < 8 GiB", peak < 8 * GIB, _bytes(peak))
    slopes = {
        name: g["slope"]
        for name, g in growth(scales).items()
        if g["slope"] is not None and STAGES[name].kind == "lethe"
    }
    if not slopes:
        line("no stage super-linear (slope ≤ 1.1)", None, "fewer than two scales")
    else:
        worst = max(slopes, key=lambda n: slopes[n])
        line(
            "no stage super-linear (slope ≤ 1.1)",
            slopes[worst] <= GROWTH_LIMIT,
            f"steepest: {worst} {slopes[worst]:.2f}",
        )
    # A declared dialect may cost at most a quarter more than plain CSV (≥ 80 % of its speed).
    relative(
        "declared-dialect CSV ingest ≥ 80 % of plain CSV speed",
        "csv_declared",
        "csv_plain",
        lambda r: r <= 1.25,
    )
    absolute("access export < 0.5 s at 1m", MILLION, "access_export", 0.5)
    absolute("access export < 1 s at 10m", 10 * MILLION, "access_export", 1)
    relative(
        "erasure batch of 10k ≥ 50× faster than per-subject",
        "per_subject",
        "erasure",
        lambda r: r >= 50,
    )
    relative(
        "set-based ≥ 100× faster than per-subject on PostgreSQL",
        "pg_per_subject",
        "pg_erasure",
        lambda r: r >= 100,
    )
    shard_erasure_target(scales, line)
    ten = next((s for s in scales if s["contacts"] == 10 * MILLION), None)
    peaks = [
        st["peak_rss_bytes"]
        for name, st in (ten["stages"].items() if ten else [])
        if _ok(st) and STAGES[name].kind == "lethe"
    ]
    if not peaks:
        line("peak memory at 10m < 8 GiB", None, "scale 10m not run")
    else:
        line("peak memory at 10m < 8 GiB", max(peaks) < 8 * GIB, _bytes(max(peaks)))
    return lines


SHARD_ERASURE_TARGET = (
    f"erasure of {ERASURES} subjects on {ERASURE_SHARDS} shards ≥ 5× faster than a full rewrite"
)
Line = Callable[[str, bool | None, str], None]


def shard_erasure_target(scales: list[Scale], line: Line) -> None:
    """The shard erasure's target, judged at the largest scale where it ran on 16 shards
    (a tiny run uses fewer)."""
    ran = [
        s
        for s in _ran(scales, "shard_erasure", "full_erasure")
        if s["stages"]["shard_erasure"]["details"]["shards"] == ERASURE_SHARDS
    ]
    if not ran:
        why = f"shard_erasure or full_erasure did not run on {ERASURE_SHARDS} shards"
        line(SHARD_ERASURE_TARGET, None, why)
        return
    scale = max(ran, key=lambda s: s["contacts"])
    stages = scale["stages"]
    value = ratio(stages["full_erasure"], stages["shard_erasure"])
    rewritten = stages["shard_erasure"]["details"]["shards_rewritten"]
    line(
        SHARD_ERASURE_TARGET,
        value >= 5,
        f"{_ratio(value)} at {format_scale(scale['contacts'])}, {rewritten} shards rewritten",
    )


def build(meta: dict[str, Any], scales: list[Scale]) -> dict[str, Any]:
    """The full report: raw scales with floor ratios, comparisons, growth and targets."""
    for scale in scales:
        add_floor_ratios(scale)
        scale["comparisons"] = comparisons(scale)
    return {"meta": meta, "scales": scales, "growth": growth(scales), "targets": targets(scales)}


def _stage_row(name: str, stage: dict[str, Any]) -> str:
    title = STAGES[name].title
    if stage.get("status") != "ok":
        return f"| {title} | {stage.get('status')}: {stage.get('reason', '')} | | | | | | |"
    spread = f"{_seconds(stage['min_s'])} – {_seconds(stage['max_s'])}"
    floor = _ratio(stage["x_floor"]) if "x_floor" in stage else ""
    scope = "" if stage["peak_rss_scope"] == "run" else " (process)"
    return (
        f"| {title} | {_seconds(stage['median_s'])} | {spread} | {floor}"
        f" | {_seconds(stage['cpu_median_s'])} | {_bytes(stage['peak_rss_bytes'])}{scope}"
        f" | {stage['reps']} | {stage['basis']} |"
    )


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one table per scale, comparisons, growth, targets."""
    meta = report["meta"]
    out = [
        "# Lethe benchmark",
        "",
        f"{meta['started']} · {meta['machine']} · Python {meta['python']} · DuckDB"
        f" {meta['duckdb']} · Polars {meta['polars']} · commit {meta['commit']}",
        "",
        f"Load average (1 / 5 / 15 min) before: {meta['load_before']}, after:"
        f" {meta['load_after']}. Above the core count, other processes slowed the wall times;"
        " CPU time is less affected.",
        "",
        "Median of the repetitions (min – max beside it); × floor is the stage's time over"
        " the floor's, paired by round in the same run. Peak RSS is the stage process's"
        " high-water mark during the timed part. See bench/README.md.",
    ]
    for scale in report["scales"]:
        rows = scale.get("rows") or {}
        out += [
            "",
            f"## {format_scale(scale['contacts'])} contacts"
            + (f" ({sum(rows.values()):,} rows)" if rows else ""),
            "",
            "| stage | median | min – max | × floor | CPU | peak RSS | reps | how |",
            "|---|---|---|---|---|---|---|---|",
            # Lethe's stages first, then the baselines.
            *(
                _stage_row(name, scale["stages"][name])
                for name in sorted(scale["stages"], key=lambda n: STAGES[n].kind != "lethe")
            ),
        ]
        if scale["comparisons"]:
            out += [
                "",
                "| comparison (baseline ÷ Lethe > 1: Lethe is faster) | ratio | how |",
                "|---|---|---|",
            ]
            out += [
                f"| {c['what']} | {_ratio(c['ratio'])} | {c['how']} |" for c in scale["comparisons"]
            ]
    labels = [
        format_scale(s["contacts"]) for s in sorted(report["scales"], key=lambda s: s["contacts"])
    ]
    out += [
        "",
        "## Growth",
        "",
        "Microseconds per contact at each scale (wall time); slope of log(time) against"
        " log(contacts) between the two largest scales, for wall and CPU time (1 = linear,"
        f" > {SUPER_LINEAR} flagged super-linear).",
        "",
        "| stage | " + " | ".join(labels) + " | slope | CPU slope | verdict |",
        "|---|" + "---|" * len(labels) + "---|---|---|",
    ]
    for name, g in report["growth"].items():
        if not g["points"]:
            continue
        cells = [g["us_per_contact"].get(label) for label in labels]
        slopes = [f"{x:.2f}" if x is not None else "" for x in (g["slope"], g["cpu_slope"])]
        out.append(
            f"| {STAGES[name].title} | "
            + " | ".join(f"{c:,.3g} µs" if c is not None else "" for c in cells)
            + f" | {' | '.join(slopes)} | {g['verdict']} |"
        )
    out += ["", "## Targets", "", "```"]
    out += [f"{t['status']:<5} {t['target']}: {t['value']}" for t in report["targets"]]
    out += ["```", ""]
    return "\n".join(out)


def plot(report: dict[str, Any], path: Path) -> bool:
    """Time against scale (log-log, min–max bars, a linear guide) per stage; False if nothing ran.

    The dotted guide is linear growth through the next-to-largest scale: a last point
    above it grew super-linearly.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = [n for n, g in report["growth"].items() if g["points"]]
    if not names:
        return False
    columns = 3
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names, strict=False):
        spans = [
            (s["contacts"], s["stages"][name])
            for s in sorted(report["scales"], key=lambda s: s["contacts"])
            if _ok(s["stages"].get(name))
        ]
        x = [n for n, _ in spans]
        y = [st["median_s"] for _, st in spans]
        low = [st["median_s"] - st["min_s"] for _, st in spans]
        high = [st["max_s"] - st["median_s"] for _, st in spans]
        color = "tab:blue" if STAGES[name].kind == "lethe" else "tab:gray"
        ax.errorbar(x, y, yerr=[low, high], marker="o", capsize=3, color=color)
        if len(x) > 1:
            # Linear growth through the next-to-largest scale: where the slope is judged.
            anchor_x, anchor_y = x[-2], y[-2]
            ax.plot(
                [x[0], x[-1]],
                [anchor_y * x[0] / anchor_x, anchor_y * x[-1] / anchor_x],
                ":",
                color="black",
                lw=1,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(STAGES[name].title, fontsize=10)
        ax.set_xlabel("contacts")
        ax.set_ylabel("seconds")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(
        "Time against scale: Lethe (blue), baselines (gray);"
        " dotted: linear through the next-to-largest scale"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
