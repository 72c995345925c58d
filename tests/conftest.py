"""Shared helpers: hand-made landing files, a temporary LETHE_HOME, the default policy,
and ingest + tag of a landing set into a real DuckDB warehouse file."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lethe.declaration.policy import Policy, load_policy
from lethe.declaration.schema import default_schema
from lethe.engine.ingest import IngestResult, ingest_table
from lethe.engine.tagging import tag_all, tagged_tables
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from tests.postgres import PostgresServer, ServerMissing, running_server

REPO = Path(__file__).resolve().parent.parent
DEFAULT_POLICY = REPO / "policies" / "default.yaml"
# The default schema's tables, and those the default policy tags (all but the holds).
TABLES = default_schema().tables
TAGGED_TABLES = tagged_tables(load_policy(DEFAULT_POLICY))
# The `lethe` script of the environment running the tests (a venv, CI or a user's own).
LETHE_BIN = Path(sys.executable).with_name("lethe")
# What the tests' own environment must not pass on to a `lethe` they start.
_NOT_INHERITED = ("LETHE_POLICY", "DAGSTER_HOME", "LETHE_HOME")


@contextmanager
def home_env(home: Home) -> Iterator[None]:
    """This process pointed at `home` (LETHE_HOME, DAGSTER_HOME, no LETHE_POLICY) for a
    module- or session-scoped setup; the previous environment is restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LETHE_HOME", str(home.root))
        mp.setenv("DAGSTER_HOME", str(home.dagster))
        mp.delenv("LETHE_POLICY", raising=False)
        yield


def lethe_env(home: Path | None = None, **env: str) -> dict[str, str]:
    """The environment of a `lethe` the tests start: on LETHE_HOME `home`, plain 200-column
    output, `env` added to a copy of this process's environment (less LETHE_POLICY,
    DAGSTER_HOME and LETHE_HOME)."""
    environ = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    environ.update(COLUMNS="200", NO_COLOR="1", TERM="dumb")
    if home is not None:
        environ["LETHE_HOME"] = str(home)
    environ.update(env)
    return environ


def lethe_cli(
    *args: str,
    home: Path | None = None,
    cwd: Path | None = None,
    timeout: float = 300,
    umask: int = -1,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """`lethe ARGS` as a user runs it, in `cwd` (default: beside the home, else the
    repository), in `lethe_env(home, **env)`; `umask` the command starts with (-1: this
    process's)."""
    return subprocess.run(
        [str(LETHE_BIN), *args],
        cwd=cwd or (home.parent if home else REPO),
        env=lethe_env(home, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        umask=umask,
    )


INGEST_ORDER = ("contacts", "consents", "orders", "shipments", "holds")

# Defaults are long in the past (2012), so no purpose keeps a row at a 2026 as-of date
# unless a test sets the column that matters.
_KEY_PREFIX = {"contacts": "C", "consents": "K", "orders": "O", "shipments": "S", "holds": "H"}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "contacts": {
        "email": None,  # derived from contact_id
        "phone": "+420 601 123 456",
        "first_name": "Jan",
        "last_name": "Novák",
        "street": "Dlouhá 1",
        "city": "Praha",
        "postal_code": "11000",
        "country": "CZ",
        "birth_date": "1980-05-17",
        "created_at": "2012-01-01T00:00:00",
        "last_active_at": "2012-01-01T00:00:00",
    },
    "consents": {
        "contact_id": "C0001",
        "purpose": "newsletter",
        "granted_at": "2012-01-01T00:00:00",
        "withdrawn_at": None,
        "ip_address": "192.0.2.1",
        "method": "double_opt_in",
        "wording": "Chci dostávat newsletter.",
    },
    "orders": {
        "contact_id": "C0001",
        "ordered_at": "2012-01-01T10:00:00",
        "completed_at": "2012-01-05T10:00:00",
        "invoice_number": None,  # derived from order_id
        "total_amount": "100.00",
        "currency": "CZK",
        "billing_name": "Jan Novák",
        "billing_street": "Dlouhá 1",
        "billing_city": "Praha",
        "billing_postal_code": "11000",
        "billing_country": "CZ",
    },
    "shipments": {
        "order_id": "O0001",
        "carrier": "PPL",
        "tracking_number": None,  # derived from shipment_id
        "recipient_name": "Jan Novák",
        "recipient_phone": "+420 601 123 456",
        "street": "Dlouhá 1",
        "city": "Praha",
        "postal_code": "11000",
        "country": "CZ",
        "shipped_at": "2012-01-02T08:00:00",
        "delivered_at": "2012-01-03T12:00:00",
    },
    "holds": {
        "contact_id": "C0001",
        "reason": "court case 12/2025",
        "placed_at": "2025-01-01T00:00:00",
        "released_at": None,
    },
}
_DERIVED = {
    ("contacts", "email"): lambda key: f"{key.lower()}@example.com",
    ("orders", "invoice_number"): lambda key: f"FV{key}",
    ("shipments", "tracking_number"): lambda key: f"TRK-{key}",
}


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def full_rows(
    table: str, rows: list[dict[str, Any]], omit: tuple[str, ...] = ()
) -> tuple[list[str], list[dict[str, str | None]]]:
    """All contract columns (plus any extra keys of `rows`) with defaults filled in.

    A key missing from a row gets its default; a key present with None stays empty.
    """
    contract = TABLES[table].column_names
    extras: list[str] = []
    for row in rows:
        extras += [k for k in row if k not in contract and k not in extras]
    columns = [c for c in [*contract, *extras] if c not in omit]
    key = TABLES[table].key
    out = []
    for i, row in enumerate(rows, start=1):
        filled: dict[str, Any] = {key: f"{_KEY_PREFIX[table]}{i:04d}"}
        filled.update(_DEFAULTS[table])
        filled.update(row)
        for (t, col), derive in _DERIVED.items():
            if t == table and col not in row and filled[key] is not None:
                filled[col] = derive(str(filled[key]))
        out.append({c: _text(filled.get(c)) for c in columns})
    return columns, out


def write_landing(
    landing: Path,
    table: str,
    rows: list[dict[str, Any]],
    *,
    fmt: str = "csv",
    omit: tuple[str, ...] = (),
) -> Path:
    """Write `landing/TABLE.csv` (or `.parquet`) with every contract column of the table."""
    landing.mkdir(parents=True, exist_ok=True)
    columns, data = full_rows(table, rows, omit)
    path = landing / f"{table}.{fmt}"
    if fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in data)
    elif fmt == "parquet":
        schema = pa.schema([(c, pa.string()) for c in columns])
        pq.write_table(pa.Table.from_pylist(data, schema=schema), path)
    else:
        raise ValueError(fmt)
    return path


