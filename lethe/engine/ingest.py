"""Ingest: landing files → validated core tables, bad rows → core.quarantine.

landing/ is a drop zone. A file is read, checked against the table contract, and its
good rows are upserted (by key) into `core.<table>` in one transaction together with
its quarantined rows and an ingest-log entry; then the file is removed, so erased
values do not linger in landing/. A file whose checksum is already in the ingest log
was loaded before a crash and is only removed, which keeps reruns idempotent.

A row quarantined only because its parent (say, an order's contact) has not arrived yet
waits in core.quarantine and is retried on every ingest of its table: it loads once the
parent is there. A quarantined row whose key a later delivery has loaded is dropped from
the quarantine: the later row replaces it, as it would have replaced a loaded one.
A file that cannot be used is refused as a whole and left in landing/, and so is every
entry there that is not a table's file (`landing_leftovers`): both are reported, never
silently kept, and never read through a symbolic link.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from lethe.declaration.policy import Policy
from lethe.declaration.schema import CsvDialect, Schema, Table
from lethe.declaration.strategies import literal, quote
from lethe.engine.ddl import ensure_schemas
from lethe.engine.states import RowState
from lethe.engine.warehouse import (
    SQL_TYPES,
    TAG_COLUMNS,
    spill_directory,
    table_columns,
    transaction,
)
from lethe.errors import LetheError
from lethe.sources.postgres import Snapshot, SourceError, connection, label, read_batches


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
    rows_retried: int = 0  # waiting rows that loaded in this ingest
    rows_waiting: int = 0  # rows of the table in core.quarantine afterwards

    @property
    def ok(self) -> bool:
        return self.rows_quarantined == 0 and self.rows_waiting == 0


def landing_names(table: Table) -> tuple[str, ...]:
    """The names a table's landing file may have (its source's declared file name); none
    for a table read from a database."""
    if table.source.postgres:
        return ()
    return f"{table.source.file}.parquet", f"{table.source.file}.csv"


def _entry_kind(mode: int) -> str | None:
    """What a landing entry is, when it is not a regular file (links are never followed)."""
    if stat.S_ISLNK(mode):
        return "a symbolic link, never followed"
    if stat.S_ISDIR(mode):
        return "a directory"
    return None if stat.S_ISREG(mode) else "a special file"


def landing_file(landing: Path, table: Table) -> Path | None:
    """The landing file of a table (`FILE.parquet` or `FILE.csv`, FILE as its source
    declares), or None."""
    found = [landing / n for n in landing_names(table) if os.path.lexists(landing / n)]
    if len(found) > 1:
        raise IngestError(f"{found[0]}: both {found[0].name} and {found[1].name} exist; keep one")
    if not found:
        return None
    kind = _entry_kind(found[0].lstat().st_mode)
    if kind:
        raise IngestError(f"{found[0]}: is {kind} (file refused, nothing loaded)")
    return found[0]


def landing_leftovers(landing: Path, schema: Schema) -> list[str]:
    """Every entry of landing/ that is no table's file, each as `name (what it is)`.

    A table's own file name is left to its ingest; anything else (a backup copy, a name in
    the wrong case, a directory, a link) would otherwise sit under LETHE_HOME unnoticed.
    """
    expected = {n for table in schema.tables.values() for n in landing_names(table)}
    by_fold = {n.casefold(): n for n in expected}
    out = []
    for entry in sorted(landing.iterdir()) if landing.is_dir() else []:
        if entry.name in expected:
            continue
        try:
            mode = entry.lstat().st_mode
        except FileNotFoundError:
            continue  # renamed or removed since the listing (a source system's drop)
        kind = _entry_kind(mode) or "not a table's file"
        if entry.name.casefold() in by_fold:
            kind += f"; wrong case, the table file is {by_fold[entry.name.casefold()]}"
        out.append(f"{entry.name} ({kind})")
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# SPEC: CSV with a header row, written as the table's source declares (default: comma-
# separated UTF-8). The dialect is never sniffed and the header is read by Python's csv
# module: DuckDB's sniffer takes a later line with more fields for the header and skips
# every row before it, or reads "'; DROP TABLE x; --" as a sign of ';'-separated fields.
def _csv_options(dialect: CsvDialect) -> str:
    """read_csv options of a declared dialect (the file is UTF-8 by then)."""
    return (
        "header = true, auto_detect = false, columns = ?, encoding = 'utf-8',"
        f" strict_mode = true, delim = {literal(dialect.delimiter)},"
        f" quote = {literal(dialect.quote)}, escape = {literal(dialect.quote)}"
    )


_SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def _csv_hint(dialect: CsvDialect) -> str:
    separator = _SEPARATORS.get(dialect.delimiter, repr(dialect.delimiter))
    return (
        f"expected {separator}-separated {_encoding_name(dialect)} text, a header row and"
        " equally many fields per line"
    )


def _is_utf8(dialect: CsvDialect) -> bool:
    return codecs.lookup(dialect.encoding).name == "utf-8"


def _encoding_name(dialect: CsvDialect) -> str:
    return "UTF-8" if _is_utf8(dialect) else dialect.encoding


def _csv_columns(path: Path, dialect: CsvDialect) -> dict[str, str]:
    """The header row's column names, each typed VARCHAR (a UTF-8 BOM is skipped)."""
    encoding = "utf-8-sig" if _is_utf8(dialect) else dialect.encoding
    try:
        with path.open(encoding=encoding, newline="") as fh:
            reader = csv.reader(fh, delimiter=dialect.delimiter, quotechar=dialect.quote)
            header = next(reader, [])
    except UnicodeDecodeError:
        raise IngestError(
            f"{path}: not {_encoding_name(dialect)} text (file refused, nothing loaded)"
        ) from None
    except csv.Error:
        raise IngestError(f"{path}: cannot read the header row ({_csv_hint(dialect)})") from None
    names = [name or f"column{i}" for i, name in enumerate(header)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if not names or duplicates:
        problem = f"duplicate column names {duplicates}" if duplicates else "no header row"
        raise IngestError(f"{path}: {problem} (file refused, nothing loaded)")
    return dict.fromkeys(names, "VARCHAR")


def _csv_problem(
    con: duckdb.DuckDBPyConnection, text: Path, columns: dict[str, str], dialect: CsvDialect
) -> str | None:
    """The first line DuckDB rejects and the kind of problem (never the line's content)."""
    try:
        con.execute(
            f"SELECT count(*) FROM read_csv(?, {_csv_options(dialect)}, store_rejects = true,"
            " rejects_table = '_rejects', rejects_scan = '_reject_scans')",
            [str(text), columns],
        ).fetchall()
        rows = con.execute(
            "SELECT line, lower(CAST(error_type AS VARCHAR)) FROM _rejects ORDER BY line LIMIT 1"
        ).fetchall()
    except duckdb.Error:
        rows = []
    finally:
        con.execute("DROP TABLE IF EXISTS _rejects")
        con.execute("DROP TABLE IF EXISTS _reject_scans")
    return f"line {rows[0][0]}: {rows[0][1]} ({_csv_hint(dialect)})" if rows else None


_BATCH = 50_000  # rows per Arrow batch when Python reads a CSV


def _batch(rows: list[list[str]], names: list[str], first: int) -> pa.RecordBatch:
    """CSV rows as an Arrow batch: data row numbers, then text columns `names[1:]`."""
    index = pa.array(range(first, first + len(rows)), pa.int64())
    columns = zip(*rows, strict=True) if rows else ([] for _ in names[1:])
    return pa.RecordBatch.from_arrays(
        [index, *(pa.array(c, pa.string()) for c in columns)], names=names
    )


def _stage_with_python(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    text: Path,
    columns: dict[str, str],
    dialect: CsvDialect,
) -> None:
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
        with text.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(
                fh, delimiter=dialect.delimiter, quotechar=dialect.quote, strict=True
            )
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
            f"{path}: cannot read file: line {reader.line_num}: {exc} ({_csv_hint(dialect)})"
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


@contextmanager
def _as_utf8(path: Path, dialect: CsvDialect) -> Iterator[Path]:
    """The CSV as UTF-8 text: the file itself, or a private transcoded copy (DuckDB reads
    UTF-8 only) in the spill folder, removed afterwards."""
    if _is_utf8(dialect):
        yield path
        return
    folder = spill_directory()  # private; removed by the next connect if this process dies
    folder.mkdir(mode=0o700)
    copy = folder / "source.csv"
    try:
        with (
            path.open(encoding=dialect.encoding, newline="") as src,
            copy.open("x", encoding="utf-8", newline="") as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
        yield copy
    except UnicodeDecodeError:
        raise IngestError(
            f"{path}: not {dialect.encoding} text (file refused, nothing loaded)"
        ) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def stage_file(con: duckdb.DuckDBPyConnection, path: Path, table: Table) -> None:
    """Read the file into temp table `_stage` with a 1-based `_row` (data row number) and
    the declared columns under their own names (read from their `from` headers)."""
    if path.suffix == ".csv":
        dialect = table.source.csv
        columns = _csv_columns(path, dialect)
        with _as_utf8(path, dialect) as text:
            _stage_csv(con, path, text, columns, dialect)
    else:
        try:
            _stage_parquet(con, path)
        except duckdb.Error as exc:
            # Only the first line: DuckDB's next lines may quote the input.
            reason = str(exc).strip().splitlines()[0][:200]
            raise IngestError(
                f"{path}: cannot read file: {reason} (file refused, nothing loaded)"
            ) from None
    _name_columns(con, path, table)


def _stage_parquet(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    # The reader's own row numbers cost less than a window over every row; a file with a
    # column of that name is numbered by the window.
    columns = con.execute("SELECT name FROM parquet_schema(?)", [str(path)]).fetchall()
    if ("file_row_number",) in columns:
        _read_into_stage(con, "read_parquet(?)", [str(path)])
        return
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _stage AS SELECT file_row_number + 1 AS _row,"
        " * EXCLUDE (file_row_number) FROM read_parquet(?, file_row_number = true)",
        [str(path)],
    )


def _read_into_stage(con: duckdb.DuckDBPyConnection, reader: str, params: list) -> None:
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _stage AS SELECT row_number() OVER () AS _row, *"
        f" FROM {reader}",
        params,
    )


def _stage_csv(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    text: Path,
    columns: dict[str, str],
    dialect: CsvDialect,
) -> None:
    try:
        _read_into_stage(con, f"read_csv(?, {_csv_options(dialect)})", [str(text), columns])
    except duckdb.Error as exc:
        # Only the first line: DuckDB's next lines quote the offending input line.
        reason = str(exc).strip().splitlines()[0][:200]
        problem = _csv_problem(con, text, columns, dialect)
        if problem is None:
            _stage_with_python(con, path, text, columns, dialect)
            return
        raise IngestError(
            f"{path}: cannot read file: {problem or reason} (file refused, nothing loaded)"
        ) from None


def _name_columns(con: duckdb.DuckDBPyConnection, path: Path, table: Table) -> None:
    """Rename each declared column's `from` header to the column's name (metadata only)."""
    staged = set(con.table("_stage").columns)
    renamed = [c for c in table.columns if c.header != c.name]
    missing = [f"{c.header!r} (for {c.name})" for c in renamed if c.header not in staged]
    if missing:
        raise IngestError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
            " (file refused, nothing loaded)"
        )
    taken = sorted(staged & {c.name for c in renamed} - {c.header for c in renamed})
    if taken:
        raise IngestError(
            f"{path}: column {taken[0]!r} is also the name a declared column is read into"
            " (file refused, nothing loaded)"
        )
    # Two steps, so headers that swap names never collide.
    for i, c in enumerate(renamed):
        con.execute(f"ALTER TABLE _stage RENAME COLUMN {quote(c.header)} TO _lethe_{i}")
    for i, c in enumerate(renamed):
        con.execute(f"ALTER TABLE _stage RENAME COLUMN _lethe_{i} TO {quote(c.name)}")


