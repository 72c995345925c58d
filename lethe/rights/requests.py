"""Data-subject requests (GDPR Art. 15-21): intake, deadlines and the set-based steps.

A request is recorded with its deadline (one calendar month; extendable once by two
months with a reason). The pipeline then carries out every pending request together:

- before tagging (`apply_pending`): rectification, objection and restriction change the
  core tables; erasure registers the subject in `requests.erasures`, which makes tagging
  drop every purpose that does not survive erasure, so the enforcement rewrite that
  follows erases the subject physically in the same single pass as retention;
- after enforcement (`lethe.rights.answers`): access and portability exports, erasure answers.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import duckdb

from lethe.declaration.duration import Duration
from lethe.declaration.policy import Policy, Purpose
from lethe.declaration.schema import Schema, Table
from lethe.declaration.strategies import literal, quote
from lethe.engine.audit import LedgerEntry, append
from lethe.engine.ddl import ensure_schemas
from lethe.engine.ingest import COUNTRY
from lethe.engine.plan import timestamp_literal
from lethe.engine.reach import reach, subject_in
from lethe.engine.states import RowState
from lethe.engine.vault import attach
from lethe.engine.warehouse import SQL_TYPES, has_table, transaction
from lethe.errors import LetheError
from lethe.rights.subject_keys import reveal_keys, subject_token_kinds
from lethe.rights.subjects import (
    EMAIL,
    email_column,
    email_key,
    resolve_subject,
    subjects_with_email,
)

RequestType = Literal[
    "access", "portability", "erasure", "rectification", "restriction", "objection"
]
REQUEST_TYPES: tuple[str, ...] = get_args(RequestType)
DEADLINE = Duration.parse("1m")
# Art. 12(3): "extended by two further months": three months from receipt in all.
EXTENDED_DEADLINE = Duration.parse("1m + 2m")
# Categories of the subject table's name parts, and of the columns holding a full name
# ("first last") elsewhere, which a rectified name part must change too.
FIRST_NAME, LAST_NAME, FULL_NAME = "user.name.first", "user.name.last", "user.name"
# A subject corrects what is said about them, not what the system records (`system.*`) or
# observes (`user.behavior*`); nor the key that identifies them.
_NOT_RECTIFIABLE = ("system", "user.behavior")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BY_CATEGORY: dict[str, tuple[re.Pattern[str], str]] = {
    EMAIL: (re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+"), "an e-mail address"),
    COUNTRY: (re.compile(r"[A-Z]{2}"), "an ISO 3166-1 alpha-2 code"),
}
_BY_TYPE: dict[str, tuple[re.Pattern[str], str]] = {
    "date": (re.compile(r"\d{4}-\d{2}-\d{2}"), "a date YYYY-MM-DD"),
    "timestamp": (
        re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2})?"),
        "a timestamp YYYY-MM-DD HH:MM[:SS]",
    ),
    "integer": (re.compile(r"-?\d{1,18}"), "an integer"),
    "decimal": (re.compile(r"-?\d{1,16}(\.\d{1,2})?"), "a decimal number like 1234.50"),
    "boolean": (re.compile(r"true|false"), "true or false"),
}


class RequestError(LetheError):
    """A request that cannot be recorded or changed as asked."""


def subject_tables(policy: Policy) -> list[str]:
    """The tables a subject's rights reach, in load order: every declared table except
    the litigation-hold table (holds are the controller's, not the subject's data)."""
    return [t for t in policy.data_schema.tables if t != policy.hold_table]


def _is(column_category: str, category: str) -> bool:
    return column_category == category or column_category.startswith(category + ".")


def rectifiable_columns(schema: Schema) -> list[str]:
    """Columns of the subject table a subject may have corrected: all but the key and what
    the system records or observes (categories `system.*`, `user.behavior*`)."""
    subject = schema.subject_table
    return [
        c.name
        for c in subject.columns
        if c.name != subject.key and not any(_is(c.category, n) for n in _NOT_RECTIFIABLE)
    ]


def _check_change(schema: Schema, column: str, value: str) -> None:
    """Refuse a correction of `column` to `value`; the message never echoes the value."""
    allowed = rectifiable_columns(schema)
    if column not in allowed:
        raise RequestError(
            f"--set {column!r}: not a column that can be rectified (one of {', '.join(allowed)})"
        )
    if not value or len(value) > 1000 or _CONTROL.search(value):
        raise RequestError(f"--set {column}: empty, too long or with control characters")
    declared = schema.subject_table.column(column)
    for check in (_BY_CATEGORY.get(declared.category), _BY_TYPE.get(declared.type)):
        if check and not check[0].fullmatch(value):
            raise RequestError(f"--set {column}: the value is not {check[1]}")
    parse = {"date": dt.date.fromisoformat, "timestamp": dt.datetime.fromisoformat}
    try:
        parse.get(declared.type, str)(value)
    except ValueError:
        raise RequestError(f"--set {column}: not a valid calendar date") from None


def email_taken(
    con: duckdb.DuckDBPyConnection, schema: Schema, subject_key: str, changes: dict[str, str]
) -> bool:
    """Whether the rectification gives the subject another subject's e-mail address.

    An e-mail finds its subject (`--subject`), so it must stay one subject's: compared
    with the same key as that lookup (any normalization and letter case).
    """
    column = email_column(schema)
    address = changes.get(column) if column else None
    return address is not None and bool(
        subjects_with_email(con, schema, address, other_than=subject_key)
    )


@dataclass(frozen=True)
class Request:
    """A recorded request (no personal values: the subject is its key)."""

    request_id: str
    type: str
    subject_key: str
    received_at: dt.datetime
    deadline: dt.datetime
    status: str
    extended: bool


def parse_changes(schema: Schema, pairs: list[str]) -> dict[str, str]:
    """`col=value` pairs of a rectification, validated; the message never echoes a value."""
    if not pairs:
        raise RequestError("rectification needs at least one --set column=value")
    changes: dict[str, str] = {}
    for pair in pairs:
        column, sep, value = pair.partition("=")
        column = column.strip()
        if not sep:
            raise RequestError(f"--set {column!r}: expected column=value")
        value = value.strip()
        _check_change(schema, column, value)
        changes[column] = value
    return changes


def deadline_for(received_at: dt.datetime) -> dt.datetime:
    """One calendar month after receipt (31 Jan → 28/29 Feb)."""
    return DEADLINE.add_to(received_at)  # type: ignore[return-value]


def record_request(
    con: duckdb.DuckDBPyConnection,
    schema: Schema,
    type_: str,
    subject: str,
    changes: dict[str, str] | None = None,
    reason: str | None = None,
    now: dt.datetime | None = None,
) -> Request:
    """Record a request for a known subject; an unknown subject records nothing."""
    if type_ not in REQUEST_TYPES:
        raise RequestError(f"unknown request type {type_!r} (one of {', '.join(REQUEST_TYPES)})")
    if type_ == "rectification" and not changes:
        raise RequestError("rectification needs at least one --set column=value")
    if changes and type_ != "rectification":
        raise RequestError("--set applies to rectification requests only")
    for column, value in (changes or {}).items():
        _check_change(schema, column, value)
    ensure_schemas(con)
    subject_key = resolve_subject(con, schema, subject)
    if changes and email_taken(con, schema, subject_key, changes):
        raise RequestError(
            f"--set {email_column(schema)}: another subject has that e-mail address;"
            " an e-mail must identify one subject"
        )
    received = (now or dt.datetime.now(dt.UTC)).replace(tzinfo=None)
    request = Request(
        f"R-{uuid.uuid4().hex[:12]}",
        type_,
        subject_key,
        received,
        deadline_for(received),
        "pending",
        False,
    )
    with transaction(con):
        con.execute(
            "INSERT INTO requests.requests (request_id, type, subject_key, received_at,"
            " deadline, status, reason, changes) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            [
                request.request_id,
                type_,
                subject_key,
                received,
                request.deadline,
                reason,
                json.dumps(changes) if changes else None,
            ],
        )
        append(con, [_entry(request, "request", f"{type_} request received")])
    return request


def extend_request(con: duckdb.DuckDBPyConnection, request_id: str, reason: str) -> Request:
    """Extend a pending request's deadline by two months, once, with a recorded reason."""
    if not reason or not reason.strip():
        raise RequestError("--reason: an extension needs a reason")
    request = get_request(con, request_id)
    if request.status != "pending":
        raise RequestError(f"{request_id}: is {request.status}, only pending requests extend")
    if request.extended:
        raise RequestError(f"{request_id}: already extended once (GDPR Art. 12(3))")
    deadline = EXTENDED_DEADLINE.add_to(request.received_at)
    with transaction(con):
        con.execute(
            "UPDATE requests.requests SET deadline = ?, extended = true, extension_reason = ?"
            " WHERE request_id = ?",
            [deadline, reason, request_id],
        )
        append(con, [_entry(request, "request", "deadline extended by two months")])
    return get_request(con, request_id)


