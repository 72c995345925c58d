"""The LETHE_HOME layout (SPEC "LETHE_HOME"): every file Lethe writes lives under it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    """Paths under one LETHE_HOME."""

    root: Path

    @classmethod
    def from_env(cls, root: str | Path | None = None) -> Home:
        """`root`, else the LETHE_HOME environment variable, else `./.lethe` (absolute)."""
        return cls(Path(root or os.environ.get("LETHE_HOME") or ".lethe").resolve())

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def warehouse(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def vault(self) -> Path:
        return self.root / "vault.duckdb"

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    @property
    def dagster(self) -> Path:
        return self.root / "dagster"

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    def shard(self, name: str) -> Home:
        """The LETHE_HOME of subject shard `name` (`00`, `01`, …)."""
        return Home(self.shards / name)

    @property
    def lock(self) -> Path:
        return self.root / "run.lock"

    def ensure(self) -> Home:
        """Create the directories (owner-only: they hold personal data)."""
        for d in (self.root, self.landing, self.exports, self.backups, self.dagster):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self