# Scalar types DuckDB casts to a contract type by value; any other is read as its text.
_SIGNED = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE", "DECIMAL")
_NUMBERS = (*_SIGNED, *(f"U{n}" for n in _SIGNED[:5]))
_BY_VALUE = {
    "integer": _NUMBERS,
    "decimal": _NUMBERS,
    "date": ("DATE", "TIMESTAMP"),
    "timestamp": ("DATE", "TIMESTAMP"),
    "boolean": ("BOOLEAN",),
}
# Staged types whose values cast to text hold no control character and are never long.
_NOT_TEXT = (*_NUMBERS, "DATE", "TIME", "BOOLEAN", "UUID", "INTERVAL")
_NESTED = {"struct", "list", "map", "array", "union"}  # DuckDB type ids of nested values
_OFFSET = r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"  # a timestamp text that names its UTC offset


@dataclass(frozen=True)
class ValueFormats:
    """How a source writes its values: decimal separator, date and timestamp formats
    (None: ISO 8601) and the zone of its naive timestamps."""

    decimal: str = "."
    date: str | None = None
    timestamp: str | None = None
    timezone: str = "UTC"

    @classmethod
    def of(cls, schema: Schema, table: Table) -> ValueFormats:
        source = table.source
        return cls(
            source.csv.decimal, source.formats.date, source.formats.timestamp, schema.timezone
        )

    def describe(self, type_: str) -> str:
        """What a value of `type_` is expected to look like (for quarantine reasons)."""
        fmt = {"date": self.date, "timestamp": self.timestamp}.get(type_)
        return f"{type_} ({fmt})" if fmt else type_


