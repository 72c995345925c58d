"""Atomic, owner-only file writes under LETHE_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest

from lethe.files import replacing, write_text


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
