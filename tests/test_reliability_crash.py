"""Crash safety of a whole `lethe run`: SIGKILL at many points, restart, compare; full disk.

A prepared LETHE_HOME (generated contacts, enforced once, then a new delivery in landing/,
pending erasure, access, portability, rectification, restriction and objection requests
and a litigation hold) is copied for every kill point. An uninterrupted `lethe run` on one
copy is the reference. On each other copy `lethe run` is killed with SIGKILL:

- at a chosen point of the code (tests/reliability_driver.py patches one function to kill
  its own process), one per stage: ingest, request intake, enforcement, compaction,
  request answers (exports, vault), backup;
- or after a delay spread over the reference run's duration (`kill -9` from outside).

Then `lethe run` again, and: the core tables (masked: surrogates and tokens are random)
and the requests equal the reference's (or, after a kill late in the run, those of the
reference run again, which must be the same: idempotence), the ledger verifies and records
the same actions on the same keys, no scratch file (`*.rewrite`, `*.swap`, `*.restore`,
`*.partial`, `*.tmp`) nor an export the export log does not know is left under LETHE_HOME,
and no value the vault forgot is left in the vault file's bytes.

`make test` kills at the points in POINTS plus RANDOM_KILLS delays on CONTACTS contacts;
`make slow` repeats every code point and SLOW_RANDOM_KILLS delays on SLOW_CONTACTS.
The full-disk tests run on a small tmpfs (when it can be mounted) and under RLIMIT_FSIZE set
at a chosen point (the warehouse rewrite, the end of enforcement, the backup).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest
from conftest import DEFAULT_POLICY, LETHE_BIN, REPO, ingest_all
from reliability import (
    PYTHON,
    SCRATCH_ROOT,
    cli_env,
    copy_home,
    last_steps,
    ledger_effects,
    ledger_ok,
    leftovers,
    requests_state,
    run_cli,
    snapshot,
    stage_of,
    untracked_exports,
)

from lethe.declaration.policy import load_policy
from lethe.engine.enforcement import enforce
from lethe.engine.tagging import tag_all
from lethe.engine.warehouse import connect
from lethe.eshop.generate import generate
from lethe.operations.home import Home
from lethe.rights.holds import place_hold
from lethe.rights.requests import record_request

POLICY = load_policy(DEFAULT_POLICY)
REFERENCE_DAY = dt.date(2026, 1, 15)  # the generator's "today"
T0 = dt.date(2026, 1, 20)  # the prepared home was enforced as of T0
T1 = dt.date(2027, 3, 1)  # the run that is killed (old orders' accounting ends in between)
T2 = dt.date(2028, 6, 1)  # full-disk runs, on the reference home enforced as of T1
CONTACTS = 1_500
SLOW_CONTACTS = 20_000
DRIVER = Path(__file__).with_name("reliability_driver.py")
WORKERS = 3

# (point, what has happened when the process dies)
POINTS = {
    "run-db-created": "start-up: the run's event database exists, without its tables",
    "landing-unlink": "ingest: rows committed, landing file not yet removed",
    "lethe.rights.requests:_rectify:after:1": "request intake: inside its transaction",
    "lethe.engine.compaction:fsync:before:1": "compaction: fresh file written, not swapped in",
    "lethe.engine.compaction:fsync:before:3": "compaction: swapped in, the old file's WAL beside",
    "lethe.engine.enforcement:compact:before:2": "enforcement: vault forgotten, not compacted",
    "backup-partial": "backup: compressed copy written, not renamed into place",
}
SLOW_POINTS = {
    **POINTS,
    "lethe.engine.enforcement:ensure_tokens:after:1": "enforcement: tokens issued, no rewrite",
    "lethe.engine.compaction:fsync:before:2": "compaction: fresh file marked, not swapped in",
    "lethe.engine.compaction:fsync:before:4": "compaction: old WAL and marker removed, not synced",
    "lethe.engine.ingest:_stage:before:2": "ingest: contacts committed, consents not read",
    "lethe.engine.ingest:_stage:before:4": "ingest: contacts, consents, orders committed",
    "lethe.rights.requests:append:before:1": "request intake: ledger entries about to be added",
    "lethe.engine.enforcement:enforcement_plan:before:3": "enforcement: tag, erase plans built",
    "lethe.engine.enforcement:append:before:1": "compaction: fresh file built, no ledger yet",
    "lethe.engine.enforcement:forget_unused_tokens:before:1": "enforcement: swapped, vault as is",
    "lethe.rights.answers:write_export:after:1": "answers: export zip written, request not done",
    "lethe.rights.answers:write_export:after:3": "answers: third export written",
    "lethe.rights.exports:_html:before:1": "answers: export zip half written",
}
RANDOM_KILLS = 1
SLOW_RANDOM_KILLS = 24
# Kill points after which a check is known to fail (reported as bugs).
KNOWN: dict[tuple[str, str], str] = {}


@dataclass
class Kill:
    """One killed run and its recovery."""

    point: str
    returncode: int | None = None
    stage: str = ""
    killed_stderr: str = ""
    recovery: subprocess.CompletedProcess | None = None
    state: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)
    effects: list = field(default_factory=list)
    ledger: tuple[bool, str] = (False, "")
    leftovers: list[str] = field(default_factory=list)
    vault_residue: list[str] = field(default_factory=list)
    after_kill: list[str] = field(default_factory=list)  # LETHE_HOME's files before the rerun


@dataclass
class Crashes:
    reference_home: Home
    reference_seconds: float
    reference: Kill  # one uninterrupted run
    rerun: Kill  # the same home after a second run (what a rerun after a late kill sees)
    kills: dict[str, Kill]


def _subjects(home: Home) -> dict[str, list[str]]:
    """Contacts to send requests for; the erased ones have vault entries to forget at T1."""
    con = duckdb.connect()
    try:
        con.execute("ATTACH ? AS w (READ_ONLY)", [str(home.warehouse)])
        con.execute("ATTACH ? AS v (READ_ONLY)", [str(home.vault)])
        # Active contacts with pseudonymized orders whose every order leaves accounting by
        # T1: erased then, their vault entries are referenced by nothing and forgotten.
        forgettable = [
            r[0]
            for r in con.execute(
                "WITH owner AS (SELECT o.*, coalesce(t.value, o.contact_id) AS cid"
                " FROM w.core.orders o LEFT JOIN v.tokens t ON t.token = o.contact_id)"
                " SELECT cid FROM owner JOIN w.core.contacts c ON c.contact_id = owner.cid"
                " WHERE c._state = 'active' GROUP BY cid"
                " HAVING bool_or(owner._state = 'pseudonymized')"
                " AND bool_and(owner.ordered_at + INTERVAL 10 YEAR <= ?) ORDER BY cid LIMIT 2",
                [T1],
            ).fetchall()
        ]
        active = [
            r[0]
            for r in con.execute(
                "SELECT contact_id FROM w.core.contacts WHERE _state = 'active'"
                " AND contact_id NOT IN (SELECT unnest(?)) ORDER BY contact_id DESC LIMIT 8",
                [forgettable],
            ).fetchall()
        ]
    finally:
        con.close()
    assert len(forgettable) == 2 and len(active) == 8, (forgettable, active)
    return {"forgettable": forgettable, "active": active}


def prepare(root: Path, contacts: int) -> Home:
    """The home every run starts from (see the module docstring)."""
    home = Home(root).ensure()
    generate(home.landing, contacts, seed=11, reference=REFERENCE_DAY)
    con = connect(home.warehouse)
    try:
        ingest_all(con, home.landing, POLICY)
        tag_all(con, POLICY, T0)
    finally:
        con.close()
    enforce(home, POLICY, T0, "prepared")
    subjects = _subjects(home)
    erase, active = subjects["forgettable"], subjects["active"]
    con = connect(home.warehouse)
    try:
        for subject in [*erase, active[0]]:
            record_request(con, POLICY.data_schema, "erasure", subject)
        for subject in active[1:4]:
            record_request(con, POLICY.data_schema, "access", subject)
        record_request(con, POLICY.data_schema, "portability", active[4])
        record_request(
            con, POLICY.data_schema, "rectification", active[5], {"email": "rectified@example.test"}
        )
        record_request(con, POLICY.data_schema, "restriction", active[6])
        record_request(con, POLICY.data_schema, "objection", active[7])
        place_hold(con, POLICY, active[3], "court case 1/2027")
    finally:
        con.close()
    generate(home.landing, contacts // 10, seed=12, reference=T1 - dt.timedelta(days=30))
    return home


def vault_values(home: Home) -> set[tuple[str, str]]:
    con = duckdb.connect()
    try:
        con.execute("ATTACH ? AS v (READ_ONLY)", [str(home.vault)])
        return set(con.execute("SELECT kind, value FROM v.tokens").fetchall())
    finally:
        con.close()


def residue(home: Home, forgotten: set[str]) -> list[str]:
    """Forgotten vault values still present in the raw bytes of the vault file.

    Values that are part of a string the vault still holds (a subject id, a longer value)
    are not looked for.
    """
    con = duckdb.connect()
    try:
        con.execute("ATTACH ? AS v (READ_ONLY)", [str(home.vault)])
        kept = {
            s
            for row in con.execute("SELECT subject, kind, value, token FROM v.tokens").fetchall()
            for s in row
            if s
        }
    finally:
        con.close()
    checkable = {v for v in forgotten if not any(v in k for k in kept)}
    data = home.vault.read_bytes()
    return sorted(v for v in checkable if v.encode() in data)


def observe(kill: Kill, home: Home, forgotten: set[str]) -> Kill:
    kill.state = snapshot(home.warehouse)
    kill.requests = requests_state(home.warehouse)
    kill.effects = ledger_effects(home.warehouse)
    kill.ledger = ledger_ok(home.warehouse)
    kill.leftovers = leftovers(home.root) + untracked_exports(home)
    kill.vault_residue = residue(home, forgotten)
    return kill


def _kill_at(point: str, home: Home, delay: float | None) -> tuple[int, str, str]:
    """Run `lethe run` on `home`, killed at `point` (or after `delay` seconds)."""
    if delay is None:
        proc = subprocess.run(
            [str(PYTHON), str(DRIVER), point, "--", "run", "--as-of", T1.isoformat()],
            cwd=REPO,
            env=cli_env(home),
            capture_output=True,
            text=True,
            timeout=600,
        )
        code, err = proc.returncode, proc.stderr[-500:]
    else:
        proc = subprocess.Popen(
            [str(LETHE_BIN), "run", "--as-of", T1.isoformat()],
            cwd=REPO,
            env=cli_env(home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the run and anything it started
            proc.wait()
        code, err = proc.returncode, ""
    steps = last_steps(home)
    return code, stage_of(steps[-1][1]) if steps else "startup", err


def crash_and_recover(template: Home, workdir: Path, point: str, delay: float | None, forgotten):
    home = copy_home(template, workdir / ("kill-" + re.sub(r"\W", "_", point)))
    kill = Kill(point)
    kill.returncode, kill.stage, kill.killed_stderr = _kill_at(point, home, delay)
    kill.after_kill = sorted(p.name for p in home.root.iterdir())
    kill.recovery = run_cli(home, "run", "--as-of", T1.isoformat(), timeout=600)
    observe(kill, home, forgotten)
    shutil.rmtree(home.root, ignore_errors=True)
    return kill


def crash_campaign(root: Path, contacts: int, points: dict, random_kills: int, seed: int):
    template = prepare(root / "template", contacts)
    before = {v for _, v in vault_values(template)}
    reference_home = copy_home(template, root / "reference")
    start = time.monotonic()
    reference_run = run_cli(reference_home, "run", "--as-of", T1.isoformat(), timeout=600)
    seconds = time.monotonic() - start
    assert reference_run.returncode == 0, reference_run.stderr
    forgotten = {v for v in before - {v for _, v in vault_values(reference_home)} if len(v) >= 6}
    reference = observe(Kill("reference"), reference_home, forgotten)
    again = run_cli(reference_home, "run", "--as-of", T1.isoformat(), timeout=600)
    assert again.returncode == 0, again.stderr
    rerun = observe(Kill("rerun"), reference_home, forgotten)
    rng = random.Random(seed)
    # Spread over the run after the process start-up (about the first third).
    delays = {
        f"random:{i}": seconds * (0.3 + 0.7 * (i + rng.uniform(0.1, 0.9)) / random_kills)
        for i in range(random_kills)
    }
    jobs = [(p, None) for p in points] + list(delays.items())
    with ThreadPoolExecutor(WORKERS) as pool:
        done = pool.map(lambda job: crash_and_recover(template, root, *job, forgotten), jobs)
        kills = {k.point: k for k in done}
    return Crashes(reference_home, seconds, reference, rerun, kills)


@pytest.fixture(scope="module")
def crashes() -> Crashes:
    with tempfile.TemporaryDirectory(prefix="lethe-crash-", dir=SCRATCH_ROOT) as tmp:
        yield crash_campaign(Path(tmp), CONTACTS, POINTS, RANDOM_KILLS, seed=1)


def _known(point: str, check: str) -> list:
    reason = KNOWN.get((point, check))
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


def _params(check: str, points: dict, randoms: int) -> list:
    return [pytest.param(p, marks=_known(p, check), id=p) for p in points] + [
        pytest.param(f"random:{i}", id=f"random:{i}") for i in range(randoms)
    ]


def assert_recovered(crashes: Crashes, point: str) -> None:
    """The rerun completes, and reaches the uninterrupted run's state: exactly, or (when the
    killed run had finished enforcing) what rerunning after an uninterrupted run gives."""
    kill, ref, rerun = crashes.kills[point], crashes.reference, crashes.rerun
    where = f"{point} [{kill.stage}]"
    assert kill.recovery is not None, where
    assert kill.recovery.returncode == 0, f"{where}: {kill.recovery.stderr[-800:]}"
    assert kill.state in (ref.state, rerun.state), f"{where}: core tables differ"
    assert kill.requests == ref.requests, where
    assert kill.ledger[0], f"{where}: {kill.ledger[1]}"
    assert set(ref.effects) <= set(kill.effects) <= set(rerun.effects), f"{where}: ledger"


@pytest.mark.parametrize("point", _params("state", POINTS, RANDOM_KILLS))
def test_killed_run_then_rerun_equals_an_uninterrupted_run(crashes: Crashes, point: str) -> None:
    kill = crashes.kills[point]
    if not point.startswith("random:"):
        assert kill.returncode == -signal.SIGKILL, f"never reached: {kill.killed_stderr}"
    assert_recovered(crashes, point)


@pytest.mark.parametrize("point", _params("leftovers", POINTS, RANDOM_KILLS))
def test_no_scratch_file_or_untracked_export_is_left(crashes: Crashes, point: str) -> None:
    assert crashes.kills[point].leftovers == []


@pytest.mark.parametrize("point", _params("vault", POINTS, 0))
def test_forgotten_vault_values_do_not_survive_a_kill(crashes: Crashes, point: str) -> None:
    assert crashes.reference.vault_residue == []
    assert crashes.kills[point].vault_residue == []


@pytest.mark.parametrize(
    "point", [p for p in _params("ledger", POINTS, 0) if "compaction:fsync:before:1" in str(p.id)]
)
def test_ledger_records_each_step_once_after_a_kill(crashes: Crashes, point: str) -> None:
    """Killed after request intake, before the swap: the rerun must not record again."""
    assert Counter(crashes.kills[point].effects) == Counter(crashes.reference.effects)


def test_a_second_uninterrupted_run_changes_nothing(crashes: Crashes) -> None:
    """Idempotence, which a rerun after a late kill relies on (erasures included)."""
    assert crashes.rerun.state == crashes.reference.state
    assert Counter(crashes.rerun.effects) == Counter(crashes.reference.effects)


def test_a_kill_inside_the_swap_leaves_the_old_wal_for_the_next_run_to_remove(
    crashes: Crashes,
) -> None:
    """The steps before the rewrite leave their writes in the WAL; killed after the rename,
    the run leaves that WAL beside the new file, and the marker that has the next run
    finish the swap (its state is compared with the reference's above)."""
    kill = crashes.kills["lethe.engine.compaction:fsync:before:3"]
    assert {"warehouse.duckdb.swap", "warehouse.duckdb.wal"} <= set(kill.after_kill)
    assert "warehouse.duckdb.rewrite" not in kill.after_kill
    assert kill.recovery is not None and kill.recovery.returncode == 0, kill.recovery


def test_kill_points_cover_every_stage(crashes: Crashes) -> None:
    reached = {k.stage for k in crashes.kills.values() if k.returncode == -signal.SIGKILL}
    assert {
        "startup",
        "ingest",
        "request processing",
        "enforcement + compaction",
        "backup",
    } <= reached, reached
    print(
        f"\nreference run {crashes.reference_seconds:.1f}s; kill points survived: "
        + ", ".join(f"{p} [{k.stage}]" for p, k in crashes.kills.items())
    )


@pytest.mark.slow
def test_slow_kill_campaign_on_a_larger_home(tmp_path: Path) -> None:
    """Every code point plus SLOW_RANDOM_KILLS delays, on SLOW_CONTACTS contacts."""
    crashes = crash_campaign(tmp_path, SLOW_CONTACTS, SLOW_POINTS, SLOW_RANDOM_KILLS, seed=2)
    failures = []
    for point, kill in crashes.kills.items():
        if not point.startswith("random:") and kill.returncode != -signal.SIGKILL:
            failures.append(f"{point}: never reached")
        try:
            assert_recovered(crashes, point)
        except AssertionError as exc:
            failures.append(f"{point} [{kill.stage}]: {str(exc).splitlines()[0]}")
        known = {c for (p, c) in KNOWN if p == point}
        if kill.leftovers and "leftovers" not in known and not point.startswith("random:"):
            failures.append(f"{point}: left {kill.leftovers}")
        if kill.vault_residue and "vault" not in known and not point.startswith("random:"):
            failures.append(f"{point}: vault residue")
    stages = sorted({k.stage for k in crashes.kills.values() if k.returncode == -9})
    print(f"\n{len(crashes.kills)} kill points, stages {stages}")
    assert failures == []


# --- full disk ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def enforced_home(crashes: Crashes) -> Home:
    """The reference home of the kill campaign: enforced as of T1, nothing pending; the
    full-disk runs are as of T2, so there is enforcement work to do."""
    return crashes.reference_home


def data_columns(warehouse: Path) -> dict[str, list[tuple]]:
    """The core tables without Lethe's tag columns (tagging may commit before a failure)."""
    con = connect(warehouse, read_only=True)
    try:
        out = {}
        for table in ("contacts", "consents", "orders", "shipments", "holds"):
            out[table] = sorted(
                con.execute(
                    f"SELECT * EXCLUDE (_purposes, _legal_bases, _retain_until, _state,"
                    f" _ingested_at) FROM core.{table}"
                ).fetchall(),
                key=repr,
            )
        out["ledger"] = con.execute("SELECT seq, hash FROM audit.ledger ORDER BY seq").fetchall()
        return out
    finally:
        con.close()


def assert_intact(home: Home, before: dict) -> None:
    assert data_columns(home.warehouse) == before  # nothing half-enforced
    assert ledger_ok(home.warehouse)[0]
    assert [f for f in leftovers(home.root) if ".rewrite" in f or ".restore" in f] == []


def assert_one_clear_line(result: subprocess.CompletedProcess) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0
    assert len(errors) == 1, result.stderr[-2000:]
    causes = ("No space left on device", "File too large", "disk I/O error")
    assert any(s in errors[0] for s in causes), errors
    assert "Traceback" not in result.stderr


def test_full_disk_on_a_small_tmpfs_fails_clearly_and_leaves_the_warehouse_intact(
    enforced_home: Home, tmp_path: Path
) -> None:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    used = sum(p.stat().st_size for p in enforced_home.root.rglob("*") if p.is_file())
    size = used + 512 * 1024  # room for the run's bookkeeping, not for a rewrite
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        home = copy_home(enforced_home, mount / "home")
        before = data_columns(home.warehouse)
        result = run_cli(home, "run", "--as-of", T2.isoformat())
        assert_one_clear_line(result)
        assert_intact(home, before)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


def _driven(home: Home, point: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PYTHON), str(DRIVER), point, "--", "run", "--as-of", T2.isoformat()],
        cwd=REPO,
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_rewrite_that_cannot_be_written_fails_clearly_and_leaves_the_warehouse_intact(
    enforced_home: Home, tmp_path: Path
) -> None:
    """The enforcement rewrite's fresh file cannot be written (RLIMIT_FSIZE): the run fails
    in one line naming the step and the cause, the warehouse is as it was, no scratch file
    is left, and the next run (no limit) completes."""
    home = copy_home(enforced_home, tmp_path / "home")
    before = data_columns(home.warehouse)
    result = _driven(home, "compaction-file-too-large")
    assert_one_clear_line(result)
    assert "retention_enforcement" in result.stderr
    assert_intact(home, before)
    again = run_cli(home, "run", "--as-of", T2.isoformat())
    assert again.returncode == 0, again.stderr
    assert ledger_ok(home.warehouse)[0]
    assert leftovers(home.root) == []


