"""Erasure at writable PostgreSQL sources when the warehouse is PostgreSQL too.

The change sets are planned by `lethe.sources.propagation`, written once: `intake` of
`lethe.rights.postgres_requests` plans them in its mirror of the pending requests'
subjects. Here the same functions carry them to the sources (`propagate`) and preview a
request (`preview`), each on an in-memory DuckDB mirror of what it reads of the warehouse
(`Mirror`): the pending change sets and propagations by request, the ledger's last entry;
for a preview the subject's rows and vault tokens. What `propagate` records (ledger
entries, the propagations done or pending with the reason, the source rows the next read
skips) goes back to the warehouse in the transaction that read the mirror; a dry run and a
preview change nothing, here or at the sources.
"""

from __future__ import annotations

import datetime as dt

from psycopg import sql as pgsql

from lethe.declaration.policy import Policy
from lethe.declaration.strategies import quote
from lethe.engine.engines import PostgresEngine
from lethe.engine.postgres_warehouse import create
from lethe.rights.postgres_requests import (
    PROPAGATIONS,
    SOURCE_CHANGES,
    Mirror,
    mirrored_step,
)
from lethe.rights.subjects import resolve_subject
from lethe.sources.propagation import (
    PREVIEW,
    SourceOutcome,
    preview_request,
    writable_sources,
)
from lethe.sources.propagation import propagate as propagate_changes

SOURCE_ANONYMIZED = ("core", "source_anonymized")
_PROPAGATING = pgsql.SQL(
    "request_id IN (SELECT request_id FROM requests.propagations WHERE status = 'pending')"
)


def propagate(
    engine: PostgresEngine, policy: Policy, run_id: str, as_of: dt.date, dry_run: bool = False
) -> list[SourceOutcome]:
    """`lethe.sources.propagation.propagate` on the PostgreSQL warehouse: every pending
    change set carried to its source, one transaction per source; the ledger entries, the
    propagations' status and reason, and the rows the next read skips recorded here."""
    if not writable_sources(policy):
        return []
    with mirrored_step(engine, policy.data_schema) as mirror:
        for name in (PROPAGATIONS, SOURCE_CHANGES):
            mirror.pull(name, _PROPAGATING, key="request_id")
        mirror.pull(SOURCE_ANONYMIZED, pgsql.SQL("false"), appended=True)
        mirror.freeze()
        outcomes = propagate_changes(mirror.mem, policy, run_id, as_of, dry_run)
    return outcomes


def preview(
    engine: PostgresEngine,
    policy: Policy,
    type_: str,
    subject: str,
    changes: dict[str, str] | None,
    as_of: dt.date,
) -> list[SourceOutcome]:
    """`lethe request … --dry-run` on the PostgreSQL warehouse: what the request would
    change at every writable source (`preview_request` on a mirror of the subject's rows),
    nothing recorded or changed anywhere."""
    if not writable_sources(policy) or type_ not in ("erasure", "rectification", "restriction"):
        return []
    schema = policy.data_schema
    create(engine, schema)
    pg = engine.con
    # One transaction, always rolled back: the preview request is written there only so
    # that `Mirror.owners` finds the subject's keys and tokens as for a recorded one.
    with pg.transaction(force_rollback=True):
        mirror = Mirror(pg, schema)
        try:
            mirror.pull_named_subject(subject)
            key = resolve_subject(mirror.mem, schema, subject)
            # The rows read to resolve the subject make way for all of the subject's rows.
            mirror.mem.execute(f"DELETE FROM core.{quote(schema.subject_table.name)}")
            pg.execute(
                "INSERT INTO requests.requests (request_id, type, subject_key, received_at,"
                " deadline, status) VALUES (%s, %s, %s, now(), now(), 'pending')",
                [PREVIEW, type_, key],
            )
            mirror.owners(pgsql.SQL("request_id = {}").format(pgsql.Literal(PREVIEW)))
            mirror.pull_subject_rows()
            mirror.pull_tokens(policy)
            return preview_request(mirror.mem, policy, None, type_, subject, changes, as_of)
        finally:
            mirror.close()
