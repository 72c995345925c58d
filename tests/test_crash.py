"""Enforcement killed with SIGKILL at several points, then rerun.

A synthetic warehouse (10,000 contacts, stored uncompressed so the byte scans mean
something) is ingested and tagged once. A clean run in a subprocess gives the after-state
and the duration of enforcement; then copies of the prepared LETHE_HOME are enforced in
subprocesses killed at 10 %, 30 %, 50 %, 70 % and 90 % of that duration, right when the
fresh warehouse file starts being written, and right after it is swapped in. After each
kill the warehouse must open, the leftovers a new run removes first must be gone, and the
state must be exactly the before- or the after-state; a rerun must then reach the clean
run's state and leave no file with personal data behind.

States are compared as per-table fingerprints computed in DuckDB (row count and the sum
of row hashes) over every column, vault tokens replaced by the (kind, value) they stand
for and surrogates by a placeholder.
"""

from __future__ import annotations

import datetime as dt
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest
from conftest import DEFAULT_POLICY, ingest_all

from lethe.declaration.policy import Policy
from lethe.engine.audit import verify
from lethe.engine.compaction import remove_leftovers, rewrite_path
from lethe.engine.enforcement import enforce
from lethe.engine.keyhash import MACRO, bind, read_secret
from lethe.engine.tagging import tag_all
from lethe.engine.warehouse import connect
from lethe.eshop.generate import generate
from lethe.operations.home import Home

T = dt.date(2026, 3, 1)
CONTACTS = 20_000  # enough for enforcement to last over 0.5 s, so timed kills land mid-run
FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
WATCH = "rewrite-started"  # killed as soon as warehouse.duckdb.rewrite appears
SWAPPED = "rewrite-swapped"  # killed as soon as it is gone again (swapped in)
SCENARIOS = (*(f"{int(f * 100)}%" for f in FRACTIONS), WATCH, SWAPPED)
SCRIPT = Path(__file__).with_name("crash_enforce.py")
TABLES = ("contacts", "consents", "orders", "shipments", "holds")
SCRATCH = (".rewrite", ".rewrite.wal", ".restore", ".restore.wal", ".tmp")


def fingerprint(home: Home) -> dict[str, object]:
    """Per core table (count, sum of row hashes), tokens unmasked through the vault; the
    ledger's length; the vault's (kind, value) set."""
    con = duckdb.connect()
    try:
        con.execute("ATTACH ? AS w (READ_ONLY)", [str(home.warehouse)])
        if home.vault.exists():
            con.execute("ATTACH ? AS v (READ_ONLY)", [str(home.vault)])
        if con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = 'v'"
            " AND table_name = 'tokens'"
        ).fetchone()[0]:
            con.execute(
                "CREATE TEMP TABLE tok AS SELECT token, kind || ':' || value AS v FROM v.tokens"
            )
        else:
            con.execute("CREATE TEMP TABLE tok (token VARCHAR, v VARCHAR)")
        out: dict[str, object] = {}
        for table in TABLES:
            cols = con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = 'w'"
                " AND schema_name = 'core' AND table_name = ? ORDER BY column_index",
                [table],
            ).fetchall()
            joins, exprs = [], []
            for i, (col, sql_type) in enumerate(cols):
                c = f'x."{col}"'
                if sql_type == "VARCHAR":
                    joins.append(f" LEFT JOIN tok t{i} ON t{i}.token = {c}")
                    exprs.append(
                        f"CASE WHEN t{i}.v IS NOT NULL THEN 'tok:' || t{i}.v"
                        f" WHEN {c} LIKE 'tok\\_%' ESCAPE '\\' THEN 'tok:?'"
                        f" WHEN {c} LIKE 'anon-%' THEN 'anon' ELSE {c} END"
                    )
                else:
                    exprs.append(c)
            n, h = con.execute(
                f"SELECT count(*), coalesce(sum(hash({', '.join(exprs)})::HUGEINT), 0)"
                f' FROM w.core."{table}" x{"".join(joins)}'
            ).fetchone()
            out[table] = (n, int(h))
        out["ledger"] = con.execute("SELECT count(*) FROM w.audit.ledger").fetchone()[0]
        out["vault"] = con.execute(
            "SELECT count(*), coalesce(sum(hash(v)::HUGEINT), 0) FROM tok"
        ).fetchone()
        return out
    finally:
        con.close()


