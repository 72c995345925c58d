"""The declared schema: which tables exist, their keys, how each reaches its data subject,
where each comes from and how its file is written, and what each column is.

A schema is a YAML file (SPEC "Declared schema"); the e-shop of the seed documents is the
default one (`lethe/eshop/schema.yaml`). It is loaded into frozen pydantic models and
validated as a whole: names usable in SQL, exactly one subject table, keys and references
that exist, no reference cycle, every table reaching its subject, Fides data categories.
Every error names the key and its line; a refused schema never touches data.
"""

from __future__ import annotations

import codecs
import re
import zoneinfo
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lethe.declaration.letters import Labels
from lethe.declaration.yamldoc import (
    Document,
    parse_yaml,
    raise_problems,
    read_document,
    validation_message,
    yaml_problem,
)
from lethe.errors import LetheError
from lethe.eshop import SCHEMA_FILE as DEFAULT_SCHEMA_FILE

ColumnType = Literal["text", "integer", "decimal", "date", "timestamp", "boolean"]
# Table and column names become SQL identifiers, asset keys and file names.
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class SchemaError(LetheError, ValueError):
    """An invalid schema: the message names the file, line and key."""


@cache
def fides_categories() -> frozenset[str]:
    """The data category keys of the Fides default taxonomy."""
    from fideslang.default_taxonomy import DEFAULT_TAXONOMY

    return frozenset(c.fides_key for c in DEFAULT_TAXONOMY.data_category)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Column(_Frozen):
    """One declared column: its source header, type and data category."""

    name: str
    header: str = Field(default="", alias="from")
    type: ColumnType = "text"
    category: str
    required: bool = False
    description: str = ""
    label: Labels = {}  # what a data subject's letter calls it, per language

    @field_validator("category")
    @classmethod
    def _category(cls, v: str) -> str:
        if v not in fides_categories():
            raise ValueError(f"{v!r} is not a data category of the Fides taxonomy")
        return v

    @model_validator(mode="after")
    def _header(self) -> Column:
        if not self.header:
            object.__setattr__(self, "header", self.name)
        return self

    @property
    def nullable(self) -> bool:
        return not self.required


class ForeignKey(_Frozen):
    """`column` of this table holds the key (`ref_column`) of `ref_table`."""

    column: str
    ref_table: str
    ref_column: str


class CsvDialect(_Frozen):
    """How a CSV source file is written."""

    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quote: str = Field(default='"', min_length=1, max_length=1)
    encoding: str = "utf-8"
    decimal: Literal[".", ","] = "."

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {v!r}") from None
        return v


class Formats(_Frozen):
    """strftime formats of the source's dates and timestamps (default: ISO 8601)."""

    date: str | None = None
    timestamp: str | None = None

    @field_validator("date", "timestamp")
    @classmethod
    def _format(cls, v: str | None) -> str | None:
        if v is not None and "%" not in v:
            raise ValueError(f"{v!r} is not a strftime format (e.g. '%d.%m.%Y %H:%M')")
        return v


# An environment variable's name, and a PostgreSQL `schema.table` of plain identifiers.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_PG_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\.[A-Za-z_][A-Za-z0-9_]{0,62}")


