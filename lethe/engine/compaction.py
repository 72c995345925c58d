"""Physical erasure for DuckDB files: rewrite into a fresh file, then swap atomically.

DuckDB keeps deleted or overwritten values in freed blocks of its file (and in the
WAL) until they happen to be reused, so DELETE/UPDATE alone does not erase. Copying
the live tables into a new file writes only live data; `os.replace` then swaps it in
atomically. A crash before the swap leaves the old file intact (the half-written new
file is removed on the next start), a crash after it leaves the new one: never a mix.

The old file's last writes may still be in its WAL: a run's steps before the rewrite
close without a checkpoint (`connect(defer_checkpoint=True)`), since the rewrite reads
them from the WAL and writes them once, into the fresh file. That WAL must go with the
old file, and DuckDB refuses to open a file beside a WAL that is not its own. So once the
fresh file is complete a marker (`swap_marker`) is made durable first; `finish_swap` then
swaps the file in and removes the old WAL, and whoever finds the marker after a crash
(the next compaction, or the next holder of the LETHE_HOME lock) finishes the same swap.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from lethe.declaration.strategies import quote
from lethe.engine.warehouse import connect

FRESH = "fresh"


def rewrite_path(path: Path) -> Path:
    """Where the fresh copy of `path` is built before the swap."""
    return path.with_name(path.name + ".rewrite")


def wal_path(path: Path) -> Path:
    """DuckDB's write-ahead log of the file at `path`."""
    return path.with_name(path.name + ".wal")


def swap_marker(path: Path) -> Path:
    """The file saying that the fresh copy of `path` is complete and must be swapped in."""
    return path.with_name(path.name + ".swap")


SCRATCH_SUFFIXES = (".rewrite", ".rewrite.wal", ".restore", ".restore.wal")


def remove_leftovers(directory: Path) -> list[str]:
    """Finish the swaps a killed process left marked (`finish_swap`), then delete the
    half-written rewrites/restores it left (they hold personal data)."""
    for marker in directory.glob("*.duckdb*.swap"):
        target = marker.with_suffix("")
        if target.name.endswith(SCRATCH_SUFFIXES):
            marker.unlink()  # a rewrite of a scratch file (a restore's): removed below
        else:
            finish_swap(target)
    gone = []
    for leftover in directory.glob("*.duckdb.*"):
        if leftover.name.endswith(SCRATCH_SUFFIXES):
            leftover.unlink(missing_ok=True)
            gone.append(leftover.name)
    return gone


def user_tables(con: duckdb.DuckDBPyConnection, catalog: str) -> list[tuple[str, str]]:
    """(schema, table) of every base table in an attached database."""
    return con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables()"
        " WHERE database_name = ? AND NOT temporary ORDER BY 1, 2",
        [catalog],
    ).fetchall()


def swap_in(path: Path) -> None:
    """Replace `path` by its complete, closed fresh copy (`rewrite_path`) atomically, and
    remove the old file's WAL with it: flushed, marked (`swap_marker`), then swapped."""
    fsync(rewrite_path(path))
    swap_marker(path).touch(0o600)
    fsync(path.parent)
    finish_swap(path)


def finish_swap(path: Path) -> None:
    """If `path` has a swap marker: swap its complete fresh copy in (unless that happened
    already), remove the old file's WAL, then the marker. Idempotent: a crash anywhere in
    it leaves the marker, and running it again ends in the same state."""
    marker = swap_marker(path)
    if not marker.exists():
        return
    # Readers sharing the LETHE_HOME lock may finish the same swap at once: each step
    # bears another's having been done.
    with contextlib.suppress(FileNotFoundError):
        os.replace(rewrite_path(path), path)
    fsync(path.parent)
    wal_path(path).unlink(missing_ok=True)
    marker.unlink(missing_ok=True)
    fsync(path.parent)


