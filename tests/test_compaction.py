"""The rewrite of a DuckDB file into a fresh one (`lethe.engine.compaction`)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from lethe.engine.compaction import compact, rewrite_path
from lethe.engine.warehouse import connect

AUTOMATIC_CHECKPOINT = 16 * 1024 * 1024  # DuckDB's default checkpoint_threshold


def test_the_new_file_is_checkpointed_once_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "w.duckdb"
    con = connect(path)
    try:
        # Like the ledger: a key, too few rows to be written straight to the new file's
        # blocks (so they go through its WAL), more bytes than DuckDB checkpoints at.
        con.execute("CREATE TABLE a_lists (i INTEGER PRIMARY KEY, keys VARCHAR[])")
        con.execute(
            "INSERT INTO a_lists SELECT i, (SELECT list(lpad(CAST(j AS VARCHAR), 24, 'k'))"
            " FROM range(1000000) r(j)) FROM range(2) t(i)"
        )
        con.execute("CREATE TABLE b_after AS SELECT 1 AS x")
    finally:
        con.close()
    wal = Path(str(rewrite_path(path)) + ".wal")
    seen: dict[str, int] = {}

    def finish(_: duckdb.DuckDBPyConnection) -> None:
        seen["wal"] = wal.stat().st_size if wal.exists() else 0

    compact(path, finish=finish)
    # Nothing was checkpointed halfway (which writes those rows twice): all still in the WAL.
    assert seen["wal"] > AUTOMATIC_CHECKPOINT, seen
    con = connect(path)
    try:
        assert con.execute("SELECT count(*), sum(len(keys)) FROM a_lists").fetchone() == (
            2,
            2000000,
        )
        assert con.execute("SELECT x FROM b_after").fetchall() == [(1,)]
    finally:
        con.close()