ISO = ValueFormats()


def _by_value(type_: str, staged_type: str) -> bool:
    """Whether a staged column is cast to a contract type by value (a Parquet column of
    the same type family) rather than read as text, as a CSV value is."""
    return staged_type != "VARCHAR" and staged_type.startswith(_BY_VALUE.get(type_, ()))


def _source(expr: str, type_: str, staged_type: str) -> str:
    """The staged column as a cast to a contract type reads it: by value within a type
    family (Parquet), otherwise its text, as a CSV value (DuckDB alone casts true to 1.00)."""
    if staged_type == "VARCHAR" or _by_value(type_, staged_type):
        return expr
    return f"CAST({expr} AS VARCHAR)"


def _number(source: str, text: bool, fmt: ValueFormats) -> str:
    """A number's text with a decimal point, whatever separator the source writes."""
    if text and fmt.decimal != ".":
        # A point is no decimal separator there (it may group thousands): it fails the cast.
        return f"replace(replace({source}, '.', 'x'), {literal(fmt.decimal)}, '.')"
    return source


def _to_utc(local: str, fmt: ValueFormats) -> str:
    """A naive timestamp in the source's zone as a naive UTC timestamp."""
    if fmt.timezone == "UTC":
        return local
    return f"timezone('UTC', timezone({literal(fmt.timezone)}, {local}))"


