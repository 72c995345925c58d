"""The LETHE_HOME layout (SPEC "LETHE_HOME"): every file Lethe writes lives under it, but a
DuckDB warehouse that LETHE_WAREHOUSE puts elsewhere."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lethe.errors import LetheError

WAREHOUSE_ENV = "LETHE_WAREHOUSE"
# LETHE_WAREHOUSE values that name a PostgreSQL database (lethe.engine.postgres_warehouse).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class Home:
    """Paths under one LETHE_HOME; `warehouse_file` is a DuckDB warehouse kept elsewhere."""

    root: Path
    warehouse_file: Path | None = None

    @classmethod
    def from_env(cls, root: str | Path | None = None) -> Home:
        """`root`, else the LETHE_HOME environment variable, else `./.lethe` (absolute).

        LETHE_WAREHOUSE, when it is a file path (not a `postgresql://` URL), is the DuckDB
        warehouse of that LETHE_HOME; a shard's LETHE_HOME keeps its own.
        """
        top = Path(os.environ.get("LETHE_HOME") or ".lethe").resolve()
        home = Path(root).resolve() if root else top
        file = os.environ.get(WAREHOUSE_ENV, "").strip()
        if not file or file.startswith(POSTGRES_SCHEMES) or home != top:
            return cls(home)
        if "://" in file:
            raise LetheError(
                f"{WAREHOUSE_ENV}: {file.split('://')[0]}:// is not a warehouse Lethe can use"
                " (a DuckDB file path or a postgresql:// URL)"
            )
        return cls(home, Path(file).expanduser().resolve())

    @property
    def landing(self) -> Path:
        return self.root / "landing"

    @property
    def warehouse(self) -> Path:
        return self.warehouse_file or self.root / "warehouse.duckdb"

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