def get_request(con: duckdb.DuckDBPyConnection, request_id: str) -> Request:
    """One request by id; RequestError if unknown."""
    row = con.execute(
        "SELECT request_id, type, subject_key, received_at, deadline, status, extended"
        " FROM requests.requests WHERE request_id = ?",
        [request_id],
    ).fetchall()
    if not row:
        raise RequestError(f"{request_id!r}: no such request")
    return Request(*row[0])


def list_requests(
    con: duckdb.DuckDBPyConnection, overdue_only: bool = False, now: dt.datetime | None = None
) -> list[tuple]:
    """(id, type, subject_key, received_at, deadline, status, overdue, answer) for every
    request; `answer` is the answer's record (a dict, see `describe_answer`) or None."""
    if not has_table(con, "requests", "requests"):
        return []
    now = (now or dt.datetime.now(dt.UTC)).replace(tzinfo=None)
    rows = con.execute(
        "SELECT request_id, type, subject_key, received_at, deadline, status,"
        " status = 'pending' AND deadline < ? AS overdue, answer FROM requests.requests"
        " ORDER BY received_at, request_id",
        [now],
    ).fetchall()
    rows = [(*r[:7], json.loads(r[7]) if r[7] else None) for r in rows]
    return [r for r in rows if r[6]] if overdue_only else rows


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def describe_answer(answer: dict | None) -> str:
    """An answer in a few words (names and counts, no values); an export's file is named by
    the caller, who knows where it lives."""
    if not answer:
        return ""
    if "refused" in answer:
        return f"refused: {answer['refused']}"
    if "kept" in answer:
        kept = answer["kept"]
        purposes = sorted({p for row in kept for p in row.get("kept_for") or ()})
        text = f"{_count(len(kept), 'row')} still kept"
        text += f" ({', '.join(purposes)})" if purposes else ""
        deleted = _count(answer.get("earlier_exports_deleted", 0), "earlier export")
        return f"{text}; {deleted} deleted"
    if "stopped_purposes" in answer:
        return "stopped: " + (", ".join(answer["stopped_purposes"]) or "nothing to stop")
    if "restricted" in answer:
        return "restricted in " + ", ".join(answer["restricted"])
    if "rectified" in answer:
        return "corrected " + ", ".join(answer["rectified"])
    return ", ".join(sorted(answer))


