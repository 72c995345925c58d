"""Processors (GDPR Art. 28): who may receive which data, until when, and their exports.

The policy lists each processor with its purpose, the columns it receives, its contract end
and whether it has export access. Every export to a processor goes through Lethe. Access
ends by itself when the contract ends (00:00 UTC of `contract_end`), and at once with
`lethe processor revoke`: the analytics partner of the seed documents kept downloading
exports after its contract had ended; Lethe does not rely on someone switching access off.

An export that is not allowed is refused and logged (`audit.processor_events`), and a breach
record is opened for the DPO to assess (72 h to notify the authority, or close it as
unlikely to result in a risk); until then the processors' asset check fails.

An allowed export holds, per shared table, the shared columns of the rows the processor's
purpose still keeps: never restricted rows, and pseudonymized rows only for a purpose that
keeps them pseudonymized. It is a zip of CSV files under exports/processors/NAME/, recorded
in the export log and, row keys only, in the audit ledger.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb

from lethe.compliance.breaches import BREACHES, record_breach
from lethe.declaration.policy import Policy, Processor
from lethe.declaration.strategies import literal, quote
from lethe.engine.audit import LedgerEntry, append
from lethe.engine.ddl import EVENTS, ensure_events
from lethe.engine.states import RowState
from lethe.engine.warehouse import has_table, transaction
from lethe.errors import LetheError
from lethe.operations.files import csv_bytes, replacing
from lethe.operations.home import Home


class UnknownProcessorError(LetheError):
    """No processor of that name in the policy."""


class ExportRefusedError(LetheError):
    """An export to a processor whose access has ended (refused, logged, alerted)."""


@dataclass(frozen=True)
class Access:
    """Whether a processor may receive exports now, and why (in words)."""

    processor: Processor
    allowed: bool
    reason: str
    revoked_at: dt.datetime | None = None


@dataclass(frozen=True)
class ProcessorExport:
    """One export delivered to a processor (counts only)."""

    processor: str
    export_id: str
    path: Path
    rows: dict[str, int]


def _naive(when: dt.datetime) -> dt.datetime:
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when


def find_processor(policy: Policy, name: str) -> Processor:
    """The policy's processor called `name`."""
    for p in policy.processors:
        if p.name == name:
            return p
    known = ", ".join(p.name for p in policy.processors) or "none"
    raise UnknownProcessorError(f"no processor {name!r} in {policy.source} (known: {known})")


def _revocations(con: duckdb.DuckDBPyConnection) -> dict[str, dt.datetime]:
    if not has_table(con, "audit", "processor_events"):
        return {}
    return dict(
        con.execute(
            f"SELECT processor, min(event_at) FROM {EVENTS} WHERE event = 'revoked' GROUP BY 1"
        ).fetchall()
    )


def access_of(p: Processor, now: dt.datetime, revoked_at: dt.datetime | None) -> Access:
    """The access rule: granted, not revoked, and before the contract end."""
    if revoked_at is not None and revoked_at <= _naive(now):
        return Access(p, False, f"access revoked {revoked_at:%Y-%m-%d %H:%M} UTC", revoked_at)
    if p.contract_end is not None and _naive(now).date() >= p.contract_end:
        return Access(p, False, f"contract ended {p.contract_end}", revoked_at)
    if not p.export_access:
        return Access(p, False, "no export access granted in the policy", revoked_at)
    until = f"contract until {p.contract_end}" if p.contract_end else "open-ended contract"
    return Access(p, True, until, revoked_at)


def processor_access(
    con: duckdb.DuckDBPyConnection, policy: Policy, now: dt.datetime
) -> list[Access]:
    """The access of every processor of the policy at `now`."""
    revoked = _revocations(con)
    return [access_of(p, now, revoked.get(p.name)) for p in policy.processors]


def revoke(
    con: duckdb.DuckDBPyConnection, policy: Policy, name: str, reason: str, now: dt.datetime
) -> Access:
    """End a processor's export access at once (before its contract end, if need be)."""
    processor = find_processor(policy, name)
    ensure_events(con)
    revoked = _revocations(con).get(name)
    if revoked is None:
        con.execute(
            f"INSERT INTO {EVENTS} (event_at, processor, event, reason)"
            " VALUES (?, ?, 'revoked', ?)",
            [_naive(now), name, reason.strip() or "revoked from the command line"],
        )
        revoked = _naive(now)
    return access_of(processor, now, revoked)


