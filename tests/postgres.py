"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` package, never a mock.

`initdb` writes a cluster into a temporary folder and `pg_ctl` starts it on a free local
port (and a private socket folder); the session fixture stops it and removes the folder at
the end. PostgreSQL refuses to run as root, so as root the cluster belongs to the
`postgres` system user (the package creates it) and every server command runs as that
user; as anyone else it runs as the current user. `make test` installs the package (as
root); without it, `running_server` raises `ServerMissing`, which the tests turn into a skip
(tests/conftest.py) and the benchmark into "not available" (bench/postgres_stages.py).

The tests' clusters trade durability for speed (no fsync); `durable=True` keeps the
settings PostgreSQL ships with, for the benchmark's timings.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import psycopg

from lethe.declaration.strategies import quote
from lethe.engine.postgres_warehouse import copy_in
from lethe.engine.rendering import POSTGRES, render

SUPERUSER = "lethe_test"


class ServerMissing(RuntimeError):
    """No PostgreSQL server binaries are installed."""


def server_binaries() -> Path | None:
    """The newest installed `/usr/lib/postgresql/<version>/bin` that has initdb, or None."""
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in root.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()],
    )
    return versions[-1] if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """One cluster in `folder`, served on 127.0.0.1:`port` while started."""

    binaries: Path
    folder: Path
    port: int
    owner: str | None  # the system user running the server (None: the current user)
    durable: bool = False  # fsync and the rest as shipped (else off: tests need no crash safety)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.binaries / args[0]), *args[1:]]
        if self.owner:
            command = ["runuser", "-u", self.owner, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=120)

    @classmethod
    def create(cls, binaries: Path, durable: bool = False) -> PostgresServer:
        """initdb into a new temporary folder (owned by the server's user)."""
        owner = "postgres" if os.geteuid() == 0 else None
        folder = Path(tempfile.mkdtemp(prefix="lethe-pg-"))
        if owner:
            entry = pwd.getpwnam(owner)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
        server = cls(binaries, folder, _free_port(), owner, durable)
        server._run(
            "initdb",
            "-D",
            str(server.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        )
        return server

    def start(self) -> None:
        """Start (or restart after a kill) on the same port, local connections only; a
        running server is left as it is."""
        if self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0:
            return
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1"
            f" -c unix_socket_directories='{self.folder}'"
        )
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w",
            "start",
        )  # fmt: skip

    def kill(self) -> None:
        """Stop at once, as a crash would (no shutdown checkpoint; clients are cut off)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def dsn(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres", **kw) -> psycopg.Connection:
        return psycopg.connect(self.dsn(database), **kw)

    def table_files(self, con: psycopg.Connection) -> tuple[Path, set[str]]:
        """After a CHECKPOINT (so what committed is in the files): the folder under `base/`
        of `con`'s database, and the names of its vault schema's files there (which keep the
        values their tokens stand for, by design)."""
        con.execute("CHECKPOINT")
        (folder,) = con.execute(
            "SELECT 'base/' || oid FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        vault = {
            str(node)
            for (node,) in con.execute(
                "SELECT pg_relation_filenode(oid) FROM pg_class"
                " WHERE relnamespace = to_regnamespace('vault') AND relkind IN ('r', 'i')"
            )
        }
        return Path(self.data) / folder, vault

    def new_database(self) -> str:
        """A fresh empty database; its DSN."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.connect(autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)


@contextlib.contextmanager
def running_server(durable: bool = False) -> Iterator[PostgresServer]:
    """A started server, stopped and removed afterwards (also on failure); `ServerMissing`
    when none is installed."""
    binaries = server_binaries()
    if binaries is None:
        raise ServerMissing(
            "no PostgreSQL server installed ('apt-get install postgresql'; make test does)"
        )
    server = PostgresServer.create(binaries, durable)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.remove()


def copy_from_duckdb(
    duck: duckdb.DuckDBPyConnection,
    pg: psycopg.Connection,
    schema: str,
    table: str,
    ddl: str | None = None,
) -> int:
    """Create `schema.table` on the server (`ddl` in DuckDB's dialect, by default the
    DuckDB table's columns and types) and fill it with DuckDB's rows by one COPY
    (`lethe.engine.postgres_warehouse.copy_in`, streamed in Arrow batches); the rows."""
    described = duck.execute(f"DESCRIBE {schema}.{quote(table)}").fetchall()
    if ddl is None:
        columns = ", ".join(f"{quote(r[0])} {r[1]}" for r in described)
        ddl = f"CREATE TABLE {schema}.{quote(table)} ({columns})"
    for sql in render((ddl,), POSTGRES):
        pg.execute(sql)
    return copy_in(duck.table(f"{schema}.{quote(table)}"), pg, f"{schema}.{quote(table)}")