def request_counts(con: duckdb.DuckDBPyConnection, now: dt.datetime | None = None) -> dict:
    """open / done / overdue counts (for the UI and the overdue check)."""
    rows = list_requests(con, now=now)
    return {
        "open": sum(r[5] == "pending" for r in rows),
        "done": sum(r[5] == "done" for r in rows),
        "refused": sum(r[5] == "refused" for r in rows),
        "overdue": sum(bool(r[6]) for r in rows),
    }


def _entry(request: Request, action: str, reason: str, **kw) -> LedgerEntry:
    return LedgerEntry(
        run_id=kw.pop("run_id", f"cli-{uuid.uuid4()}"),
        as_of=kw.pop("as_of", request.received_at.date()),
        action=action,
        reason=f"{request.request_id}: {reason}",
        keys=kw.pop("keys", [request.subject_key]),
        **kw,
    )


def pending_requests(con: duckdb.DuckDBPyConnection, type_: str) -> list[Request]:
    rows = con.execute(
        "SELECT request_id, type, subject_key, received_at, deadline, status, extended"
        " FROM requests.requests WHERE status = 'pending' AND type = ? ORDER BY received_at",
        [type_],
    ).fetchall()
    return [Request(*r) for r in rows]


def pending_request_ids(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Ids of pending requests (read-only: the sensor polls it)."""
    if not has_table(con, "requests", "requests"):
        return []
    return [
        r[0]
        for r in con.execute(
            "SELECT request_id FROM requests.requests WHERE status = 'pending' ORDER BY 1"
        ).fetchall()
    ]


def _subject_keys(schema: Schema, table: str) -> str:
    """SELECT of the keys (as text) of `table`'s rows whose subject is in temp `_subjects`."""
    if table == schema.subject_table.name:
        return "SELECT subject_key FROM _subjects"
    key = quote(schema.tables[table].key)
    return (
        f"SELECT CAST({key} AS VARCHAR) FROM core.{quote(table)}"
        f" WHERE {_of_subjects(schema, table)}"
    )


def _of_subjects(schema: Schema, table: str) -> str:
    """WHERE condition on `core.<table>` selecting the rows whose subject is in `_subjects`."""
    subject = schema.subject_table
    key_type = SQL_TYPES[subject.column(subject.key).type]
    return subject_in(schema, table, f"SELECT TRY_CAST(subject_key AS {key_type}) FROM _subjects")


def _full_name(subject: Table, old: dict, changes: dict[str, str]) -> tuple[str, str] | None:
    """("first last" before, after) when a name part of the subject changes, else None."""
    first = next((c.name for c in subject.columns if c.category == FIRST_NAME), None)
    last = next((c.name for c in subject.columns if c.category == LAST_NAME), None)
    if first is None or last is None or not {first, last} & set(changes):
        return None
    if old[first] is None or old[last] is None:
        return None  # no full name was written from it
    new = {**old, **changes}
    return f"{old[first]} {old[last]}", f"{new[first]} {new[last]}"


def _rectify(
    con: duckdb.DuckDBPyConnection, policy: Policy, request: Request, changes: dict[str, str]
) -> list[str] | None:
    """Correct the subject's columns and every copy of the old value in the subject's rows
    of the other tables (any text column, carried extras included; the full name in their
    name columns); None when the subject's row is gone."""
    schema = policy.data_schema
    subject = schema.subject_table
    names, key = subject.column_names, f"CAST({quote(subject.key)} AS VARCHAR)"
    row = con.execute(
        f"SELECT {', '.join(quote(c) for c in names)} FROM core.{quote(subject.name)}"
        f" WHERE {key} = ?",
        [request.subject_key],
    ).fetchone()
    if row is None:
        return None
    old = dict(zip(names, row, strict=True))
    touched = []
    for column, value in changes.items():
        sql_type = SQL_TYPES[subject.column(column).type]
        con.execute(
            f"UPDATE core.{quote(subject.name)} SET {quote(column)} = CAST(? AS {sql_type})"
            f" WHERE {key} = ?",
            [value, request.subject_key],
        )
        touched.append(f"{subject.name}.{column}")
    copies = {str(old[c]): v for c, v in changes.items() if old.get(c) is not None}
    full_name = _full_name(subject, old, changes)
    _subjects(con, [request])
    for table in subject_tables(policy):
        spec = schema.tables[table]
        if table == subject.name:
            continue
        links = {spec.key, *(fk.column for fk in spec.foreign_keys)}
        # Every text column, carried extras included: a copy may sit in any of them.
        text_cols = [
            name
            for name, type_ in con.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'core' AND table_name = ? ORDER BY ordinal_position",
                [table],
            ).fetchall()
            if type_ == "VARCHAR" and not name.startswith("_") and name not in links
        ]
        updates = [(col, o, n) for o, n in copies.items() for col in text_cols]
        if full_name:
            name_cols = {c.name for c in spec.columns if c.category == FULL_NAME}
            updates += [(col, *full_name) for col in text_cols if col in name_cols]
        for col, old_value, new_value in updates:
            n = con.execute(
                f"UPDATE core.{quote(table)} SET {quote(col)} = ? WHERE {quote(col)} = ?"
                f" AND {_of_subjects(schema, table)}",
                [new_value, old_value],
            ).fetchone()[0]
            if n:
                touched.append(f"{table}.{col}")
    return sorted(set(touched))


