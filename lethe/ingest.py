"""Ingest: landing files → validated core tables, bad rows → core.quarantine.

landing/ is a drop zone. A file is read, checked against the table contract, and its
good rows are upserted (by key) into `core.<table>` in one transaction together with
its quarantined rows and an ingest-log entry; then the file is removed, so erased
values do not linger in landing/. A file whose checksum is already in the ingest log
was loaded before a crash and is only removed, which keeps reruns idempotent.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from lethe.errors import LetheError
from lethe.policy import Policy
from lethe.strategies import literal, quote
from lethe.tables import TABLES, Table
from lethe.warehouse import SQL_TYPES, TAG_COLUMNS, ensure_schemas, table_columns, transaction


class IngestError(LetheError, ValueError):
    """A landing file that cannot be used at all (missing, unreadable, missing column)."""


@dataclass
class IngestResult:
    """What one ingest of one table did."""

    table: str
    source_file: str | None
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    problems: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.rows_quarantined == 0


def landing_file(landing: Path, table: Table) -> Path | None:
    """The landing file of a table (`NAME.parquet` or `NAME.csv`), or None."""
    found = [
        p for p in (landing / f"{table.name}.parquet", landing / f"{table.name}.csv") if p.exists()
    ]
    if len(found) > 1:
        raise IngestError(f"{found[0]}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# SPEC: CSV with a header row. The dialect is fixed and the header read by Python's csv
# module: DuckDB's sniffer takes a later line with more fields for the header and skips
# every row before it, or reads "'; DROP TABLE x; --" as a sign of ';'-separated fields.
_CSV = (
    "header = true, auto_detect = false, columns = ?, encoding = 'utf-8', strict_mode = true,"
    " delim = ',', quote = '\"', escape = '\"'"
)
_CSV_HINT = "expected comma-separated UTF-8 text, a header row and equally many fields per line"


def _csv_columns(path: Path) -> dict[str, str]:
    """The header row's column names, each typed VARCHAR (a UTF-8 BOM is skipped)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            header = next(csv.reader(fh), [])
    except UnicodeDecodeError:
        raise IngestError(f"{path}: not UTF-8 text (file refused, nothing loaded)") from None
    except csv.Error:
        raise IngestError(f"{path}: cannot read the header row ({_CSV_HINT})") from None
    names = [name or f"column{i}" for i, name in enumerate(header)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if not names or duplicates:
        problem = f"duplicate column names {duplicates}" if duplicates else "no header row"
        raise IngestError(f"{path}: {problem} (file refused, nothing loaded)")
    return dict.fromkeys(names, "VARCHAR")


def _csv_problem(con: duckdb.DuckDBPyConnection, path: Path, columns: dict[str, str]) -> str | None:
    """The first line DuckDB rejects and the kind of problem (never the line's content)."""
    try:
        con.execute(
            f"SELECT count(*) FROM read_csv(?, {_CSV}, store_rejects = true,"
            " rejects_table = '_rejects', rejects_scan = '_reject_scans')",
            [str(path), columns],
        ).fetchall()
        rows = con.execute(
            "SELECT line, lower(CAST(error_type AS VARCHAR)) FROM _rejects ORDER BY line LIMIT 1"
        ).fetchall()
    except duckdb.Error:
        rows = []
    finally:
        con.execute("DROP TABLE IF EXISTS _rejects")
        con.execute("DROP TABLE IF EXISTS _reject_scans")
    return f"line {rows[0][0]}: {rows[0][1]} ({_CSV_HINT})" if rows else None


_BATCH = 50_000  # rows per Arrow batch when Python reads a CSV


def _batch(rows: list[list[str]], names: list[str], first: int) -> pa.RecordBatch:
    """CSV rows as an Arrow batch: data row numbers, then text columns `names[1:]`."""
    index = pa.array(range(first, first + len(rows)), pa.int64())
    columns = zip(*rows, strict=True) if rows else ([] for _ in names[1:])
    return pa.RecordBatch.from_arrays(
        [index, *(pa.array(c, pa.string()) for c in columns)], names=names
    )


def _stage_with_python(con: duckdb.DuckDBPyConnection, path: Path, columns: dict[str, str]) -> None:
    """Stage a CSV with Python's csv module, as `_stage` does with DuckDB's reader.

    DuckDB's strict reader takes the first line end for the whole file and fails on any
    other, without a line number; Python's reads LF, CRLF and CR row ends mixed (files
    concatenated or edited by hand) and keeps line breaks inside quoted values. Used only
    when DuckDB fails without naming a line, so this per-row loop is off the usual path.
    """
    order = "_line"  # data row numbers, under a name the header does not use
    while order in columns:
        order += "_"
    names = [order, *columns]
    batches: list[pa.RecordBatch] = []
    rows: list[list[str]] = []
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, strict=True)
            next(reader)  # the header, read by _csv_columns
            for row in reader:
                if row and len(row) != len(columns):
                    more = len(row) > len(columns)
                    raise csv.Error("too many columns" if more else "missing columns")
                if row:  # an empty line is skipped, as DuckDB does
                    rows.append(row)
                if len(rows) == _BATCH:
                    batches.append(_batch(rows, names, _BATCH * len(batches) + 1))
                    rows = []
    except UnicodeDecodeError:
        raise IngestError(f"{path}: not UTF-8 text (file refused, nothing loaded)") from None
    except csv.Error as exc:
        raise IngestError(
            f"{path}: cannot read file: line {reader.line_num}: {exc} ({_CSV_HINT})"
            " (file refused, nothing loaded)"
        ) from None
    batches.append(_batch(rows, names, _BATCH * len(batches) + 1))
    con.register("_csv_rows", pa.Table.from_batches(batches))
    try:
        # Empty fields are NULL, quoted or not, as in DuckDB's reader.
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _stage AS SELECT {order} AS _row,"
            f" nullif(COLUMNS(* EXCLUDE ({order})), '') FROM _csv_rows"
        )
    finally:
        con.unregister("_csv_rows")


