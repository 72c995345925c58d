"""Values of a DuckDB and a PostgreSQL warehouse made comparable, for the tests that run
the same cases on both engines (tests/test_postgres_*.py)."""

from __future__ import annotations

import decimal
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import retention_cases as rc

from lethe.engine.engines import PostgresEngine
from lethe.operations.home import Home

HOLD_ID = re.compile(r"H-[0-9a-f]{12}")


@dataclass
class Warehouses:
    """The same case carried out on DuckDB (`duck`) and on PostgreSQL (`pg`, at `dsn`, with
    LETHE_HOME `pg_home`), with what each side produced that the test compares."""

    duck: Home
    pg_home: Home
    pg: PostgresEngine
    dsn: str
    duck_ids: dict[str, str] = field(default_factory=dict)  # e.g. request ids by name
    pg_ids: dict[str, str] = field(default_factory=dict)
    runs: list[Any] = field(default_factory=list)  # completed `lethe run`s
    cli: dict[str, Any] = field(default_factory=dict)  # completed `lethe` commands by name
    files: dict[str, list[Path]] = field(default_factory=dict)  # files written per side


class Plain:
    """One warehouse's values made comparable with the other's: tokens as the (kind, value)
    they stand for, keyed hashes (`hashes`: {hash: key}) as their key, the ids in `ids`
    ({name: id}) as `<name>`, surrogates and hold ids as placeholders, JSON text parsed."""

    def __init__(
        self,
        tokens: dict[str, tuple[str, str]],
        hashes: dict[str, str],
        ids: dict[str, str] | None = None,
    ) -> None:
        self.tokens = tokens
        self.keys = hashes
        self.ids = {v: k for k, v in (ids or {}).items()}

    def text(self, value: str) -> str:
        for rid, name in self.ids.items():
            value = value.replace(rid, f"<{name}>")
        for hashed, key in self.keys.items():
            value = value.replace(hashed, key)
        return HOLD_ID.sub("<hold>", value)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str) and rc.TOKEN.fullmatch(value):
            return ("token", *self.tokens.get(value, ("?", "?")))
        if isinstance(value, str) and rc.SURROGATE.fullmatch(value):
            return "<surrogate>"
        if isinstance(value, str) and value[:1] in "{[":
            return self(json.loads(value))  # DuckDB reads JSON as text, psycopg parses it
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, decimal.Decimal):
            return str(value)
        if isinstance(value, list):
            return tuple(self(v) for v in value)
        if isinstance(value, dict):
            return tuple(sorted((k, self(v)) for k, v in value.items()))
        return value

    def rows(self, rows: list[dict[str, Any]], drop: tuple[str, ...] = ()) -> list[tuple]:
        out = [tuple(sorted((k, self(v)) for k, v in r.items() if k not in drop)) for r in rows]
        return sorted(out, key=repr)