def _refuse(
    con: duckdb.DuckDBPyConnection, request: Request, reason: str, now: dt.datetime, **kw
) -> LedgerEntry:
    """Mark a rectification refused as a whole (its changes dropped); its ledger entry."""
    con.execute(
        "UPDATE requests.requests SET status = 'refused', completed_at = ?,"
        " changes = NULL, answer = ? WHERE request_id = ?",
        [now, json.dumps({"refused": reason}), request.request_id],
    )
    return _entry(request, "request", f"rectification refused: {reason}", **kw)


def apply_pending(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    as_of: dt.date,
    run_id: str,
    vault: Path | None = None,
) -> dict[str, int]:
    """Carry out pending rectification, objection and restriction requests and register
    pending erasures, all in one transaction; returns requests handled per type.

    With the `vault` file, erased subjects' pseudonyms are registered too, so rows that
    carry the subject only as a token (invoices kept for accounting) are found.
    """
    schema = policy.data_schema
    ensure_schemas(con, schema)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    stop_at = timestamp_literal(as_of)
    entries: list[LedgerEntry] = []
    with transaction(con):
        # A source may deliver a gone subject's row again: its requests, erasure register
        # entry and hold name it by its raw key once more, so the erasure applies again.
        reveal_keys(con, policy, recent_only=True)
        rectifications = pending_requests(con, "rectification")
        for request in rectifications:
            changes = json.loads(
                con.execute(
                    "SELECT changes FROM requests.requests WHERE request_id = ?",
                    [request.request_id],
                ).fetchone()[0]
            )
            if email_taken(con, schema, request.subject_key, changes):
                # Another row got the address since intake (a load, an earlier request):
                # refuse the whole request rather than apply part of it.
                reason = "another subject has had that e-mail address since the request"
                entries.append(_refuse(con, request, reason, now, run_id=run_id, as_of=as_of))
                continue
            touched = _rectify(con, policy, request, changes)
            if touched is None:
                reason = "the subject's row is no longer held (anonymized or erased)"
                entries.append(_refuse(con, request, reason, now, run_id=run_id, as_of=as_of))
                continue
            con.execute(
                "UPDATE requests.requests SET status = 'done', completed_at = ?, changes = NULL,"
                " answer = ? WHERE request_id = ?",
                [now, json.dumps({"rectified": touched}), request.request_id],
            )
            entries.append(
                _entry(
                    request,
                    "rectify",
                    "rectified " + ", ".join(touched),
                    run_id=run_id,
                    as_of=as_of,
                    columns=touched,
                )
            )
        objections = pending_requests(con, "objection")
        if objections:
            _subjects(con, objections)
            stopped = _withdraw_consents(
                con, policy, f"SELECT subject_key, {stop_at} AS stop_at FROM _subjects"
            )
            answer = {"stopped_purposes": [p.name for p in stopped], "consent_evidence": "kept"}
            complete_requests(con, {r.request_id: answer for r in objections}, now)
            tables = ", ".join(dict.fromkeys(p.retention.table for p in stopped)) or None
            for request in objections:
                entries.append(
                    _entry(
                        request,
                        "request",
                        "objection: marketing consent treated as withdrawn",
                        run_id=run_id,
                        as_of=as_of,
                        table_name=tables,
                    )
                )
        restrictions = pending_requests(con, "restriction")
        if restrictions:
            _subjects(con, restrictions)
            _restrict_subjects(con, policy)
            answer = {"restricted": subject_tables(policy)}
            complete_requests(con, {r.request_id: answer for r in restrictions}, now)
            for request in restrictions:
                entries.append(
                    _entry(request, "restrict", "processing restricted", run_id=run_id, as_of=as_of)
                )
        erasures = pending_requests(con, "erasure")
        if erasures:
            # Only requests not registered yet get a ledger entry: a rerun after a crash
            # between intake and answers must not record the registration twice.
            registered = {
                r[0] for r in con.execute("SELECT request_id FROM requests.erasures").fetchall()
            }
            con.execute(
                "INSERT INTO requests.erasures SELECT r.request_id, r.subject_key, ? FROM"
                " requests.requests r WHERE r.status = 'pending' AND r.type = 'erasure'"
                " AND NOT EXISTS (SELECT 1 FROM requests.erasures e"
                " WHERE e.request_id = r.request_id)",
                [now],
            )
            _subjects(con, erasures)
            _forget_quarantined(con, schema)
            for request in (r for r in erasures if r.request_id not in registered):
                entries.append(
                    _entry(
                        request,
                        "request",
                        "erasure registered; the run's rewrite erases the subject",
                        run_id=run_id,
                        as_of=as_of,
                    )
                )
        append(con, entries)
    if vault is not None and vault.exists():
        attach(con, vault)
        try:
            register_erasure_tokens(con, schema)
        finally:
            con.execute("DETACH vault")
    return {
        "rectification": len(rectifications),
        "objection": len(objections),
        "restriction": len(restrictions),
        "erasure": len(erasures),
    }


