"""One writer per LETHE_HOME: an exclusive advisory lock held for a whole run.

The lock is re-entrant within a process, so `lethe run` can take it before it starts a
Dagster run (and refuse without recording one) while the job, which takes it too for the
runs the daemon launches, goes on under the same lock.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lethe.errors import LetheError

_POLL_SECONDS = 0.2
_held: dict[Path, int] = {}
_held_guard = threading.Lock()


class LockedError(LetheError):
    """Another Lethe process is writing to the same LETHE_HOME."""


@contextmanager
def exclusive(lock_file: Path, wait_seconds: float = 0) -> Iterator[None]:
    """Hold the LETHE_HOME lock; when another process has it, wait up to `wait_seconds`
    for it, then refuse."""
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
        _acquire(fd, lock_file, wait_seconds)
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
    finally:
        os.close(fd)


def _acquire(fd: int, lock_file: Path, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                waited = f" after waiting {wait_seconds:g} s" if wait_seconds else ""
                raise LockedError(
                    f"{lock_file.parent}: another lethe run is in progress"
                    f" (lock {lock_file.name}){waited}"
                ) from None
            time.sleep(_POLL_SECONDS)


def is_locked(lock_file: Path) -> bool:
    """Whether a writer holds the LETHE_HOME lock now (probes without keeping it)."""
    if not lock_file.exists():
        return False
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
