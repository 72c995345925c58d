"""Anonymized analyst datasets: k-anonymous aggregates over generalized quasi-identifiers.

The policy declares each dataset (`analytics.datasets`, see lethe.declaration.datasets): its source
table, dimensions with their generalization ladders, and measures. Each becomes a
relational plan (DuckDB-dialect SQL, parsed by SQLGlot through `lethe.engine.plan.Plan`), run
after retention enforcement:

1. Records: one row per source row with each dimension's label at every ladder step it may
   reach (month, quarter; region CZ-1, CZ-*; amount band CZK 500-1000, CZK any; ...)
   and `_subject`, the data subject where known, reached along the schema's references
   (NULL for an anonymized row: a subject of its own). Restricted rows, rows under
   litigation hold (the row or a row on its way to its subject) and pseudonymized rows
   (kept for accounting only) are left out; anonymized rows stay in, so statistics stay
   complete.
2. Generalization: cells with at least k subjects (GROUP BY the labels, HAVING) are
   released; the records of smaller cells move one dimension one step up its ladder (in
   the declared `generalize` order) and are grouped again; what is still too small at the
   top is suppressed.
3. Release: the released records grouped by their final labels. Every released row counts
   at least k distinct subjects, and no row holds an identifier or a token. `publish_plan`
   then replaces `analytics.<dataset>` and its row in the register of releases, counted in
   SQL, so a PostgreSQL warehouse runs the same plans (`lethe.compliance.postgres_analytics`).

Only the warehouse is read: the vault is never opened.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lethe.declaration.datasets import (
    ANY,
    SUBJECTS,
    DatasetDeclaration,
    Days,
    Dimension,
    Measure,
    Ref,
    Step,
)
from lethe.declaration.policy import HOLD_PURPOSE, Policy
from lethe.declaration.schema import Schema
from lethe.declaration.strategies import literal, quote
from lethe.engine.ddl import RELEASES, ensure_releases
from lethe.engine.plan import Plan
from lethe.engine.reach import reach
from lethe.engine.states import RowState
from lethe.engine.warehouse import SQL_TYPES, table_columns, transaction
from lethe.errors import LetheError
from lethe.operations.files import replacing
from lethe.operations.home import Home

SCHEMA = "analytics"
RELEASED_STATES = (RowState.ACTIVE, RowState.ANONYMIZED)


def exports_dir(home: Home) -> Path:
    """Where the Parquet extracts of the analyst datasets go."""
    return home.exports / "analytics"


@dataclass(frozen=True)
class OutputColumn:
    """A released column: its SQL type, data category, and the core columns it derives from."""

    name: str
    sql_type: str
    category: str
    description: str
    sources: tuple[tuple[str, str], ...] = ()  # (core table, column)


@dataclass(frozen=True)
class Dataset:
    """A declared analyst dataset with its released columns: the quasi-identifier labels
    (one per dimension) and the measures, `subjects` first."""

    declaration: DatasetDeclaration
    quasi_identifiers: tuple[OutputColumn, ...]
    measures: tuple[OutputColumn, ...]

    @property
    def name(self) -> str:
        return self.declaration.name

    @property
    def description(self) -> str:
        return self.declaration.description

    @property
    def generalize(self) -> tuple[str, ...]:
        """The dimension moved one step up its ladder at each level, in order."""
        return self.declaration.generalize

    @property
    def columns(self) -> tuple[OutputColumn, ...]:
        return (*self.quasi_identifiers, *self.measures)

    @property
    def labels(self) -> list[str]:
        return [c.name for c in self.quasi_identifiers]

    def lineage(self) -> dict[str, list[tuple[str, str]]]:
        """Released column → the (core table, column) pairs it is computed from."""
        return {c.name: list(c.sources) for c in self.columns}

    @property
    def tables(self) -> list[str]:
        """The core tables the dataset reads, in first-use order."""
        return list(dict.fromkeys(t for pairs in self.lineage().values() for t, _ in pairs))


def _subject_column(schema: Schema, table: str) -> tuple[str, str]:
    """The (table, column) holding the subject's key for a row of `table`."""
    path = schema.path_to_subject(table)
    if not path:
        return table, schema.tables[table].key
    return (path[-2].ref_table if len(path) > 1 else table), path[-1].column