def _forget_quarantined(con: duckdb.DuckDBPyConnection, schema: Schema) -> None:
    """Delete the rejected input rows of `_subjects`: they hold raw copies of their values.

    A quarantined row of a table is theirs when its key is one of their rows' keys, when a
    reference holds the key of one of their rows, or (subject table) when it has the
    e-mail address of one of them.
    """
    subject = schema.subject_table
    address = email_column(schema)
    conditions = []
    for table in schema.tables.values():
        mine = [f"{_field(table.key)} IN ({_subject_keys(schema, table.name)})"]
        mine += [
            f"{_field(fk.column)} IN ({_subject_keys(schema, fk.ref_table)})"
            for fk in table.foreign_keys
        ]
        if table.name == subject.name and address:
            mine.append(
                f"{email_key(_field(address))} IN (SELECT {email_key(quote(address))}"
                f" FROM core.{quote(subject.name)} WHERE {_of_subjects(schema, subject.name)})"
            )
        conditions.append(f"(table_name = {literal(table.name)} AND ({' OR '.join(mine)}))")
    con.execute(f"DELETE FROM core.quarantine WHERE {' OR '.join(conditions)}")


def _field(column: str) -> str:
    """A column's value in a quarantined row's JSON record."""
    return f"json_extract_string(record, {literal('$.' + column)})"


