"""Subject shards (LETHE_SHARDS=N): routing a delivery by subject, and a 4-shard run that
gives exactly the rows of a 1-shard run, with a request that touches only its shard."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from conftest import (
    DEFAULT_POLICY,
    LETHE_BIN,
    REPO,
    ingest_all,
    lethe_cli,
    lethe_env,
    write_landing,
)
from retention_cases import CONTACTS, T, comparable, order, shipment, write_cases

from lethe.declaration.policy import Policy, load_policy
from lethe.engine.audit import verify
from lethe.engine.compaction import SCRATCH_SUFFIXES
from lethe.engine.ingest import ingest_table
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from lethe.operations.resharding import current_shards, reshard
from lethe.operations.routing import split_landing
from lethe.operations.shards import SHARDS_ENV, WORKERS_ENV, shard_homes, shard_of, shard_sql
from lethe.rights.exports import export_dir
from lethe.rights.requests import record_request
from pipelines.definitions import build_definitions
from pipelines.instance import prepare_instance
from pipelines.jobs import SHARD_JOB, UNION_JOB
from pipelines.launch import run_pipeline
from pipelines.sharded import run_sharded

N = 4
DROP = ("_ingested_at",)  # when a row was loaded: differs between any two runs
ANONYMIZED = "anonymized"  # a surrogate replaced the key: no subject any more
ERASED = "ctr_open"  # erased by e-mail: its shard is found by looking in every shard
ACCESS = "held_future"  # in the same shard as ERASED (by the hash, asserted below)


def _landing_rows(home: Home, table: str) -> list[dict]:
    path = home.landing / f"{table}.parquet"
    if not path.exists():
        return []
    return duckdb.sql(f"SELECT * FROM '{path}'").pl().to_dicts()


def test_the_shard_hash_is_the_same_in_sql_and_python() -> None:
    keys = ["acc_keep", "1", "042", "Žluťoučký kůň", "c-\u00e9", "c-e\u0301", " spaced ", "x" * 300]
    con = duckdb.connect()
    got = [con.execute(f"SELECT {shard_sql('?', 16)}", [k]).fetchone()[0] for k in keys]
    assert got == [shard_of(k, 16) for k in keys]
    assert {shard_of(f"c-{i}", N) for i in range(100)} == {"00", "01", "02", "03"}
    assert shard_of("acc_keep", N) == "00"  # stable: a change would move every subject


def test_a_delivery_is_split_by_subject_and_nothing_is_dropped(
    tmp_path: Path, policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = Home(tmp_path / "home").ensure()
    write_cases(home.landing)
    split = split_landing(home, policy, N)
    assert split.refused == []
    assert not any(home.landing.iterdir())  # the delivery moved into the shards
    shards = shard_homes(home, N)
    where: dict[str, str] = {}  # contact -> shard
    for s in shards:
        for r in _landing_rows(s, "contacts"):
            assert shard_of(r["contact_id"], N) == s.root.name
            where[r["contact_id"]] = s.root.name
        for r in _landing_rows(s, "orders"):
            assert where.get(r["contact_id"], shard_of(r["contact_id"], N)) == s.root.name
    assert sorted(where) == sorted(c["contact_id"] for c in CONTACTS)
    assert sum(split.rows["shipments"].values()) == len(
        duckdb.sql(
            "SELECT * FROM read_parquet(?)",
            params=[[str(s.landing / "shipments.parquet") for s in shards]],
        ).fetchall()
    )
    for s in shards:
        con = connect(s.warehouse)
        try:
            ingest_all(con, s.landing, policy)
        finally:
            con.close()

    # A later delivery: an order whose contact came earlier (found in its shard's core
    # table), its shipment (parent in this delivery) and an order of no known contact.
    acc = "acc_keep"
    write_landing(
        home.landing,
        "orders",
        [
            order("o_late", acc, "2025-01-01T00:00:00", None),
            order("o_orphan", "nobody_knows", "2025-01-01T00:00:00", None),
        ],
    )
    write_landing(home.landing, "shipments", [shipment("s_late", "o_late")])
    split = split_landing(home, policy, N)
    assert split.refused == []
    placed = {r["order_id"]: s.root.name for s in shards for r in _landing_rows(s, "orders")} | {
        r["shipment_id"]: s.root.name for s in shards for r in _landing_rows(s, "shipments")
    }
    assert placed == {"o_late": shard_of(acc, N), "s_late": shard_of(acc, N), "o_orphan": "00"}
    # The row of no known subject is not lost: shard 00 quarantines it, saying why.
    con = connect(shards[0].warehouse)
    try:
        ingest_all(con, shards[0].landing, policy)
        reasons = con.execute(
            "SELECT DISTINCT reason FROM core.quarantine WHERE table_name = 'orders'"
            " AND record->>'order_id' = 'o_orphan'"
        ).fetchall()
    finally:
        con.close()
    assert reasons and all("orphan foreign key" in r[0] for r in reasons)


def _union(home: Home, n: int = N) -> dict[str, list[tuple]]:
    merged: dict[str, list[tuple]] = {}
    for s in shard_homes(home, n):
        for table, rows in comparable(s, drop=DROP).items():
            merged.setdefault(table, []).extend(rows)
    return {t: sorted(rows, key=repr) for t, rows in merged.items()}


def _extracts(home: Home) -> dict[str, list[tuple]]:
    folder = home.root / "exports" / "analytics"
    return {
        p.name: duckdb.sql(f"SELECT * FROM '{p}' ORDER BY ALL").fetchall()
        for p in sorted(folder.glob("*.parquet"))
    }


def _files(home: Home) -> dict[str, tuple[bytes, int]]:
    return {
        s.root.name: (s.warehouse.read_bytes(), s.warehouse.stat().st_mtime_ns)
        for s in shard_homes(home, N)
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    """The retention cases run as of T on one warehouse and on 4 shards; then an erasure
    (by e-mail) and an access request, run on the one warehouse and, on the shards, through
    the command line on the requests' shard only."""
    root = tmp_path_factory.mktemp("shards")
    one, four = Home(root / "one").ensure(), Home(root / "four").ensure()
    write_cases(one.landing)
    write_cases(four.landing)
    assert run_pipeline(one, T).success
    os.environ[SHARDS_ENV] = str(N)
    try:
        outcome = run_sharded(four, T)
    finally:
        del os.environ[SHARDS_ENV]
    assert outcome.success, outcome.errors
    first = (comparable(one, drop=DROP), _union(four), _extracts(one), _extracts(four))
    schema = load_policy(DEFAULT_POLICY).data_schema
    con = connect(one.warehouse)
    try:
        record_request(con, schema, "erasure", f"zx-{ERASED}@example.test")
        record_request(con, schema, "access", ACCESS)
    finally:
        con.close()
    assert run_pipeline(one, T).success
    cli = {SHARDS_ENV: str(N)}
    for args in (
        ("erasure", "--subject", f"zx-{ERASED}@example.test"),
        ("access", "--subject", ACCESS),
    ):
        done = lethe_cli("request", *args, home=four.root, **cli)
        assert done.returncode == 0, done.stderr
    before = _files(four)
    shard = shard_of(ERASED, N)
    done = lethe_cli("run", "--as-of", T.isoformat(), "--shard", shard, home=four.root, **cli)
    assert done.returncode == 0, done.stderr
    second = (comparable(one, drop=DROP), _union(four), _extracts(one), _extracts(four))
    return {
        "first": first,
        "second": second,
        "before": before,
        "after": _files(four),
        "one": one,
        "four": four,
        "left": _holding(four, [f"zx-{ERASED}@example.test", f"Qwertyson-{ERASED}-x"]),
    }


