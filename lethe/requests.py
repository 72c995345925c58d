"""Data-subject requests (GDPR Art. 15-21): intake, deadlines and the set-based steps.

A request is recorded with its deadline (one calendar month; extendable once by two
months with a reason). The pipeline then carries out every pending request together:

- before tagging (`apply_pending`): rectification, objection and restriction change the
  core tables; erasure registers the subject in `requests.erasures`, which makes tagging
  drop every purpose that does not survive erasure, so the enforcement rewrite that
  follows erases the subject physically in the same single pass as retention;
- after enforcement (`lethe.answers`): access and portability exports, erasure answers.
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

from lethe.audit import LedgerEntry, append
from lethe.duration import Duration
from lethe.errors import LetheError
from lethe.plan import timestamp_literal
from lethe.policy import Policy
from lethe.schema import default_schema
from lethe.strategies import quote
from lethe.subjects import contacts_with_email, resolve_subject
from lethe.tables import TABLES
from lethe.vault import attach
from lethe.warehouse import SQL_TYPES, ensure_schemas, has_table, transaction

RequestType = Literal[
    "access", "portability", "erasure", "rectification", "restriction", "objection"
]
REQUEST_TYPES: tuple[str, ...] = get_args(RequestType)
DEADLINE = Duration.parse("1m")
# Art. 12(3): "extended by two further months": three months from receipt in all.
EXTENDED_DEADLINE = Duration.parse("1m + 2m")
# Vault kind of contact ids: how a subject is found in rows that carry it only as a token.
CONTACTS = default_schema().subject_table
CONTACT_TOKEN_KIND = CONTACTS.column(CONTACTS.key).category
# Columns a subject may have corrected; keys and Lethe's own timestamps are not theirs to set.
RECTIFIABLE = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "street",
    "city",
    "postal_code",
    "country",
    "birth_date",
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CHECKS: dict[str, tuple[re.Pattern[str], str]] = {
    "email": (re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+"), "an e-mail address"),
    "country": (re.compile(r"[A-Z]{2}"), "an ISO 3166-1 alpha-2 code"),
    "birth_date": (re.compile(r"\d{4}-\d{2}-\d{2}"), "a date YYYY-MM-DD"),
}


class RequestError(LetheError):
    """A request that cannot be recorded or changed as asked."""


def email_taken(con: duckdb.DuckDBPyConnection, contact_id: str, changes: dict[str, str]) -> bool:
    """Whether the rectification gives the contact another contact's e-mail address.

    An e-mail finds its subject (`--subject`), so it must stay one contact's: compared
    with the same key as that lookup (any normalization and letter case).
    """
    email = changes.get("email")
    return email is not None and bool(contacts_with_email(con, email, other_than=contact_id))


@dataclass(frozen=True)
class Request:
    """A recorded request (no personal values: the subject is its contact_id)."""

    request_id: str
    type: str
    contact_id: str
    received_at: dt.datetime
    deadline: dt.datetime
    status: str
    extended: bool


def parse_changes(pairs: list[str]) -> dict[str, str]:
    """`col=value` pairs of a rectification, validated; the message never echoes a value."""
    if not pairs:
        raise RequestError("rectification needs at least one --set column=value")
    changes: dict[str, str] = {}
    for pair in pairs:
        column, sep, value = pair.partition("=")
        column = column.strip()
        if not sep:
            raise RequestError(f"--set {column!r}: expected column=value")
        if column not in RECTIFIABLE:
            raise RequestError(
                f"--set {column!r}: not a column that can be rectified"
                f" (one of {', '.join(RECTIFIABLE)})"
            )
        value = value.strip()
        if not value or len(value) > 1000 or _CONTROL.search(value):
            raise RequestError(f"--set {column}: empty, too long or with control characters")
        check = _CHECKS.get(column)
        if check and not check[0].fullmatch(value):
            raise RequestError(f"--set {column}: the value is not {check[1]}")
        if column == "birth_date":
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                raise RequestError("--set birth_date: not a valid calendar date") from None
        changes[column] = value
    return changes


def deadline_for(received_at: dt.datetime) -> dt.datetime:
    """One calendar month after receipt (31 Jan → 28/29 Feb)."""
    return DEADLINE.add_to(received_at)  # type: ignore[return-value]


def record_request(
    con: duckdb.DuckDBPyConnection,
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
    ensure_schemas(con)
    contact_id = resolve_subject(con, subject)
    if changes and email_taken(con, contact_id, changes):
        raise RequestError(
            "--set email: another contact has that e-mail address; an e-mail must identify"
            " one contact"
        )
    received = (now or dt.datetime.now(dt.UTC)).replace(tzinfo=None)
    request = Request(
        f"R-{uuid.uuid4().hex[:12]}",
        type_,
        contact_id,
        received,
        deadline_for(received),
        "pending",
        False,
    )
    with transaction(con):
        con.execute(
            "INSERT INTO requests.requests (request_id, type, contact_id, received_at, deadline,"
            " status, reason, changes) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            [
                request.request_id,
                type_,
                contact_id,
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
        "SELECT request_id, type, contact_id, received_at, deadline, status, extended"
        " FROM requests.requests WHERE request_id = ?",
        [request_id],
    ).fetchall()
    if not row:
        raise RequestError(f"{request_id!r}: no such request")
    return Request(*row[0])


def list_requests(
    con: duckdb.DuckDBPyConnection, overdue_only: bool = False, now: dt.datetime | None = None
) -> list[tuple]:
    """(id, type, contact_id, received_at, deadline, status, overdue) for every request."""
    if not has_table(con, "requests", "requests"):
        return []
    now = (now or dt.datetime.now(dt.UTC)).replace(tzinfo=None)
    rows = con.execute(
        "SELECT request_id, type, contact_id, received_at, deadline, status,"
        " status = 'pending' AND deadline < ? AS overdue FROM requests.requests"
        " ORDER BY received_at, request_id",
        [now],
    ).fetchall()
    return [r for r in rows if r[6]] if overdue_only else rows


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
        keys=kw.pop("keys", [request.contact_id]),
        **kw,
    )


def pending_requests(con: duckdb.DuckDBPyConnection, type_: str) -> list[Request]:
    rows = con.execute(
        "SELECT request_id, type, contact_id, received_at, deadline, status, extended"
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


def _subject_rows(table: str) -> str:
    """WHERE clause selecting the rows of `table` whose subject is in temp `_subjects`."""
    if table == "shipments":
        return (
            "order_id IN (SELECT order_id FROM core.orders WHERE contact_id IN"
            " (SELECT contact_id FROM _subjects))"
        )
    return "contact_id IN (SELECT contact_id FROM _subjects)"


def _rectify(
    con: duckdb.DuckDBPyConnection, request: Request, changes: dict[str, str]
) -> list[str]:
    """Correct the contact's columns and every copy of the old value in the subject's rows."""
    old = dict(
        zip(
            CONTACTS.column_names,
            con.execute(
                f"SELECT {', '.join(quote(c) for c in CONTACTS.column_names)} FROM core.contacts"
                " WHERE contact_id = ?",
                [request.contact_id],
            ).fetchone(),
            strict=True,
        )
    )
    touched = []
    for column, value in changes.items():
        sql_type = SQL_TYPES[CONTACTS.column(column).type]
        con.execute(
            f"UPDATE core.contacts SET {quote(column)} = CAST(? AS {sql_type})"
            " WHERE contact_id = ?",
            [value, request.contact_id],
        )
        touched.append(f"contacts.{column}")
    copies = {str(old[c]): v for c, v in changes.items() if old.get(c) is not None}
    if "first_name" in changes or "last_name" in changes:
        new = {**old, **changes}
        copies[f"{old['first_name']} {old['last_name']}"] = (
            f"{new['first_name']} {new['last_name']}"
        )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _subjects AS SELECT ? AS contact_id", [request.contact_id]
    )
    for table in ("consents", "orders", "shipments"):
        # Every text column, carried extras included: a copy may sit in any of them.
        text_cols = [
            name
            for name, type_ in con.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'core' AND table_name = ?",
                [table],
            ).fetchall()
            if type_ == "VARCHAR"
            and not name.startswith("_")
            and name not in (TABLES[table].key, "contact_id", "order_id")
        ]
        for old_value, new_value in copies.items():
            for col in text_cols:
                n = con.execute(
                    f"UPDATE core.{quote(table)} SET {quote(col)} = ? WHERE {quote(col)} = ?"
                    f" AND {_subject_rows(table)}",
                    [new_value, old_value],
                ).fetchone()[0]
                if n:
                    touched.append(f"{table}.{col}")
    return sorted(set(touched))


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
    ensure_schemas(con, policy.data_schema)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    stop_at = timestamp_literal(as_of)
    marketing = [p.name for p in policy.purposes.values() if p.legal_basis == "consent"]
    entries: list[LedgerEntry] = []
    with transaction(con):
        rectifications = pending_requests(con, "rectification")
        for request in rectifications:
            changes = json.loads(
                con.execute(
                    "SELECT changes FROM requests.requests WHERE request_id = ?",
                    [request.request_id],
                ).fetchone()[0]
            )
            if email_taken(con, request.contact_id, changes):
                # Another row got the address since intake (a load, an earlier request):
                # refuse the whole request rather than apply part of it.
                reason = "another contact has had that e-mail address since the request"
                con.execute(
                    "UPDATE requests.requests SET status = 'refused', completed_at = ?,"
                    " changes = NULL, answer = ? WHERE request_id = ?",
                    [now, json.dumps({"refused": reason}), request.request_id],
                )
                entries.append(
                    _entry(
                        request,
                        "request",
                        f"rectification refused: {reason}",
                        run_id=run_id,
                        as_of=as_of,
                    )
                )
                continue
            touched = _rectify(con, request, changes)
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
            _withdraw_marketing(con, marketing, stop_at)
            answer = {"stopped_purposes": marketing, "consent_evidence": "kept"}
            complete_requests(con, {r.request_id: answer for r in objections}, now)
            for request in objections:
                entries.append(
                    _entry(
                        request,
                        "request",
                        "objection: marketing consent treated as withdrawn",
                        run_id=run_id,
                        as_of=as_of,
                        table_name="consents",
                    )
                )
        restrictions = pending_requests(con, "restriction")
        if restrictions:
            _subjects(con, restrictions)
            _restrict_subjects(con)
            answer = {"restricted": ["contacts", "consents", "orders", "shipments"]}
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
                "INSERT INTO requests.erasures SELECT r.request_id, r.contact_id, ? FROM"
                " requests.requests r WHERE r.status = 'pending' AND r.type = 'erasure'"
                " AND NOT EXISTS (SELECT 1 FROM requests.erasures e"
                " WHERE e.request_id = r.request_id)",
                [now],
            )
            _subjects(con, erasures)
            # Rejected input rows hold raw copies of the subject's values.
            con.execute(
                "DELETE FROM core.quarantine WHERE"
                " json_extract_string(record, '$.contact_id') IN (SELECT contact_id FROM _subjects)"
                " OR lower(json_extract_string(record, '$.email')) IN (SELECT lower(email)"
                " FROM core.contacts WHERE contact_id IN (SELECT contact_id FROM _subjects))"
                " OR json_extract_string(record, '$.order_id') IN (SELECT order_id"
                " FROM core.orders WHERE contact_id IN (SELECT contact_id FROM _subjects))"
            )
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
            register_erasure_tokens(con)
        finally:
            con.execute("DETACH vault")
    return {
        "rectification": len(rectifications),
        "objection": len(objections),
        "restriction": len(restrictions),
        "erasure": len(erasures),
    }


def _withdraw_marketing(con: duckdb.DuckDBPyConnection, marketing: list[str], stop_at: str) -> None:
    """Consents of `_subjects` for consent-based purposes end at `stop_at` (evidence kept)."""
    placeholders = ", ".join("?" for _ in marketing) or "NULL"
    con.execute(
        f"UPDATE core.consents SET withdrawn_at = least(coalesce(withdrawn_at, {stop_at}),"
        f" {stop_at}) WHERE {_subject_rows('consents')} AND purpose IN ({placeholders})",
        marketing,
    )


def _restrict_subjects(con: duckdb.DuckDBPyConnection) -> None:
    """Mark every row of `_subjects` restricted (anonymized rows are no one's any more)."""
    for table in ("contacts", "consents", "orders", "shipments"):
        con.execute(
            f"UPDATE core.{quote(table)} SET _state = 'restricted'"
            f" WHERE {_subject_rows(table)} AND _state <> 'anonymized'"
        )


def register_erasure_tokens(con: duckdb.DuckDBPyConnection) -> int:
    """Add erased subjects' contact tokens to the erasure register (vault attached AS vault).

    Idempotent; returns how many tokens were added.
    """
    return con.execute(
        "INSERT INTO requests.erasures SELECT e.request_id, t.token, now()"
        " FROM requests.erasures e JOIN vault.tokens t ON t.kind = ? AND t.value = e.contact_id"
        " WHERE NOT EXISTS (SELECT 1 FROM requests.erasures x WHERE x.contact_id = t.token)",
        [CONTACT_TOKEN_KIND],
    ).fetchone()[0]


def reapply_done(con: duckdb.DuckDBPyConnection, policy: Policy) -> int:
    """Re-apply answered objections and restrictions (after a restore brought back older rows).

    Erasures need nothing here: `requests.erasures` makes every later tagging erase again.
    Returns the number of requests re-applied.
    """
    marketing = [p.name for p in policy.purposes.values() if p.legal_basis == "consent"]
    placeholders = ", ".join("?" for _ in marketing) or "NULL"
    con.execute(
        "UPDATE core.consents c SET withdrawn_at = least(coalesce(c.withdrawn_at, r.stop_at),"
        " r.stop_at) FROM (SELECT contact_id, min(completed_at) AS stop_at FROM requests.requests"
        " WHERE type = 'objection' AND status = 'done' GROUP BY contact_id) r"
        f" WHERE c.contact_id = r.contact_id AND c.purpose IN ({placeholders})",
        marketing,
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _subjects AS SELECT DISTINCT contact_id"
        " FROM requests.requests WHERE type = 'restriction' AND status = 'done'"
    )
    _restrict_subjects(con)
    return con.execute(
        "SELECT count(*) FROM requests.requests WHERE status = 'done'"
        " AND type IN ('objection', 'restriction')"
    ).fetchone()[0]


def _subjects(con: duckdb.DuckDBPyConnection, requests: list[Request]) -> None:
    con.execute("CREATE OR REPLACE TEMP TABLE _subjects (contact_id VARCHAR)")
    con.execute(
        "INSERT INTO _subjects SELECT unnest(CAST(? AS VARCHAR[]))",
        [[r.contact_id for r in requests]],
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