def _timestamp(source: str, staged_type: str, fmt: ValueFormats) -> str:
    if _by_value("timestamp", staged_type):
        # Parquet: TIMESTAMP WITH TIME ZONE is an instant; a naive one is local time.
        cast = f"CAST({source} AS TIMESTAMP)"
        return cast if "WITH TIME ZONE" in staged_type else _to_utc(cast, fmt)
    if fmt.timestamp:
        parsed = f"TRY_STRPTIME({source}, {literal(fmt.timestamp)})"
        if "%z" in fmt.timestamp or "%Z" in fmt.timestamp:
            return f"CAST({parsed} AS TIMESTAMP)"
        return _to_utc(parsed, fmt)
    with_offset = f"TRY_CAST(TRY_CAST({source} AS TIMESTAMPTZ) AS TIMESTAMP)"
    if fmt.timezone == "UTC":
        return with_offset
    return (
        f"CASE WHEN regexp_matches({source}, '{_OFFSET}') THEN {with_offset}"
        f" ELSE {_to_utc(f'TRY_CAST({source} AS TIMESTAMP)', fmt)} END"
    )


def typed_value(expr: str, type_: str, staged_type: str, fmt: ValueFormats = ISO) -> str:
    """Cast to a contract type as the source writes it: decimal separator, date and time
    formats; timestamps end up naive UTC (from a UTC offset, or the source's zone).

    A column the file already types as the contract does (Parquet) is taken as it is.
    """
    if staged_type == SQL_TYPES[type_] and (type_ != "timestamp" or fmt.timezone == "UTC"):
        return expr
    source = _source(expr, type_, staged_type)
    if type_ == "text":
        return source
    if type_ == "timestamp":
        return _timestamp(source, staged_type, fmt)
    text = not _by_value(type_, staged_type)
    if type_ == "date" and fmt.date and text:
        return f"CAST(TRY_STRPTIME({source}, {literal(fmt.date)}) AS DATE)"
    if type_ in ("decimal", "integer"):
        source = _number(source, text, fmt)
    return f"TRY_CAST({source} AS {SQL_TYPES[type_]})"