@pytest.mark.slow
def test_full_disk_during_the_backup_keeps_the_warehouse_and_cleans_up_on_rerun(
    enforced_home: Home, tmp_path: Path
) -> None:
    """From the backup step on no file can grow (Dagster's own storage included): the run
    fails in one line, the enforced warehouse stays consistent, and the next run removes
    the half-written backup."""
    home = copy_home(enforced_home, tmp_path / "home")
    result = _driven(home, "backup-file-too-large")
    assert_one_clear_line(result)
    assert ledger_ok(home.warehouse)[0]
    again = run_cli(home, "run", "--as-of", T2.isoformat())
    assert again.returncode == 0, again.stderr
    assert leftovers(home.root) == []


@pytest.fixture(scope="module")
def full_after_enforcement(enforced_home: Home, tmp_path_factory: pytest.TempPathFactory):
    """A run whose disk fills up right after enforcement: the later steps' writes stay in
    the WAL, their checkpoints fail, and so does the backup's CHECKPOINT."""
    home = copy_home(enforced_home, tmp_path_factory.mktemp("full") / "home")
    return home, _driven(home, "disk-full-after-enforcement")


def test_disk_full_after_enforcement_keeps_the_enforced_warehouse(full_after_enforcement) -> None:
    home, result = full_after_enforcement
    assert result.returncode != 0
    assert "backups__warehouse_backup" in _failed(home)
    assert ledger_ok(home.warehouse)[0]
    assert [f for f in leftovers(home.root) if ".rewrite" in f or ".restore" in f] == []


