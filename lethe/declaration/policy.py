"""Policy as code: purposes, legal bases, retention and what happens after it.

A policy is loaded from YAML into frozen pydantic models and validated against its
declared schema (the `schema:` key, a path relative to the policy file; the e-shop schema
by default). Every error names the key path and its line, so a compliance officer can fix
the file; an invalid policy never touches data.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lethe.declaration.datasets import DatasetDeclaration, parse_datasets
from lethe.declaration.duration import Duration, DurationError
from lethe.declaration.letters import Letters, Wordings
from lethe.declaration.schema import Schema, SchemaError, Table, default_schema, load_schema
from lethe.declaration.strategies import ColumnRules, Pseudonymize, type_problem
from lethe.declaration.yamldoc import (
    parse_yaml,
    raise_problems,
    read_document,
    validation_message,
    yaml_problem,
)
from lethe.errors import LetheError

LegalBasis = Literal[
    "consent",
    "contract",
    "legal_obligation",
    "vital_interest",
    "public_task",
    "legitimate_interest",
]
LEGAL_BASIS_ARTICLE: dict[str, str] = {
    "consent": "GDPR Art. 6(1)(a) consent",
    "contract": "GDPR Art. 6(1)(b) contract",
    "legal_obligation": "GDPR Art. 6(1)(c) legal obligation",
    "vital_interest": "GDPR Art. 6(1)(d) vital interest",
    "public_task": "GDPR Art. 6(1)(e) public task",
    "legitimate_interest": "GDPR Art. 6(1)(f) legitimate interest",
}
HOLD_PURPOSE = "litigation_hold"
_PURPOSE_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
# Longer durations are typos; they would overflow date arithmetic in SQL and Python.
MAX_YEARS = 200


class PolicyError(LetheError, ValueError):
    """An invalid policy: the message names the file and the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def _tables(info: ValidationInfo | None) -> dict[str, Table]:
    """The declared tables a policy is validated against (its schema, passed as context)."""
    schema = (info.context or {}).get("schema") if info else None
    return (schema or default_schema()).tables


def _column_ref(ref: str, tables: dict[str, Table]) -> tuple[str, str]:
    table, _, column = ref.strip().partition(".")
    if not column or table not in tables:
        raise ValueError(f"{ref!r} is not a known table.column")
    if column not in tables[table].column_names:
        raise ValueError(f"table {table!r} has no column {column!r}")
    return table, column


class Anchor(_Frozen):
    """`table.column`, optionally plus a duration (`consents.granted_at + 3y`)."""

    table: str
    column: str
    plus: Duration | None = None

    @classmethod
    def parse(cls, text: str, tables: dict[str, Table]) -> Anchor:
        ref, _, offset = str(text).partition("+")
        table, column = _column_ref(ref, tables)
        return cls(table=table, column=column, plus=Duration.parse(offset) if offset else None)

    def __str__(self) -> str:
        return f"{self.table}.{self.column}" + (f" + {self.plus}" if self.plus else "")