def _consent_purposes(policy: Policy) -> list[Purpose]:
    """Purposes based on consent whose retention ends early when the consent is withdrawn."""
    return [
        p
        for p in policy.purposes.values()
        if p.legal_basis == "consent" and p.retention.ends_early_at is not None
    ]


def _withdraw_consents(con: duckdb.DuckDBPyConnection, policy: Policy, stops: str) -> list[Purpose]:
    """Treat the consents of the subjects of `stops` (a SELECT of subject_key, stop_at) as
    withdrawn at their stop time, for every purpose based on consent: the withdrawal column
    of the rows its retention runs from, where still later or unset (evidence kept).
    Returns those purposes."""
    schema = policy.data_schema
    purposes = _consent_purposes(policy)
    for p in purposes:
        ret, table = p.retention, schema.tables[p.retention.table]
        key, ends = quote(table.key), quote(ret.ends_early_at.column)  # type: ignore[union-attr]
        r = reach(schema, table.name, "_own")
        rows = [f"_t.{key} = s._k"] + [
            f"CAST(_t.{quote(ref.split('.', 1)[1])} AS VARCHAR) = {literal(value)}"
            for ref, value in ret.only_where.items()
        ]
        con.execute(
            f"UPDATE core.{quote(table.name)} _t"
            f" SET {ends} = least(coalesce(_t.{ends}, s.stop_at), s.stop_at)"
            f" FROM (SELECT _own.{key} AS _k, min(st.stop_at) AS stop_at"
            f" FROM core.{quote(table.name)} _own{r.joins} JOIN ({stops}) st"
            f" ON CAST({r.subject} AS VARCHAR) = st.subject_key GROUP BY _own.{key}) s"
            f" WHERE {' AND '.join(rows)}"
        )
    return purposes


