"""One writer per LETHE_HOME: an exclusive advisory lock held for a whole run.

The lock is re-entrant within a process, so `lethe run` can take it before it starts a
Dagster run (and refuse without recording one) while the job, which takes it too for the
runs the daemon launches, goes on under the same lock. Readers take it shared: DuckDB
lets several processes read a file but none write while one reads, so a run waits for
readers and a reader does not open the warehouse while a run writes. Whoever takes it
first removes the scratch files a killed writer left.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lethe.engine.compaction import remove_leftovers
from lethe.errors import LetheError
from lethe.operations.backup import remove_partial_backups
from lethe.operations.home import Home

_POLL_SECONDS = 0.2
_held: dict[Path, int] = {}  # exclusive holds of this process, by lock file
_held_guard = threading.Lock()


class LockedError(LetheError):
    """Another Lethe process is writing to the same LETHE_HOME."""


@contextmanager
def exclusive(lock_file: Path, wait_seconds: float = 0, shared: bool = False) -> Iterator[None]:
    """Hold the LETHE_HOME lock (`shared`: alongside other readers only); when another
    process holds it in a conflicting way, wait up to `wait_seconds` for it, then refuse."""
    key = lock_file.resolve()
    with _held_guard:
        if key in _held:
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _acquire(fd, lock_file, wait_seconds, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        _remove_leftovers(lock_file.parent)
        if shared:
            yield
            return
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
    finally:
        os.close(fd)


def _acquire(fd: int, lock_file: Path, wait_seconds: float, mode: int) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                waited = f" after waiting {wait_seconds:g} s" if wait_seconds else ""
                raise LockedError(
                    f"{lock_file.parent}: another lethe run is in progress"
                    f" (lock {lock_file.name}){waited}"
                ) from None
            time.sleep(_POLL_SECONDS)


def _remove_leftovers(root: Path) -> None:
    """Finish the swaps a killed writer marked and remove what it left under LETHE_HOME
    (and beside a warehouse kept elsewhere): half-written warehouse rewrites, restores and
    backups hold personal data. Their writers hold this lock exclusively, so none of them
    is being written while anyone holds it."""
    home = Home.from_env(root)
    remove_leftovers(root)
    if home.warehouse.parent != root:
        remove_leftovers(home.warehouse.parent)
    remove_partial_backups(home)