# Columns of this data category hold ISO 3166-1 alpha-2 country codes.
COUNTRY = "user.contact.address.country"
# Dates outside this range are typos or placeholders (9999-12-31); they would be kept
# for ever and break the date types of exports.
DATE_RANGE = ("1900-01-01", "2200-01-01")
MAX_TEXT = 10_000  # characters in one value; no contact detail is longer
ORPHAN = "orphan foreign key"  # the reason a row waits in quarantine for its parent
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
    table: Table,
    policy: Policy,
    fk_sources: dict[str, str],
    staged: dict[str, str],
    fmt: ValueFormats = ISO,
) -> str:
    """One SELECT listing (row, column, reason) for every problem in `_stage`, whose
    columns have the SQL types `staged` and values written as `fmt` says."""
    # Every staged column (extras too) by name as data: header names never become SQL text.
    # Whole rows are screened first; only the rare suspect ones are taken apart per cell.
    # A contract column the file types as a number, date or boolean holds no text to
    # screen, and its cast to text would be most of the screen's work.
    untexted = [quote(c.name) for c in table.columns if staged[c.name].startswith(_NOT_TEXT)]
    parts: list[str] = []
    if len(staged) > 1 + len(untexted):
        text = f"CAST(COLUMNS(* EXCLUDE ({', '.join(['_row', *untexted])})) AS VARCHAR)"
        suspects = (
            "SELECT _row FROM (SELECT _row, concat(*COLUMNS(* EXCLUDE (_row))) AS _all"
            f" FROM (SELECT _row, {text} FROM _stage))"
            f" WHERE length(_all) > {MAX_TEXT} OR regexp_matches(_all, '{_CONTROL}')"
        )
        parts.append(
            f"SELECT _row, col, CASE WHEN length(v) > {MAX_TEXT}"
            f" THEN 'value too long (over {MAX_TEXT} characters)' ELSE 'control characters' END"
            f" FROM (UNPIVOT (SELECT _row, {text} FROM _stage WHERE _row IN ({suspects}))"
            " ON COLUMNS(* EXCLUDE (_row)) INTO NAME col VALUE v)"
            f" WHERE length(v) > {MAX_TEXT} OR regexp_matches(v, '{_CONTROL}')"
        )
    for col in table.columns:
        c = quote(col.name)
        typed = typed_value(c, col.type, staged[col.name], fmt)
        if typed != c and col.type != "text":
            kind = "unparsable date" if col.type in ("date", "timestamp") else "wrong type"
            reason = literal(f"{kind}: expected {fmt.describe(col.type)}")
            parts.append(
                f"SELECT _row, '{col.name}' AS col, {reason} AS reason"
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
            text = not _by_value(col.type, staged[col.name])
            number = _number(_source(c, col.type, staged[col.name]), text, fmt)
            exact = f"TRY_CAST({number} AS DECIMAL(38,10))"
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
    # Grouping by key finds the few repeated keys; a window would sort every row.
    parts.append(
        f"SELECT s._row, '{table.key}', 'duplicate key (first at row ' || d.first_row || ')'"
        f" FROM _stage s JOIN (SELECT {key}, min(_row) AS first_row FROM _stage"
        f" WHERE {key} IS NOT NULL GROUP BY {key} HAVING count(*) > 1) d ON s.{key} = d.{key}"
        " WHERE s._row > d.first_row"
    )
    for fk in table.foreign_keys:
        column = table.column(fk.column)
        value = typed_value(f"s.{quote(fk.column)}", column.type, staged[fk.column], fmt)
        parts.append(
            f"SELECT _row, '{fk.column}', '{ORPHAN}: no {fk.ref_table}.{fk.ref_column}'"
            f" FROM _stage s WHERE s.{quote(fk.column)} IS NOT NULL AND NOT EXISTS"
            f" (SELECT 1 FROM {fk_sources[fk.ref_table]} r"
            f" WHERE r.{quote(fk.ref_column)} = {value})"
        )
    names = ", ".join(literal(n) for n in policy.purposes)
    for col in policy.purpose_columns(table.name):
        c = quote(col)
        parts.append(
            f"SELECT _row, {literal(col)}, 'unknown purpose (not in the policy)' FROM _stage"
            f" WHERE {c} IS NOT NULL AND CAST({c} AS VARCHAR) NOT IN ({names})"
        )
    for col in table.columns:
        if col.category == COUNTRY:
            c = quote(col.name)
            parts.append(
                f"SELECT _row, {literal(col.name)}, 'not an ISO 3166-1 alpha-2 code' FROM _stage"
                f" WHERE {c} IS NOT NULL AND NOT regexp_full_match(CAST({c} AS VARCHAR),"
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
    """Retry the table's waiting rows, then validate and load its landing file, if any.

    See the module docstring. Raises IngestError for a file that cannot be used (or a
    required table that never arrived); the waiting rows are retried all the same.
    """
    table = policy.data_schema.tables[table_name]
    ensure_schemas(con, policy.data_schema)
    retried = _retry_waiting(con, table, policy)
    result = _ingest_file(con, landing, table, policy)
    result.rows_retried = retried
    result.rows_waiting = waiting_rows(con, table.name)
    return result


def waiting_rows(con: duckdb.DuckDBPyConnection, table_name: str) -> int:
    """How many rows of a table are in core.quarantine (a row may have several problems)."""
    return con.execute(
        "SELECT count(*) FROM (SELECT DISTINCT source_file, row_number, quarantined_at"
        " FROM core.quarantine WHERE table_name = ?)",
        [table_name],
    ).fetchone()[0]


def _ingest_file(
    con: duckdb.DuckDBPyConnection, landing: Path, table: Table, policy: Policy
) -> IngestResult:
    if table.source.postgres:
        return _ingest_postgres(con, table, policy)
    path = landing_file(landing, table)
    if path is None:
        loaded_before = con.execute(
            "SELECT count(*) FROM core.ingest_log WHERE table_name = ?", [table.name]
        ).fetchone()[0]
        if table.optional or loaded_before:
            return IngestResult(table.name, None, note="no new landing file")
        file = table.source.file
        raise IngestError(
            f"{landing / (file + '.parquet')}: missing (put {file}.parquet or"
            f" {file}.csv in landing/)"
        )
    digest = _sha256(path)
    seen = con.execute(
        "SELECT count(*) FROM core.ingest_log WHERE sha256 = ? AND table_name = ?",
        [digest, table.name],
    ).fetchone()[0]
    if seen:
        path.unlink()
        return IngestResult(table.name, path.name, note="already loaded; landing file removed")

    stage_file(con, path, table)
    result = _load_stage(con, table, policy, str(path), path.name, digest)
    path.unlink()
    return result


def _ingest_postgres(con: duckdb.DuckDBPyConnection, table: Table, policy: Policy) -> IngestResult:
    """Read the table's PostgreSQL source (from its high-water mark, if incremental) into
    `_stage` batch by batch, then validate and load it as a file would be.

    A source that cannot be read (wrong DSN, missing table or column, a type the
    declaration cannot take, the server going away) raises IngestError naming it; nothing
    is loaded and the mark stays, so the next run reads the same rows again.
    """
    pg = table.source.postgres
    assert pg is not None
    since = source_mark(con, table.name)
    snapshot = Snapshot()
    order = "_row"
    columns = ", ".join(f"{quote(c)} VARCHAR" for c in table.column_names)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _stage ({order} BIGINT, {columns})")
    first = 1
    try:
        with connection(pg, label(table)) as source:
            for batch in read_batches(source, table, since, snapshot):
                rows = pa.array(range(first, first + batch.num_rows), pa.int64())
                con.register(
                    "_batch",
                    pa.RecordBatch.from_arrays(
                        [rows, *batch.columns], [order, *batch.schema.names]
                    ),
                )
                try:
                    con.execute("INSERT INTO _stage SELECT * FROM _batch")
                finally:
                    con.unregister("_batch")
                first += batch.num_rows
    except SourceError as exc:
        _drop_temp(con)
        raise IngestError(str(exc)) from None
    _drop_known(con, table)
    name = f"postgres:{pg.table}"

    def remember(con: duckdb.DuckDBPyConnection) -> None:
        if pg.incremental and snapshot.high_water is not None:
            con.execute(
                "INSERT OR REPLACE INTO core.source_marks VALUES (?, ?, ?, ?, now())",
                [table.name, name, pg.incremental, snapshot.high_water],
            )

    return _load_stage(con, table, policy, label(table), name, None, remember)


def _drop_known(con: duckdb.DuckDBPyConnection, table: Table) -> None:
    """Drop from `_stage` the source rows that hold what the warehouse holds already: rows
    unchanged since they were loaded (or since Lethe carried a request's changes to them:
    an invoice whose buyer is a vault token), and the rows Lethe anonymized at the source
    (the warehouse keeps its own anonymized copy of each)."""
    key, target = quote(table.key), f"core.{quote(table.name)}"
    same = " AND ".join(
        f"CAST(c.{quote(c.name)} AS VARCHAR) IS NOT DISTINCT FROM s.{quote(c.name)}"
        for c in table.columns
    )
    con.execute(
        f"DELETE FROM _stage s WHERE s.{key} IN (SELECT row_key FROM core.source_anonymized"
        f" WHERE table_name = ?) OR EXISTS (SELECT 1 FROM {target} c WHERE {same})",
        [table.name],
    )


def source_mark(con: duckdb.DuckDBPyConnection, table_name: str) -> str | None:
    """The incremental column's highest value read so far from a table's source (text)."""
    rows = con.execute(
        "SELECT high_water FROM core.source_marks WHERE table_name = ?", [table_name]
    ).fetchall()
    return rows[0][0] if rows else None


def _load_stage(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    policy: Policy,
    path: str,
    source_name: str,
    digest: str | None,
    also: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
) -> IngestResult:
    """Validate `_stage` (read from `path`, named `source_name` in the quarantine and the
    ingest log) and load its good rows, in one transaction with `also`."""
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
        f"{c.name!r} has {types[c.name].id.upper()} values, expected {c.type}"
        for c in table.columns
        if types[c.name].id in _NESTED
    ]
    if nested:
        raise IngestError(
            f"{path}: column {'; column '.join(nested)} (file refused, nothing loaded)"
        )
    extras = _extras(table, staged)

    # Foreign keys may point at rows already in core (earlier loads).
    fk_sources = {fk.ref_table: f"core.{quote(fk.ref_table)}" for fk in table.foreign_keys}
    fmt = ValueFormats.of(policy.data_schema, table)
    find_problems = _problems_sql(table, policy, fk_sources, staged, fmt)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _problems AS {find_problems}")
    with transaction(con):
        con.execute(
            "INSERT INTO core.quarantine SELECT ?, ?, p._row, p.col, p.reason,"
            f" to_json(s), {_NOW} FROM _problems p JOIN _stage s USING (_row)",
            [table.name, source_name],
        )
        _load_good(con, table, staged, extras, fmt)
        _drop_replaced(con, table)
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
            f"INSERT INTO core.ingest_log VALUES (?, ?, ?, ?, ?, ?, {_NOW})",
            [table.name, source_name, digest, rows_read, loaded, bad_rows],
        )
        if also is not None:
            also(con)
    _drop_temp(con)
    return IngestResult(table.name, source_name, rows_read, loaded, bad_rows, problems, examples)


