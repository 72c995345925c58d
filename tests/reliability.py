"""Helpers of the reliability tests (properties, kill -9, full disk, hostile input, leaks,
tampering, concurrency): scratch homes, `lethe` subprocesses, masked snapshots of the
warehouse, and the scratch files a crash may leave under LETHE_HOME."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import REPO, TABLES, lethe_cli, lethe_env

from lethe.declaration.strategies import quote
from lethe.engine.audit import verify
from lethe.engine.warehouse import connect, has_table
from lethe.operations.home import Home

CORE_TABLES = ("contacts", "consents", "orders", "shipments", "holds")
# Random values: anonymization surrogates and vault tokens differ from run to run.
RANDOM_VALUE = re.compile(r"(anon-|tok_)[0-9a-f]{32}")
# Scratch files of the rewrite, restore, backup and export steps: each holds personal data.
SCRATCH = re.compile(r"(\.rewrite|\.restore|\.partial|\.tmp|\.swap)(\.wal)?$")
# tmpfs where there is one: fsync is free there, so the many small runs go faster.
_SHM = Path("/dev/shm")
SCRATCH_ROOT = str(_SHM) if _SHM.is_dir() and os.access(_SHM, os.W_OK) else None
PYTHON = Path(sys.executable)


def lock_held(lock: Path) -> bool:
    """Whether someone holds the LETHE_HOME lock now (probed on a fresh descriptor, which
    is released at once)."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextmanager
def scratch_home(prefix: str = "lethe-") -> Iterator[Home]:
    """A fresh LETHE_HOME in a temporary directory (on tmpfs when available), removed after."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=SCRATCH_ROOT) as tmp:
        yield Home(Path(tmp) / "home").ensure()


def copy_home(src: Home, dst: Path) -> Home:
    """A copy of a whole LETHE_HOME (landing files, warehouse, vault, Dagster instance)."""
    shutil.copytree(src.root, dst, symlinks=True)
    return Home(dst)


def cli_env(home: Home, **extra: str) -> dict[str, str]:
    """The environment of a `lethe` process on `home` (see conftest.lethe_env)."""
    return lethe_env(home.root, **extra)


def run_cli(
    home: Home, *args: str, timeout: float = 300, umask: int = -1, **env: str
) -> subprocess.CompletedProcess:
    """`lethe ARGS` on `home` (cwd: the repository, so the default policy is found);
    `umask` the command starts with (-1: this process's)."""
    return lethe_cli(*args, home=home.root, cwd=REPO, timeout=timeout, umask=umask, **env)


def masked(value: object) -> str:
    return RANDOM_VALUE.sub(r"\1*", str(value))


def snapshot(warehouse: Path, tables: tuple[str, ...] = CORE_TABLES) -> dict[str, list[tuple]]:
    """Every row of the core tables as masked text, sorted (no `_ingested_at`: a load time)."""
    con = connect(warehouse, read_only=True)
    try:
        out = {}
        for table in tables:
            cols = [
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema ="
                    " 'core' AND table_name = ? ORDER BY ordinal_position",
                    [table],
                ).fetchall()
                if r[0] != "_ingested_at"
            ]
            rows = con.execute(
                f"SELECT {', '.join(quote(c) for c in cols)} FROM core.{quote(table)}"
            ).fetchall()
            out[table] = sorted(tuple(masked(v) for v in row) for row in rows)
        return out
    finally:
        con.close()


def requests_state(warehouse: Path) -> list[tuple]:
    """(type, subject_key, status) of every data-subject request, sorted."""
    con = connect(warehouse, read_only=True)
    try:
        if not has_table(con, "requests", "requests"):
            return []
        return sorted(
            con.execute("SELECT type, subject_key, status FROM requests.requests").fetchall()
        )
    finally:
        con.close()


def ledger_effects(warehouse: Path) -> list[tuple]:
    """What the ledger says was done to which rows, without run ids, times and reasons."""
    con = connect(warehouse, read_only=True)
    try:
        rows = con.execute(
            "SELECT action, coalesce(table_name, ''), list_sort(columns), list_sort(keys)"
            " FROM audit.ledger WHERE action NOT IN ('backup', 'purge', 'restore')"
        ).fetchall()
        return sorted((a, t, tuple(c), tuple(k)) for a, t, c, k in rows)
    finally:
        con.close()


