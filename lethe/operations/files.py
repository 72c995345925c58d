"""Files Lethe writes under LETHE_HOME: owner-only, replaced atomically, and CSVs safe to
open in a spreadsheet."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pyarrow as pa

# A cell starting with one of these is run as a formula by spreadsheets (OWASP, "CSV
# Injection"); a plain number is read as a number, so negative amounts stay as they are.
_FORMULA = r"^[=+\-@\t\r]"
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


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
    # Owner-only before anything is written (writers that truncate it keep the mode; the
    # chmod below covers those that replace it).
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    try:
        yield temp
        os.chmod(temp, 0o600)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


@contextmanager
def owner_only_umask() -> Iterator[None]:
    """New files and folders owner-only for the block, whatever umask Lethe was started
    with (the umask is per process: for entry points, not for library calls)."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def restrict_tree(directory: Path) -> None:
    """Make every folder under `directory` 0700 and every file 0600: for what another
    program (Dagster) writes there with its own modes."""
    for parent, folders, files in os.walk(directory):
        for name, mode in [*((f, 0o700) for f in folders), *((f, 0o600) for f in files)]:
            path = os.path.join(parent, name)
            info = os.lstat(path)
            if not stat.S_ISLNK(info.st_mode) and stat.S_IMODE(info.st_mode) != mode:
                os.chmod(path, mode)


def write_text(target: Path, text: str) -> Path:
    """Write UTF-8 text to `target` atomically."""
    with replacing(target) as temp:
        temp.write_text(text, encoding="utf-8")
    return target


def _neutral(text: pl.Expr) -> pl.Expr:
    return (
        pl.when(text.str.contains(_FORMULA) & ~text.str.contains(_NUMBER))
        .then(pl.lit("'") + text)
        .otherwise(text)
    )


def spreadsheet_safe(frame: pl.DataFrame | pa.Table) -> pl.DataFrame:
    """`frame` with every text cell and column name a spreadsheet would run as a formula
    prefixed with a single quote (OWASP's advice for CSV files people open)."""
    if isinstance(frame, pa.Table):
        frame = pl.DataFrame(frame)
    names = pl.DataFrame({"n": frame.columns}, schema={"n": pl.String})
    safe_names = names.select(_neutral(pl.col("n"))).to_series().to_list()
    text = [c for c, t in frame.schema.items() if t == pl.String]
    return frame.with_columns(_neutral(pl.col(c)).alias(c) for c in text).rename(
        dict(zip(frame.columns, safe_names, strict=True))
    )


def csv_bytes(frame: pl.DataFrame | pa.Table) -> bytes:
    """The CSV Lethe hands to people (in an archive): formulas neutralized, UTF-8."""
    return spreadsheet_safe(frame).write_csv().encode("utf-8")


def write_csv(target: Path, frame: pl.DataFrame | pa.Table) -> Path:
    """Write a CSV for people to `target` atomically (owner-only), formulas neutralized."""
    with replacing(target) as temp:
        spreadsheet_safe(frame).write_csv(temp)
    return target