def _measure_column(schema: Schema, source: str, m: Measure) -> OutputColumn:
    if m.count:
        key = schema.tables[source].key
        return OutputColumn(m.name, "BIGINT", "statistic.count", m.description, ((source, key),))
    value = m.value
    mean = m.avg is not None
    sql_type = "DOUBLE" if mean or not isinstance(value, Ref) else SQL_TYPES[value.type]
    sources = tuple((r.table, r.column) for r in m.refs)
    category = "statistic.mean" if mean else "statistic.sum"
    return OutputColumn(m.name, sql_type, category, m.description, sources)


def dataset(schema: Schema, declaration: DatasetDeclaration) -> Dataset:
    """The released columns of a declared dataset, with their lineage in `schema`."""
    source = declaration.source
    who = f" ({declaration.subjects})" if declaration.subjects else ""
    subjects = OutputColumn(
        SUBJECTS,
        "BIGINT",
        "statistic.count",
        f"Distinct data subjects{who} in the row: at least k (the k-anonymity class size).",
        (_subject_column(schema, source),),
    )
    labels = tuple(
        OutputColumn(
            d.name,
            "VARCHAR",
            d.output_category,
            d.description,
            tuple((r.table, r.column) for r in d.refs)
            + ((_subject_column(schema, d.first.table),) if d.first else ()),
        )
        for d in declaration.dimensions.values()
    )
    measures = tuple(_measure_column(schema, source, m) for m in declaration.measures.values())
    return Dataset(declaration, labels, (subjects, *measures))


def datasets(policy: Policy) -> dict[str, Dataset]:
    """The analyst datasets the policy declares (`analytics.datasets`), by name."""
    return {name: dataset(policy.data_schema, d) for name, d in policy.analytics.datasets.items()}


def k_of(policy: Policy, dataset: Dataset) -> int:
    """The dataset's k: its own where it asks for more than the policy's `k_anonymity`."""
    return max(dataset.declaration.k or 0, policy.k_anonymity)


# --- label expressions -----------------------------------------------------------------------


def _band_case(value: str, bounds: tuple[float, ...], label: Callable[[str], str]) -> str:
    """WHEN clauses putting `value` into half-open bands `<b0`, `b0-b1`, ..., `bn+`."""
    pairs = zip(bounds, bounds[1:], strict=False)
    edges = [f"<{bounds[0]:g}"] + [f"{lo:g}-{hi:g}" for lo, hi in pairs]
    whens = " ".join(
        f"WHEN {value} < {hi!r} THEN {literal(label(text))}"
        for hi, text in zip(bounds, edges, strict=True)
    )
    return f"{whens} ELSE {literal(label(f'{bounds[-1]:g}+'))}"


def _characters(text: str) -> str:
    """The letters and digits of `text` (a postal code without its spaces and dashes)."""
    return f"regexp_replace(coalesce({text}, ''), '[^0-9A-Za-z]', '', 'g')"


def qualified_prefix(within: str, code: str, length: int) -> str:
    """`CZ-1`: `within` and the first characters of the code; `CZ-*` without them, `*`
    without `within` (a region: CZ and its postal district 1)."""
    chars = _characters(code)
    return (
        f"CASE WHEN {within} IS NULL THEN '{ANY}'"
        f" WHEN length({chars}) < {length} THEN {within} || '-{ANY}'"
        f" ELSE {within} || '-' || left({chars}, {length}) END"
    )