def export_where(policy: Policy, processor: Processor, table: str) -> str:
    """The condition (DuckDB dialect) on `core.<table>` selecting the rows the processor may
    receive: kept for its purpose, never restricted, pseudonymized ones only for a purpose
    that keeps them pseudonymized."""
    purpose = policy.purposes[processor.purpose]
    states = [RowState.RESTRICTED.sql, RowState.EXPIRED.sql]
    if table not in purpose.pseudonymizes:
        states.append(RowState.PSEUDONYMIZED.sql)
    return (
        f"list_contains(_purposes, {literal(purpose.name)}) AND _state NOT IN ({', '.join(states)})"
    )


def export_select(policy: Policy, processor: Processor, table: str) -> str:
    """The shared columns (and the key, as `_key`) of the rows the processor may receive."""
    cols = ", ".join(quote(c) for c in processor.data_shared[table])
    key = policy.data_schema.tables[table].key
    return (
        f"SELECT CAST({quote(key)} AS VARCHAR) AS _key, {cols} FROM core.{quote(table)}"
        f" WHERE {export_where(policy, processor, table)} ORDER BY 1"
    )


def export_to_processor(
    con: duckdb.DuckDBPyConnection,
    home: Home,
    policy: Policy,
    name: str,
    now: dt.datetime,
    run_id: str,
) -> ProcessorExport:
    """Export the processor's shared data, or refuse, log and open a breach record."""
    processor = find_processor(policy, name)
    ensure_events(con)
    access = access_of(processor, now, _revocations(con).get(name))
    if not access.allowed:
        with transaction(con):
            breach = record_breach(
                con,
                policy,
                f"Export to processor {name} refused: {access.reason}. Check whether the"
                " processor obtained the data another way.",
                now,
                now,
                processor=name,
                source="refused_export",
            )
            con.execute(
                f"INSERT INTO {EVENTS} (event_at, processor, event, reason, breach_id)"
                " VALUES (?, ?, 'refused', ?, ?)",
                [_naive(now), name, access.reason, breach.breach_id],
            )
        raise ExportRefusedError(
            f"export to {name} refused: {access.reason}; breach record {breach.breach_id}"
            f" opened (assess by {breach.authority_deadline:%Y-%m-%d %H:%M} UTC)"
        )
    stamp = _naive(now).strftime("%Y%m%dT%H%M%SZ")
    export_id = f"{name}-{stamp}-{uuid.uuid4().hex[:6]}"
    path = home.exports / "processors" / name / f"{export_id}.zip"
    frames = {
        t: con.sql(export_select(policy, processor, t)).to_arrow_table()
        for t in sorted(processor.data_shared)
    }
    with replacing(path) as temp, zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as archive:
        for table, frame in frames.items():
            archive.writestr(f"{table}.csv", csv_bytes(frame.drop_columns(["_key"])))
    rows = {t: f.num_rows for t, f in frames.items()}
    entries = [
        LedgerEntry(
            run_id=run_id,
            as_of=_naive(now).date(),
            action="export",
            reason=f"export {export_id} to processor {name} for purpose {processor.purpose}",
            table_name=table,
            columns=list(processor.data_shared[table]),
            keys=frame.column("_key").to_pylist(),
            details={"rows": frame.num_rows},
        )
        for table, frame in frames.items()
    ]
    expires = policy.operations.exports.add_to(_naive(now))
    try:
        with transaction(con):
            append(con, entries)
            con.execute(
                "INSERT INTO audit.export_log (exported_at, export_id, kind, subject_key,"
                " recipient, file_name, expires_at) VALUES (?, ?, 'processor', NULL, ?, ?, ?)",
                [_naive(now), export_id, name, path.name, expires],
            )
            con.execute(
                f"INSERT INTO {EVENTS} (event_at, processor, event, rows, file_name)"
                " VALUES (?, ?, 'export', ?, ?)",
                [_naive(now), name, sum(rows.values()), path.name],
            )
    except BaseException:
        path.unlink(missing_ok=True)  # an export not recorded must not exist
        raise
    return ProcessorExport(name, export_id, path, rows)


@dataclass(frozen=True)
class RefusedExport:
    """A refused export attempt and whether its breach record is still open."""

    processor: str
    at: dt.datetime
    reason: str
    breach_id: str | None
    open: bool


