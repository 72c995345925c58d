"""Analysts' datasets as the policy declares them (`analytics.datasets`).

A dataset reads one declared table, its `source`. Each dimension is a quasi-identifier: a
value of a row (a column, the days between two columns, or the first event of the row's
data subject in a related table) and its generalization ladder, from the finest label
to coarser ones (`month` → `quarter`; `{prefix: 1}` → `within`; `{bands: ...}` → `unit`).
Measures aggregate the rows of a released cell (rows, sum or mean of a value); the count
of distinct data subjects is always released first, as `subjects`.

Declarations are checked against the policy's schema (passed as validation context) on
load: every table and column exists and lies on the source's way to its subject, and
every ladder step can apply to its value's type. `lethe.compliance.analytics` turns them into SQL.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lethe.declaration.schema import ColumnType, Schema, default_schema

SUBJECTS = "subjects"
ANY = "*"  # the label of a value generalized away
# Dataset, dimension and measure names become table and column names; a leading `_` is
# kept for the release plan's own columns.
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_CATEGORY = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
_DATES = frozenset({"date", "timestamp"})
_NUMBERS = frozenset({"integer", "decimal"})


def _schema(info: ValidationInfo) -> Schema:
    """The schema the policy is validated against (its validation context)."""
    return (info.context or {}).get("schema") or default_schema()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Ref(_Frozen):
    """A declared column a dataset reads, with its type."""

    table: str
    column: str
    type: ColumnType

    def __str__(self) -> str:
        return f"{self.table}.{self.column}"


class Days(_Frozen):
    """Days from `start` to `end` (fractional; NULL while either is unset)."""

    start: Ref
    end: Ref


def _on_the_way(schema: Schema, source: str) -> list[str]:
    """The source table and the tables on its way to the subject (nearest first)."""
    return [source, *(fk.ref_table for fk in schema.path_to_subject(source))]


def _ref(value: Any, schema: Schema, tables: list[str]) -> Ref:
    """`column` of the first of `tables`, or `table.column` of any of them."""
    if isinstance(value, Ref):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a column name or table.column, got {value!r}")
    table, _, column = value.strip().rpartition(".")
    table = table or tables[0]
    if table not in schema.tables:
        raise ValueError(f"unknown table {table!r}")
    if table not in tables:
        raise ValueError(
            f"{table!r} is not on the way from {tables[0]!r} to its subject ({', '.join(tables)})"
        )
    if column not in schema.tables[table].column_names:
        raise ValueError(f"{table} has no column {column!r}")
    return Ref(table=table, column=column, type=schema.tables[table].column(column).type)


def _days(value: Any, schema: Schema, tables: list[str]) -> Days:
    if isinstance(value, Days):
        return value
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError("expected [start, end]: two date or timestamp columns")
    start, end = (_ref(v, schema, tables) for v in value)
    for ref in (start, end):
        if ref.type not in _DATES:
            raise ValueError(f"{ref} is {ref.type}, not a date or timestamp")
    return Days(start=start, end=end)


def _bands(v: Any) -> tuple[float, ...]:
    if (
        not isinstance(v, list | tuple)
        or not v
        or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in v)
        or any(b <= 0 for b in v)
        or list(v) != sorted(set(v))
    ):
        raise ValueError("expected strictly ascending positive band bounds")
    return tuple(float(b) for b in v)


StepKind = Literal[
    "value", "month", "quarter", "year", "years", "prefix", "within", "bands", "unit", "ended",
    "any",
]  # fmt: skip
_NAMED_STEPS = ("value", "month", "quarter", "year", "within", "unit", "ended", "any")
_SIZED_STEPS = {"prefix": 20, "years": 100}  # the largest size each takes


class Step(_Frozen):
    """One rung of a ladder: a name (`month`) or a one-key mapping (`{prefix: 1}`)."""

    kind: StepKind
    size: int = 0  # characters of `prefix`, years of `years`
    bounds: tuple[float, ...] = ()  # `bands` of one scale
    per_unit: dict[str, tuple[float, ...]] = {}  # `bands` per unit (CZK: [...])

    @classmethod
    def parse(cls, value: Any) -> Step:
        """Read `month`, `{prefix: 3}`, `{years: 10}`, `{bands: [1, 2]}` or
        `{bands: {CZK: [500, 1000]}}` (per unit)."""
        if isinstance(value, Step):
            return value
        if isinstance(value, str) and value in _NAMED_STEPS:
            return cls(kind=value)  # type: ignore[arg-type]
        if isinstance(value, dict) and len(value) == 1:
            ((kind, arg),) = value.items()
            if kind in _SIZED_STEPS:
                top = _SIZED_STEPS[kind]
                if not isinstance(arg, int) or isinstance(arg, bool) or not 1 <= arg <= top:
                    raise ValueError(f"{kind}: expected a whole number from 1 to {top}")
                return cls(kind=kind, size=arg)
            if kind == "bands" and isinstance(arg, dict):
                for unit, bounds in arg.items():
                    if not isinstance(unit, str) or not unit.strip():
                        raise ValueError(f"bands: {unit!r} is not a unit (e.g. CZK)")
                    try:
                        _bands(bounds)
                    except ValueError as exc:
                        raise ValueError(f"bands.{unit}: {exc}") from None
                return cls(kind="bands", per_unit={u: _bands(b) for u, b in arg.items()})
            if kind == "bands":
                try:
                    return cls(kind="bands", bounds=_bands(arg))
                except ValueError as exc:
                    raise ValueError(f"bands: {exc}") from None
        known = ", ".join([*_NAMED_STEPS, *(f"{{{k}: N}}" for k in _SIZED_STEPS), "{bands: ...}"])
        raise ValueError(f"unknown step {value!r} (known: {known})")

    def __str__(self) -> str:
        return f"{{{self.kind}: {self.size}}}" if self.size else self.kind


class Dimension(_Frozen):
    """A quasi-identifier: one value of each source row and its generalization ladder."""

    name: str
    table: str  # the dataset's source (set from the dataset)
    description: str = ""
    category: str = ""  # shown in the UI; by default from the ladder (generalized.date, ...)
    column: Ref | None = None
    # `within`: a column qualifying `prefix` labels (CZ-1); the `within` step keeps only it
    # (CZ-*). `unit`: the unit of an amount (CZK, EUR); `bands` are per unit (CZK 500-1000)
    # and the `unit` step keeps only the unit (CZK any).
    within: Ref | None = None
    unit: Ref | None = None
    days: Days | None = None
    first: Ref | None = None  # the first event of the row's subject in a related table
    open: str = "open"  # the label of `days` while the end is unset
    ended: str = "ended"  # the label of the `ended` step
    ladder: tuple[Step, ...] = (Step(kind="value"),)

    @field_validator("column", "within", "unit", mode="before")
    @classmethod
    def _column(cls, v: Any, info: ValidationInfo) -> Ref | None:
        schema = _schema(info)
        source = info.data.get("table")
        if v is None or source not in schema.tables:
            return None
        ref = _ref(v, schema, _on_the_way(schema, source))
        if info.field_name != "column" and ref.type != "text":
            raise ValueError(f"{ref} is {ref.type}, not text")
        return ref

    @field_validator("days", mode="before")
    @classmethod
    def _days(cls, v: Any, info: ValidationInfo) -> Days | None:
        schema = _schema(info)
        source = info.data.get("table")
        if v is None or source not in schema.tables:
            return None
        return _days(v, schema, _on_the_way(schema, source))

    @field_validator("first", mode="before")
    @classmethod
    def _first(cls, v: Any, info: ValidationInfo) -> Ref | None:
        if v is None or isinstance(v, Ref):
            return v
        schema = _schema(info)
        if not isinstance(v, str) or "." not in v:
            raise ValueError(f"expected table.column of a date or timestamp, got {v!r}")
        table = v.partition(".")[0].strip()
        if table not in schema.tables:
            raise ValueError(f"unknown table {table!r}")
        ref = _ref(v, schema, [table])
        if ref.type not in _DATES:
            raise ValueError(f"{ref} is {ref.type}, not a date or timestamp")
        return ref

    @field_validator("ladder", mode="before")
    @classmethod
    def _ladder(cls, v: Any, info: ValidationInfo) -> tuple[Step, ...]:
        if not isinstance(v, list | tuple) or not v:
            raise ValueError("expected a list of steps, finest first")
        steps = []
        for i, raw in enumerate(v, start=1):
            try:
                step = Step.parse(raw)
                problem = _step_problem(step, info.data)
            except ValueError as exc:
                raise ValueError(f"step {i}: {exc}") from None
            if problem:
                raise ValueError(f"step {i} ({step}): {problem}")
            steps.append(step)
        return tuple(steps)

    @model_validator(mode="after")
    def _one_value(self, info: ValidationInfo) -> Dimension:
        if self.table not in _schema(info).tables:
            return self  # refused on the dataset's `source`
        values = [k for k in ("column", "days", "first") if getattr(self, k) is not None]
        if not values:
            raise ValueError("needs a value: column, days or first")
        if len(values) > 1:
            raise ValueError(f"one value per dimension: {' or '.join(values)}, not both")
        if (self.within or self.unit) and (self.days or self.first):
            raise ValueError("within and unit qualify a column")
        if self.category and not _CATEGORY.fullmatch(self.category):
            raise ValueError(f"category: {self.category!r} is not a dotted key (e.g. a.b)")
        for i, step in enumerate(self.ladder, start=1):  # the default ladder too
            problem = _step_problem(step, dict(self))
            if problem:
                raise ValueError(f"ladder: step {i} ({step}): {problem}")
        return self

    @property
    def refs(self) -> tuple[Ref, ...]:
        """The declared columns the dimension's labels are computed from."""
        days = (self.days.start, self.days.end) if self.days else ()
        return tuple(r for r in (self.within, self.column, self.unit, *days, self.first) if r)

    @property
    def output_category(self) -> str:
        """The category shown in the UI: declared, or by the kind of the ladder."""
        if self.category:
            return self.category
        kinds = {s.kind for s in self.ladder}
        if self.days:
            return "generalized.duration"
        if self.within:
            return "generalized.location"
        if self.unit:
            return "generalized.amount"
        if self.first or kinds & {"month", "quarter", "year", "years"}:
            return "generalized.date"
        if "bands" in kinds:
            return "generalized.number"
        return "generalized.text" if "prefix" in kinds else "generalized.value"


