"""Answering requests after the run's enforcement rewrite: exports and erasure answers.

Access and portability: one export zip per request (documents read set-based).
Erasure: the rewrite has erased the subject (and forgotten the vault entries no kept row
refers to); the answer lists what is still kept, why and until when (accounting invoices
as pseudonyms, a litigation hold), and the subject's earlier exports are deleted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import duckdb

from lethe.audit import LedgerEntry, append
from lethe.exports import build_documents, delete_exports, log_export, write_export
from lethe.home import Home
from lethe.policy import Policy
from lethe.requests import (
    CONTACT_TOKEN_KIND,
    Request,
    complete_request,
    pending_requests,
    register_erasure_tokens,
)
from lethe.strategies import quote
from lethe.tables import TABLES, TAGGED_TABLES
from lethe.vault import attach
from lethe.warehouse import transaction


@dataclass
class Answers:
    """Requests answered by one run (counts only)."""

    exports: int = 0
    erasures: int = 0
    files: list[str] = field(default_factory=list)


def _kept(con: duckdb.DuckDBPyConnection, contact_id: str) -> list[dict]:
    """Each row still kept about an erased subject: which, why and until when."""
    owner = (
        "SELECT ? AS m UNION ALL SELECT token FROM vault.tokens"
        f" WHERE kind = '{CONTACT_TOKEN_KIND}' AND value = ?"
    )
    kept = []
    for table in TAGGED_TABLES:
        where = (
            f"order_id IN (SELECT order_id FROM core.orders WHERE contact_id IN ({owner}))"
            if table == "shipments"
            else f"contact_id IN ({owner})"
        )
        key = quote(TABLES[table].key)
        for row_key, purposes, state, until in con.execute(
            f"SELECT {key}, _purposes, _state, _retain_until FROM core.{quote(table)}"
            f" WHERE {where} AND _state <> 'anonymized' ORDER BY {key}",
            [contact_id, contact_id],
        ).fetchall():
            kept.append(
                {
                    "table": table,
                    "key": row_key,
                    "state": state,
                    "kept_for": purposes,
                    "until": until.isoformat() if until else "until the hold is released",
                }
            )
    return kept


def answer_pending(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy, as_of: dt.date, run_id: str
) -> Answers:
    """Answer pending access, portability and erasure requests (after enforcement)."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    result = Answers()
    exports: list[Request] = pending_requests(con, "access") + pending_requests(con, "portability")
    erasures = pending_requests(con, "erasure")
    if not exports and not erasures:
        return result
    entries = []
    attach(con, home.vault)
    try:
        docs = build_documents(con, policy, exports, now) if exports else {}
        for request in exports:
            path = write_export(home, docs[request.request_id])
            result.files.append(path.name)
            with transaction(con):
                log_export(con, request, path, now, policy.operations.exports.add_to(now))
                complete_request(con, request, now, {"export": path.name})
                append(
                    con,
                    [
                        LedgerEntry(
                            run_id=run_id,
                            as_of=as_of,
                            action="export",
                            reason=f"{request.request_id}: {request.type} export",
                            keys=[request.contact_id],
                            details={"files": 1},
                        )
                    ],
                )
        if erasures:
            with transaction(con):
                register_erasure_tokens(con)  # tokens issued by this run's rewrite
            answers = {r.request_id: {"kept": _kept(con, r.contact_id)} for r in erasures}
            for request in erasures:
                gone = delete_exports(con, home, "subject_key = ?", [request.contact_id])
                answers[request.request_id]["earlier_exports_deleted"] = gone
            with transaction(con):
                for request in erasures:
                    complete_request(con, request, now, answers[request.request_id])
                    entries.append(
                        LedgerEntry(
                            run_id=run_id,
                            as_of=as_of,
                            action="request",
                            reason=f"{request.request_id}: erasure answered",
                            keys=[request.contact_id],
                            details={"kept_batches": len(answers[request.request_id]["kept"])},
                        )
                    )
                append(con, entries)
            result.erasures = len(erasures)
    finally:
        con.execute("DETACH vault")
    result.exports = len(exports)
    return result