def unit_bands(amount: str, unit: str, bands: dict[str, tuple[float, ...]]) -> str:
    """`CZK 500-1000` (lower bound included); a unit without bands gets `EUR any`."""
    per_unit = " ".join(
        f"WHEN {unit} = {literal(u)} THEN CASE"
        f" {_band_case(amount, bounds, lambda t, u=u: f'{u} {t}')} END"
        for u, bounds in bands.items()
    )
    return (
        f"CASE WHEN {amount} IS NULL OR {unit} IS NULL THEN 'unknown' {per_unit}"
        f" ELSE {unit} || ' any' END"
    )


def year_band(year: str, width: int) -> str:
    """`1980-1989` for a band of `width` years; `unknown` for NULL."""
    lo = f"({year} - {year} % {width})"
    return (
        f"CASE WHEN {year} IS NULL THEN 'unknown' ELSE CAST({lo} AS VARCHAR) || '-'"
        f" || CAST({lo} + {width - 1} AS VARCHAR) END"
    )


def days(start: str, end: str) -> str:
    """Days from `start` to `end`, with their fraction (NULL while either is)."""
    return f"(date_diff('minute', {start}, {end}) / 1440.0)"


def _date_label(value: str, step: Step) -> str:
    """`2026-01` (month), `2026-Q1` (quarter), `2026` (year), `2025-2029` (years)."""
    if step.kind == "years":
        return year_band(f"year({value})", step.size)
    if step.kind == "year":
        return f"CAST(year({value}) AS VARCHAR)"
    if step.kind == "quarter":
        return f"strftime({value}, '%Y') || '-Q' || CAST(extract(quarter FROM {value}) AS VARCHAR)"
    return f"strftime({value}, '%Y-%m')"


def _label(dim: Dimension, step: Step, col: Callable[[Ref], str], first: str, unlinked: str) -> str:
    """The label of `dim` at one step of its ladder; `unknown` where its value is NULL.

    `col` gives the SQL of a declared column; `first` is the subject's first event and
    `unlinked` the condition of a row whose subject is unknown (for `first` dimensions).
    """
    if step.kind == "any":
        return f"'{ANY}'"
    if dim.days:
        start, end = col(dim.days.start), col(dim.days.end)
        scale = (
            _band_case(days(start, end), step.bounds, lambda t: f"{t} days")
            if step.kind == "bands"
            else f"ELSE {literal(dim.ended)}"
        )
        return (
            f"CASE WHEN {start} IS NULL THEN 'unknown' WHEN {end} IS NULL THEN"
            f" {literal(dim.open)} {scale} END"
        )
    if dim.first:
        return (
            f"CASE WHEN {unlinked} THEN 'unknown' WHEN {first} IS NULL THEN 'none'"
            f" ELSE {_date_label(first, step)} END"
        )
    assert dim.column is not None  # a dimension has one value (lethe.declaration.datasets)
    value = col(dim.column)
    if dim.within and step.kind in ("prefix", "within"):
        within = col(dim.within)
        if step.kind == "prefix":
            return qualified_prefix(within, value, step.size)
        return f"CASE WHEN {within} IS NULL THEN '{ANY}' ELSE {within} || '-{ANY}' END"
    if dim.unit and step.kind in ("bands", "unit"):
        unit = col(dim.unit)
        if step.kind == "bands":
            return unit_bands(value, unit, step.per_unit)
        return (
            f"CASE WHEN {value} IS NULL OR {unit} IS NULL THEN 'unknown' ELSE {unit} || ' any' END"
        )
    if step.kind == "bands":
        return f"CASE WHEN {value} IS NULL THEN 'unknown' {_band_case(value, step.bounds, str)} END"
    if step.kind == "prefix":
        chars = _characters(value)
        return (
            f"CASE WHEN {value} IS NULL THEN 'unknown' WHEN length({chars}) < {step.size}"
            f" THEN '{ANY}' ELSE left({chars}, {step.size}) END"
        )
    if step.kind == "value":
        text = value if dim.column.type == "text" else f"CAST({value} AS VARCHAR)"
        return f"coalesce({text}, 'unknown')"
    return f"coalesce({_date_label(value, step)}, 'unknown')"


