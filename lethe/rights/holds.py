"""Litigation holds placed and released from the command line.

The hold table is the one the policy's `litigation_hold` runs from: its retention anchor is
the release column, `starts_at` the placing column; the table references the subject table
directly, and its first other text column holds the reason.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import duckdb

from lethe.declaration.policy import Policy
from lethe.declaration.strategies import quote
from lethe.engine.audit import LedgerEntry, append
from lethe.engine.ddl import ensure_schemas
from lethe.engine.states import RowState
from lethe.engine.warehouse import transaction
from lethe.errors import LetheError
from lethe.rights.subjects import resolve_subject


@dataclass(frozen=True)
class HoldColumns:
    """The hold table's name and roles of its columns."""

    table: str
    key: str
    subject: str
    reason: str
    placed: str | None
    released: str


def hold_columns(policy: Policy) -> HoldColumns:
    """Where holds live, from the policy's litigation hold and the schema."""
    ret = policy.litigation_hold.retention
    table = policy.data_schema.tables[ret.table]
    subject = policy.data_schema.path_to_subject(table.name)[0].column
    placed = ret.starts_at.column if ret.starts_at else None
    roles = {table.key, subject, placed, ret.anchors[0].column}
    reason = next(c.name for c in table.columns if c.type == "text" and c.name not in roles)
    return HoldColumns(table.name, table.key, subject, reason, placed, ret.anchors[0].column)


def place_hold(con: duckdb.DuckDBPyConnection, policy: Policy, subject: str, reason: str) -> str:
    """Open a hold on a subject's rows; returns the hold id. The reason stays in the hold
    table."""
    if not reason.strip():
        raise LetheError("--reason: a hold needs a reason")
    ensure_schemas(con, policy.data_schema)
    h = hold_columns(policy)
    subject_key = resolve_subject(con, policy.data_schema, subject)
    hold_id = f"H-{uuid.uuid4().hex[:12]}"
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    columns = [h.key, h.subject, h.reason, *([h.placed] if h.placed else [])]
    values = [hold_id, subject_key, reason, *([now] if h.placed else [])]
    with transaction(con):
        con.execute(
            f"INSERT INTO core.{quote(h.table)} ({', '.join(quote(c) for c in columns)},"
            f" _state, _ingested_at) VALUES ({', '.join('?' for _ in values)},"
            f" {RowState.ACTIVE.sql}, ?)",
            [*values, now],
        )
        append(con, [_entry(h, "hold", subject_key, f"litigation hold {hold_id} placed", now)])
    return hold_id


def release_hold(con: duckdb.DuckDBPyConnection, policy: Policy, subject: str, reason: str) -> int:
    """Release every open hold of a subject (the reason is added to the hold's reason)."""
    ensure_schemas(con, policy.data_schema)
    h = hold_columns(policy)
    subject_key = resolve_subject(con, policy.data_schema, subject)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    released_at, why = quote(h.released), quote(h.reason)
    with transaction(con):
        released = con.execute(
            f"UPDATE core.{quote(h.table)} SET {released_at} = ?,"
            f" {why} = concat_ws(' | released: ', {why}, ?)"
            f" WHERE {quote(h.subject)} = ? AND ({released_at} IS NULL OR {released_at} > ?)",
            [now, reason or None, subject_key, now],
        ).fetchone()[0]
        if not released:
            raise LetheError("--subject: that subject has no open hold")
        text = f"{released} litigation hold(s) released"
        append(con, [_entry(h, "release", subject_key, text, now)])
    return released


def _entry(
    h: HoldColumns, action: str, subject_key: str, reason: str, now: dt.datetime
) -> LedgerEntry:
    return LedgerEntry(
        run_id=f"cli-{uuid.uuid4()}",
        as_of=now.date(),
        action=action,
        reason=reason,
        table_name=h.table,
        keys=[subject_key],
    )