class Retention(_Frozen):
    """How long a purpose lasts for one row of its anchor table."""

    anchors: tuple[Anchor, ...] = Field(alias="from")
    keep: Duration
    open_while_null: bool = False
    only_where: dict[str, str] = {}
    ends_early_at: Anchor | None = None
    starts_at: Anchor | None = None

    @field_validator("anchors", mode="before")
    @classmethod
    def _anchors(cls, v: Any, info: ValidationInfo) -> tuple[Anchor, ...]:
        items = v if isinstance(v, list | tuple) else [v]
        if not items:
            raise ValueError("needs at least one table.column")
        tables = _tables(info)
        anchors = tuple(a if isinstance(a, Anchor) else Anchor.parse(a, tables) for a in items)
        if len({a.table for a in anchors}) != 1:
            raise ValueError("all alternatives must be columns of the same table")
        return anchors

    @field_validator("keep", mode="before")
    @classmethod
    def _keep(cls, v: Any) -> Duration:
        return v if isinstance(v, Duration) else Duration.parse(str(v))

    @field_validator("ends_early_at", "starts_at", mode="before")
    @classmethod
    def _ends(cls, v: Any, info: ValidationInfo) -> Anchor | None:
        return None if v is None or isinstance(v, Anchor) else Anchor.parse(v, _tables(info))

    @field_validator("only_where")
    @classmethod
    def _where(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for ref in v:
            _column_ref(ref, _tables(info))
        return v

    @property
    def table(self) -> str:
        return self.anchors[0].table

    @model_validator(mode="after")
    def _same_table(self) -> Retention:
        refs = [*self.only_where, *(str(a) for a in (self.ends_early_at, self.starts_at) if a)]
        for ref in refs:
            if ref.split(".")[0] != self.table:
                raise ValueError(f"{ref!r} must be a column of the anchor table {self.table!r}")
        return self

    def describe(self) -> str:
        start = " or else ".join(str(a) for a in self.anchors)
        text = f"{self.keep} from {start}"
        if self.open_while_null:
            text += " (open-ended while it is not set)"
        if self.ends_early_at:
            text += f", ending early at {self.ends_early_at}"
        if self.starts_at:
            text += f", not before {self.starts_at}"
        if self.only_where:
            text += ", only where " + ", ".join(f"{k} = {v}" for k, v in self.only_where.items())
        return text


Keeps = dict[str, tuple[str, ...]]


def _parse_keeps(v: Any, info: ValidationInfo) -> Keeps:
    if not isinstance(v, dict) or not v:
        raise ValueError("expected a mapping of table: '*' or [columns]")
    tables = _tables(info)
    out: Keeps = {}
    for table, cols in v.items():
        if table not in tables:
            raise ValueError(f"unknown table {table!r}")
        known = tables[table].column_names
        if cols == "*":
            out[table] = tuple(known)
            continue
        if not isinstance(cols, list) or not cols:
            raise ValueError(f"{table}: expected '*' or a list of columns")
        for c in cols:
            if c not in known:
                raise ValueError(f"{table}: unknown column {c!r}")
        out[table] = tuple(cols)
    return out


class Purpose(_Frozen):
    """A purpose of processing with its legal basis, the data it needs and its retention."""

    name: str = ""
    legal_basis: LegalBasis
    description: str
    keeps: Keeps
    pseudonymizes: Keeps = {}
    retention: Retention
    # Categories of data subjects, as the record of processing (Art. 30(1)(c)) lists them.
    data_subjects: tuple[str, ...] = ()
    # The purpose as a data subject's letter names and explains it, per language.
    letter: Wordings = {}

    _parse_keeps = field_validator("keeps", "pseudonymizes", mode="before")(
        lambda cls, v, info: _parse_keeps(v, info) if v else {}
    )

    def keeps_column(self, table: str, column: str) -> bool:
        return column in self.keeps.get(table, ())


class TableActions(_Frozen):
    """What happens in one table to values and rows no purpose keeps any more."""

    column: ColumnRules = ColumnRules()
    row: Literal["delete", "anonymize"]
    anonymized: ColumnRules | None = None

    @field_validator("column", "anonymized", mode="before")
    @classmethod
    def _rules(cls, v: Any) -> ColumnRules | None:
        return None if v is None else ColumnRules.from_yaml(v)

    def anonymized_rules(self) -> ColumnRules:
        """Column rules of an anonymized row (the per-value rules unless overridden)."""
        return self.anonymized or self.column


class ExportLog(_Frozen):
    keep: Duration
    purge_when_over: int = Field(ge=0)
    every: Duration

    _d = field_validator("keep", "every", mode="before")(
        lambda cls, v: v if isinstance(v, Duration) else Duration.parse(str(v))
    )


class Operations(_Frozen):
    """Retention of Lethe's own operational data."""

    backups: Duration
    access_log: Duration
    export_log: ExportLog
    exports: Duration
    # Rejected input rows hold raw personal data: kept only long enough to be fixed.
    quarantine: Duration = Duration.parse("30d")

    _d = field_validator("backups", "access_log", "exports", "quarantine", mode="before")(
        lambda cls, v: v if isinstance(v, Duration) else Duration.parse(str(v))
    )


class Processor(_Frozen):
    """A processor (GDPR Art. 28) receiving data for one purpose under a contract.

    Exports to it go through Lethe: refused once `contract_end` has come (00:00 UTC of
    that day), when `export_access` is off, or after `lethe processor revoke`.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    description: str = ""
    purpose: str
    data_shared: dict[str, tuple[str, ...]]
    contract_end: dt.date | None = None
    export_access: bool = True
    transfers: str = "none outside the EU/EEA"
    # The recipient as a data subject's letter names it, per language.
    letter: Wordings = {}

    _k = field_validator("data_shared", mode="before")(lambda cls, v, info: _parse_keeps(v, info))


class Controller(_Frozen):
    """The controller (GDPR Art. 4(7)) the record of processing names."""

    name: str
    contact: str
    dpo: str | None = None  # the data protection officer's contact, if one is appointed


class Analytics(_Frozen):
    """The anonymized analyst datasets: why they exist and what each releases."""

    purpose: str = "statistics"
    legal_basis: LegalBasis = "legitimate_interest"
    description: str = (
        "Anonymized statistics for analysts: aggregates of at least k data subjects"
        " with generalized quasi-identifiers only."
    )
    # Declared datasets (lethe.declaration.datasets), checked against the policy's schema.
    datasets: dict[str, DatasetDeclaration] = {}

    _d = field_validator("datasets", mode="before")(lambda cls, v: parse_datasets(v))

    def k_problems(self, k_anonymity: int) -> list[str]:
        """A dataset may ask for a larger k than the policy's, never a smaller one."""
        return [
            f"analytics.datasets.{d.name}.k: {d.k} is below the policy's"
            f" k_anonymity ({k_anonymity})"
            for d in self.datasets.values()
            if d.k is not None and d.k < k_anonymity
        ]


class BreachNotification(_Frozen):
    """Deadlines for a personal data breach, in hours from becoming aware of it."""

    authority_hours: int = Field(default=72, gt=0)  # controller → authority, Art. 33(1)
    processor_hours: int = Field(default=48, gt=0)  # processor → controller, the contracts


class ConsentHealth(_Frozen):
    """The re-consent list: consents ending within `expiring_within` are listed."""

    expiring_within: Duration = Duration.parse("30d")

    _d = field_validator("expiring_within", mode="before")(
        lambda cls, v: v if isinstance(v, Duration) else Duration.parse(str(v))
    )


def _rule_problems(table: str, actions: TableActions, spec: Table) -> list[str]:
    """What is wrong with one table's `when_unkept` rules: unknown columns, pseudonymize
    (a purpose's business), strategies that cannot apply to a column's type."""
    problems = []
    known = spec.column_names
    for part, rules in (("column", actions.column), ("anonymized", actions.anonymized)):
        if rules is None:
            continue
        for col, strategy in rules.columns.items():
            if col not in known:
                problems.append(f"when_unkept.{table}.{part}.{col}: unknown column {col!r}")
            elif isinstance(strategy, Pseudonymize):
                problems.append(
                    f"when_unkept.{table}.{col}: pseudonymize belongs to a purpose"
                    " (purposes.<name>.pseudonymizes)"
                )
        for col in known:
            problem = type_problem(rules.for_column(col), spec.column(col).type)
            if problem:
                where = col if col in rules.columns else "default"
                problems.append(f"when_unkept.{table}.{part}.{where}: {problem} ({col})")
    return problems


class Policy(_Frozen):
    """A validated retention policy."""

    version: Literal[1] = 1
    owner: str = "team:privacy"
    k_anonymity: int = Field(default=5, ge=2)
    purposes: dict[str, Purpose]
    litigation_hold: Purpose
    when_unkept: dict[str, TableActions]
    operations: Operations
    processors: tuple[Processor, ...] = ()
    controller: Controller | None = None
    security_measures: tuple[str, ...] = ()
    analytics: Analytics = Analytics()
    breach_notification: BreachNotification = BreachNotification()
    consent_health: ConsentHealth = ConsentHealth()
    letters: Letters = Letters()
    # The declared tables this policy applies to (its `schema:` file, or the default).
    data_schema: Schema = Field(default_factory=default_schema)
    source: str = ""

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            purposes = data.get("purposes")
            if isinstance(purposes, dict):
                data = dict(data)
                data["purposes"] = {
                    k: {**v, "name": k} if isinstance(v, dict) else v for k, v in purposes.items()
                }
            hold = data.get("litigation_hold")
            if isinstance(hold, dict):
                data["litigation_hold"] = {**hold, "name": HOLD_PURPOSE}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        problems: list[str] = []
        if HOLD_PURPOSE in self.purposes:
            problems.append(f"purposes.{HOLD_PURPOSE}: reserved for the litigation_hold section")
        for name in self.purposes:
            if not _PURPOSE_NAME.fullmatch(name):
                problems.append(
                    f"purposes.{name}: a purpose name is lower-case letters, digits and _"
                    " (it is a value in SQL plans and a tag in the UI)"
                )
        for where, duration in self._durations():
            if duration.years + duration.months / 12 + duration.days / 365.25 > MAX_YEARS:
                problems.append(f"{where}: {duration} is longer than {MAX_YEARS} years")
        tables = self.data_schema.tables
        if len(self.data_schema.path_to_subject(self.hold_table)) != 1:
            problems.append(
                f"litigation_hold.retention.from: the hold table {self.hold_table!r} must"
                f" reference the subject table {self.data_schema.subject_table.name!r} directly"
            )
        for table in tables:
            if table != self.hold_table and table not in self.when_unkept:
                problems.append(f"when_unkept.{table}: missing (every table needs a rule)")
        for table, actions in self.when_unkept.items():
            if table not in tables:
                problems.append(f"when_unkept.{table}: unknown table")
            else:
                problems += _rule_problems(table, actions, tables[table])
        for p in self.purposes.values():
            for table, cols in p.pseudonymizes.items():
                for col in cols:
                    problem = type_problem(Pseudonymize(), tables[table].column(col).type)
                    if problem:
                        problems.append(f"purposes.{p.name}.pseudonymizes.{table}: {problem}")
        names = [p.name for p in self.processors]
        problems += [
            f"processors.{name}: listed more than once"
            for name in dict.fromkeys(names)
            if names.count(name) > 1
        ]
        for p in self.processors:
            if p.purpose not in self.purposes:
                problems.append(f"processors.{p.name}.purpose: unknown purpose {p.purpose!r}")
                continue
            purpose = self.purposes[p.purpose]
            for table, cols in p.data_shared.items():
                covered = (*purpose.keeps.get(table, ()), *purpose.pseudonymizes.get(table, ()))
                problems += [
                    f"processors.{p.name}.data_shared.{table}: {col!r} is not kept by"
                    f" its purpose {p.purpose!r}"
                    for col in cols
                    if col not in covered
                ]
        problems += self.analytics.k_problems(self.k_anonymity)
        raise_problems(problems)
        return self

    def _durations(self) -> list[tuple[str, Duration]]:
        """(key path, duration) of every duration in the policy."""
        out: list[tuple[str, Duration]] = []
        for p in self.all_purposes().values():
            key = f"purposes.{p.name}.retention" if p.name in self.purposes else "litigation_hold"
            r = p.retention
            out.append((f"{key}.keep", r.keep))
            for anchor in (*r.anchors, r.ends_early_at, r.starts_at):
                if anchor and anchor.plus:
                    out.append((f"{key}: {anchor}", anchor.plus))
        ops = self.operations
        out += [(f"operations.{k}", getattr(ops, k)) for k in ("backups", "access_log", "exports")]
        out += [("operations.quarantine", ops.quarantine)]
        out += [("operations.export_log.keep", ops.export_log.keep)]
        out += [("operations.export_log.every", ops.export_log.every)]
        out += [("consent_health.expiring_within", self.consent_health.expiring_within)]
        return out

    def purpose_columns(self, table: str) -> list[str]:
        """Columns of `table` that hold purpose names: a purpose is anchored on the rows
        whose column equals its own name (`only_where: {consents.purpose: newsletter}`)."""
        return sorted(
            {
                ref.split(".", 1)[1]
                for p in self.purposes.values()
                for ref, value in p.retention.only_where.items()
                if ref.split(".", 1)[0] == table and value == p.name
            }
        )

    @property
    def hold_table(self) -> str:
        """The table of litigation holds (the one the hold's retention runs from)."""
        return self.litigation_hold.retention.table

    def all_purposes(self) -> dict[str, Purpose]:
        """The policy's purposes plus the litigation hold, in policy order (hold last)."""
        return {**self.purposes, HOLD_PURPOSE: self.litigation_hold}

    def purposes_for(self, table: str) -> list[Purpose]:
        """Purposes that keep anything of `table`."""
        return [p for p in self.all_purposes().values() if table in p.keeps]


def parse_policy(text: str, source: str = "<policy>", base: Path | None = None) -> Policy:
    """Validate a policy document against its schema (`schema:`, relative to `base`);
    raise PolicyError naming the line and key on any problem."""
    try:
        doc = parse_yaml(text, "policy")
    except (yaml.YAMLError, RecursionError) as exc:
        raise PolicyError(f"{source}: not valid YAML: {yaml_problem(exc)}") from None
    data = doc.data
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy is a YAML mapping with a 'purposes' key")
    data = dict(data)
    schema_ref = data.pop("schema", None)
    try:
        schema = _schema_of(schema_ref, base)
    except SchemaError as exc:
        line = doc.line_of(["schema"])
        problems = str(exc).splitlines()
        raise PolicyError("\n".join(f"{source}:{line}: schema: {x}" for x in problems)) from None
    try:
        return Policy.model_validate(
            {**data, "data_schema": schema, "source": source}, context={"schema": schema}
        )
    except ValidationError as exc:
        raise PolicyError(validation_message(source, doc, exc, "policy")) from None
    except DurationError as exc:
        raise PolicyError(f"{source}: {exc}") from None


def _schema_of(ref: Any, base: Path | None) -> Schema:
    if ref is None:
        return default_schema()
    if not isinstance(ref, str) or not ref.strip():
        raise SchemaError("expected the path of a schema file, relative to the policy")
    path = Path(ref)
    return load_schema(path if path.is_absolute() or base is None else base / path)


def default_policy_path() -> Path:
    """`LETHE_POLICY`, else `./policies/default.yaml`, else the one shipped beside the code."""
    env = os.environ.get("LETHE_POLICY")
    if env:
        return Path(env)
    local = Path("policies/default.yaml")
    if local.exists():
        return local
    return Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


def load_policy(path: str | Path | None = None) -> Policy:
    """Load and validate a policy file (default: `default_policy_path()`)."""
    file = Path(path) if path else default_policy_path()
    return parse_policy(read_document(file, "policy", PolicyError), str(file), file.parent)