_NOW = "CAST(now() AS TIMESTAMP)"  # the transaction's start: one time for all its rows


def _extras(table: Table, staged: dict[str, str]) -> list[str]:
    """Staged columns the contract does not know (Lethe's own tag columns are ignored)."""
    return [
        c for c in staged if c != "_row" and c not in table.column_names and c not in TAG_COLUMNS
    ]


def _load_good(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    staged: dict[str, str],
    extras: list[str],
    fmt: ValueFormats,
) -> None:
    """Upsert by key the `_stage` rows without `_problems` (the view `_good`)."""
    typed = ", ".join(
        f"{typed_value(quote(c.name), c.type, staged[c.name], fmt)} AS {quote(c.name)}"
        for c in table.columns
    )
    extra_sql = "".join(f", CAST({quote(c)} AS VARCHAR) AS {quote(c)}" for c in extras)
    _add_extra_columns(con, table, extras)
    # A view: the key lookups below read only the key, and the rows are typed once, as
    # they are written.
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW _good AS SELECT {typed}{extra_sql} FROM _stage"
        " WHERE _row NOT IN (SELECT _row FROM _problems)"
    )
    key, target = quote(table.key), f"core.{quote(table.name)}"
    # A re-delivered row stays restricted: only a request lifts a restriction.
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _restricted AS SELECT {key} FROM {target}"
        f" WHERE _state = {RowState.RESTRICTED.sql} AND {key} IN (SELECT {key} FROM _good)"
    )
    con.execute(f"DELETE FROM {target} WHERE {key} IN (SELECT {key} FROM _good)")
    cols = [*table.column_names, *extras]
    col_list = ", ".join(quote(c) for c in cols)
    con.execute(
        f"INSERT INTO {target} ({col_list}, _state, _ingested_at)"
        f" SELECT {', '.join('g.' + quote(c) for c in cols)},"
        f" CASE WHEN r.{key} IS NULL THEN {RowState.ACTIVE.sql} ELSE {RowState.RESTRICTED.sql}"
        f" END, {_NOW}"
        f" FROM _good g LEFT JOIN _restricted r ON r.{key} = g.{key}"
    )


