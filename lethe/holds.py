"""Litigation holds placed and released from the command line."""

from __future__ import annotations

import datetime as dt
import uuid

import duckdb

from lethe.audit import LedgerEntry, append
from lethe.errors import LetheError
from lethe.subjects import resolve_subject
from lethe.warehouse import ensure_schemas, transaction


def place_hold(con: duckdb.DuckDBPyConnection, subject: str, reason: str) -> str:
    """Open a hold on a subject's rows; returns the hold id. The reason stays in core.holds."""
    if not reason.strip():
        raise LetheError("--reason: a hold needs a reason")
    ensure_schemas(con)
    contact_id = resolve_subject(con, subject)
    hold_id = f"H-{uuid.uuid4().hex[:12]}"
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with transaction(con):
        con.execute(
            "INSERT INTO core.holds (hold_id, contact_id, reason, placed_at, released_at,"
            " _state, _ingested_at) VALUES (?, ?, ?, ?, NULL, 'active', ?)",
            [hold_id, contact_id, reason, now, now],
        )
        append(con, [_entry("hold", contact_id, f"litigation hold {hold_id} placed", now)])
    return hold_id


def release_hold(con: duckdb.DuckDBPyConnection, subject: str, reason: str) -> int:
    """Release every open hold of a subject (the reason is added to core.holds.reason)."""
    ensure_schemas(con)
    contact_id = resolve_subject(con, subject)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    with transaction(con):
        released = con.execute(
            "UPDATE core.holds SET released_at = ?, reason = concat_ws(' | released: ', reason, ?)"
            " WHERE contact_id = ? AND (released_at IS NULL OR released_at > ?)",
            [now, reason or None, contact_id, now],
        ).fetchone()[0]
        if not released:
            raise LetheError("--subject: that contact has no open hold")
        append(con, [_entry("release", contact_id, f"{released} litigation hold(s) released", now)])
    return released


def _entry(action: str, contact_id: str, reason: str, now: dt.datetime) -> LedgerEntry:
    return LedgerEntry(
        run_id=f"cli-{uuid.uuid4()}",
        as_of=now.date(),
        action=action,
        reason=reason,
        table_name="holds",
        keys=[contact_id],
    )
