"""The rewrite of a DuckDB file into a fresh one (`lethe.engine.compaction`)."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest

from lethe.engine.compaction import (
    compact,
    remove_leftovers,
    rewrite_path,
    swap_marker,
    wal_path,
)
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from lethe.operations.lock import exclusive

AUTOMATIC_CHECKPOINT = 16 * 1024 * 1024  # DuckDB's default checkpoint_threshold


def test_the_new_file_is_written_once_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    con = connect(path)
    try:
        # Like the ledger: a key, too few rows to be written straight to the new file's
        # blocks, more bytes than DuckDB checkpoints at.
        con.execute("CREATE TABLE a_lists (i INTEGER PRIMARY KEY, keys VARCHAR[])")
        con.execute(
            "INSERT INTO a_lists SELECT i, (SELECT list(lpad(CAST(j AS VARCHAR), 24, 'k'))"
            " FROM range(1000000) r(j)) FROM range(2) t(i)"
        )
        con.execute("CREATE TABLE b_after AS SELECT 1 AS x")
    finally:
        con.close()
    fresh = rewrite_path(path)
    wal = wal_path(fresh)
    seen: dict[str, int] = {}

    def finish(_: duckdb.DuckDBPyConnection) -> None:
        seen["wal"] = wal.stat().st_size if wal.exists() else 0
        seen["file"] = fresh.stat().st_size

    compact(path, finish=finish)
    # Those rows went neither through a WAL nor into the file by a checkpoint halfway (each
    # of which writes them a second time): the file holds them only after the last one.
    assert seen["wal"] == 0, seen
    assert seen["file"] < AUTOMATIC_CHECKPOINT, seen
    con = connect(path)
    try:
        assert con.execute("SELECT count(*), sum(len(keys)) FROM a_lists").fetchone() == (
            2,
            2000000,
        )
        assert con.execute("SELECT x FROM b_after").fetchall() == [(1,)]
    finally:
        con.close()


def _table(path: Path, sql: str, defer_checkpoint: bool = False) -> None:
    con = connect(path, defer_checkpoint=defer_checkpoint)
    try:
        con.execute(sql)
    finally:
        con.close()


def _rows(path: Path) -> list[tuple]:
    con = connect(path, read_only=True)
    try:
        return con.execute("SELECT v FROM t ORDER BY v").fetchall()
    finally:
        con.close()


def test_writes_left_in_the_wal_go_into_the_new_file_never_into_the_old(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    _table(path, "CREATE TABLE t AS SELECT 'kept' AS v")
    _table(path, "INSERT INTO t VALUES ('only-in-the-wal')", defer_checkpoint=True)
    assert wal_path(path).exists()
    old = tmp_path / "old-inode"
    os.link(path, old)  # the old file's bytes, whatever happens to its name

    compact(path)
    assert _rows(path) == [("kept",), ("only-in-the-wal",)]
    assert not wal_path(path).exists()
    assert not swap_marker(path).exists() and not rewrite_path(path).exists()
    # The rewrite read the WAL's rows and wrote them once, into the new file: the old one
    # was not checkpointed first.
    assert b"only-in-the-wal" not in old.read_bytes()
    assert b"only-in-the-wal" in path.read_bytes()


def _cut_short(tmp_path: Path, swapped: bool) -> Path:
    """A compaction killed after its marker: the old file with writes in its WAL, the
    complete fresh copy, and (`swapped`) the copy already renamed over the old file."""
    path = tmp_path / "w.duckdb"
    _table(path, "CREATE TABLE t AS SELECT 'old' AS v")
    _table(path, "INSERT INTO t VALUES ('old, in the wal')", defer_checkpoint=True)
    _table(rewrite_path(path), "CREATE TABLE t AS SELECT 'fresh' AS v")
    swap_marker(path).touch()
    if swapped:
        os.replace(rewrite_path(path), path)
    assert wal_path(path).exists()
    return path


@pytest.mark.parametrize("swapped", [False, True], ids=["before the rename", "after it"])
@pytest.mark.parametrize("finisher", ["next compaction", "next lock holder"])
def test_a_marked_swap_cut_short_is_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swapped: bool, finisher: str
) -> None:
    path = _cut_short(tmp_path, swapped)
    if finisher == "next compaction":
        compact(path)
    else:
        # The warehouse kept outside LETHE_HOME (LETHE_WAREHOUSE) is looked after too.
        monkeypatch.setenv("LETHE_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("LETHE_WAREHOUSE", str(path))
        home = Home.from_env().ensure()
        with exclusive(home.lock, shared=True):
            pass
    assert _rows(path) == [("fresh",)]
    assert not wal_path(path).exists() and not swap_marker(path).exists()
    assert not rewrite_path(path).exists()


def test_an_unmarked_fresh_copy_is_removed_and_the_wal_kept(tmp_path: Path) -> None:
    path = _cut_short(tmp_path, swapped=False)
    swap_marker(path).unlink()  # killed before the marker: the copy may be half-written
    assert remove_leftovers(tmp_path) == [rewrite_path(path).name]
    assert _rows(path) == [("old",), ("old, in the wal",)]