# --- records ---------------------------------------------------------------------------------


def _exclusion(main: str, *related: str) -> str:
    """Why a record is left out (NULL: it is released).

    Held or restricted (the row itself or a row on its way to its subject), pseudonymized
    (kept for accounting only), or not enforced yet (`expired`).
    """
    aliases = (main, *related)
    held = " OR ".join(f"list_contains({a}._purposes, {literal(HOLD_PURPOSE)})" for a in aliases)
    restricted = " OR ".join(f"{a}._state = {RowState.RESTRICTED.sql}" for a in aliases)
    released = ", ".join(literal(s) for s in RELEASED_STATES)
    return (
        f"CASE WHEN {held} THEN 'held' WHEN {restricted} THEN 'restricted'"
        f" WHEN {main}._state NOT IN ({released}) THEN {main}._state END"
    )


def _first_events(schema: Schema, ref: Ref, alias: str) -> str:
    """Each subject's first `ref` among the rows analytics may use: active and not held
    (a pseudonymized row carries a token, and the vault is never opened to link it)."""
    r = reach(schema, ref.table, alias)
    return (
        f"SELECT {r.subject} AS _subject, min({alias}.{quote(ref.column)}) AS _first"
        f" FROM core.{quote(ref.table)} {alias}{r.joins}"
        f" WHERE {alias}._state = {RowState.ACTIVE.sql}"
        f" AND NOT list_contains({alias}._purposes, {literal(HOLD_PURPOSE)}) GROUP BY 1"
    )


def _label_column(i: int, step: int) -> str:
    return f"_l{i}_{step}"


def records(schema: Schema, dataset: Dataset) -> str:
    """SELECT of one record per source row: `_exclusion`, `_subject`, the label of each
    dimension at every step the dataset may reach, and the inputs of the measures."""
    declared = dataset.declaration
    source = declared.source
    r = reach(schema, source, "s", subject_row=True)
    path = schema.path_to_subject(source)
    aliases = {source: "s", **{fk.ref_table: a for fk, a in zip(path, r.via, strict=True)}}

    def col(ref: Ref) -> str:
        return f"{aliases[ref.table]}.{quote(ref.column)}"

    joins = [r.joins]
    selects = [f"{_exclusion('s', *r.via)} AS _exclusion", f"{r.subject} AS _subject"]
    unlinked = f"s._state = {RowState.ANONYMIZED.sql} OR {r.subject} IS NULL"
    for i, dim in enumerate(declared.dimensions.values()):
        first = ""
        if dim.first:
            first = f"_f{i}._first"
            joins.append(
                f" LEFT JOIN ({_first_events(schema, dim.first, f'_e{i}')}) _f{i}"
                f" ON _f{i}._subject = {r.subject}"
            )
        for step in range(declared.generalize.count(dim.name) + 1):
            label = _label(dim, dim.ladder[step], col, first, unlinked)
            selects.append(f"{label} AS {_label_column(i, step)}")
    for i, m in enumerate(declared.measures.values()):
        value = m.value
        if isinstance(value, Days):
            selects.append(f"{days(col(value.start), col(value.end))} AS _m{i}")
        elif value is not None:
            selects.append(f"{col(value)} AS _m{i}")
    return f"SELECT {', '.join(selects)} FROM core.{quote(source)} s{''.join(joins)}"


def _aggregate(i: int, m: Measure) -> str:
    """A measure over the records of a released cell (alias `r`)."""
    if m.count:
        return "count(*)"
    agg = f"{'avg' if m.avg is not None else 'sum'}(r._m{i})"
    return agg if m.round is None else f"round({agg}, {m.round})"


# --- the release plan ------------------------------------------------------------------------


