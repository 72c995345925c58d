"""The LETHE_HOME lock: re-entrant in a process, exclusive across processes, with a wait."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability import lock_held

from lethe.operations.home import Home
from lethe.operations.lock import LockedError, exclusive

HOLDER = """
import sys, time
from pathlib import Path
from lethe.operations.lock import exclusive
with exclusive(Path(sys.argv[1]), shared=sys.argv[3] == "shared"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def hold_in_another_process(
    lock: Path, seconds: float, mode: str = "exclusive"
) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock), str(seconds), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_the_same_process_may_take_it_again_and_keeps_it_until_the_outer_release(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "run.lock"
    with exclusive(lock):
        with exclusive(lock):
            assert lock_held(lock)
        assert lock_held(lock)  # the inner release did not drop the outer hold
    assert not lock_held(lock)


def test_another_process_is_refused_at_once_in_one_line(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    proc = hold_in_another_process(lock, 30)
    try:
        with pytest.raises(LockedError) as refused, exclusive(lock):
            pass
        assert "another lethe run is in progress" in str(refused.value)
        assert "\n" not in str(refused.value)
    finally:
        proc.kill()
        proc.wait()


def test_a_waiting_taker_gets_it_when_the_holder_ends_and_gives_up_after_its_wait(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "run.lock"
    proc = hold_in_another_process(lock, 1.0)
    started = time.monotonic()
    with exclusive(lock, wait_seconds=60):
        waited = time.monotonic() - started
    proc.wait()
    assert 0.8 <= waited < 30  # taken once the holder let go, not before
    proc = hold_in_another_process(lock, 30)
    try:
        started = time.monotonic()
        with pytest.raises(LockedError, match="after waiting 0.5 s"), exclusive(lock, 0.5):
            pass
        assert time.monotonic() - started >= 0.5
    finally:
        proc.kill()
        proc.wait()


def test_readers_share_it_and_keep_a_run_out_until_they_are_done(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    reader = hold_in_another_process(lock, 30, "shared")
    try:
        with exclusive(lock, shared=True):  # a second reader gets in at once
            pass
        with pytest.raises(LockedError, match="another lethe run is in progress"), exclusive(lock):
            pass
    finally:
        reader.kill()
        reader.wait()
    writer = hold_in_another_process(lock, 30)
    try:
        with pytest.raises(LockedError), exclusive(lock, shared=True):
            pass
    finally:
        writer.kill()
        writer.wait()


@pytest.mark.parametrize("shared", [False, True], ids=["exclusive", "shared"])
def test_whoever_takes_it_first_removes_what_a_killed_writer_left(
    tmp_path: Path, shared: bool
) -> None:
    """A killed rewrite or backup leaves personal data in scratch files: the next command
    that takes the lock removes them, not only the next run. Whoever writes them holds
    the lock, so nobody is writing them now."""
    home = Home(tmp_path / "home").ensure()
    (home.root / "warehouse.duckdb").write_bytes(b"live")
    scratch = [
        home.root / "warehouse.duckdb.rewrite",
        home.root / "warehouse.duckdb.rewrite.wal",
        home.root / "vault.duckdb.restore",
    ]
    for path in scratch:
        path.write_bytes(b"plain e-mails")
    partial = home.backups / ".20260101T000000Z.partial"
    partial.mkdir()
    (partial / "warehouse.duckdb.gz").write_bytes(b"plain e-mails")
    with exclusive(home.lock, shared=shared):
        assert [p.name for p in (*scratch, partial) if p.exists()] == []
    assert (home.root / "warehouse.duckdb").read_bytes() == b"live"
    assert list(home.backups.iterdir()) == []
