"""Atomic, owner-only file writes under LETHE_HOME."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from lethe.engine.warehouse import connect
from lethe.errors import LetheError
from lethe.eshop.generate import generate
from lethe.operations.files import replacing, write_text


def test_write_is_atomic_and_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    write_text(target, "one")
    assert target.read_text() == "one"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == "0o700"
    with pytest.raises(RuntimeError), replacing(target) as temp:
        temp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "one"  # the old file, never half of the new one
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_a_killed_writers_temp_file_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    (tmp_path / ".out.csv.4242.tmp").write_text("email of someone")
    (tmp_path / ".other.csv.4242.tmp").write_text("not ours to judge")
    write_text(target, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.csv.4242.tmp", "out.csv"]


# --- DuckDB spill files -----------------------------------------------------------------------


@pytest.fixture
def tmpdir_of_lethe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private system temp folder for this test; returns where Lethe's spill folder goes."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path / "tmp" / f"lethe-spill-{os.getuid()}"


@pytest.mark.parametrize("how", ["world-writable", "group-readable", "symlink"])
def test_a_spill_folder_others_can_reach_is_refused(
    tmpdir_of_lethe: Path, tmp_path: Path, how: str
) -> None:
    """Another account may create the spill folder first: Lethe must not spill into it."""
    if how == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        tmpdir_of_lethe.symlink_to(tmp_path / "elsewhere")
    else:
        tmpdir_of_lethe.mkdir()
        os.chmod(tmpdir_of_lethe, 0o777 if how == "world-writable" else 0o740)
    with pytest.raises(LetheError, match=re.escape(str(tmpdir_of_lethe))):
        connect(tmp_path / "w.duckdb")


def test_spills_go_to_a_private_folder_removed_with_the_connection(
    tmpdir_of_lethe: Path, tmp_path: Path
) -> None:
    # A killed run's spill folder (its process is gone) is removed by the next connection.
    tmpdir_of_lethe.mkdir(mode=0o700)
    killed = tmpdir_of_lethe / f"{_exited_pid()}-0123456789ab"
    killed.mkdir()
    (killed / "duckdb_temp_storage-0.tmp").write_text("ids of a killed run")
    con = connect(tmp_path / "w.duckdb")
    try:
        assert list(tmpdir_of_lethe.iterdir()) == []
        con.execute("SET memory_limit = '40MB'")
        con.execute("SET threads = 1")
        con.execute("SET preserve_insertion_order = false")
        con.execute("CREATE TABLE t AS SELECT md5(range::VARCHAR) AS s FROM range(1500000)")
        con.execute("SELECT count(*) FROM (SELECT s, count(*) FROM t GROUP BY s)").fetchall()
        (spilled,) = tmpdir_of_lethe.iterdir()  # this connection's own folder
        assert spilled.name.startswith(f"{os.getpid()}-")
        assert stat.S_IMODE(tmpdir_of_lethe.stat().st_mode) == 0o700
    finally:
        con.close()
    assert list(tmpdir_of_lethe.iterdir()) == []


def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])  # noqa: S607
    proc.wait()
    return proc.pid


# --- Owner-only files -------------------------------------------------------------------------


def test_generated_landing_files_are_owner_only_even_under_umask_000(tmp_path: Path) -> None:
    """`lethe generate` (its own umask aside) writes the landing files 0600 in a 0700 folder;
    the rest of LETHE_HOME: tests/test_reliability_leaks.py, whose demo runs under umask 000."""
    previous = os.umask(0)
    try:
        generate(tmp_path / "landing", 20, seed=0)
    finally:
        os.umask(previous)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in (tmp_path / "landing").iterdir()}
    assert len(modes) == 4
    assert set(modes.values()) == {"0o600"}
    assert oct(stat.S_IMODE((tmp_path / "landing").stat().st_mode)) == "0o700"