def test_disk_full_after_enforcement_is_reported_in_one_clear_line(
    full_after_enforcement,
) -> None:
    assert_one_clear_line(full_after_enforcement[1])


def _failed(home: Home) -> str:
    """The steps that failed, in every run of the home's Dagster instance."""
    import sqlite3

    steps = []
    for db in (home.dagster / "history" / "runs").glob("*.db"):
        if db.name != "index.db":
            con = sqlite3.connect(db)
            try:
                steps += [
                    r[0]
                    for r in con.execute(
                        "SELECT step_key FROM event_logs WHERE dagster_event_type = 'STEP_FAILURE'"
                    ).fetchall()
                ]
            finally:
                con.close()
    return " ".join(steps)


# --- restore after a crash ------------------------------------------------------------------


def test_restore_does_not_bring_back_a_subject_erased_after_the_backup(tmp_path: Path) -> None:
    from lethe.operations.backup import create_backup
    from lethe.operations.restore import restore
    from lethe.rights.answers import answer_pending
    from lethe.rights.requests import apply_pending

    home = Home(tmp_path / "home").ensure()
    generate(home.landing, 200, seed=5, reference=REFERENCE_DAY)

    def run(as_of: dt.date, run_id: str) -> None:
        con = connect(home.warehouse)
        try:
            apply_pending(con, POLICY, as_of, run_id)
            ingest_all(con, home.landing, POLICY)
            tag_all(con, POLICY, as_of)
        finally:
            con.close()
        enforce(home, POLICY, as_of, run_id)
        con = connect(home.warehouse)
        try:
            answer_pending(con, home, POLICY, as_of, run_id)
        finally:
            con.close()

    run(T0, "run-1")
    backup = create_backup(home)
    con = connect(home.warehouse)
    try:
        subject = con.execute(
            "SELECT contact_id FROM core.contacts WHERE _state = 'active' ORDER BY 1 LIMIT 1"
        ).fetchone()[0]
        record_request(con, POLICY.data_schema, "erasure", subject)
    finally:
        con.close()
    run(T0, "run-2")
    assert subject not in {r for (r,) in _ids(home)}
    restore(home, backup.id, POLICY)
    assert subject not in {r for (r,) in _ids(home)}, "the erased subject is back"


def _ids(home: Home) -> list[tuple[str]]:
    con = connect(home.warehouse, read_only=True)
    try:
        return con.execute("SELECT contact_id FROM core.contacts").fetchall()
    finally:
        con.close()


if __name__ == "__main__":  # pragma: no cover - manual: python tests/test_reliability_crash.py
    sys.exit(pytest.main([__file__, "-q", "-s"]))
