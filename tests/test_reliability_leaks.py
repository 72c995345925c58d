"""Leak checks: no personal value in any output, log or Dagster record; owner-only files;
analytics never open the vault.

`lethe demo --contacts 2000` runs in a subprocess (its stdout and stderr captured); then,
with access, portability, erasure and rectification requests pending and a new delivery
in landing/, the pipeline job runs in this process with Dagster's console logger and
Python's logging at DEBUG (captured). The e-mails, phones, full names and streets of the
generated data (read from the landing files before the runs) must not appear in: the
captured output, the Dagster event log (every event of every run, through the instance),
the compute logs, or any byte of the Dagster instance's files (SQLite storage included,
also JSON-escaped).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest
from conftest import DEFAULT_POLICY
from reliability import ValueFinder, run_cli

from assets.analytics import analytics_assets
from lethe.declaration.policy import load_policy
from lethe.declaration.schema import default_schema
from lethe.engine.warehouse import connect
from lethe.eshop.generate import generate
from lethe.operations.home import Home
from lethe.rights.requests import record_request
from pipelines.definitions import defs
from pipelines.jobs import PIPELINE_JOB
from pipelines.resources import PolicyResource, WarehouseResource

CONTACTS = 2_000
PERSONAL = {
    "contacts": ("email", "phone", "street", ("first_name", "last_name")),
    "orders": ("billing_name", "billing_street"),
    "shipments": ("recipient_name", "recipient_phone", "street"),
}


def personal_values(landing: Path) -> set[str]:
    """E-mails, phones, full names and streets of the landing files (before a run eats them)."""
    values: set[str] = set()
    for table, columns in PERSONAL.items():
        frame = pl.read_parquet(landing / f"{table}.parquet")
        for col in columns:
            if isinstance(col, tuple):
                series = frame.select(pl.concat_str(list(col), separator=" ")).to_series()
            else:
                series = frame[col]
            values |= {v for v in series.drop_nulls().to_list() if len(v) >= 6}
    return values


@dataclass
class Leaks:
    home: Home
    values: set[str]
    finder: ValueFinder
    demo_output: str
    debug_output: str
    debug_log_records: str
    run_ids: list[str]


@pytest.fixture(scope="module")
def leaks(tmp_path_factory: pytest.TempPathFactory) -> Leaks:
    root = tmp_path_factory.mktemp("leaks")
    home = Home(root / "home")
    today = dt.datetime.now(dt.UTC).date()
    # The demo generates seed 0 as of today: the same files are made here to read values.
    generate(root / "expected", CONTACTS, seed=0, reference=today)
    values = personal_values(root / "expected")
    # umask 000: whatever the user's umask, Lethe's files must be owner-only.
    demo = run_cli(home, "demo", "--contacts", str(CONTACTS), timeout=900, umask=0)
    assert demo.returncode == 0, demo.stderr
    home = Home.from_env(home.root)

    # Requests that make the next run read, export and erase personal data.
    con = connect(home.warehouse)
    try:
        active = [
            r[0]
            for r in con.execute(
                "SELECT contact_id FROM core.contacts WHERE _state = 'active' ORDER BY 1 LIMIT 4"
            ).fetchall()
        ]
        record_request(con, default_schema(), "access", active[0])
        record_request(con, default_schema(), "portability", active[1])
        record_request(con, default_schema(), "erasure", active[2])
        record_request(
            con,
            default_schema(),
            "rectification",
            active[3],
            {"email": "fixed-address@example.test"},
        )
    finally:
        con.close()
    generate(home.landing, CONTACTS // 10, seed=1, reference=today)
    values |= personal_values(home.landing)

    # The pipeline at DEBUG, in this process: console logger and Python logging captured.
    saved_dagster_home = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home.dagster)
    records: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    root_logger = logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    capture = _Capture()
    try:
        with capture:
            instance = dg.DagsterInstance.get()
            job = defs().resolve_job_def(PIPELINE_JOB)
            result = job.execute_in_process(
                run_config={
                    "resources": {
                        "warehouse": {"config": {"home": str(home.root)}},
                        "policy": {"config": {"as_of": today.isoformat(), "path": ""}},
                    },
                    "loggers": {"console": {"config": {"log_level": "DEBUG"}}},
                },
                instance=instance,
                raise_on_error=False,
            )
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
        _restore_env("DAGSTER_HOME", saved_dagster_home)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    run_ids = [r.run_id for r in instance.get_runs()]
    assert len(run_ids) == 2
    return Leaks(
        home,
        values,
        ValueFinder(values),
        demo.stdout + demo.stderr,
        capture.text,
        "\n".join(records),
        run_ids,
    )


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class _Capture:
    """Capture what is printed: Python's sys.stdout/sys.stderr (Dagster's console logger
    writes there) and file descriptors 1 and 2 (anything printed below Python)."""

    def __enter__(self) -> _Capture:
        self._files = [tempfile.TemporaryFile() for _ in range(2)]  # noqa: SIM115
        self._saved_fds = [os.dup(1), os.dup(2)]
        self._saved_streams = sys.stdout, sys.stderr
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, f in zip((1, 2), self._files, strict=True):
            os.dup2(f.fileno(), fd)
        self._python = io.StringIO()
        sys.stdout = sys.stderr = self._python
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout, sys.stderr = self._saved_streams
        for fd, saved in zip((1, 2), self._saved_fds, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self.text = self._python.getvalue()
        for f in self._files:
            f.seek(0)
            self.text += f.read().decode("utf-8", errors="replace")
            f.close()


def test_values_are_found_where_they_are(leaks: Leaks) -> None:
    """The search works: the values are in the landing data and in the warehouse file."""
    assert len(leaks.values) > 5 * CONTACTS
    con = connect(leaks.home.warehouse, read_only=True)
    try:
        emails = {r[0] for r in con.execute("SELECT email FROM core.contacts").fetchall()}
    finally:
        con.close()
    assert emails & leaks.values
    name = next(v for v in sorted(leaks.values) if " " in v and not v.isascii())
    assert leaks.finder.find(f"event: {name}.") == {name}
    assert leaks.finder.find(json.dumps({"message": name})) == {name}  # \\u-escaped


def test_demo_output_has_no_personal_value(leaks: Leaks) -> None:
    assert "Lethe warehouse as of" in leaks.demo_output
    assert leaks.finder.find(leaks.demo_output) == set()


def test_debug_console_and_python_logs_have_no_personal_value(leaks: Leaks) -> None:
    assert "DEBUG" in leaks.debug_output or "STEP_START" in leaks.debug_output
    assert leaks.finder.find(leaks.debug_output) == set()
    assert leaks.finder.find(leaks.debug_log_records) == set()


def test_dagster_event_log_has_no_personal_value(leaks: Leaks) -> None:
    saved = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(leaks.home.dagster)
    try:
        instance = dg.DagsterInstance.get()
        texts = []
        for run_id in leaks.run_ids:
            for entry in instance.all_logs(run_id):
                texts.append(entry.user_message or "")
                texts.append(dg.serialize_value(entry))
            run = instance.get_run_by_id(run_id)
            texts.append(dg.serialize_value(run))
    finally:
        _restore_env("DAGSTER_HOME", saved)
    text = "\n".join(texts)
    assert "retention_enforcement" in text
    assert leaks.finder.find(text) == set()


def test_no_file_of_the_dagster_instance_holds_a_personal_value(leaks: Leaks) -> None:
    """Run and event storage (SQLite), schedules, compute logs: every byte."""
    files = [p for p in leaks.home.dagster.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in files)
    found = {
        str(p.relative_to(leaks.home.root)): leaks.finder.find_bytes(p.read_bytes()) for p in files
    }
    assert {k: v for k, v in found.items() if v} == {}


def test_every_file_is_owner_only(leaks: Leaks) -> None:
    """Every file under LETHE_HOME is 0600 and every folder 0700 (the demo ran under umask
    000): warehouse, vault, exports, backups with their manifests, the Dagster instance's
    files (landing files: tests/test_files.py)."""
    root = leaks.home.root
    entries = [root, *(p for p in root.rglob("*") if not p.is_symlink())]
    files = [p for p in entries if p.is_file()]
    for must in (leaks.home.warehouse, leaks.home.vault):
        assert must in files
    for kind in ("exports/", "backups/", "dagster/"):
        assert any(str(p.relative_to(root)).startswith(kind) for p in files), kind
    assert any(p.name == "manifest.json" for p in files)
    modes = {
        str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in entries
        if oct(stat.S_IMODE(p.stat().st_mode)) != ("0o700" if p.is_dir() else "0o600")
    }
    assert modes == {}


def test_analytics_assets_never_open_the_vault(
    leaks: Leaks, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Materialize every analytics asset with the vault file moved away: they succeed, no
    connection or ATTACH names the vault, and no vault file is created again."""
    vault = leaks.home.vault
    aside = vault.with_name("vault.aside")
    opened: list[str] = []
    statements: list[str] = []
    real = duckdb.connect

    def connect_spy(database: str = ":memory:", *args: object, **kwargs: object):
        opened.append(str(database))
        con = real(database, *args, **kwargs)
        return _Spy(con, statements)

    vault.rename(aside)
    monkeypatch.setattr(duckdb, "connect", connect_spy)
    try:
        result = dg.materialize(
            analytics_assets(load_policy(DEFAULT_POLICY)),
            resources={
                "warehouse": WarehouseResource(home=str(leaks.home.root)),
                "policy": PolicyResource(path=str(DEFAULT_POLICY)),
            },
            raise_on_error=False,
        )
        assert result.success
        assert not vault.exists(), "an analytics asset created the vault again"
    finally:
        monkeypatch.undo()
        aside.rename(vault)
    assert opened and all(not o.endswith("vault.duckdb") for o in opened), opened
    assert [s for s in statements if "vault" in s.lower()] == []


class _Spy:
    def __init__(self, con: duckdb.DuckDBPyConnection, log: list[str]) -> None:
        self._con, self._log = con, log

    def execute(self, query: str, *args: object) -> object:
        self._log.append(query)
        return self._con.execute(query, *args)

    def sql(self, query: str, *args: object, **kwargs: object) -> object:
        self._log.append(query)
        return self._con.sql(query, *args, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self._con, name)
