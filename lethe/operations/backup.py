"""Daily warehouse backups, their 80-day expiry, and restore that re-applies erasures.

A backup is `backups/<id>/warehouse.duckdb.gz` plus a manifest with the ledger position
at backup time. Restore never exposes the old data: it decompresses into a hidden
file beside the warehouse, carries over the live audit ledger (which records every
erasure since), re-applies retention as of the latest enforced date, and only then
swaps the result in atomically.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lethe.declaration.duration import Duration
from lethe.engine.compaction import remove_with_wal
from lethe.engine.warehouse import connect, has_table
from lethe.errors import LetheError
from lethe.operations.files import write_text
from lethe.operations.home import Home

_ID_FORMAT = "%Y%m%dT%H%M%SZ"


class BackupError(LetheError):
    """A backup that does not exist or cannot be read."""


@dataclass(frozen=True)
class Backup:
    """One backup: its id (UTC creation time) and where it lives."""

    id: str
    path: Path
    created_at: dt.datetime
    ledger_seq: int


def _ledger_seq(path: Path) -> int:
    con = connect(path, read_only=True)
    try:
        if not has_table(con, "audit", "ledger"):
            return 0
        return con.execute("SELECT coalesce(max(seq), 0) FROM audit.ledger").fetchone()[0]
    finally:
        con.close()


def create_backup(home: Home, now: dt.datetime | None = None) -> Backup:
    """Write a compressed copy of the (checkpointed) warehouse; atomic via a temp dir."""

    def checkpointed(_: Path) -> Path:
        con = connect(home.warehouse)
        try:
            con.execute("CHECKPOINT")
        finally:
            con.close()
        return home.warehouse

    return store_backup(home, checkpointed, now)


def store_backup(
    home: Home, warehouse: Callable[[Path], Path], now: dt.datetime | None = None
) -> Backup:
    """Write a backup of the DuckDB warehouse file `warehouse(folder)` returns, given the
    backup's half-written folder (owner-only; a file written there is removed with it):
    compressed, with its manifest, then renamed into place (atomic). An existing backup of
    the same second is returned as it is."""
    now = now or dt.datetime.now(dt.UTC)
    backup_id = now.strftime(_ID_FORMAT)
    target = home.backups / backup_id
    if target.exists():
        return load_backup(home, backup_id)
    tmp = home.backups / f".{backup_id}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, mode=0o700)
    try:
        source = warehouse(tmp)
        seq = _ledger_seq(source)
        with source.open("rb") as src, gzip.open(tmp / "warehouse.duckdb.gz", "wb", 6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.chmod(tmp / "warehouse.duckdb.gz", 0o600)
        if source.parent == tmp:  # a scratch copy: only the compressed one stays
            remove_with_wal(source)
        write_text(
            tmp / "manifest.json",
            json.dumps({"id": backup_id, "created_at": now.isoformat(), "ledger_seq": seq}),
        )
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Backup(backup_id, target, now, seq)


def load_backup(home: Home, backup_id: str) -> Backup:
    """A backup by id; BackupError if it does not exist (ids are checked, never paths)."""
    try:
        dt.datetime.strptime(backup_id, _ID_FORMAT)
    except ValueError:
        raise BackupError(f"{backup_id!r} is not a backup id (like 20261126T020000Z)") from None
    manifest = home.backups / backup_id / "manifest.json"
    if not manifest.exists():
        raise BackupError(f"{home.backups / backup_id}: no such backup")
    data = json.loads(manifest.read_text())
    return Backup(
        backup_id,
        manifest.parent,
        dt.datetime.fromisoformat(data["created_at"]),
        data["ledger_seq"],
    )


def list_backups(home: Home) -> list[Backup]:
    """All complete backups, oldest first."""
    if not home.backups.exists():
        return []
    return [
        load_backup(home, p.name)
        for p in sorted(home.backups.iterdir())
        if (p / "manifest.json").exists()
    ]


def expire_backups(home: Home, keep: Duration, now: dt.datetime | None = None) -> list[str]:
    """Delete backups at least `keep` old (and half-written ones); return their ids."""
    now = now or dt.datetime.now(dt.UTC)
    gone = []
    for backup in list_backups(home):
        if keep.add_to(backup.created_at) <= now:
            shutil.rmtree(backup.path)
            gone.append(backup.id)
    remove_partial_backups(home)
    return gone


def remove_partial_backups(home: Home) -> None:
    """Delete backups a killed process left half-written (they hold personal data)."""
    for partial in home.backups.glob(".*.partial"):
        shutil.rmtree(partial, ignore_errors=True)


def decompress(backup: Backup, target: Path) -> None:
    """Write the backup's warehouse to `target` (owner-only)."""
    with gzip.open(backup.path / "warehouse.duckdb.gz", "rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.chmod(target, 0o600)