def refused_exports(con: duckdb.DuckDBPyConnection) -> list[RefusedExport]:
    """Every refused export attempt, with the state of its breach record."""
    if not has_table(con, "audit", "processor_events") or not has_table(con, "audit", "breaches"):
        return []  # a refusal always opens a breach record in the same transaction
    rows = con.execute(
        f"SELECT e.processor, e.event_at, e.reason, e.breach_id,"
        " b.breach_id IS NULL OR (b.authority_notified_at IS NULL AND b.closed_at IS NULL)"
        f" FROM {EVENTS} e LEFT JOIN {BREACHES} b ON b.breach_id = e.breach_id"
        " WHERE e.event = 'refused' ORDER BY e.event_at"
    ).fetchall()
    return [RefusedExport(*r) for r in rows]


def export_counts(con: duckdb.DuckDBPyConnection, since: dt.datetime) -> dict[str, dict[str, int]]:
    """Per processor: exports and refusals since `since`."""
    if not has_table(con, "audit", "processor_events"):
        return {}
    out: dict[str, dict[str, int]] = {}
    for processor, event, n in con.execute(
        f"SELECT processor, event, count(*) FROM {EVENTS} WHERE event_at >= ?"
        " AND event IN ('export', 'refused') GROUP BY ALL",
        [_naive(since)],
    ).fetchall():
        out.setdefault(processor, {})[event] = int(n)
    return out


@dataclass(frozen=True)
class ProcessorReport:
    """Every processor's access now, the refused exports, and recent export counts."""

    access: list[Access]
    refused: list[RefusedExport]
    exports: dict[str, dict[str, int]]
    expired_exports: int = 0  # export files deleted by `review_processors`

    @property
    def open_refusals(self) -> list[RefusedExport]:
        """Refused exports whose breach record is not assessed yet (notified or closed)."""
        return [r for r in self.refused if r.open]


def processor_report(
    con: duckdb.DuckDBPyConnection, policy: Policy, now: dt.datetime
) -> ProcessorReport:
    """The state of the processor registry at `now` (counts within the export-log window)."""
    return ProcessorReport(
        processor_access(con, policy, now),
        refused_exports(con),
        export_counts(con, policy.operations.export_log.keep.subtract_from(_naive(now))),
    )


# Ledger actions after which an exported value is no longer what the warehouse holds.
INVALIDATING = ("erase", "anonymize", "delete", "pseudonymize", "rectify")


def expire_processor_exports(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy, now: dt.datetime
) -> int:
    """Delete processor export files past the export retention, and those holding a row that
    was since erased, anonymized, pseudonymized, deleted or rectified (the ledger says which:
    the export's keys meet a later entry's keys), so no erased value outlives its erasure
    here. Returns how many files were deleted; the export log and ledger keep the record."""
    directory = home.exports / "processors"
    cutoff = policy.operations.exports.subtract_from(_naive(now))
    stale = {
        p
        for p in directory.glob("*/*.zip")
        if dt.datetime.fromtimestamp(p.stat().st_mtime, dt.UTC).replace(tzinfo=None) <= cutoff
    }
    if has_table(con, "audit", "export_log") and has_table(con, "audit", "ledger"):
        actions = ", ".join(literal(a) for a in INVALIDATING)
        stale |= {
            directory / recipient / name
            for recipient, name in con.execute(
                "SELECT DISTINCT x.recipient, x.file_name FROM audit.export_log x"
                " JOIN audit.ledger e ON e.action = 'export'"
                " AND starts_with(e.reason, 'export ' || x.export_id || ' ')"
                " JOIN audit.ledger l ON l.seq > e.seq AND l.table_name = e.table_name"
                f" AND l.action IN ({actions})"
                " WHERE x.kind = 'processor' AND len(list_intersect(e.keys, l.keys)) > 0"
            ).fetchall()
        }
    gone = 0
    for path in stale:
        if path.exists():
            path.unlink()
            gone += 1
    for partial in directory.glob("*/.*.tmp"):  # an export killed before its rename
        partial.unlink(missing_ok=True)
    return gone


def review_processors(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy, now: dt.datetime
) -> ProcessorReport:
    """Delete the processor exports that must not stay, then report the registry's state."""
    expired = expire_processor_exports(con, home, policy, now)
    return replace(processor_report(con, policy, now), expired_exports=expired)