def write_landing_set(landing: Path, **tables: list[dict[str, Any]]) -> None:
    """Write every required table (empty when not given) and `holds` if given."""
    for name in ("contacts", "consents", "orders", "shipments"):
        write_landing(landing, name, tables.get(name, []))
    if "holds" in tables:
        write_landing(landing, "holds", tables["holds"])


def ingest_all(
    con: duckdb.DuckDBPyConnection, landing: Path, policy: Policy
) -> dict[str, IngestResult]:
    """Ingest contacts, consents, orders, shipments, holds in that order."""
    return {name: ingest_table(con, landing, name, policy) for name in INGEST_ORDER}


def ingest_and_tag(
    warehouse: Path, landing: Path, policy: Policy, as_of: dt.date | dt.datetime
) -> duckdb.DuckDBPyConnection:
    """Ingest every landing file into `warehouse`, tag as of `as_of`, return the connection."""
    con = connect(warehouse)
    try:
        ingest_all(con, landing, policy)
        tag_all(con, policy, as_of)
    except BaseException:
        con.close()
        raise
    return con


def tags(con: duckdb.DuckDBPyConnection, table: str, key: str) -> dict[str, Any]:
    """The tag columns of one core row, by key."""
    key_col = TABLES[table].key
    row = con.execute(
        f"SELECT _purposes, _legal_bases, _retain_until, _state FROM core.{table}"
        f" WHERE {key_col} = ?",
        [key],
    ).fetchone()
    assert row is not None, f"core.{table} has no row {key}"
    return dict(zip(("purposes", "legal_bases", "retain_until", "state"), row, strict=True))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    """A fresh LETHE_HOME under tmp_path (set in the environment)."""
    monkeypatch.setenv("LETHE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LETHE_POLICY", raising=False)
    return Home.from_env().ensure()


@pytest.fixture(scope="session")
def policy() -> Policy:
    """The repository's default policy."""
    return load_policy(DEFAULT_POLICY)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the session's tests (tests/postgres.py); the
    tests that use it skip where no server is installed."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_server())
        except ServerMissing as exc:
            pytest.skip(str(exc))
        yield server


@pytest.fixture
def warehouse(
    home: Home, policy: Policy
) -> Iterator[Callable[[dt.date | dt.datetime], duckdb.DuckDBPyConnection]]:
    """`warehouse(as_of)`: ingest home.landing, tag, return the open connection."""
    opened: list[duckdb.DuckDBPyConnection] = []

    def build(as_of: dt.date | dt.datetime) -> duckdb.DuckDBPyConnection:
        con = ingest_and_tag(home.warehouse, home.landing, policy, as_of)
        opened.append(con)
        return con

    yield build
    for con in opened:
        con.close()
