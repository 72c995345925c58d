"""The engines plans run on, behind one small interface: one class per engine, no hierarchy.

Each engine connects, renders and runs a plan (`lethe.engine.rendering`), runs steps as
one transaction, purges erased values physically and takes the one-writer lock:

| | DuckDB (the default) | PostgreSQL |
|---|---|---|
| plan text | as generated | rendered by SQLGlot plus Lethe's rewrites |
| physical purge | rewrite of the file (`lethe.engine.compaction`) | `VACUUM FULL` of the tables |
| lock | the LETHE_HOME lock file | a session advisory lock |

What PostgreSQL keeps after `VACUUM FULL` (WAL segments until they are recycled, and any
WAL archive or replica) is beyond what an engine can purge.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import duckdb
import psycopg
from psycopg import sql as pgsql

from lethe.engine.compaction import compact
from lethe.engine.plan import Plan
from lethe.engine.rendering import DUCKDB, POSTGRES, render
from lethe.engine.warehouse import connect, transaction
from lethe.operations.lock import LockedError, exclusive

Rows = list[tuple[Any, ...]]
# The advisory lock key of Lethe's one writer on a PostgreSQL database ("lethe" in ASCII).
ADVISORY_LOCK = 0x6C65746865


class Engine(Protocol):
    """What Lethe needs of an engine (SPEC "Engines and scale")."""

    dialect: str

    def render(self, plan: Plan) -> list[str]: ...
    def run(self, plan: Plan) -> list[Rows | None]: ...
    def transaction(self) -> Any: ...
    def purge(self, tables: list[tuple[str, str]]) -> None: ...
    def lock(self) -> Any: ...
    def close(self) -> None: ...


def _returns_rows(sql: str) -> bool:
    return sql.lstrip().lstrip("(").upper().startswith(("SELECT", "WITH"))


class DuckDBEngine:
    """A DuckDB warehouse file."""

    dialect = DUCKDB

    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection | None = None) -> None:
        self.path = Path(path)
        self.con = con if con is not None else connect(self.path)

    def render(self, plan: Plan) -> list[str]:
        """The plan's statements as generated (DuckDB is the dialect they are written in)."""
        return render(plan.statements, DUCKDB)

    def run(self, plan: Plan) -> list[Rows | None]:
        """Run every statement; per statement its rows (None for one that returns none)."""
        out: list[Rows | None] = []
        for sql in plan.statements:
            cur = self.con.execute(sql)
            out.append(cur.fetchall() if _returns_rows(sql) else None)
        return out

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing."""
        with transaction(self.con):
            yield

    def purge(self, tables: list[tuple[str, str]]) -> None:
        """Rewrite the whole file (freed blocks keep erased values in DuckDB): every table
        is rewritten, `tables` included."""
        self.con.close()
        compact(self.path)
        self.con = connect(self.path)

    def lock(self) -> Any:
        """The LETHE_HOME lock (the file beside the warehouse)."""
        return exclusive(self.path.with_name("run.lock"))

    def close(self) -> None:
        self.con.close()


class PostgresEngine:
    """A PostgreSQL database, by DSN (never logged or written anywhere by Lethe)."""

    dialect = POSTGRES

    def __init__(self, dsn: str, connect_timeout: int | None = None) -> None:
        # Autocommit outside `transaction()`: VACUUM refuses to run inside a transaction.
        self.con = psycopg.connect(
            dsn, autocommit=True, application_name="lethe", connect_timeout=connect_timeout
        )
        self.con.execute("SET TIME ZONE 'UTC'")

    def render(self, plan: Plan) -> list[str]:
        """The plan's statements rendered for PostgreSQL (one may become two)."""
        return render(plan.statements, POSTGRES)

    def run(self, plan: Plan) -> list[Rows | None]:
        """Run every statement; per plan statement the rows of its last rendered statement
        (None for one that returns none)."""
        out: list[Rows | None] = []
        for statement in plan.statements:
            rows: Rows | None = None
            for sql in render((statement,), POSTGRES):
                cur = self.con.execute(sql)
                rows = cur.fetchall() if cur.description is not None else None
            out.append(rows)
        return out

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing."""
        with self.con.transaction():
            yield

    def purge(self, tables: list[tuple[str, str]]) -> None:
        """`VACUUM FULL` of `tables` ((schema, table) pairs): each is rewritten into new
        files without its dead rows, and the old files are removed."""
        for schema, table in tables:
            self.con.execute(pgsql.SQL("VACUUM FULL {}").format(pgsql.Identifier(schema, table)))

    @contextmanager
    def lock(self, wait_seconds: float = 0.0) -> Iterator[None]:
        """Lethe's session advisory lock on the database; refused while another holds it
        (after up to `wait_seconds`). Taken again by the session holding it, it nests."""
        deadline = time.monotonic() + wait_seconds
        while True:
            (got,) = self.con.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_LOCK]).fetchone()
            if got:
                break
            if time.monotonic() >= deadline:
                raise LockedError("another Lethe process is writing to this PostgreSQL database")
            time.sleep(0.5)
        try:
            yield
        finally:
            self.con.execute("SELECT pg_advisory_unlock(%s)", [ADVISORY_LOCK])

    def close(self) -> None:
        self.con.close()
