"""Answering requests after the run's enforcement rewrite: exports and erasure answers.

Access and portability: one export zip per request (documents read set-based).
Erasure: the rewrite has erased the subject (and forgotten the vault entries no kept row
refers to); the answer lists what is still kept, why and until when (accounting invoices
as pseudonyms, a litigation hold), with a letter to the subject in Czech and English, and
the subject's earlier exports are deleted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import duckdb
import polars as pl

from lethe.declaration.policy import Policy
from lethe.engine.audit import LedgerEntry, append
from lethe.engine.states import RowState
from lethe.engine.vault import attach
from lethe.engine.warehouse import transaction
from lethe.operations.home import Home
from lethe.rights import letter
from lethe.rights.exports import (
    build_documents,
    delete_exports,
    log_export,
    subject_rows,
    write_export,
)
from lethe.rights.requests import (
    Request,
    complete_requests,
    pending_requests,
    register_erasure_tokens,
)
from lethe.sources.propagation import awaiting_sources


@dataclass
class Answers:
    """Requests answered by one run (counts only)."""

    exports: int = 0
    erasures: int = 0
    files: list[str] = field(default_factory=list)


def _kept(
    con: duckdb.DuckDBPyConnection, policy: Policy, subjects: list[str]
) -> dict[str, list[dict]]:
    """Each row still kept about each erased subject: which, why and until when.

    One query per table for the whole batch (vault attached: rows that carry the subject
    only as a token are theirs too).
    """
    kept: dict[str, list[dict]] = {s: [] for s in subjects}
    for table, frame in subject_rows(con, policy, subjects).items():
        key = policy.data_schema.tables[table].key
        rows = frame.filter(pl.col("_state") != RowState.ANONYMIZED).sort("_subject", key)
        for row in rows.select("_subject", key, "_state", "_purposes", "_retain_until").iter_rows():
            subject, row_key, state, purposes, until = row
            kept[subject].append(
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
    # An erasure is answered once every writable source has it too.
    awaiting = awaiting_sources(con)
    erasures = [r for r in pending_requests(con, "erasure") if r.request_id not in awaiting]
    if not exports and not erasures:
        return result
    attach(con, home.vault)
    try:
        docs = build_documents(con, policy, exports, now) if exports else {}
        paths = {r.request_id: write_export(home, policy, docs[r.request_id]) for r in exports}
        result.files = [p.name for p in paths.values()]
        with transaction(con):
            for request in exports:
                log_export(
                    con,
                    request,
                    paths[request.request_id],
                    now,
                    policy.operations.exports.add_to(now),
                )
            complete_requests(
                con, {r.request_id: {"export": paths[r.request_id].name} for r in exports}, now
            )
            exported = [
                LedgerEntry(
                    run_id=run_id,
                    as_of=as_of,
                    action="export",
                    reason=f"{r.request_id}: {r.type} export",
                    keys=[r.subject_key],
                    details={"files": 1},
                )
                for r in exports
            ]
            append(con, exported)
        if erasures:
            with transaction(con):
                register_erasure_tokens(con, policy.data_schema)  # issued by this run's rewrite
            subjects = [r.subject_key for r in erasures]
            kept = _kept(con, policy, subjects)
            gone = delete_exports(
                con, home, "subject_key IN (SELECT unnest(CAST(? AS VARCHAR[])))", [subjects]
            )
            answers = {
                r.request_id: {
                    "kept": kept[r.subject_key],
                    "earlier_exports_deleted": gone.get(r.subject_key, 0),
                    # The answer as the subject reads it, in Czech and English.
                    "letter": letter.erasure(
                        policy,
                        r.request_id,
                        r.received_at,
                        kept[r.subject_key],
                        gone.get(r.subject_key, 0),
                    ),
                }
                for r in erasures
            }
            with transaction(con):
                complete_requests(con, answers, now)
                append(
                    con,
                    [
                        LedgerEntry(
                            run_id=run_id,
                            as_of=as_of,
                            action="request",
                            reason=f"{r.request_id}: erasure answered",
                            keys=[r.subject_key],
                            details={"kept_rows": len(answers[r.request_id]["kept"])},
                        )
                        for r in erasures
                    ],
                )
            result.erasures = len(erasures)
    finally:
        con.execute("DETACH vault")
    result.exports = len(exports)
    return result