def _step_problem(step: Step, data: dict[str, Any]) -> str | None:
    """Why `step` cannot apply to the dimension's value (its fields so far), or None."""
    column, days, first = data.get("column"), data.get("days"), data.get("first")
    if step.kind == "any" or (column is None and days is None and first is None):
        return None  # a missing or unresolvable value is refused on its own key
    value = (
        f"a {column.type} column ({column.column})"
        if column
        else "days"
        if days
        else f"the first event ({first})"
    )
    kind = column.type if column else "days" if days else "first"
    allowed: dict[str, set[str]] = {
        "value": {"text", "integer", "decimal", "date", "timestamp", "boolean"},
        "month": {*_DATES, "first"},
        "quarter": {*_DATES, "first"},
        "year": {*_DATES, "first"},
        "years": {*_DATES, "first"},
        "prefix": {"text"},
        "within": {"text"},
        "bands": {*_NUMBERS, "days"},
        "unit": set(_NUMBERS),
        "ended": {"days"},
    }
    if kind not in allowed[step.kind]:
        return f"cannot apply to {value}"
    # (a `within` or `unit` that failed validation is missing from `data`: refused already)
    for key in ("within", "unit"):
        if step.kind == key and key in data and not data[key]:
            return f"needs `{key}:`, the column it keeps"
    if step.kind == "bands" and "unit" in data and bool(step.per_unit) != bool(data["unit"]):
        return (
            "bands per unit need `unit:`, the column of the unit (CZK, EUR, ...)"
            if step.per_unit
            else "with `unit:`, bands are per unit ({CZK: [...], EUR: [...]})"
        )
    return None