def _restrict_subjects(con: duckdb.DuckDBPyConnection, policy: Policy) -> None:
    """Mark every row of `_subjects` restricted (anonymized rows are no one's any more)."""
    for table in subject_tables(policy):
        con.execute(
            f"UPDATE core.{quote(table)} SET _state = {RowState.RESTRICTED.sql}"
            f" WHERE {_of_subjects(policy.data_schema, table)}"
            f" AND _state <> {RowState.ANONYMIZED.sql}"
        )


def register_erasure_tokens(con: duckdb.DuckDBPyConnection, schema: Schema) -> int:
    """Add erased subjects' key tokens to the erasure register (vault attached AS vault).

    Idempotent; returns how many tokens were added.
    """
    kinds = subject_token_kinds(schema)
    return con.execute(
        "INSERT INTO requests.erasures SELECT e.request_id, t.token, now()"
        " FROM requests.erasures e JOIN vault.tokens t"
        f" ON t.kind IN ({', '.join('?' for _ in kinds)}) AND t.value = e.subject_key"
        " WHERE NOT EXISTS (SELECT 1 FROM requests.erasures x WHERE x.subject_key = t.token)",
        kinds,
    ).fetchone()[0]


def reapply_done(con: duckdb.DuckDBPyConnection, policy: Policy) -> int:
    """Re-apply answered objections and restrictions (after a restore brought back older rows).

    Erasures: `requests.erasures` makes every later tagging erase the rows again; their
    rejected input rows (raw copies in the quarantine) are forgotten again here.
    Returns the number of objections and restrictions re-applied.
    """
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _subjects AS SELECT DISTINCT subject_key"
        " FROM requests.erasures"
    )
    _forget_quarantined(con, policy.data_schema)
    _withdraw_consents(
        con,
        policy,
        "SELECT subject_key, completed_at AS stop_at FROM requests.requests"
        " WHERE type = 'objection' AND status = 'done'",
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _subjects AS SELECT DISTINCT subject_key"
        " FROM requests.requests WHERE type = 'restriction' AND status = 'done'"
    )
    _restrict_subjects(con, policy)
    return con.execute(
        "SELECT count(*) FROM requests.requests WHERE status = 'done'"
        " AND type IN ('objection', 'restriction')"
    ).fetchone()[0]


def _subjects(con: duckdb.DuckDBPyConnection, requests: list[Request]) -> None:
    con.execute("CREATE OR REPLACE TEMP TABLE _subjects (subject_key VARCHAR)")
    con.execute(
        "INSERT INTO _subjects SELECT unnest(CAST(? AS VARCHAR[]))",
        [[r.subject_key for r in requests]],
    )


def complete_requests(
    con: duckdb.DuckDBPyConnection, answers: dict[str, dict], now: dt.datetime
) -> None:
    """Mark requests done with their answers (what was done, kept, exported; no values),
    in one statement however many there are."""
    if not answers:
        return
    con.execute(
        "UPDATE requests.requests r SET status = 'done', completed_at = ?, answer = a.answer"
        " FROM (SELECT unnest(CAST(? AS VARCHAR[])) AS id,"
        " unnest(CAST(? AS VARCHAR[])) AS answer) a WHERE r.request_id = a.id",
        [now, list(answers), [json.dumps(a) for a in answers.values()]],
    )