def remove_with_wal(path: Path) -> None:
    """Delete a DuckDB file and its WAL, if there."""
    for leftover in (path, wal_path(path)):
        leftover.unlink(missing_ok=True)


def fsync(path: Path) -> None:
    """Flush a file (or a directory's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SameTable:
    """A replacement that keeps the table's DDL (constraints, defaults): the new file's
    table is created as the original was (or by `ddl`, its current definition, which a
    rewrite thus migrates it to), then filled from `select` (its columns in the table's
    order)."""

    select: str
    ddl: str | None = None


Replacements = dict[tuple[str, str], str | SameTable]


def compact(
    path: Path,
    prepare: Callable[[duckdb.DuckDBPyConnection], Replacements] | None = None,
    finish: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> None:
    """Rewrite the DuckDB file at `path` with only live data, optionally transforming it.

    `prepare(con)` runs first on the old database (e.g. staging temp tables) and returns
    replacements: `{(schema, table): SELECT}` whose rows become that table in the new
    file (created from the SELECT, or with its own DDL for a `SameTable`); every other
    table is copied as is. `finish(con)` runs with the new file as the
    default catalog (e.g. appending ledger entries), before the atomic swap.
    """
    finish_swap(path)
    fresh = rewrite_path(path)
    remove_with_wal(fresh)
    # The old file is never checkpointed: what its WAL holds goes into the fresh file.
    con = connect(path, defer_checkpoint=True)
    try:
        replace = prepare(con) if prepare else {}
        old_catalog = con.execute("SELECT current_database()").fetchone()[0]
        # The new file is written once, by its one checkpoint at the end: without WAL writes
        # there is no automatic checkpoint halfway either. A WAL would write what does not
        # fill a row group (small tables such as the ledger, whose key lists grow with every
        # run) a second time and slow each later append to such a table, to recover nothing:
        # a crash discards the half-written file.
        con.execute(f"ATTACH ? AS {FRESH} (RECOVERY_MODE no_wal_writes)", [str(fresh)])
        os.chmod(fresh, 0o600)
        for schema in {s for s, _ in user_tables(con, old_catalog)} | {s for s, _ in replace}:
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {FRESH}.{quote(schema)}")
        for schema, table in user_tables(con, old_catalog):
            target = f"{FRESH}.{quote(schema)}.{quote(table)}"
            rows = replace.get((schema, table))
            if isinstance(rows, str):
                con.execute(f"CREATE TABLE {target} AS {rows}")
                continue
            # Same DDL (constraints, defaults) as the original, then its live rows.
            ddl = (
                rows.ddl
                if rows and rows.ddl
                else con.execute(
                    "SELECT sql FROM duckdb_tables() WHERE database_name = ? AND schema_name = ?"
                    " AND table_name = ?",
                    [old_catalog, schema, table],
                ).fetchone()[0]
            )
            con.execute(f"USE {FRESH}")
            con.execute(ddl)
            con.execute(f"USE {quote(old_catalog)}")
            source = f"{quote(old_catalog)}.{quote(schema)}.{quote(table)}"
            select = rows.select if rows else f"SELECT * FROM {source}"
            con.execute(f"INSERT INTO {target} {select}")
        # Indexes are built once their table is full, which is cheaper than keeping them up
        # row by row, and the new file is never without them.
        indexes = con.execute(
            "SELECT sql FROM duckdb_indexes() WHERE database_name = ? AND sql IS NOT NULL",
            [old_catalog],
        ).fetchall()
        con.execute(f"USE {FRESH}")
        for (ddl,) in indexes:
            con.execute(ddl)
        con.execute(f"USE {quote(old_catalog)}")
        if finish:
            con.execute(f"USE {FRESH}")
            finish(con)
            con.execute(f"USE {quote(old_catalog)}")
        con.execute(f"CHECKPOINT {FRESH}")
        con.execute(f"DETACH {FRESH}")
    except BaseException:
        con.close()
        remove_with_wal(fresh)
        raise
    con.close()
    swap_in(path)