def _subjects(alias: str) -> str:
    """Distinct subjects; a record without one (anonymized) is a subject of its own."""
    return f"count(DISTINCT {alias}_subject) + count(*) FILTER (WHERE {alias}_subject IS NULL)"


def release_plan(policy: Policy, dataset: Dataset) -> Plan:
    """Statements that stage `_an_released` (the release) and `_an_suppressed` (left out).

    `_an_all` holds the records (`_row` numbers them); `_an_pending` the records not yet
    released, with their labels at the current level; `_an_cells` the cells of that level
    with at least k subjects.
    """
    labels = dataset.labels
    index = {name: i for i, name in enumerate(labels)}
    reached = dict.fromkeys(labels, 0)  # ladder step of each dimension at this level

    def cols(alias: str = "") -> str:
        return ", ".join(f"{alias}{quote(c)}" for c in labels)

    same = " AND ".join(f"c.{quote(c)} = p.{quote(c)}" for c in labels)
    in_cells = f"EXISTS (SELECT 1 FROM _an_cells c WHERE {same})"
    finest = ", ".join(f"{_label_column(index[c], 0)} AS {quote(c)}" for c in labels)
    statements = [
        "CREATE OR REPLACE TEMP TABLE _an_all AS SELECT row_number() OVER () AS _row, *"
        f" FROM ({records(policy.data_schema, dataset)}) _records",
        f"CREATE OR REPLACE TEMP TABLE _an_pending AS SELECT _row, _subject, {finest}"
        " FROM _an_all WHERE _exclusion IS NULL",
        f"CREATE OR REPLACE TEMP TABLE _an_assigned AS SELECT _row, 0 AS _level, {cols()}"
        " FROM _an_pending WHERE false",
    ]
    for level in range(len(dataset.generalize) + 1):
        if level:  # records not released yet: one quasi-identifier one step coarser
            step = dataset.generalize[level - 1]
            reached[step] += 1
            stepped = ", ".join(
                f"r.{_label_column(index[c], reached[c])} AS {quote(c)}"
                if c == step
                else f"p.{quote(c)}"
                for c in labels
            )
            statements.append(
                "CREATE OR REPLACE TEMP TABLE _an_pending AS SELECT p._row, p._subject,"
                f" {stepped} FROM _an_pending p JOIN _an_all r ON r._row = p._row"
                f" WHERE NOT {in_cells}"
            )
        statements += [
            f"CREATE OR REPLACE TEMP TABLE _an_cells AS SELECT {cols()} FROM _an_pending"
            f" GROUP BY {cols()} HAVING {_subjects('')} >= {k_of(policy, dataset)}",
            f"INSERT INTO _an_assigned SELECT p._row, {level}, {cols('p.')}"
            f" FROM _an_pending p WHERE {in_cells}",
        ]
    declared = dataset.declaration.measures.values()
    aggregates = [_subjects("r."), *(_aggregate(i, m) for i, m in enumerate(declared))]
    measures = ", ".join(
        f"CAST({agg} AS {m.sql_type}) AS {quote(m.name)}"
        for agg, m in zip(aggregates, dataset.measures, strict=True)
    )
    statements += [
        "CREATE OR REPLACE TEMP TABLE _an_suppressed AS SELECT * FROM _an_pending p"
        f" WHERE NOT {in_cells}",
        f"CREATE OR REPLACE TEMP TABLE _an_released AS SELECT {cols('a.')}, {measures}"
        f" FROM _an_assigned a JOIN _an_all r ON r._row = a._row GROUP BY {cols('a.')}",
    ]
    return Plan(f"release {dataset.name}", tuple(statements))