def ledger_ok(warehouse: Path) -> tuple[bool, str]:
    con = connect(warehouse, read_only=True)
    try:
        result = verify(con)
        return result.ok, result.problem or f"{result.entries} entries"
    finally:
        con.close()


def leftovers(root: Path) -> list[str]:
    """Scratch files under LETHE_HOME (half-written rewrites, restores, backups, exports)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if SCRATCH.search(p.name) or p.name.startswith("duckdb_temp")
    )


def untracked_exports(home: Home) -> list[str]:
    """Export zips under exports/ that the export log does not list (never expired)."""
    con = connect(home.warehouse, read_only=True)
    try:
        logged = {r[0] for r in con.execute("SELECT file_name FROM audit.export_log").fetchall()}
    finally:
        con.close()
    return sorted(p.name for p in home.exports.rglob("*.zip") if p.name not in logged)


def last_steps(home: Home) -> list[tuple[str, str]]:
    """(run_id, step running or last started) of every run in the home's Dagster instance."""
    out = []
    for db in sorted((home.dagster / "history" / "runs").glob("*.db")):
        if db.name == "index.db":
            continue
        events = _run_events(db)
        started = [s for e, s in events if e == "STEP_START"]
        done = {e for e, _ in events if e in ("RUN_SUCCESS", "RUN_FAILURE")}
        out.append((db.stem, "finished" if done else (started[-1] if started else "startup")))
    return out


def _run_events(db: Path) -> list[tuple[str, str | None]]:
    """A run database's step and run events; none when a kill left it without its tables
    (Dagster creates the file, then its schema: a kill in between is a kill at start-up)."""
    con = sqlite3.connect(db)  # read-write: SQLite rolls back a killed writer's journal
    try:
        created = con.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'event_logs'"
        ).fetchone()[0]
        if not created:
            return []
        return con.execute(
            "SELECT dagster_event_type, step_key FROM event_logs"
            " WHERE dagster_event_type IN ('STEP_START', 'STEP_SUCCESS', 'STEP_FAILURE',"
            " 'RUN_SUCCESS', 'RUN_FAILURE') ORDER BY id"
        ).fetchall()
    finally:
        con.close()


def stage_of(step: str) -> str:
    """The pipeline stage a Dagster step key belongs to."""
    if step in ("ingest__contacts", "ingest__consents", "ingest__orders", "ingest__shipments"):
        return "ingest"
    if step in ("ingest__holds", "landing__leftovers"):
        return "ingest"
    prefixes = {
        "requests__intake": "request processing",
        "core__purpose_tags": "tagging",
        "audit__log_retention": "log retention",
        "core__retention_enforcement": "enforcement + compaction",
        "requests__answers": "request processing",
        "backups__": "backup",
        "analytics__": "analytics",
        "compliance__": "compliance documents",
    }
    for prefix, stage in prefixes.items():
        if step.startswith(prefix):
            return stage
    return step


def table_keys(warehouse: Path, table: str) -> set[str]:
    con = connect(warehouse, read_only=True)
    try:
        key = quote(TABLES[table].key)
        return {r[0] for r in con.execute(f"SELECT {key} FROM core.{quote(table)}").fetchall()}
    finally:
        con.close()


class ValueFinder:
    """Finds which of many values occur in a text, fast: a value is looked for only when
    every word of it is a word of the text (then as a substring).

    Texts are searched as they are and with JSON `\\uXXXX` escapes decoded (Dagster's
    serialized events escape non-ASCII characters).
    """

    def __init__(self, values: set[str]) -> None:
        self.values = {v: _WORD.findall(v) for v in values}

    def find(self, text: str) -> set[str]:
        unescaped = _JSON_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
        found = set()
        for candidate in {text, unescaped}:
            words = set(_WORD.findall(candidate))
            found |= {
                value
                for value, parts in self.values.items()
                if all(w in words for w in parts) and value in candidate
            }
        return found

    def find_bytes(self, data: bytes) -> set[str]:
        return self.find(data.decode("utf-8", errors="replace"))


_WORD = re.compile(r"\w+")
_JSON_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
