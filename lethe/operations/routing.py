"""Routing a landing delivery to subject shards: every row to its subject's shard.

Each landing file is read as ingest reads it (same CSV dialect, headers and value formats),
and each row's subject is found along the schema's references (`path_to_subject`): the
subject table's rows by their key's hash, a child row by its parent's shard, looked up in
this delivery first, then in earlier splits not loaded yet, then in the shards' core
tables (a parent delivered earlier). All of it is set-based: one statement per table to
route, one COPY per table and shard.

A row whose subject cannot be found (no parent anywhere, a key that is no value of its
type) goes to shard 00, whose ingest quarantines it with the usual one-line reason: no row
is dropped here. The shard files are written aside and moved into the shards' landing/
only when every shard's file of a table is written; then the delivered file is removed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

import duckdb

from lethe.declaration.policy import Policy
from lethe.declaration.schema import Schema, Table
from lethe.declaration.strategies import literal, quote
from lethe.engine.ingest import (
    IngestError,
    ValueFormats,
    landing_file,
    landing_leftovers,
    stage_file,
    typed_value,
)
from lethe.engine.warehouse import sql_type
from lethe.operations.home import Home
from lethe.operations.shards import (
    attach_shards,
    holding_shards,
    scratch,
    shard_homes,
    shard_name,
    shard_sql,
    share_key_secret,
)

UNROUTED = shard_name(0)  # where rows without a known subject go, to be quarantined


@dataclass
class Split:
    """What one split did: rows per table and shard, and the files it left in landing/
    (one line each, as ingest words a refused file)."""

    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)


def _route(table: str) -> str:
    return quote(f"_route_{table}")


def _typed_name(column: str) -> str:
    return quote(f"_typed_{column}")


def _referenced(schema: Schema, table: str) -> set[str]:
    """The columns of `table` that some reference holds (normally its key)."""
    return {
        fk.ref_column
        for t in schema.tables.values()
        for fk in t.foreign_keys
        if fk.ref_table == table
    }


def _waiting(
    con: duckdb.DuckDBPyConnection, schema: Schema, parent: Table, column: str, homes: list[Home]
) -> list[str]:
    """SELECTs of (`_ref`, `_shard`) from the parent's rows split earlier and not loaded
    yet (a shard's run that did not get to them, a split killed between two tables)."""
    parts = []
    fmt = ValueFormats.of(schema, parent)
    header = parent.column(column).header
    for home in homes:
        path = landing_file(home.landing, parent)
        if path is None or path.suffix != ".parquet":
            continue
        reader = f"read_parquet({literal(str(path))})"
        types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()}
        typed = typed_value(quote(header), parent.column(column).type, str(types[header]), fmt)
        parts.append(
            f"SELECT CAST({typed} AS {sql_type(parent, column)}) AS _ref,"
            f" {literal(home.root.name)} AS _shard, 1 AS _prio FROM {reader}"
        )
    return parts


def _parent_map(
    con: duckdb.DuckDBPyConnection,
    schema: Schema,
    table: Table,
    routed: set[str],
    shards: list[str],
    homes: list[Home],
) -> str:
    """A SELECT of (`_ref`, `_shard`): the shard of each key of the parent `table` on the
    way to the subject, from this delivery first, then from rows split earlier and waiting
    in a shard's landing/, else from the shards' core tables."""
    fk = schema.path_to_subject(table.name)[0]
    parts = []
    if fk.ref_table in routed:
        parts.append(
            f"SELECT {_typed_name(fk.ref_column)} AS _ref, _shard, 0 AS _prio"
            f" FROM {_route(fk.ref_table)}"
        )
    parts += _waiting(con, schema, schema.tables[fk.ref_table], fk.ref_column, homes)
    for alias in shards:
        parts.append(
            f"SELECT {quote(fk.ref_column)} AS _ref, {literal(alias.removeprefix('shard_'))}"
            f" AS _shard, 2 AS _prio FROM {alias}.core.{quote(fk.ref_table)}"
        )
    if not parts:
        return "SELECT NULL AS _ref, NULL AS _shard"
    return (
        f"SELECT _ref, arg_min(_shard, _prio) AS _shard FROM ({' UNION ALL '.join(parts)})"
        " WHERE _ref IS NOT NULL GROUP BY _ref"
    )