@dataclass(frozen=True)
class Release:
    """What one release of a dataset contains and left out (counts only)."""

    dataset: str
    k: int
    rows: int  # released rows (cells)
    records: int  # source rows in scope
    generalized: int  # records released at a coarser level than their own
    suppressed: int  # records in cells still smaller than k at the top of the ladder
    suppressed_cells: int
    excluded: dict[str, int]  # source rows out of scope, by reason
    min_subjects: int | None
    path: Path

    @property
    def suppressed_share(self) -> float:
        return self.suppressed / self.records if self.records else 0.0

    @property
    def generalized_share(self) -> float:
        return self.generalized / self.records if self.records else 0.0


# --- the Parquet extract ---------------------------------------------------------------------

_TIME_STEPS = ("month", "quarter", "year", "years")
_LEADING = re.compile(r"^([^0-9<]*)(<?)([0-9]+(?:\.[0-9]+)?)?")


def label_order(label: str) -> tuple[str, float, str]:
    """Sort key of a released label: bands by their numbers, not their text.

    `CZK <500` < `CZK 500-1000` < `CZK 1000-2500` < `CZK 10000+` < `CZK any` < `EUR <20`;
    `<1 days` < `1-2 days` < `5+ days`; `1980-1989` < `2000-2009`; `CZ-1` < `CZ-10` < `CZ-*`.
    The text before the first number groups labels (a unit, a country), then the number
    (`<N` before N), then the text.
    """
    match = _LEADING.match(label)
    assert match is not None  # every part of the pattern is optional
    prefix, below, number = match.groups()
    value = -math.inf if below else float(number) if number else math.inf
    return prefix, value, label


def policy_digest(policy: Policy) -> str:
    """A short fingerprint of the policy's content, naming the rules an extract was built
    under (the same policy text gives the same digest)."""
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:16]


def _as_of(con: duckdb.DuckDBPyConnection) -> dt.date | None:
    """The as-of date of the latest enforcement recorded in the ledger."""
    if not table_columns(con, "audit", "ledger"):
        return None
    return con.execute("SELECT max(as_of) FROM audit.ledger").fetchone()[0]


def _ordered(values: pa.ChunkedArray) -> pa.DictionaryArray:
    """Labels as an ordered dictionary whose categories sort as `label_order` does."""
    plain = values.combine_chunks().cast(pa.string())
    categories = pa.array(sorted(set(plain.drop_null().to_pylist()), key=label_order), pa.string())
    indices = pc.index_in(plain, value_set=categories).cast(pa.int32())
    return pa.DictionaryArray.from_arrays(indices, categories, ordered=True)


def extract_table(
    arrow: pa.Table, policy: Policy, dataset: Dataset, as_of: dt.date | None
) -> pa.Table:
    """The released table as analysts get it: labels as ordered categories, rows in label
    order, and metadata saying what it is (as-of date, k, policy, descriptions, ladders)."""
    declared = dataset.declaration.dimensions
    fields, columns = [], []
    for col in dataset.columns:
        values = arrow[col.name]
        meta = {"description": col.description, "category": col.category}
        if col.name in declared:
            dim = declared[col.name]
            reached = dim.ladder[: dataset.generalize.count(col.name) + 1]
            meta["ladder"] = ", ".join(str(step) for step in reached)
            times = [str(step) for step in reached if step.kind in _TIME_STEPS]
            if times:  # a period: one label per month, quarter or year
                meta["granularity"] = " or ".join(times)
            values = _ordered(values)
            meta["order"] = json.dumps(values.dictionary.to_pylist(), ensure_ascii=False)
        fields.append(pa.field(col.name, values.type, metadata=meta))
        columns.append(values)
    table = pa.Table.from_arrays(columns, schema=pa.schema(fields))
    if table.num_rows and dataset.labels:
        codes = pa.table({c: table[c].combine_chunks().indices for c in dataset.labels})
        table = table.take(pc.sort_indices(codes, [(c, "ascending") for c in dataset.labels]))
    return table.replace_schema_metadata(
        {
            "lethe.dataset": dataset.name,
            "lethe.description": dataset.description,
            "lethe.as_of": as_of.isoformat() if as_of else "",
            "lethe.k": str(k_of(policy, dataset)),
            "lethe.policy_version": str(policy.version),
            "lethe.policy_digest": policy_digest(policy),
            "lethe.generalize": ", ".join(dataset.generalize),
        }
    )