def _holding(home: Home, values: list[str]) -> list[str]:
    """Files under `home` holding any of `values`, backups aside (kept for their retention
    by design; a restore erases again)."""
    return [
        str(p.relative_to(home.root))
        for p in sorted(home.root.rglob("*"))
        if p.is_file()
        and "backups" not in p.parts
        and any(v.encode() in p.read_bytes() for v in values)
    ]


def test_four_shards_give_the_rows_of_one_warehouse(runs) -> None:
    one, four, one_extracts, four_extracts = runs["first"]
    assert set(one) == set(four)
    for table in one:
        assert one[table] == four[table], table
    assert one_extracts and one_extracts == four_extracts


def test_every_subject_lives_in_one_shard(runs) -> None:
    _one_shard_per_subject(runs["four"], N)


def _one_shard_per_subject(home: Home, n: int) -> None:
    """Every subject's row in the shard its key hashes to, its orders beside it."""
    contacts: dict[str, str] = {}  # contact -> the shard holding it
    orders: list[tuple[str, str]] = []  # (contact, the shard holding the order)
    for s in shard_homes(home, n):
        con = connect(s.warehouse, read_only=True)
        try:
            for (key,) in con.execute(
                "SELECT contact_id FROM core.contacts WHERE _state <> ?", [ANONYMIZED]
            ).fetchall():
                assert key not in contacts
                contacts[key] = s.root.name
            orders += [
                (r[0], s.root.name)
                for r in con.execute("SELECT contact_id FROM core.orders").fetchall()
            ]
        finally:
            con.close()
    assert contacts and all(shard_of(k, n) == name for k, name in contacts.items())
    beside = [(c, name) for c, name in orders if c in contacts]
    assert beside and all(contacts[c] == name for c, name in beside)