def tables_of(fp: dict[str, object]) -> dict[str, object]:
    return {t: fp[t] for t in (*TABLES, "ledger")}


def spawn(home: Home) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(home.root), str(DEFAULT_POLICY), T.isoformat(), "run"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc


def ready(proc: subprocess.Popen[str]) -> None:
    line = proc.stdout.readline().strip()
    assert line == "ready", (line, proc.poll())


def go(proc: subprocess.Popen[str]) -> float:
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return time.monotonic()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def scan(root: Path, values: list[str]) -> list[str]:
    blobs = [p.read_bytes() for p in root.rglob("*") if p.is_file()]
    return [v for v in values if any(v.encode() in b for b in blobs)]


@dataclass
class Outcome:
    name: str
    delay: float | None = None
    killed: bool = False  # still running when the signal came
    leftovers: list[str] = field(default_factory=list)  # scratch files the kill left
    after_cleanup: list[str] = field(default_factory=list)
    opens: bool = False
    state: str = "?"
    ledger_ok: bool = False
    rerun: dict[str, object] = field(default_factory=dict)
    rerun_verifies: bool = False
    files: list[str] = field(default_factory=list)
    erased_after_kill: list[str] = field(default_factory=list)
    erased_found: list[str] = field(default_factory=list)


@dataclass
class Crash:
    pristine: Path
    duration: float
    before: dict[str, object]
    after: dict[str, object]
    erased: list[str]
    outcomes: dict[str, Outcome]


def erased_sample(pristine: Home, clean: Home) -> list[str]:
    """Emails and phones of contacts the clean run anonymized."""
    con = connect(clean.warehouse, read_only=True)
    try:
        keys = con.execute(
            "SELECT unnest(keys) FROM audit.ledger WHERE action = 'anonymize'"
            " AND table_name = 'contacts' LIMIT 15"
        ).fetchall()
    finally:
        con.close()
    con = connect(pristine.warehouse, read_only=True)
    try:
        bind(con, read_secret(clean.vault))  # the ledger names contacts by keyed hash
        erased = [
            v
            for (hashed,) in keys
            for v in con.execute(
                f"SELECT email, phone FROM core.contacts WHERE {MACRO}(contact_id) = ?", [hashed]
            ).fetchone()
            if v
        ]
    finally:
        con.close()
    return erased


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory, policy: Policy) -> Crash:
    root = tmp_path_factory.mktemp("crash")
    pristine = Home(root / "pristine").ensure()
    generate(pristine.landing, CONTACTS, seed=3, reference=T)
    con = connect(pristine.warehouse)
    try:
        con.execute("PRAGMA force_compression='uncompressed'")
        ingest_all(con, pristine.landing, policy)
        tag_all(con, policy, T)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    before = fingerprint(pristine)

    clean = Home(root / "clean")
    shutil.copytree(pristine.root, clean.root)
    proc = spawn(clean)
    ready(proc)
    start = go(proc)
    assert proc.stdout.readline().strip() == "done"
    duration = time.monotonic() - start
    assert proc.wait(timeout=60) == 0
    proc.stdin.close()
    proc.stdout.close()
    after = fingerprint(clean)
    erased = erased_sample(pristine, clean)

    homes = {name: Home(root / f"kill-{i}") for i, name in enumerate(SCENARIOS)}
    for home in homes.values():
        shutil.copytree(pristine.root, home.root)
    procs = {name: spawn(home) for name, home in homes.items()}
    try:
        for p in procs.values():
            ready(p)
        outcomes = {
            name: kill_and_rerun(name, home, procs[name], duration, before, after, erased, policy)
            for name, home in homes.items()
        }
    finally:
        for p in procs.values():  # only if something above failed: none is left running
            if p.poll() is None:
                p.kill()
                p.wait(timeout=60)
    return Crash(pristine.root, duration, before, after, erased, outcomes)