class Measure(_Frozen):
    """An aggregate of the rows of a released cell: `count: rows`, `sum:` or `avg:` of a
    column or of `{days: [start, end]}`."""

    name: str
    table: str  # the dataset's source (set from the dataset)
    description: str = ""
    count: Literal["rows"] | None = None
    sum: Ref | Days | None = None
    avg: Ref | Days | None = None
    round: int | None = Field(default=None, ge=0, le=6)

    @field_validator("sum", "avg", mode="before")
    @classmethod
    def _value(cls, v: Any, info: ValidationInfo) -> Ref | Days | None:
        if v is None or isinstance(v, Ref | Days):
            return v
        schema = _schema(info)
        source = info.data.get("table")
        if source not in schema.tables:
            return None  # refused on the dataset's `source`
        tables = _on_the_way(schema, source)
        if isinstance(v, dict) and set(v) == {"days"}:
            return _days(v["days"], schema, tables)
        ref = _ref(v, schema, tables)
        if ref.type not in _NUMBERS:
            raise ValueError(
                f"{info.field_name} applies to numbers or days, not {ref.type} ({ref})"
            )
        return ref

    @model_validator(mode="after")
    def _one_aggregate(self, info: ValidationInfo) -> Measure:
        if self.table not in _schema(info).tables:
            return self  # refused on the dataset's `source`
        given = [k for k in ("count", "sum", "avg") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("expected one of count: rows, sum: VALUE or avg: VALUE")
        if self.round is not None and self.count:
            raise ValueError("round: a count is a whole number")
        return self

    @property
    def value(self) -> Ref | Days | None:
        """What `sum` or `avg` aggregates (None for a count)."""
        return self.sum or self.avg

    @property
    def refs(self) -> tuple[Ref, ...]:
        v = self.value
        return (v.start, v.end) if isinstance(v, Days) else (v,) if v else ()


class DatasetDeclaration(_Frozen):
    """An analyst dataset: its source table, dimensions, measures and generalization order."""

    name: str
    description: str
    source: str
    k: int | None = Field(default=None, ge=2)  # default: the policy's k_anonymity
    subjects: str = ""  # who the subjects are, for the description of `subjects`
    dimensions: dict[str, Dimension]
    measures: dict[str, Measure] = {}
    # Which dimension moves one step up its ladder at each level; default: each in turn.
    generalize: tuple[str, ...] | None = Field(default=None, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data: Any) -> Any:
        """Dimensions and measures learn their name and the source table."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("dimensions", "measures"):
            parts = data.get(key)
            if isinstance(parts, dict):
                data[key] = {
                    n: {**p, "name": n, "table": data.get("source")} if isinstance(p, dict) else p
                    for n, p in parts.items()
                }
        return data

    @field_validator("source")
    @classmethod
    def _source(cls, v: str, info: ValidationInfo) -> str:
        if v not in _schema(info).tables:
            raise ValueError(f"unknown table {v!r}")
        return v

    @field_validator("dimensions", mode="before")
    @classmethod
    def _some_dimensions(cls, v: Any) -> Any:
        if not isinstance(v, dict) or not v:
            raise ValueError("expected a mapping of dimension name: {column, ladder, ...}")
        return v

    @field_validator("dimensions", "measures")
    @classmethod
    def _column_names(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        taken = info.data.get("dimensions", {}) if info.field_name == "measures" else {}
        for name in v:
            if not _NAME.fullmatch(name):
                raise ValueError(f"{name}: a name is a-z, 0-9 and _ (a column name)")
            if name == SUBJECTS:
                raise ValueError(f"{name}: `{SUBJECTS}` is always released (first)")
            if name in taken:
                raise ValueError(f"{name}: a dimension of the same name")
        return v

    @field_validator("generalize")
    @classmethod
    def _generalize(cls, v: tuple[str, ...] | None, info: ValidationInfo) -> tuple[str, ...]:
        if "dimensions" not in info.data:
            return v or ()  # the dimensions were refused
        dimensions: dict[str, Dimension] = info.data["dimensions"]
        if v is None:  # each dimension in turn, one step at a time
            height = max(len(d.ladder) for d in dimensions.values())
            return tuple(
                n for up in range(1, height) for n, d in dimensions.items() if len(d.ladder) > up
            )
        for name in v:
            if name not in dimensions:
                raise ValueError(f"unknown dimension {name!r}")
            above = len(dimensions[name].ladder) - 1
            if v.count(name) > above:
                raise ValueError(
                    f"{name} is named {v.count(name)} times but its ladder has {above}"
                    " step(s) above the first"
                )
        return v


def parse_datasets(v: Any) -> Any:
    """`analytics.datasets` before validation: each declaration learns its name."""
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError("expected a mapping of dataset name: {source, dimensions, ...}")
    for name in v:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{name}: a dataset name is a-z, 0-9 and _ (a table name)")
    return {n: {**d, "name": n} if isinstance(d, dict) else d for n, d in v.items()}
