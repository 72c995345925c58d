"""The rewrite of a DuckDB file into a fresh one (`lethe.engine.compaction`)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from lethe.engine.compaction import compact, rewrite_path
from lethe.engine.warehouse import connect

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
    wal = Path(str(fresh) + ".wal")
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