def _stage(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Read the file into temp table `_stage` with a 1-based `_row` (data row number)."""
    columns = _csv_columns(path) if path.suffix == ".csv" else {}
    reader = f"read_csv(?, {_CSV})" if columns else "read_parquet(?)"
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _stage AS"
            f" SELECT row_number() OVER () AS _row, * FROM {reader}",
            [str(path), columns] if columns else [str(path)],
        )
    except duckdb.Error as exc:
        # Only the first line: DuckDB's next lines quote the offending input line.
        reason = str(exc).strip().splitlines()[0][:200]
        if columns:
            problem = _csv_problem(con, path, columns)
            if problem is None:
                _stage_with_python(con, path, columns)
                return
            reason = problem
        raise IngestError(
            f"{path}: cannot read file: {reason} (file refused, nothing loaded)"
        ) from None


# Scalar types DuckDB casts to a contract type by value; any other is read as its text.
_NUMBERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "DECIMAL")
_BY_VALUE = {
    "decimal": (*_NUMBERS, *(f"U{n}" for n in _NUMBERS[:5])),
    "date": ("DATE", "TIMESTAMP"),
    "timestamp": ("DATE", "TIMESTAMP"),
}
_NESTED = {"struct", "list", "map", "array", "union"}  # DuckDB type ids of nested values


def _source(expr: str, type_: str, staged_type: str) -> str:
    """The staged column as a cast to a contract type reads it: by value within a type
    family (Parquet), otherwise its text, as a CSV value (DuckDB alone casts true to 1.00)."""
    if staged_type == "VARCHAR" or staged_type.startswith(_BY_VALUE.get(type_, ())):
        return expr
    return f"CAST({expr} AS VARCHAR)"


def _typed(expr: str, type_: str, staged_type: str) -> str:
    """Cast to a contract type; timestamps with a UTC offset are converted to UTC.

    A column the file already types as the contract does (Parquet) is taken as it is.
    """
    if staged_type == SQL_TYPES[type_]:
        return expr
    source = _source(expr, type_, staged_type)
    if type_ == "text":
        return source
    if type_ == "timestamp":
        return f"TRY_CAST(TRY_CAST({source} AS TIMESTAMPTZ) AS TIMESTAMP)"
    return f"TRY_CAST({source} AS {SQL_TYPES[type_]})"


# Dates outside this range are typos or placeholders (9999-12-31); they would be kept
# for ever and break the date types of exports.
DATE_RANGE = ("1900-01-01", "2200-01-01")
MAX_TEXT = 10_000  # characters in one value; no contact detail is longer
# C0 controls except tab, newline and carriage return; DEL; bidirectional overrides.
_CONTROL = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F\x{202A}-\x{202E}\x{2066}-\x{2069}]"
# Unicode whitespace: exactly what Python's str.isspace() accepts, so a value is blank
# here exactly when str.strip() (as `--subject` does) leaves nothing. DuckDB's trim()
# keeps tabs and line breaks.
_SPACE = (
    r"[\t-\r\x1C-\x20\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}"
    r"\x{3000}]"
)


def _problems_sql(
    table: Table, policy: Policy, fk_sources: dict[str, str], staged: dict[str, str]
) -> str:
    """One SELECT listing (row, column, reason) for every problem in `_stage`, whose
    columns have the SQL types `staged`."""
    # Every staged column (extras too) by name as data: header names never become SQL text.
    # Whole rows are screened first; only the rare suspect ones are taken apart per cell.
    suspects = (
        "SELECT _row FROM (SELECT _row, concat(*COLUMNS(* EXCLUDE (_row))) AS _all"
        " FROM (SELECT _row, CAST(COLUMNS(* EXCLUDE (_row)) AS VARCHAR) FROM _stage))"
        f" WHERE length(_all) > {MAX_TEXT} OR regexp_matches(_all, '{_CONTROL}')"
    )
    parts: list[str] = [
        f"SELECT _row, col, CASE WHEN length(v) > {MAX_TEXT}"
        f" THEN 'value too long (over {MAX_TEXT} characters)' ELSE 'control characters' END"
        " FROM (UNPIVOT (SELECT _row, CAST(COLUMNS(* EXCLUDE (_row)) AS VARCHAR) FROM _stage"
        f" WHERE _row IN ({suspects})) ON COLUMNS(* EXCLUDE (_row)) INTO NAME col VALUE v)"
        f" WHERE length(v) > {MAX_TEXT} OR regexp_matches(v, '{_CONTROL}')"
    ]
    for col in table.columns:
        c = quote(col.name)
        typed = _typed(c, col.type, staged[col.name])
        if typed != c and col.type != "text":
            kind = "unparsable date" if col.type in ("date", "timestamp") else "wrong type"
            parts.append(
                f"SELECT _row, '{col.name}' AS col, '{kind}: expected {col.type}' AS reason"
                f" FROM _stage WHERE {c} IS NOT NULL AND {typed} IS NULL"
            )
        if col.type in ("date", "timestamp"):
            low, high = DATE_RANGE
            parts.append(
                f"SELECT _row, '{col.name}', 'date out of range: expected {low} to before {high}'"
                f" FROM _stage WHERE {typed} < DATE '{low}' OR {typed} >= DATE '{high}'"
            )
        if col.type == "decimal":
            # DECIMAL(18,2) would round 10.999 silently: refuse what it cannot hold exactly.
            exact = f"TRY_CAST({_source(c, col.type, staged[col.name])} AS DECIMAL(38,10))"
            parts.append(
                f"SELECT _row, '{col.name}', 'more than 2 decimal places' FROM _stage"
                f" WHERE {typed} IS NOT NULL AND {exact} <> {typed}"
            )
        if not col.nullable:
            blank = f" OR regexp_full_match({typed}, '{_SPACE}*')" if col.type == "text" else ""
            parts.append(
                f"SELECT _row, '{col.name}', 'missing value' FROM _stage WHERE {c} IS NULL{blank}"
            )
    key = quote(table.key)
    parts.append(
        f"SELECT _row, '{table.key}', 'duplicate key (first at row ' || first_row || ')'"
        f" FROM (SELECT _row, min(_row) OVER (PARTITION BY {key}) AS first_row FROM _stage"
        f" WHERE {key} IS NOT NULL) WHERE _row > first_row"
    )
    for fk in table.foreign_keys:
        parts.append(
            f"SELECT _row, '{fk.column}', 'orphan foreign key: no {fk.ref_table}.{fk.ref_column}'"
            f" FROM _stage s WHERE s.{quote(fk.column)} IS NOT NULL AND NOT EXISTS"
            f" (SELECT 1 FROM {fk_sources[fk.ref_table]} r"
            f" WHERE r.{quote(fk.ref_column)} = CAST(s.{quote(fk.column)} AS VARCHAR))"
        )
    if table.name == "consents":
        names = ", ".join(literal(n) for n in policy.purposes)
        parts.append(
            f"SELECT _row, 'purpose', 'unknown purpose (not in the policy)' FROM _stage"
            f" WHERE purpose IS NOT NULL AND CAST(purpose AS VARCHAR) NOT IN ({names})"
        )
    for col in ("country", "billing_country"):
        if col in table.column_names:
            parts.append(
                f"SELECT _row, '{col}', 'not an ISO 3166-1 alpha-2 code' FROM _stage"
                f" WHERE {col} IS NOT NULL AND NOT regexp_full_match(CAST({col} AS VARCHAR),"
                " '[A-Z]{2}')"
            )
    return f"SELECT * FROM ({' UNION ALL '.join(parts)}) AS p(_row, col, reason)"


def _add_extra_columns(con: duckdb.DuckDBPyConnection, table: Table, extras: list[str]) -> None:
    """Carry columns the contract does not know (SPEC: extra columns are carried).

    They are kept as text: a later delivery may type the same column differently.
    """
    existing = set(table_columns(con, "core", table.name))
    for col in extras:
        if col not in existing:
            con.execute(f"ALTER TABLE core.{quote(table.name)} ADD COLUMN {quote(col)} VARCHAR")


def ingest_table(
    con: duckdb.DuckDBPyConnection, landing: Path, table_name: str, policy: Policy
) -> IngestResult:
    """Validate and load one landing file into core; see the module docstring."""
    table = TABLES[table_name]
    ensure_schemas(con)
    path = landing_file(landing, table)
    if path is None:
        loaded_before = con.execute(
            "SELECT count(*) FROM core.ingest_log WHERE table_name = ?", [table.name]
        ).fetchone()[0]
        if table.optional or loaded_before:
            return IngestResult(table.name, None, note="no new landing file")
        raise IngestError(
            f"{landing / (table.name + '.parquet')}: missing (put {table.name}.parquet or"
            f" {table.name}.csv in landing/)"
        )
    digest = _sha256(path)
    seen = con.execute(
        "SELECT count(*) FROM core.ingest_log WHERE sha256 = ? AND table_name = ?",
        [digest, table.name],
    ).fetchone()[0]
    if seen:
        path.unlink()
        return IngestResult(table.name, path.name, note="already loaded; landing file removed")

    _stage(con, path)
    stage = con.table("_stage")
    types = dict(zip(stage.columns, stage.dtypes, strict=True))
    staged = {c: str(t) for c, t in types.items()}
    missing = [c for c in table.column_names if c not in staged]
    if missing:
        raise IngestError(
            f"{path}: missing required column{'s' if len(missing) > 1 else ''} "
            + ", ".join(repr(m) for m in missing)
            + " (file refused, nothing loaded)"
        )
    # A nested value (Parquet) is no value of the contract: its text would load silently
    # (an e-mail as "{'local': ..., 'domain': ...}"), so the whole file is refused.
    nested = [
        f"{c.name!r} holds {types[c.name].id.upper()} values, expected {c.type}"
        for c in table.columns
        if types[c.name].id in _NESTED
    ]
    if nested:
        raise IngestError(
            f"{path}: column {'; column '.join(nested)} (file refused, nothing loaded)"
        )
    extras = [
        c for c in staged if c != "_row" and c not in table.column_names and c not in TAG_COLUMNS
    ]

    # Foreign keys may point at rows already in core (earlier loads).
    fk_sources = {fk.ref_table: f"core.{quote(fk.ref_table)}" for fk in table.foreign_keys}
    find_problems = _problems_sql(table, policy, fk_sources, staged)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _problems AS {find_problems}")
    typed = ", ".join(
        f"{_typed(quote(c.name), c.type, staged[c.name])} AS {quote(c.name)}" for c in table.columns
    )
    extra_sql = "".join(f", CAST({quote(c)} AS VARCHAR) AS {quote(c)}" for c in extras)
    now = "CAST(now() AS TIMESTAMP)"
    with transaction(con):
        _add_extra_columns(con, table, extras)
        con.execute(
            "INSERT INTO core.quarantine SELECT ?, ?, p._row, p.col, p.reason,"
            f" to_json(s), {now} FROM _problems p JOIN _stage s USING (_row)",
            [table.name, path.name],
        )
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _good AS SELECT {typed}{extra_sql} FROM _stage"
            " WHERE _row NOT IN (SELECT _row FROM _problems)"
        )
        key, target = quote(table.key), f"core.{quote(table.name)}"
        # A re-delivered row stays restricted: only a request lifts a restriction.
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _restricted AS SELECT {key} FROM {target}"
            f" WHERE _state = 'restricted' AND {key} IN (SELECT {key} FROM _good)"
        )
        con.execute(f"DELETE FROM {target} WHERE {key} IN (SELECT {key} FROM _good)")
        cols = [*table.column_names, *extras]
        col_list = ", ".join(quote(c) for c in cols)
        con.execute(
            f"INSERT INTO {target} ({col_list}, _state, _ingested_at)"
            f" SELECT {', '.join('g.' + quote(c) for c in cols)},"
            f" CASE WHEN r.{key} IS NULL THEN 'active' ELSE 'restricted' END, {now}"
            f" FROM _good g LEFT JOIN _restricted r ON r.{key} = g.{key}"
        )
        rows_read = con.execute("SELECT count(*) FROM _stage").fetchone()[0]
        loaded = con.execute("SELECT count(*) FROM _good").fetchone()[0]
        problems = dict(
            con.execute("SELECT reason, count(*) FROM _problems GROUP BY ALL ORDER BY 1").fetchall()
        )
        bad_rows = con.execute("SELECT count(DISTINCT _row) FROM _problems").fetchone()[0]
        examples = [
            f"row {row} column {col}: {reason}"
            for row, col, reason in con.execute(
                "SELECT _row, col, reason FROM _problems ORDER BY _row, col LIMIT 3"
            ).fetchall()
        ]
        con.execute(
            f"INSERT INTO core.ingest_log VALUES (?, ?, ?, ?, ?, ?, {now})",
            [table.name, path.name, digest, rows_read, loaded, bad_rows],
        )
    for temp in ("_stage", "_problems", "_good", "_restricted"):
        con.execute(f"DROP TABLE IF EXISTS {temp}")
    path.unlink()
    return IngestResult(table.name, path.name, rows_read, loaded, bad_rows, problems, examples)


def quarantine_summary(con: duckdb.DuckDBPyConnection, table_name: str) -> list[tuple]:
    """(source_file, row_number, column, reason) of a table's quarantined rows, first 20."""
    return con.execute(
        "SELECT source_file, row_number, column_name, reason FROM core.quarantine"
        " WHERE table_name = ? ORDER BY quarantined_at DESC, row_number LIMIT 20",
        [table_name],
    ).fetchall()