def _route_table(
    con: duckdb.DuckDBPyConnection,
    schema: Schema,
    table: Table,
    n: int,
    routed: set[str],
    shards: list[str],
    homes: list[Home],
) -> None:
    """Temp table `_route_<table>`: the staged rows, the typed columns children look their
    parent up by, and `_shard`."""
    staged = dict(zip(con.table("_stage").columns, con.table("_stage").dtypes, strict=True))
    fmt = ValueFormats.of(schema, table)

    def typed(column: str) -> str:
        expr = typed_value(
            f"s.{quote(column)}", table.column(column).type, str(staged[column]), fmt
        )
        return f"CAST({expr} AS {sql_type(table, column)})"

    extra = "".join(
        f", {typed(c)} AS {_typed_name(c)}" for c in sorted(_referenced(schema, table.name))
    )
    path = schema.path_to_subject(table.name)
    if not path:
        shard = shard_sql(f"CAST({typed(table.key)} AS VARCHAR)", n)
        join = ""
    else:
        shard = "m._shard"
        join = (
            f" LEFT JOIN ({_parent_map(con, schema, table, routed, shards, homes)}) m"
            f" ON m._ref = {typed(path[0].column)}"
        )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {_route(table.name)} AS SELECT s.*{extra},"
        f" coalesce({shard}, {literal(UNROUTED)}) AS _shard FROM _stage s{join}"
    )


def _write_shards(
    con: duckdb.DuckDBPyConnection, table: Table, homes: list[Home], staging: str
) -> dict[str, int]:
    """Write the routed rows of `table` into one Parquet file per shard under `staging`,
    with the file's own headers (rows in delivery order); rows per shard."""
    headers = {c.name: c.header for c in table.columns}
    columns = [c for c in con.table("_stage").columns if c != "_row"]
    select = ", ".join(
        f"{quote(c)} AS {quote(headers[c])}" if headers.get(c, c) != c else quote(c)
        for c in columns
    )
    counts = dict(
        con.execute(f"SELECT _shard, count(*) FROM {_route(table.name)} GROUP BY _shard").fetchall()
    )
    for home in homes:
        folder = os.path.join(staging, home.root.name)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        target = os.path.join(folder, f"{table.source.file}.parquet")
        con.execute(
            f"COPY (SELECT {select} FROM {_route(table.name)}"
            f" WHERE _shard = {literal(home.root.name)} ORDER BY _row)"
            f" TO {literal(target)} (FORMAT parquet)"
        )
    return {home.root.name: counts.get(home.root.name, 0) for home in homes}


def split_landing(home: Home, policy: Policy, n: int, wait_seconds: float = 0) -> Split:
    """Move every landing file of `home` into its shards' landing/, each row to its
    subject's shard; a file that cannot be read, or whose table still has an unloaded
    earlier split in a shard, stays in landing/ and is named in `refused`. No shard's run
    writes meanwhile (waited for up to `wait_seconds`)."""
    schema = policy.data_schema
    homes = [h.ensure() for h in shard_homes(home, n)]
    share_key_secret(homes)
    staging = home.shards / ".split"
    shutil.rmtree(staging, ignore_errors=True)  # a killed split's files
    staging.mkdir(mode=0o700, parents=True)
    result = Split(refused=[f"{home.landing / e}" for e in landing_leftovers(home.landing, schema)])
    routed: set[str] = set()
    try:
        with holding_shards(homes, wait_seconds), scratch() as con:
            shards = attach_shards(con, homes)
            for table in schema.tables.values():
                if table.source.postgres:
                    continue
                try:
                    path = landing_file(home.landing, table)
                    if path is None:
                        continue
                    waiting = [h for h in homes if landing_file(h.landing, table)]
                    if waiting:
                        result.refused.append(
                            f"{path}: {waiting[0].landing} has an earlier delivery of"
                            f" {table.name}; split after the next run loads it (file left"
                            " in landing/)"
                        )
                        continue
                    stage_file(con, path, table)
                except IngestError as exc:
                    result.refused.append(str(exc))
                    continue
                _route_table(con, schema, table, n, routed, shards, homes)
                routed.add(table.name)
                result.rows[table.name] = _write_shards(con, table, homes, str(staging))
                for shard in homes:
                    name = f"{table.source.file}.parquet"
                    os.replace(staging / shard.root.name / name, shard.landing / name)
                path.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result