# Where a record left out of a release is counted in the register (`_exclusion` otherwise).
_EXCLUDED = ("restricted", "held", "pseudonymized")
_STAGED = ("all", "pending", "cells", "assigned", "suppressed", "released")


def publish_plan(policy: Policy, dataset: Dataset) -> Plan:
    """Statements that replace `analytics.<dataset>` by the staged release (`release_plan`)
    and its row in the register of releases, whose counts are computed from the staged
    tables; `released_counts` reads them back."""
    table = f"{SCHEMA}.{quote(dataset.name)}"
    name = literal(dataset.name)
    labels = ", ".join(quote(c) for c in dataset.labels)
    columns = ", ".join(quote(c.name) for c in dataset.columns)
    all_records = "SELECT count(*) FROM _an_all"
    excluded = [f"({all_records} WHERE _exclusion = {literal(e)})" for e in _EXCLUDED]
    other = ", ".join(literal(r) for r in _EXCLUDED)
    counts = [
        f"(SELECT count(*) FROM {table})",
        f"({all_records} WHERE _exclusion IS NULL)",
        "(SELECT count(*) FROM _an_assigned WHERE _level > 0)",
        "(SELECT count(*) FROM _an_suppressed)",
        f"(SELECT count(*) FROM (SELECT DISTINCT {labels} FROM _an_suppressed) _cells)",
        *excluded,
        f"({all_records} WHERE _exclusion NOT IN ({other}))",
    ]
    statements = (
        f"CREATE OR REPLACE TABLE {table} AS SELECT {columns} FROM _an_released ORDER BY {labels}",
        f"DELETE FROM {RELEASES} WHERE dataset = {name}",
        f"INSERT INTO {RELEASES} SELECT {name}, now()::TIMESTAMP,"
        f" {k_of(policy, dataset)}, {', '.join(counts)}",
    )
    return Plan(f"publish {dataset.name}", statements)


def released_counts(dataset: Dataset) -> str:
    """SELECT of what the register says of the dataset's release, and its fewest subjects
    in a row: the `Release` counts, in `released` order."""
    return (
        "SELECT rows, records, generalized, suppressed, suppressed_cells, excluded_restricted,"
        " excluded_held, excluded_pseudonymized, excluded_other,"
        f" (SELECT min({quote(SUBJECTS)}) FROM {SCHEMA}.{quote(dataset.name)})"
        f" FROM {RELEASES} WHERE dataset = {literal(dataset.name)}"
    )


def drop_staged() -> Plan:
    """Statements that drop the tables `release_plan` stages."""
    return Plan("drop staged", tuple(f"DROP TABLE IF EXISTS _an_{t}" for t in _STAGED))


def write_extract(
    arrow: pa.Table, home: Home, policy: Policy, dataset: Dataset, as_of: dt.date | None
) -> Path:
    """Replace the dataset's Parquet extract by `arrow` (the released table) as
    `extract_table` shapes it; its path."""
    path = exports_dir(home) / f"{dataset.name}.parquet"
    with replacing(path) as temp_path:
        pq.write_table(extract_table(arrow, policy, dataset, as_of), temp_path)
    return path


def released(policy: Policy, dataset: Dataset, counts: tuple[Any, ...], path: Path) -> Release:
    """The `Release` of a dataset from its `released_counts` row and its extract's path."""
    rows, records, generalized, suppressed, cells, *excluded, min_subjects = counts
    return Release(
        dataset=dataset.name,
        k=k_of(policy, dataset),
        rows=int(rows),
        records=int(records),
        generalized=int(generalized),
        suppressed=int(suppressed),
        suppressed_cells=int(cells),
        excluded=dict(zip((*_EXCLUDED, "other"), map(int, excluded), strict=True)),
        min_subjects=None if min_subjects is None else int(min_subjects),
        path=path,
    )