class PostgresSource(_Frozen):
    """A table read from a PostgreSQL database (SPEC "Engines and scale").

    The DSN is never written in the schema: only the name of the environment variable
    holding it. `incremental` names a declared column that grows with every change at the
    source (read only rows from its high-water mark on); `writable` lets Lethe carry
    erasure, rectification and restriction back to the table; `restrict_column` names a
    boolean column of the source table that Lethe sets for restricted rows.
    """

    dsn_env: str
    table: str
    incremental: str | None = None
    writable: bool = False
    restrict_column: str | None = None

    @field_validator("dsn_env")
    @classmethod
    def _env(cls, v: str) -> str:
        if not _ENV_NAME.fullmatch(v):
            raise ValueError(f"{v!r}: the name of an environment variable (A-Z, 0-9, _)")
        return v

    @field_validator("table")
    @classmethod
    def _table(cls, v: str) -> str:
        if not _PG_TABLE.fullmatch(v):
            raise ValueError(f"{v!r}: schema.table (letters, digits and _)")
        return v

    @field_validator("restrict_column")
    @classmethod
    def _restrict(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.fullmatch(v):
            raise ValueError(f"{v!r}: a column name (letters, digits and _)")
        return v

    @property
    def schema_name(self) -> str:
        return self.table.split(".", 1)[0]

    @property
    def table_name(self) -> str:
        return self.table.split(".", 1)[1]


class Source(_Frozen):
    """Where a table comes from: `landing/FILE.csv` or `landing/FILE.parquet`, or a
    PostgreSQL table (`postgres`)."""

    file: str = ""
    csv: CsvDialect = CsvDialect()
    formats: Formats = Formats()
    postgres: PostgresSource | None = None

    @field_validator("file")
    @classmethod
    def _file(cls, v: str) -> str:
        if v and (v.startswith(".") or "/" in v or "\\" in v or "\0" in v):
            raise ValueError(f"{v!r}: a file name in landing/, without folder or extension")
        return v


class Table(_Frozen):
    """A declared table: key, columns, references and source."""

    name: str
    description: str = ""
    label: Labels = {}  # what a data subject's letter calls it, per language
    key: str
    subject: bool = False
    optional: bool = False
    references: dict[str, str] = {}
    source: Source = Source()
    declared: dict[str, Column] = Field(alias="columns")
    foreign_keys: tuple[ForeignKey, ...] = ()

    @field_validator("declared", mode="before")
    @classmethod
    def _columns(cls, v: Any) -> Any:
        if not isinstance(v, dict) or not v:
            raise ValueError("expected a mapping of column name: {type, category, ...}")
        return {
            name: {**(c or {}), "name": name} if isinstance(c, dict) else c for name, c in v.items()
        }

    @model_validator(mode="after")
    def _own_columns(self) -> Table:
        names = self.column_names
        problems = [
            f"columns.{name}: a column name is a-z, 0-9 and _"
            for name in names
            if not _NAME.fullmatch(name)
        ]
        if self.key not in names:
            problems.append(f"key: {self.key!r} is not one of its columns")
        elif not self.column(self.key).required:
            problems.append(f"columns.{self.key}: the key must be `required: true`")
        problems += [
            f"references.{column}: not one of its columns"
            for column in self.references
            if column not in names
        ]
        headers = [c.header for c in self.columns]
        problems += [
            f"columns.{c.name}.from: {c.header!r} is read by two columns"
            for c in self.columns
            if headers.count(c.header) > 1
        ]
        postgres = self.source.postgres
        if postgres and postgres.incremental and postgres.incremental not in names:
            problems.append(
                f"source.postgres.incremental: {postgres.incremental!r} is not one of its columns"
            )
        raise_problems(problems)
        if not self.source.file:
            object.__setattr__(self, "source", self.source.model_copy(update={"file": self.name}))
        return self

    @property
    def columns(self) -> tuple[Column, ...]:
        """The declared columns, in declaration order."""
        return tuple(self.declared.values())

    @property
    def column_names(self) -> list[str]:
        return list(self.declared)

    def column(self, name: str) -> Column:
        try:
            return self.declared[name]
        except KeyError:
            raise KeyError(f"{self.name} has no column {name!r}") from None


class Schema(_Frozen):
    """A validated schema: tables in load order (referenced tables first)."""

    version: Literal[1] = 1
    timezone: str = "UTC"
    tables: dict[str, Table]
    source: str = ""

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data: Any) -> Any:
        """Each table and column learns its name; references learn the key they hold."""
        if not isinstance(data, dict) or not isinstance(data.get("tables"), dict):
            return data
        raw = data["tables"]
        tables = {}
        for name, spec in raw.items():
            if not isinstance(spec, dict):
                tables[name] = spec
                continue
            refs = spec.get("references") or {}
            fks = [
                {"column": col, "ref_table": ref, "ref_column": _raw_key(raw.get(ref))}
                for col, ref in (refs.items() if isinstance(refs, dict) else ())
            ]
            tables[name] = {**spec, "name": name, "foreign_keys": fks}
        return {**data, "tables": tables}

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (e.g. Europe/Prague)") from None
        return v

    @model_validator(mode="after")
    def _whole(self) -> Schema:
        problems = [
            f"tables.{name}: a table name is a-z, 0-9 and _"
            for name in self.tables
            if not _NAME.fullmatch(name)
        ]
        subjects = [t.name for t in self.tables.values() if t.subject]
        if len(subjects) != 1:
            found = ", ".join(subjects) or "none"
            problems.append(f"tables: exactly one table needs `subject: true` (found {found})")
        for table in self.tables.values():
            for fk in table.foreign_keys:
                where = f"tables.{table.name}.references.{fk.column}"
                if fk.ref_table not in self.tables:
                    problems.append(f"{where}: unknown table {fk.ref_table!r}")
                    continue
                ref_key = self.tables[fk.ref_table].column(fk.ref_column)
                if ref_key.type != table.column(fk.column).type:
                    problems.append(
                        f"{where}: a {table.column(fk.column).type} column cannot hold the"
                        f" {ref_key.type} key of {fk.ref_table!r}"
                    )
        # Load order and reach follow references: only once they all name a table.
        raise_problems(problems)
        order = _load_order(self.tables)
        raise_problems(
            [
                f"tables.{table.name}.references: does not reach the subject table {subjects[0]!r}"
                for table in self.tables.values()
                if not table.subject and not _reaches(self.tables, table.name, subjects[0])
            ]
        )
        object.__setattr__(self, "tables", {name: self.tables[name] for name in order})
        return self

    @property
    def subject_table(self) -> Table:
        """The table whose rows are the data subjects."""
        return next(t for t in self.tables.values() if t.subject)

    def path_to_subject(self, table: str) -> tuple[ForeignKey, ...]:
        """The references from `table` to the subject table, shortest first (empty for the
        subject table itself). Every stage reaches a row's subject along this path."""
        subject = self.subject_table.name
        paths: list[tuple[str, tuple[ForeignKey, ...]]] = [(table, ())]
        while paths:
            name, path = paths.pop(0)
            if name == subject:
                return path
            paths += [(fk.ref_table, (*path, fk)) for fk in self.tables[name].foreign_keys]
        raise KeyError(f"{table} does not reach {subject}")