def _drop_temp(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("DROP VIEW IF EXISTS _good")
    for temp in ("_stage", "_problems", "_restricted", "_waiting"):
        con.execute(f"DROP TABLE IF EXISTS {temp}")


def _drop_replaced(con: duckdb.DuckDBPyConnection, table: Table) -> None:
    """Drop quarantined rows whose key a later delivery has loaded: that row replaced them.

    A row quarantined in the same delivery (same time) stays: it is a problem of that file.
    """
    if not waiting_rows(con, table.name):
        return
    key = "/" + table.key.replace("~", "~0").replace("/", "~1")  # a JSON pointer
    con.execute(
        "DELETE FROM core.quarantine q WHERE q.table_name = ? AND EXISTS (SELECT 1"
        f" FROM core.{quote(table.name)} c WHERE CAST(c.{quote(table.key)} AS VARCHAR)"
        " = json_extract_string(q.record, ?) AND c._ingested_at > q.quarantined_at)",
        [table.name, key],
    )


def _retry_waiting(con: duckdb.DuckDBPyConnection, table: Table, policy: Policy) -> int:
    """Load the table's rows that wait in quarantine for a parent that has arrived since.

    Only rows whose every problem is an orphan foreign key are retried, revalidated in full;
    the newest delivery of a key wins. Returns how many loaded.
    """
    waiting = con.execute(
        "SELECT count(*) FROM core.quarantine WHERE table_name = ? AND starts_with(reason, ?)",
        [table.name, ORPHAN],
    ).fetchone()[0]
    if not waiting:
        return 0
    with transaction(con):
        _drop_replaced(con, table)  # never let an older waiting row overwrite a later one
        # Numbered newest first: the duplicate-key rule keeps the first row of a key.
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _waiting AS SELECT row_number() OVER"
            " (ORDER BY quarantined_at DESC, source_file, row_number) AS _row, source_file,"
            " row_number, quarantined_at, any_value(record) AS record FROM core.quarantine"
            " WHERE table_name = ? GROUP BY source_file, row_number, quarantined_at"
            " HAVING bool_and(starts_with(reason, ?))",
            [table.name, ORPHAN],
        )
        names = [
            n
            for (n,) in con.execute(
                "SELECT DISTINCT unnest(json_keys(record)) FROM _waiting ORDER BY 1"
            ).fetchall()
            if n != "_row"
        ]
        if any(c not in names for c in table.column_names):
            return 0  # kept from before a contract change: they wait for a new delivery
        # Each record back as text columns, as a CSV delivery would stage them; the column
        # names travel as a bound JSON value, never as SQL text.
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _stage AS SELECT _row, unnest(from_json(record, ?))"
            " FROM _waiting",
            [json.dumps(dict.fromkeys(names, "VARCHAR"))],
        )
        staged = {n: "VARCHAR" for n in names}
        fk_sources = {fk.ref_table: f"core.{quote(fk.ref_table)}" for fk in table.foreign_keys}
        fmt = ValueFormats.of(policy.data_schema, table)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _problems AS"
            f" {_problems_sql(table, policy, fk_sources, staged, fmt)}"
        )
        _load_good(con, table, staged, _extras(table, staged), fmt)
        con.execute(
            "DELETE FROM core.quarantine q USING _waiting w WHERE q.table_name = ?"
            " AND q.source_file = w.source_file AND q.row_number = w.row_number"
            " AND q.quarantined_at = w.quarantined_at"
            " AND w._row NOT IN (SELECT _row FROM _problems)",
            [table.name],
        )
        _drop_replaced(con, table)
        loaded = con.execute("SELECT count(*) FROM _good").fetchone()[0]
    _drop_temp(con)
    return loaded


def quarantine_summary(con: duckdb.DuckDBPyConnection, table_name: str) -> list[tuple]:
    """(source_file, row_number, column, reason) of a table's quarantined rows, first 20."""
    return con.execute(
        "SELECT source_file, row_number, column_name, reason FROM core.quarantine"
        " WHERE table_name = ? ORDER BY quarantined_at DESC, row_number LIMIT 20",
        [table_name],
    ).fetchall()
