"""Answering requests after the run's enforcement rewrite: exports and erasure answers.

Access and portability: one export zip per request (documents read set-based).
Erasure: the rewrite has erased the subject (and forgotten the vault entries no kept row
refers to, and hashed the subject's key if nothing of it is held); the answer lists what
is still kept, why and until when (accounting invoices as pseudonyms, a litigation hold),
with a letter to the subject in Czech and English, and the subject's earlier exports are
deleted; so are those of subjects gone since.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

import duckdb
import polars as pl

from lethe.declaration.policy import Policy
from lethe.engine.audit import LedgerEntry, append
from lethe.engine.keyhash import is_hash_sql, vault_attached
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
from lethe.rights.requests import Request, complete_requests, pending_requests
from lethe.sources.propagation import awaiting_sources


@dataclass
class Answers:
    """Requests answered by one run (counts only)."""

    exports: int = 0
    erasures: int = 0
    exported: dict[str, int] = field(default_factory=dict)  # exports per request type
    files: list[str] = field(default_factory=list)


def _kept(
    con: duckdb.DuckDBPyConnection, policy: Policy, requests: list[Request]
) -> dict[str, list[dict]]:
    """Each row still kept about each erased subject, by request: which, why and until when.

    One query per table for the whole batch. A subject owns the rows that carry its key
    or a token the erasure register lists for its request (rows kept as pseudonyms, e.g.
    for accounting), so it is found even once its key is hashed; with the vault attached,
    the tokens of a key not hashed yet too.
    """
    owners = con.execute(
        "SELECT DISTINCT subject_key, request_id FROM requests.erasures"
        " WHERE request_id IN (SELECT unnest(CAST(? AS VARCHAR[])))",
        [[r.request_id for r in requests]],
    ).fetchall()
    requests_of: dict[str, set[str]] = {}
    for owner, request_id in [*owners, *((r.subject_key, r.request_id) for r in requests)]:
        requests_of.setdefault(owner, set()).add(request_id)
    kept: dict[str, list[dict]] = {r.request_id: [] for r in requests}
    seen: set[tuple[str, str, object]] = set()
    for table, frame in subject_rows(con, policy, sorted(requests_of)).items():
        key = policy.data_schema.tables[table].key
        rows = frame.filter(pl.col("_state") != RowState.ANONYMIZED).sort(key, "_subject")
        for row in rows.select("_subject", key, "_state", "_purposes", "_retain_until").iter_rows():
            subject, row_key, state, purposes, until = row
            for request_id in sorted(requests_of[subject]):
                if (request_id, table, row_key) in seen:
                    continue  # found by the key and by one of its tokens
                seen.add((request_id, table, row_key))
                kept[request_id].append(
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
        _delete_gone_exports(con, home)
        return result
    # On a PostgreSQL warehouse the caller has attached a mirror of its vault already.
    own_vault = not vault_attached(con)
    if own_vault:
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
            subjects = [r.subject_key for r in erasures]
            kept = _kept(con, policy, erasures)
            gone = delete_exports(
                con, home, "subject_key IN (SELECT unnest(CAST(? AS VARCHAR[])))", [subjects]
            )
            answers = {
                r.request_id: {
                    "kept": kept[r.request_id],
                    "earlier_exports_deleted": gone.get(r.subject_key, 0),
                    # The answer as the subject reads it, in Czech and English.
                    "letter": letter.erasure(
                        policy,
                        r.request_id,
                        r.received_at,
                        kept[r.request_id],
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
        if own_vault:
            con.execute("DETACH vault")
    _delete_gone_exports(con, home)
    result.exports = len(exports)
    result.exported = dict(Counter(r.type for r in exports))
    return result


def _delete_gone_exports(con: duckdb.DuckDBPyConnection, home: Home) -> None:
    """Delete the exports of subjects gone since (anonymized by retention): the export log
    names them by keyed hash only, and their export must not outlive them."""
    delete_exports(con, home, is_hash_sql("subject_key"), [])