def test_requests_on_four_shards_give_the_rows_of_one_warehouse(runs) -> None:
    one, four, one_extracts, four_extracts = runs["second"]
    assert one != runs["first"][0]  # the requests changed something
    for table in one:
        assert one[table] == four[table], table
    assert one_extracts == four_extracts


def test_a_request_reads_and_rewrites_only_its_shard(runs) -> None:
    shard = shard_of(ERASED, N)
    assert shard_of(ACCESS, N) == shard
    before, after = runs["before"], runs["after"]
    for name in before:
        if name == shard:
            assert before[name] != after[name]  # the erasure rewrote it
        else:
            assert before[name] == after[name], f"shard {name} was written"
    answers = list(export_dir(runs["four"].shard(shard)).glob("*.zip"))
    assert answers  # the access request was answered in its shard


def test_an_erased_subject_is_in_no_file_of_any_shard_or_the_union(runs) -> None:
    # The union in the top warehouse is rewritten, not overwritten in place: the erased
    # values must not survive in its freed blocks either.
    assert runs["left"] == []


def test_a_shard_setting_that_is_no_number_is_refused_in_one_line(tmp_path: Path) -> None:
    done = lethe_cli("run", "--as-of", T.isoformat(), home=tmp_path / "h", **{SHARDS_ENV: "x"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {SHARDS_ENV}: 'x' is not a whole number from 1 to 100"
    ]


def test_run_shard_without_shards_is_a_usage_error(tmp_path: Path) -> None:
    done = lethe_cli("run", "--shard", "00", home=tmp_path / "h")
    assert done.returncode == 2
    assert "--shard: there are no shards" in done.stderr


def test_the_command_line_sees_every_shard(runs) -> None:
    home, env = runs["four"], {SHARDS_ENV: str(N)}
    done = lethe_cli("audit", "verify", home=home.root, **env)
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == [
        "audit ledger",
        *(f"audit ledger of shard {s.root.name}" for s in shard_homes(home, N)),
    ]
    done = lethe_cli("requests", home=home.root, **env)
    assert done.returncode == 0, done.stderr
    statuses = [line.split()[1::4] for line in done.stdout.splitlines() if line.startswith("R-")]
    assert statuses[:2] == [["erasure", "done"], ["access", "done"]]
    # The access answer's zip, under its shard's folder.
    assert f"shards/{shard_of(ACCESS, N)}/exports/requests/R-" in done.stdout


def test_what_is_not_built_for_shards_is_refused_in_one_line(runs) -> None:
    home = runs["four"]
    done = lethe_cli("requests", home=home.root, **{SHARDS_ENV: "2"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {SHARDS_ENV}=2: {home.shards} has {N} shards; `lethe run` re-shards it to 2"
    ]
    done = lethe_cli("requests", home=home.root)  # LETHE_SHARDS unset: the top is a union
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {SHARDS_ENV}=1: {home.shards} has {N} shards; `lethe run` re-shards it to 1"
    ]
    done = lethe_cli("backup", home=home.root, **{SHARDS_ENV: str(N)})
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error: lethe backup: not built for subject shards yet ({SHARDS_ENV}={N})"
    )


