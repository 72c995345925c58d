"""One writer per LETHE_HOME: an exclusive advisory lock held for a whole run."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lethe.errors import LetheError


class LockedError(LetheError):
    """Another Lethe process is writing to the same LETHE_HOME."""


@contextmanager
def exclusive(lock_file: Path, wait: bool = False) -> Iterator[None]:
    """Hold the LETHE_HOME lock; refuse at once (or wait, if asked) when it is taken."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockedError(
                f"{lock_file.parent}: another lethe run is in progress (lock {lock_file.name})"
            ) from None
        yield
    finally:
        os.close(fd)


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
