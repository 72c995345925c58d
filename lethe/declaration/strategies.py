"""What happens to a column value once no purpose keeps it: small typed strategies.

Each strategy has a `name`, a frozen config with `extra="forbid"`, a one-line
`describe()` for compliance readers, and `sql(value, sql_type)`: the SQL expression that
replaces the SQL expression `value` for a whole column (never a per-row Python call).
Pseudonymization needs the vault: enforcement passes the joined token as `value`
(see `lethe.engine.retention`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator


def quote(identifier: str) -> str:
    """Quote a SQL identifier that comes from the validated policy or table contract."""
    return '"' + identifier.replace('"', '""') + '"'


def literal(value: str) -> str:
    """A SQL string literal for a value from the validated policy (data values are bound)."""
    return "'" + value.replace("'", "''") + "'"


class _Strategy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    # The declared column types (lethe.declaration.schema) the strategy can apply to; None: any.
    applies_to: ClassVar[frozenset[str] | None] = None


class Keep(_Strategy):
    name: Literal["keep"] = "keep"

    def describe(self) -> str:
        return "kept as is"

    def sql(self, value: str, sql_type: str) -> str:
        return value


class Erase(_Strategy):
    name: Literal["erase"] = "erase"

    def describe(self) -> str:
        return "erased (set to NULL)"

    def sql(self, value: str, sql_type: str) -> str:
        return f"CAST(NULL AS {sql_type})"


class Pseudonymize(_Strategy):
    name: Literal["pseudonymize"] = "pseudonymize"
    applies_to = frozenset({"text"})  # a token is text

    def describe(self) -> str:
        return "replaced by a random vault token"

    def sql(self, value: str, sql_type: str) -> str:
        return value  # the caller passes the vault token joined for the column


class Surrogate(_Strategy):
    name: Literal["surrogate"] = "surrogate"
    applies_to = frozenset({"text"})

    def describe(self) -> str:
        return "replaced by a random surrogate that appears nowhere else"

    def sql(self, value: str, sql_type: str) -> str:
        return "'anon-' || replace(CAST(uuid() AS VARCHAR), '-', '')"


class Truncate(_Strategy):
    name: Literal["truncate"] = "truncate"
    to: Literal["year", "month"]
    applies_to = frozenset({"date", "timestamp"})

    def describe(self) -> str:
        return f"generalized to the {self.to}"

    def sql(self, value: str, sql_type: str) -> str:
        return f"CAST(date_trunc('{self.to}', {value}) AS {sql_type})"


class Prefix(_Strategy):
    name: Literal["prefix"] = "prefix"
    length: int = Field(gt=0, le=20)
    applies_to = frozenset({"text"})

    def describe(self) -> str:
        return f"generalized to its first {self.length} characters"

    def sql(self, value: str, sql_type: str) -> str:
        return f"left({value}, {self.length})"


def type_problem(strategy: _Strategy, column_type: str) -> str | None:
    """Why `strategy` cannot apply to a column of the declared type, or None if it can."""
    allowed = strategy.applies_to
    if allowed is None or column_type in allowed:
        return None
    return f"{strategy.name} applies to {' or '.join(sorted(allowed))} columns, not {column_type}"


Strategy = Annotated[
    Keep | Erase | Pseudonymize | Surrogate | Truncate | Prefix, Field(discriminator="name")
]
STRATEGIES: dict[str, type[_Strategy]] = {
    s.model_fields["name"].default: s
    for s in (Keep, Erase, Pseudonymize, Surrogate, Truncate, Prefix)
}
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Strategy)


def parse_strategy(value: Any) -> Strategy:
    """Read `erase`, `keep`, `{truncate: {to: year}}`, `{prefix: {length: 3}}` into a strategy."""
    if isinstance(value, BaseModel):
        return value  # type: ignore[return-value]
    if isinstance(value, str):
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r} (known: {', '.join(STRATEGIES)})")
        return _ADAPTER.validate_python({"name": value})
    if isinstance(value, dict) and len(value) == 1:
        ((name, config),) = value.items()
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
        return _ADAPTER.validate_python({"name": name, **(config or {})})
    raise ValueError(f"a strategy is a name or a one-key mapping, got {value!r}")


class ColumnRules(BaseModel):
    """Per-column strategies with a default for the columns not listed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default: Strategy = Keep()
    columns: dict[str, Strategy] = {}

    @classmethod
    def from_yaml(cls, value: Any) -> ColumnRules:
        if isinstance(value, ColumnRules):
            return value
        if not isinstance(value, dict):
            raise ValueError("expected a mapping of column: strategy (with an optional default)")
        rules = dict(value)
        default = parse_strategy(rules.pop("default", "keep"))
        return cls(default=default, columns={k: parse_strategy(v) for k, v in rules.items()})

    def for_column(self, column: str) -> Strategy:
        return self.columns.get(column, self.default)

    @field_validator("columns")
    @classmethod
    def _no_empty_names(cls, v: dict[str, Strategy]) -> dict[str, Strategy]:
        if any(not k for k in v):
            raise ValueError("empty column name")
        return v
