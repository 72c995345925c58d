"""Files Lethe writes under LETHE_HOME: owner-only, and replaced atomically."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(target: Path) -> Iterator[Path]:
    """A temp path beside `target`, renamed over it when the block succeeds.

    Readers see the old file or the new one, never half of one; a failed write leaves
    no temp file behind.
    """
    missing = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
    for directory in reversed(missing):  # owner-only at every level, not just the last
        directory.mkdir(mode=0o700, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        stale.unlink(missing_ok=True)  # a killed writer's (Lethe holds one writer per home)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield temp
        os.chmod(temp, 0o600)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def write_text(target: Path, text: str) -> Path:
    """Write UTF-8 text to `target` atomically."""
    with replacing(target) as temp:
        temp.write_text(text, encoding="utf-8")
    return target