def kill_and_rerun(
    name: str,
    home: Home,
    proc: subprocess.Popen[str],
    duration: float,
    before: dict[str, object],
    after: dict[str, object],
    erased: list[str],
    policy: Policy,
) -> Outcome:
    out = Outcome(name)
    go(proc)
    fresh = rewrite_path(home.warehouse)
    if name in (WATCH, SWAPPED):
        while proc.poll() is None and not fresh.exists():
            time.sleep(0.0002)
    if name == SWAPPED:
        while proc.poll() is None and fresh.exists():
            time.sleep(0.0002)
    if name not in (WATCH, SWAPPED):
        out.delay = FRACTIONS[SCENARIOS.index(name)] * duration
        time.sleep(out.delay)
    out.killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdin.close()
    proc.stdout.close()
    out.leftovers = [f for f in files_under(home.root) if f.endswith(SCRATCH)]
    out.erased_after_kill = scan(home.root, erased)

    remove_leftovers(home.root)  # what a new run does first
    out.after_cleanup = [f for f in files_under(home.root) if f.endswith(SCRATCH)]
    try:
        state = fingerprint(home)
    except duckdb.Error as exc:
        out.state = f"does not open: {exc}"
    else:
        out.opens = True
        out.state = (
            "before"
            if tables_of(state) == tables_of(before)
            else "after"
            if tables_of(state) == tables_of(after)
            else "neither"
        )
        con = connect(home.warehouse, read_only=True)
        try:
            out.ledger_ok = verify(con).ok
        finally:
            con.close()

    enforce(home, policy, T, "rerun")
    out.rerun = fingerprint(home)
    con = connect(home.warehouse, read_only=True)
    try:
        out.rerun_verifies = verify(con).ok
    finally:
        con.close()
    out.files = files_under(home.root)
    out.erased_found = scan(home.root, erased)
    return out


def test_enforcement_takes_long_enough_to_be_killed(crash: Crash) -> None:
    assert crash.duration >= 0.5, crash.duration
    assert crash.before["contacts"][0] == CONTACTS
    assert crash.after != crash.before  # the run did change things
    assert crash.after["ledger"] > 0
    # the byte scans can see values: the erased ones are in the prepared warehouse
    assert len(crash.erased) >= 10
    assert scan(crash.pristine, crash.erased) == crash.erased


@pytest.mark.parametrize("name", SCENARIOS)
def test_killed_run_leaves_the_before_or_the_after_state(crash: Crash, name: str) -> None:
    out = crash.outcomes[name]
    print(f"kill at {name} (delay {out.delay}): killed={out.killed}, state={out.state}")
    assert out.after_cleanup == []  # no half-written rewrite survives a new start
    assert out.opens
    assert out.state in ("before", "after"), out
    assert out.ledger_ok
    if out.state == "before" and name == WATCH:
        assert out.killed and out.leftovers  # killed while the fresh file was written


@pytest.mark.parametrize("name", SCENARIOS)
def test_rerun_after_kill_reaches_the_clean_state(crash: Crash, name: str) -> None:
    out = crash.outcomes[name]
    assert tables_of(out.rerun) == tables_of(crash.after)
    assert out.rerun["vault"] == crash.after["vault"]  # same values tokenized, no more
    assert out.rerun_verifies
    assert out.files == ["vault.duckdb", "warehouse.duckdb"]
    assert out.erased_found == []
    if out.state == "before":  # the scan sees them where they still are
        assert out.erased_after_kill == crash.erased


def test_kills_landed_during_enforcement(crash: Crash) -> None:
    summary = {
        n: (round(o.delay, 2) if o.delay else None, o.killed, o.state)
        for n, o in crash.outcomes.items()
    }
    print(f"clean enforcement: {crash.duration:.2f} s; kills: {summary}")
    assert sum(o.killed for o in crash.outcomes.values()) >= 3, summary
    assert crash.outcomes[WATCH].killed and crash.outcomes[WATCH].state == "before", summary
    if crash.outcomes[SWAPPED].killed:  # it may have exited before the signal came
        assert crash.outcomes[SWAPPED].state == "after", summary
