"""The benchmark harness: the whole run at a tiny scale, and its scale and growth arithmetic.

Nothing here depends on timings: only the shape of what the harness reports is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from bench import report
from bench.postgres_stages import PostgresStage
from bench.run import ladder, parse_scale
from bench.shard_stages import SHARD_STAGES, ShardRuns
from bench.stages import STAGES, Stage, generate_stage
from tests.postgres import server_binaries


def _harness(tmp_path: Path, stages: list[str]) -> tuple[dict, str, Path]:
    """Run the harness at 1,000 contacts, one rep, only `stages` (and what they start from);
    its JSON report, its stdout and the results folder."""
    out, work = tmp_path / "results", tmp_path / "work"
    proc = subprocess.run(
        # One scale: growth across scales has its own tests below, on made-up figures.
        [sys.executable, "-m", "bench", "--scales", "1000", "--reps", "1"]
        + ["--stages", ",".join(stages), "--out", str(out), "--workdir", str(work)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(work.iterdir()), "the scratch directory is removed after the run"
    return json.loads((out / "latest.json").read_text()), proc.stdout, out


def _measured(stage: dict, name: str, floor: bool = True) -> None:
    assert isinstance(stage["median_s"], float) and stage["median_s"] >= 0, name
    assert stage["min_s"] <= stage["median_s"] <= stage["max_s"], name
    assert stage["peak_rss_bytes"] > 0, name
    assert stage["cpu_median_s"] >= 0, name
    if floor:
        assert stage["x_floor"] > 0, name


# The shard stages make a dozen Dagster runs: minutes even at a tiny scale (make slow).
UNSHARDED = [name for name in STAGES if name not in SHARD_STAGES]


def test_harness_reports_every_stage_at_a_tiny_scale(tmp_path: Path) -> None:
    result, stdout, out = _harness(tmp_path, UNSHARDED)
    assert [s["contacts"] for s in result["scales"]] == [1000]
    for scale in result["scales"]:
        assert set(scale["stages"]) == set(STAGES)
        for name, stage in scale["stages"].items():
            if name in SHARD_STAGES:
                assert stage["status"] == report.NOT_AVAILABLE, (name, stage)
            elif stage["status"] == "ok":
                _measured(stage, name)
            else:
                # Only stages waiting for a core function (or a PostgreSQL server) may be
                # missing.
                assert stage["status"] == report.NOT_AVAILABLE, (name, stage)
                assert STAGES[name].requires is not None or (
                    isinstance(STAGES[name], PostgresStage) and server_binaries() is None
                ), name
        assert scale["rows"]["contacts"] == scale["contacts"]
        if server_binaries() is not None:
            # The same plans on the same rows: the same actions on both engines.
            plans = [scale["stages"][n]["details"]["actions"] for n in ("pg_plans", "duck_plans")]
            assert plans[0] == plans[1] and plans[0], plans
            # The whole enforcement on either warehouse: the same rows per table and action.
            counts = [scale["stages"][n]["details"]["counts"] for n in ("pg_enforce", "enforce")]
            assert counts[0] == counts[1] and counts[0], counts
    assert {t["status"] for t in result["targets"]} <= {"PASS", "MISS", "N/A"}
    assert result["growth"]["enforce"]["verdict"].startswith("n/a")

    table = (out / "latest.md").read_text()
    assert "| retention enforcement |" in table and "## Targets" in table
    assert table.strip() in stdout
    assert (out / "growth.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_harness_runs_the_shard_stages_at_a_tiny_scale(tmp_path: Path) -> None:
    # The shard stages start from the generated landing only; no floor runs beside them.
    result, _, _ = _harness(tmp_path, ["generate", *SHARD_STAGES])
    (scale,) = result["scales"]
    for name in SHARD_STAGES:
        _measured(scale["stages"][name], name, floor=False)


@pytest.mark.parametrize(
    ("text", "contacts"),
    [("100k", 100_000), ("1m", 1_000_000), ("10M", 10_000_000), ("2000", 2000)],
)
def test_parse_scale(text: str, contacts: int) -> None:
    assert parse_scale(text) == contacts


def test_ladder_spans_three_decades_up_to_the_scale() -> None:
    assert ladder(10_000_000) == [100_000, 1_000_000, 10_000_000]
    assert ladder(100_000) == [1000, 10_000, 100_000]
    assert ladder(2000) == [1000, 2000]
    assert ladder(500) == [500]


def test_a_stage_whose_core_function_is_missing_is_not_available() -> None:
    absent_module = Stage("x", "x", "lethe", generate_stage, requires=("lethe.nowhere", "f"))
    absent_function = Stage(
        "x", "x", "lethe", generate_stage, requires=("lethe.eshop.generate", "f")
    )
    present = Stage(
        "x", "x", "lethe", generate_stage, requires=("lethe.eshop.generate", "generate")
    )
    assert absent_module.missing() == "lethe.nowhere is not there yet"
    assert absent_function.missing() == "lethe.eshop.generate.f is not there yet"
    assert present.missing() is None


def _scale(contacts: int, seconds: dict[str, float]) -> dict:
    stages = {
        name: {"status": "ok", "median_s": s, "min_s": s, "max_s": s, "cpu_median_s": s}
        for name, s in seconds.items()
    }
    return {"contacts": contacts, "stages": stages}


def test_growth_flags_a_super_linear_stage() -> None:
    scales = [
        _scale(100_000, {"generate": 1.0, "enforce": 1.0}),
        _scale(1_000_000, {"generate": 10.0, "enforce": 100.0}),
    ]
    growth = report.growth(scales)
    assert growth["generate"]["verdict"] == "linear"
    assert growth["enforce"]["verdict"] == "SUPER-LINEAR"
    assert growth["enforce"]["slope"] == pytest.approx(2.0)


def test_growth_tells_waiting_from_work() -> None:
    small = _scale(100_000, {"generate": 1.0})
    large = _scale(1_000_000, {"generate": 100.0})
    large["stages"]["generate"]["cpu_median_s"] = 10.0  # the wall time was spent waiting
    assert report.growth([small, large])["generate"]["verdict"].startswith("linear in CPU")


def test_targets_compare_within_the_same_run() -> None:
    scales = [_scale(1_000_000, {"generate": 30.0, "enforce": 9.0, "floor": 3.0})]
    lines = {t["target"]: t for t in report.targets(scales)}
    assert lines["generate 1m < 60 s"]["status"] == "PASS"
    assert lines["enforcement ≤ 1.5× floor at 1m"]["status"] == "MISS"
    assert lines["enforcement ≤ 1.5× floor at 1m"]["value"] == "3× at 1m"
    assert lines["ingest 1m < 20 s"]["status"] == "N/A"
    assert lines["daily run 10m < 120 s"]["status"] == "N/A"


def test_postgres_targets_and_comparisons() -> None:
    scale = _scale(
        100_000,
        {
            "pg_erasure": 2.0,
            "pg_per_subject": 40.0,
            "pg_plans": 3.0,
            "duck_plans": 1.0,
            "pg_enforce": 10.0,
            "enforce": 4.0,
        },
    )
    scale["stages"]["pg_per_subject"]["details"] = {"batch": 10_000}
    lines = {t["target"]: t for t in report.targets([scale])}
    target = lines["set-based ≥ 100× faster than per-subject on PostgreSQL"]
    assert (target["status"], target["value"]) == ("MISS", "20× at 100k")
    ratios = {c["what"]: c["ratio"] for c in report.comparisons(scale)}
    assert ratios["PostgreSQL ÷ DuckDB, enforcement plans"] == 3.0
    assert ratios["PostgreSQL warehouse ÷ DuckDB, enforcement"] == 2.5
    assert ratios["per-subject ÷ set-based erasure at a PostgreSQL source"] == 20.0


def test_daily_targets() -> None:
    seconds = {"daily": 9.0, "load_rewrite": 10.0, "floor": 3.0, "ingest": 5.0, "enforce": 4.0}
    small, large = (
        _scale(100_000, {k: v / 10 for k, v in seconds.items()}),
        _scale(1_000_000, seconds),
    )
    large["stages"]["enforce"]["median_s"] = 60.0  # 15× the 100k time: super-linear
    lines = {t["target"]: t for t in report.targets([small, large])}
    assert lines["daily run 1m < 15 s"]["status"] == "PASS"
    assert lines["daily run 1m ≤ plain load of the landing + one rewrite"]["status"] == "PASS"
    assert lines["no stage super-linear (slope ≤ 1.1)"]["status"] == "MISS"
    assert "enforce" in lines["no stage super-linear (slope ≤ 1.1)"]["value"]
    assert lines["peak memory at 10m < 8 GiB"]["value"] == "scale 10m not run"


def test_shard_comparisons_and_target() -> None:
    seconds = {"first_load_one": 40.0, "first_load_shards": 20.0}
    seconds |= {"full_erasure": 30.0, "shard_erasure": 10.0}
    scale = _scale(1_000_000, seconds)
    scale["stages"]["first_load_shards"] |= {"details": {"shards": 4}, "basis": "4 shards"}
    erasure = {"shards": 16, "shards_rewritten": 12, "subjects": 20}
    scale["stages"]["shard_erasure"]["details"] = erasure
    ratios = {c["what"]: c["ratio"] for c in report.comparisons(scale)}
    assert ratios["one warehouse ÷ 4 shards, first load"] == 2.0
    assert ratios["full rewrite ÷ erasure on 16 shards"] == 3.0
    lines = {t["target"]: t for t in report.targets([scale])}
    target = lines[report.SHARD_ERASURE_TARGET]
    assert (target["status"], target["value"]) == ("MISS", "3× at 1m, 12 shards rewritten")

    # A tiny run's erasure on 4 shards is not judged against the 16-shard target.
    erasure["shards"] = 4
    assert {t["target"]: t for t in report.targets([scale])}[report.SHARD_ERASURE_TARGET][
        "status"
    ] == "N/A"


def test_shard_runs_tell_side_by_side_from_one_after_another() -> None:
    after = ShardRuns([("00", 0.0, 1.0), ("01", 1.0, 2.0), ("02", 2.5, 3.0)], set())
    beside = ShardRuns([("00", 0.0, 2.0), ("01", 0.5, 1.0), ("02", 0.8, 3.0)], set())
    assert (after.at_once(), after.order()) == (1, "3 shard runs one after another")
    assert (beside.at_once(), beside.order()) == (3, "3 shard runs side by side (up to 3 at once)")