def test_the_whole_pipeline_job_is_refused_on_a_sharded_home(
    runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the top warehouse (the shards' union) the whole pipeline job would ingest and
    enforce beside the shards."""
    monkeypatch.setenv(SHARDS_ENV, str(N))
    outcome = run_pipeline(runs["four"], T)
    assert not outcome.success
    assert outcome.errors == [
        f"{SHARDS_ENV}={N}: job lethe_pipeline does not run on shards; run `lethe run`,"
        " or job lethe_shard by shard partition then lethe_union"
    ]


def _ingest(home: Home, policy: Policy) -> None:
    con = connect(home.warehouse)
    try:
        for table in policy.data_schema.tables:
            ingest_table(con, home.landing, table, policy)
    finally:
        con.close()


def _loaded(homes: list[Home], policy: Policy) -> dict[str, list]:
    """Every core table's rows (less the load time) and the quarantine's rows (less the
    file, its row number and the time) over `homes`, sorted."""
    out: dict[str, list] = {}
    for home in homes:
        con = connect(home.warehouse, read_only=True)
        try:
            for table in policy.data_schema.tables:
                out.setdefault(table, []).extend(
                    con.execute(f"SELECT * EXCLUDE (_ingested_at) FROM core.{table}").fetchall()
                )
            out.setdefault("quarantine", []).extend(
                con.execute(
                    "SELECT table_name, column_name, reason, record FROM core.quarantine"
                ).fetchall()
            )
        finally:
            con.close()
    return {k: sorted(v, key=repr) for k, v in out.items()}


def test_the_example_shop_splits_as_its_exports_are_written(tmp_path: Path) -> None:
    """Czech windows-1250 CSV with `;`, decimal commas and headers of its own: the shards
    load exactly what one warehouse loads, bad rows quarantined with the same reasons."""
    shop = REPO / "examples" / "shop"
    policy = load_policy(shop / "policy.yaml")
    one, three = Home(tmp_path / "one").ensure(), Home(tmp_path / "three").ensure()
    for f in (shop / "landing").glob("*.csv"):
        shutil.copy(f, one.landing / f.name)
        shutil.copy(f, three.landing / f.name)
    _ingest(one, policy)
    assert split_landing(three, policy, 3).refused == []
    shards = shard_homes(three, 3)
    for s in shards:
        _ingest(s, policy)
    expected = _loaded([one], policy)
    delivered = {f.stem for f in (shop / "landing").glob("*.csv")}
    tables = policy.data_schema.tables.values()
    assert all(expected[t.name] for t in tables if t.source.file in delivered)
    assert _loaded(shards, policy) == expected


def test_each_shard_runs_as_a_partition_in_the_top_instance(runs) -> None:
    instance = dg.DagsterInstance.from_config(str(runs["four"].dagster))
    try:
        for key in (["ingest", "contacts"], ["core", "retention_enforcement"]):
            done = instance.get_materialized_partitions(dg.AssetKey(key))
            assert done == {"00", "01", "02", "03"}, key
        released = instance.get_latest_materialization_event(
            dg.AssetKey(["analytics", "customers_by_cohort"])
        )
        assert released is not None and released.dagster_event.partition is None
    finally:
        instance.dispose()


DRIVER = Path(__file__).with_name("reliability_driver.py")


def _killed_at(point: str, env: dict[str, str]) -> None:
    """`lethe run` as of T killed at `point` of the code (tests/reliability_driver.py)."""
    killed = subprocess.run(
        [sys.executable, str(DRIVER), point, "--", "run", "--as-of", T.isoformat()],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-500:]


@pytest.mark.parametrize(
    "point",
    [
        # The split: one table's shard files written aside, not yet moved into place.
        "lethe.operations.routing:_write_shards:after:2",
        # Shards 00 and 01 run (one worker at a time), 02 and 03 not yet, the union not
        # built (make slow).
        pytest.param("pipelines.sharded:_finished:after:2", marks=pytest.mark.slow),
    ],
)
def test_a_killed_sharded_run_is_completed_by_the_next(runs, point: str, tmp_path: Path) -> None:
    home = Home(tmp_path / "home").ensure()
    write_cases(home.landing)
    env = lethe_env(home.root, **{SHARDS_ENV: str(N), WORKERS_ENV: "1"})
    _killed_at(point, env)
    done = lethe_cli("run", "--as-of", T.isoformat(), home=home.root, **{SHARDS_ENV: str(N)})
    assert done.returncode == 0, done.stderr
    assert not any(home.landing.iterdir())
    assert _union(home) == runs["first"][1]


def _succeeded(instance: dg.DagsterInstance, run_id: str) -> dg.RunStatusSensorContext:
    """The context the union sensor gets when the run `run_id` has succeeded."""
    run = instance.get_run_by_id(run_id)
    (event,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)
    return dg.build_run_status_sensor_context(
        sensor_name="shard_union_sensor",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=event.dagster_event,
    )


def test_the_daily_schedule_runs_each_shard_then_the_union(
    runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the daemon does: the schedule requests a run of each shard partition (each
    splits the landing files it finds first), the union sensor waits for the last of them,
    then its union run builds the union: the rows and extracts of `lethe run`. The request
    sensor then routes a pending request to its subject's shard."""
    home = Home(tmp_path / "home").ensure()
    write_cases(home.landing)
    monkeypatch.setenv(SHARDS_ENV, str(N))
    monkeypatch.setenv("LETHE_HOME", str(home.root))
    policy = load_policy(DEFAULT_POLICY)
    defs = build_definitions(policy)
    schedule = defs.resolve_schedule_def("daily_retention")
    when = dt.datetime.combine(T, dt.time(2), tzinfo=dt.UTC)
    union_sensor = defs.resolve_sensor_def("shard_union_sensor")
    instance = prepare_instance(home)
    requests = schedule.evaluate_tick(
        dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=when,
            repository_def=defs.get_repository_def(),
        )
    ).run_requests
    assert [(r.job_name or schedule.job_name, r.partition_key) for r in requests] == [
        (SHARD_JOB, s) for s in ("00", "01", "02", "03")
    ]
    assert len({r.tags["lethe/batch"] for r in requests}) == 1
    try:
        for i, request in enumerate(requests):
            outcome = run_pipeline(
                home, T, job=SHARD_JOB, partition_key=request.partition_key, tags=request.tags
            )
            assert outcome.success, outcome.errors
            assert not any(home.landing.iterdir())  # the first shard run split them
            tick = union_sensor(_succeeded(instance, outcome.run_id))
            if i < len(requests) - 1:
                assert isinstance(tick, dg.SkipReason), tick
                continue
            assert isinstance(tick, dg.RunRequest)
            assert tick.run_key == request.tags["lethe/batch"]
            assert tick.run_config["resources"]["policy"]["config"]["as_of"] == T.isoformat()
        assert run_pipeline(home, T, job=UNION_JOB, tags=tick.tags).success
    finally:
        instance.dispose()
    assert _union(home) == runs["first"][1]
    assert _extracts(home) == runs["first"][3]

    sensor = defs.resolve_sensor_def("pending_requests_sensor")
    context = dg.build_sensor_context(cursor=None)
    assert isinstance(sensor(context), dg.SkipReason)
    shard = home.shard(shard_of(ACCESS, N))
    con = connect(shard.warehouse)
    try:
        request = record_request(con, policy.data_schema, "access", ACCESS)
    finally:
        con.close()
    (launched,) = sensor(context)
    assert (launched.job_name, launched.partition_key) == (SHARD_JOB, shard.root.name)
    assert launched.tags["lethe/batch_shards"] == shard.root.name
    assert request.request_id in launched.run_key
    assert isinstance(sensor(context), dg.SkipReason)  # launched once


def _opened_once_unlocked(path: Path, wait: float = 120.0) -> duckdb.DuckDBPyConnection:
    """`path` opened read-only once the killed workers are gone: SIGKILL reaches every process
    of the group at once, but a worker releases its file lock only when it has exited, which
    a busy machine may delay past the wait for the top process."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return connect(path, read_only=True)
        except duckdb.IOException as exc:
            if "lock" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _rewriting(home: Home) -> bool:
    """Whether a shard's warehouse rewrite is under way; a folder the run removes while it
    is listed (the split's scratch folder) means: not yet."""
    try:
        return any(home.root.glob(f"shards/*/*{SCRATCH_SUFFIXES[0]}"))
    except FileNotFoundError:
        return False


def test_a_run_killed_while_shard_workers_write_leaves_whole_shards(runs, tmp_path: Path) -> None:
    """`lethe run` and its shard workers killed at once (SIGKILL to the process group) while
    a worker rewrites its shard's warehouse: every shard's warehouse still opens with a
    ledger that verifies (the rewrite is a fresh file not yet swapped in), and the next run
    completes with the rows of an uninterrupted run and no scratch file left."""
    home = Home(tmp_path / "home").ensure()
    write_cases(home.landing)
    env = lethe_env(home.root, **{SHARDS_ENV: str(N), WORKERS_ENV: "2"})
    run = subprocess.Popen(
        [str(LETHE_BIN), "run", "--as-of", T.isoformat()],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not _rewriting(home):
            assert run.poll() is None, "the run ended before any shard rewrote its warehouse"
            assert time.monotonic() < deadline, "no shard rewrite seen in 300 s"
            time.sleep(0.02)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    for shard in shard_homes(home, N):
        if shard.warehouse.exists():
            con = _opened_once_unlocked(shard.warehouse)
            try:
                assert verify(con).ok, shard.root.name
            finally:
                con.close()
    done = lethe_cli("run", "--as-of", T.isoformat(), home=home.root, **{SHARDS_ENV: str(N)})
    assert done.returncode == 0, done.stderr
    assert _union(home) == runs["first"][1]
    assert not [p for p in home.root.rglob("*") if p.name.endswith(SCRATCH_SUFFIXES)]


def _copied(home: Home, root: Path) -> Home:
    shutil.copytree(home.root, root)
    return Home(root)


def test_a_one_warehouse_home_reshards_to_the_rows_of_four_shards(runs, tmp_path: Path) -> None:
    """The one-warehouse home after its requests, moved into 4 shards: the rows a 4-shard
    home has from the start, every subject in its shard, no old file left, the ledgers
    verifiable; then back through 2 shards (tokens of two old vaults meet) to one."""
    policy = load_policy(DEFAULT_POLICY)
    home = _copied(runs["one"], tmp_path / "home")
    moved = reshard(home, policy, N, T)
    assert moved is not None and (moved.before, moved.after) == (1, N)
    assert sorted(moved.rows) == ["00", "01", "02", "03"] and all(moved.rows.values())
    assert _union(home) == runs["second"][1]
    _one_shard_per_subject(home, N)
    assert not home.vault.exists() and not (home.root / ".reshard").exists()
    assert _holding(home, [f"zx-{ERASED}@example.test", f"Qwertyson-{ERASED}-x"]) == []
    assert not list(export_dir(home).glob("*"))  # the answer went with its request
    assert list(export_dir(home.shard(shard_of(ACCESS, N))).glob("R-*.zip"))
    assert reshard(home, policy, N, T) is None  # nothing to move any more

    done = lethe_cli("audit", "verify", home=home.root, **{SHARDS_ENV: str(N)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    archived = [line for line in lines if line.startswith("archived audit ledger")]
    assert len(archived) == 1 and archived[0].split(": ")[0].endswith("-from-1/top")
    assert int(archived[0].split(": ")[1].split()[0]) > 0  # the old chain, kept whole
    for s in shard_homes(home, N):
        con = connect(s.warehouse, read_only=True)
        try:
            (action, details, keys) = con.execute(
                "SELECT action, details, keys FROM audit.ledger WHERE seq = 1"
            ).fetchone()
        finally:
            con.close()
        assert action == "reshard" and keys == []
        assert json.loads(details)["rows"] == moved.rows[s.root.name]

    assert reshard(home, policy, 2, T).before == N
    assert _union(home, 2) == runs["second"][1]
    _one_shard_per_subject(home, 2)
    assert reshard(home, policy, 1, T).after == 1
    assert not home.shards.exists()
    assert comparable(home, drop=DROP) == runs["second"][0]
    done = lethe_cli("audit", "verify", home=home.root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("archived audit ledger") == 1 + N + 2 + 1


@pytest.mark.parametrize(
    ("point", "committed", "full_run"),
    [
        # Two of the new shards written aside, nothing committed: the old layout stays.
        ("lethe.operations.resharding:_write_shard:after:2", False, False),
        # Committed, the old warehouse moved aside, the new shards not yet in place.
        ("lethe.operations.resharding:_step_aside:after:1", True, False),
        # The same, completed by a whole `lethe run` (make slow: a run of every shard).
        pytest.param(
            "lethe.operations.resharding:_step_aside:after:1", True, True, marks=pytest.mark.slow
        ),
    ],
)
def test_a_killed_reshard_leaves_one_layout_and_the_next_run_completes_it(
    runs, point: str, committed: bool, full_run: bool, tmp_path: Path
) -> None:
    home = _copied(runs["one"], tmp_path / "home")
    env = lethe_env(home.root, **{SHARDS_ENV: str(N)})
    _killed_at(point, env)
    if committed:
        done = lethe_cli("requests", home=home.root, **{SHARDS_ENV: str(N)})
        assert done.returncode == 1
        assert "a re-shard was interrupted; `lethe run` completes it" in done.stderr
    else:
        assert current_shards(home) == 1
        assert comparable(home, drop=DROP) == runs["second"][0]
    if full_run:
        done = lethe_cli("run", "--as-of", T.isoformat(), home=home.root, **{SHARDS_ENV: str(N)})
        assert done.returncode == 0, done.stderr
        assert "re-sharded from 1 to 4 shards" in done.stderr
    else:
        # What the next `lethe run` does first, before its shards' runs.
        moved = reshard(home, load_policy(DEFAULT_POLICY), N, T)
        assert moved is not None and (moved.before, moved.after) == (1, N)
    assert _union(home) == runs["second"][1]
    assert not (home.root / ".reshard").exists() and not home.vault.exists()


def test_every_shard_vault_holds_the_same_key_secret(runs) -> None:
    found = set()
    for s in shard_homes(runs["four"], N):
        con = duckdb.connect(str(s.vault), read_only=True)
        try:
            found |= {bytes(r[0]) for r in con.execute("SELECT secret FROM key_secret").fetchall()}
        finally:
            con.close()
    assert len(found) == 1


def _tokens(home: Home) -> tuple[set[str], set[str]]:
    """The tokens in the core tables and those in the vault."""
    con = connect(home.warehouse, read_only=True)
    try:
        columns = con.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'core' AND data_type = 'VARCHAR'"
        ).fetchall()
        used = {
            r[0]
            for table, column in columns
            for r in con.execute(
                f'SELECT "{column}" FROM core."{table}" WHERE "{column}" LIKE ?', ["tok_%"]
            ).fetchall()
        }
    finally:
        con.close()
    con = duckdb.connect(str(home.vault), read_only=True)
    try:
        held = {r[0] for r in con.execute("SELECT token FROM tokens").fetchall()}
    finally:
        con.close()
    return used, held


def test_tokens_two_shards_issued_for_one_value_become_one(runs, tmp_path: Path) -> None:
    """Two old vaults each issued a token for the same value; merged into one warehouse,
    the earlier token is kept and the rows holding the other one get it."""
    home = _copied(runs["four"], tmp_path / "home")
    first, second = [s for s in shard_homes(home, N) if s.vault.exists() and _tokens(s)[0]][:2]
    con = duckdb.connect(str(first.vault), read_only=True)
    kind, value = con.execute("SELECT kind, value FROM tokens ORDER BY token LIMIT 1").fetchone()
    con.close()
    con = duckdb.connect(str(second.vault))
    con.execute(
        "UPDATE tokens SET value = ?, created_at = TIMESTAMP '2099-01-01' WHERE token ="
        " (SELECT min(token) FROM tokens WHERE kind = ?)",
        [value, kind],
    )
    con.close()
    tokens = sum(len(_tokens(s)[1]) for s in shard_homes(home, N) if s.vault.exists())
    moved = reshard(home, load_policy(DEFAULT_POLICY), 1, T)
    assert moved is not None and moved.after == 1
    used, held = _tokens(home)
    assert used <= held and len(held) == tokens - 1
    con = connect(home.warehouse, read_only=True)
    try:
        (details,) = con.execute("SELECT details FROM audit.ledger WHERE seq = 1").fetchone()
    finally:
        con.close()
    assert json.loads(details)["tokens_merged"] == 1
