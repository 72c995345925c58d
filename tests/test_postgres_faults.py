"""The PostgreSQL warehouse's server going away in the middle of `lethe run` (killed as a crash
would, at a chosen step): the run stops with one line naming the warehouse, what it had not
committed is not there, and the next run after the restart ends where an uninterrupted run
ends (the same core rows, the request answered, a ledger that verifies)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from engine_values import Plain

from lethe.declaration.policy import Policy
from lethe.engine import postgres_run, postgres_warehouse
from lethe.engine.engines import PostgresEngine
from lethe.engine.postgres_warehouse import WarehouseError, open_engine, verify
from lethe.operations import postgres_backup
from lethe.operations.home import Home
from lethe.rights import postgres_requests
from tests.postgres import PostgresServer
from tests.test_postgres_dagster import AS_OF, erasure_of_first_subject, landed

LOAD_TIMES = ("_ingested_at",)  # differ between two loads of the same files
# Where the server is killed: inside enforcement's transaction (before a table's rewrite),
# after enforcement committed (as the answers start), and as the day's backup starts.
# Each with the request's status the kill leaves and whether enforcement had committed.
STEPS: dict[str, tuple[Any, str, str, bool]] = {
    "enforcement": (postgres_warehouse, "_rewrite", "pending", False),
    "answers": (postgres_requests, "answer", "pending", True),
    "backup": (postgres_backup, "backup", "done", True),
}


def _prepared(root: Path, dsn: str, policy: Policy) -> Home:
    """A home whose landing files are loaded into the database, with an erasure of the
    first subject recorded for a run to carry out."""
    home = landed(root)
    engine = open_engine(dsn)
    try:
        erasure_of_first_subject(engine, home, policy)
    finally:
        engine.close()
    return home


def _state(dsn: str, policy: Policy) -> dict[str, Any]:
    engine: PostgresEngine = open_engine(dsn)
    try:
        tokens = {
            t: (k, v)
            for t, k, v in engine.con.execute("SELECT token, kind, value FROM vault.tokens")
        }
        plain = Plain(tokens, {})
        state: dict[str, Any] = {}
        for table in policy.data_schema.tables:
            cur = engine.con.execute(f'SELECT * FROM core."{table}"')
            names = [d.name for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
            state[table] = plain.rows(rows, drop=LOAD_TIMES)
        requests = engine.con.execute("SELECT type, status FROM requests.requests")
        state["requests"] = requests.fetchall()
        assert verify(engine.con).ok
        return state
    finally:
        engine.close()


@pytest.fixture(scope="module")
def uninterrupted(
    postgres: PostgresServer, policy: Policy, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    dsn = postgres.new_database()
    home = _prepared(tmp_path_factory.mktemp("pgfaults") / "home", dsn, policy)
    postgres_run.run(dsn, home, policy, AS_OF)
    return _state(dsn, policy)


@pytest.mark.parametrize("step", list(STEPS))
def test_the_server_killed_mid_run_then_the_next_run_completes(
    step: str,
    uninterrupted: dict[str, Any],
    postgres: PostgresServer,
    policy: Policy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dsn = postgres.new_database()
    home = _prepared(tmp_path / "home", dsn, policy)
    module, name, status, enforced = STEPS[step]
    original: Callable[..., Any] = getattr(module, name)

    def killed(*args: Any, **kwargs: Any) -> Any:
        postgres.kill()
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, killed)
    try:
        with pytest.raises(WarehouseError) as caught:
            postgres_run.run(dsn, home, policy, AS_OF)
    finally:
        postgres.start()
    message = str(caught.value)
    assert message.startswith("PostgreSQL warehouse ") and "\n" not in message, message
    assert "the run stopped: the connection was lost" in message, message
    monkeypatch.setattr(module, name, original)
    # What committed before the kill stays; what did not is not there.
    before = _state(dsn, policy)
    assert before["requests"] == [("erasure", status)]
    subjects = policy.data_schema.subject_table.name
    assert (before[subjects] == uninterrupted[subjects]) == enforced
    postgres_run.run(dsn, home, policy, AS_OF)
    assert _state(dsn, policy) == uninterrupted