def release(
    con: duckdb.DuckDBPyConnection,
    home: Home,
    policy: Policy,
    dataset: Dataset,
    as_of: dt.date | None = None,
) -> Release:
    """Build `analytics.<dataset>` and its Parquet extract from the enforced warehouse.

    `as_of` (the run's date; by default the latest enforcement's) is written into the
    extract's metadata."""
    try:
        for sql in release_plan(policy, dataset).statements:
            con.execute(sql)
        with transaction(con):
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            ensure_releases(con)
            for sql in publish_plan(policy, dataset).statements:
                con.execute(sql)
        counts = con.execute(released_counts(dataset)).fetchall()[0]
    finally:
        for sql in drop_staged().statements:
            con.execute(sql)
    arrow = con.sql(f"SELECT * FROM {SCHEMA}.{quote(dataset.name)}").to_arrow_table()
    path = write_extract(arrow, home, policy, dataset, as_of or _as_of(con))
    return released(policy, dataset, counts, path)


@dataclass(frozen=True)
class KCheck:
    """The k-anonymity check of a released table."""

    k: int
    rows: int
    violations: int  # rows with fewer than k subjects
    duplicates: int  # quasi-identifier combinations released more than once
    unexpected_columns: tuple[str, ...]  # columns the dataset does not declare
    min_subjects: int | None

    @property
    def passed(self) -> bool:
        return not (self.violations or self.duplicates or self.unexpected_columns)

    def describe(self) -> str:
        if self.passed:
            return f"{self.rows} rows, each with at least {self.k} subjects"
        problems = []
        if self.violations:
            problems.append(f"{self.violations} rows with fewer than {self.k} subjects")
        if self.duplicates:
            problems.append(f"{self.duplicates} quasi-identifier combinations repeated")
        if self.unexpected_columns:
            problems.append("undeclared columns: " + ", ".join(self.unexpected_columns))
        return "; ".join(problems)


class MissingReleaseError(LetheError):
    """The dataset was never released (no analytics table)."""


def check_k_anonymity(con: duckdb.DuckDBPyConnection, dataset: Dataset, k: int) -> KCheck:
    """Check the released table: every quasi-identifier combination appears once and counts
    at least k subjects, and the table holds only the declared columns."""
    present = table_columns(con, SCHEMA, dataset.name)
    return k_check(dataset, k, present, lambda sql: con.execute(sql).fetchall()[0])


def k_check(
    dataset: Dataset,
    k: int,
    present: list[str],
    row_of: Callable[[str], tuple[Any, ...]],
) -> KCheck:
    """`check_k_anonymity` of a released table whose columns are `present`, its one query
    (DuckDB dialect) run by `row_of`, which returns its one row."""
    if not present:
        raise MissingReleaseError(f"{SCHEMA}.{dataset.name} does not exist")
    declared = {c.name for c in dataset.columns}
    table = f"{SCHEMA}.{quote(dataset.name)}"
    labels = ", ".join(quote(c) for c in dataset.labels if c in present)
    subjects = quote(SUBJECTS)
    row = row_of(
        f"SELECT count(*), count(*) FILTER (WHERE {subjects} IS NULL OR {subjects} < {int(k)}),"
        f" min({subjects}), (SELECT count(*) FROM (SELECT {labels} FROM {table}"
        f" GROUP BY {labels} HAVING count(*) > 1) _repeated) FROM {table}"
    )
    rows, violations, min_subjects, duplicates = row
    return KCheck(
        k=k,
        rows=int(rows),
        violations=int(violations),
        duplicates=int(duplicates),
        unexpected_columns=tuple(c for c in present if c not in declared),
        min_subjects=None if min_subjects is None else int(min_subjects),
    )