def _raw_key(spec: Any) -> str:
    key = spec.get("key") if isinstance(spec, dict) else None
    return key if isinstance(key, str) else ""


def _load_order(tables: dict[str, Table]) -> list[str]:
    """Tables with the tables they reference first; a reference cycle is refused."""
    order: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            raise ValueError(f"tables.{name}.references: a reference cycle ({cycle})")
        visiting.append(name)
        for fk in tables[name].foreign_keys:
            if fk.ref_table != name:
                visit(fk.ref_table)
            else:
                raise ValueError(f"tables.{name}.references.{fk.column}: refers to itself")
        visiting.pop()
        order.append(name)

    for name in tables:
        visit(name)
    return order


def _reaches(tables: dict[str, Table], start: str, subject: str) -> bool:
    if start == subject:
        return True
    return any(_reaches(tables, fk.ref_table, subject) for fk in tables[start].foreign_keys)


def parse_schema(text: str, source: str = "<schema>") -> Schema:
    """Validate a schema document; raise SchemaError naming the line and key on any problem."""
    try:
        doc = parse_yaml(text, "schema")
    except (yaml.YAMLError, RecursionError) as exc:
        raise SchemaError(f"{source}: not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(doc.data, dict):
        raise SchemaError(f"{source}: a schema is a YAML mapping with a 'tables' key")
    return _validate(doc, source)


def _validate(doc: Document, source: str) -> Schema:
    try:
        return Schema.model_validate({**doc.data, "source": source})
    except ValidationError as exc:
        raise SchemaError(validation_message(source, doc, exc, "schema")) from None


def load_schema(path: str | Path | None = None) -> Schema:
    """Load and validate a schema file (default: the e-shop schema shipped with Lethe)."""
    file = Path(path) if path else DEFAULT_SCHEMA_FILE
    return parse_schema(read_document(file, "schema", SchemaError), str(file))


@cache
def default_schema() -> Schema:
    """The e-shop schema shipped with Lethe (loaded once)."""
    return load_schema(DEFAULT_SCHEMA_FILE)
