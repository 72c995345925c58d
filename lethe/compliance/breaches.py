"""Personal data breaches: the register, the notification deadlines, what is overdue.

GDPR Art. 33(1): the controller notifies the supervisory authority within 72 hours of
becoming aware of a breach, unless it is unlikely to result in a risk to people; Art. 33(5):
every breach is documented either way. Art. 33(2) and the processor agreements: a processor
notifies the controller within 48 hours of becoming aware. The hours come from the policy
(`breach_notification`).

A record is open until the authority is notified or the breach is closed as unlikely to
result in a risk; a processor's notification is pending until it is recorded. The register
holds the controller's own description of the breach, never the data concerned.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Literal

import duckdb

from lethe.declaration.policy import Policy
from lethe.engine.ddl import BREACHES, ensure_breaches
from lethe.engine.warehouse import has_table
from lethe.errors import LetheError

_COLUMNS = (
    "breach_id",
    "recorded_at",
    "aware_at",
    "source",
    "processor",
    "processor_aware_at",
    "subjects_affected",
    "authority_deadline",
    "processor_deadline",
    "authority_notified_at",
    "controller_notified_at",
    "closed_at",
)
Party = Literal["authority", "processor"]


class BreachError(LetheError):
    """A breach record that cannot be made or changed (unknown id, bad time, no reason)."""


@dataclass(frozen=True)
class Breach:
    """One breach record (without its free-text description and closing reason)."""

    breach_id: str
    recorded_at: dt.datetime
    aware_at: dt.datetime
    source: str  # `manual`, or `refused_export` for an export Lethe refused
    processor: str | None
    processor_aware_at: dt.datetime | None
    subjects_affected: int | None
    authority_deadline: dt.datetime
    processor_deadline: dt.datetime | None
    authority_notified_at: dt.datetime | None
    controller_notified_at: dt.datetime | None  # when the processor notified the controller
    closed_at: dt.datetime | None

    @property
    def open(self) -> bool:
        """The authority is neither notified nor the breach closed as unlikely to be a risk."""
        return self.authority_notified_at is None and self.closed_at is None

    @property
    def awaiting_processor(self) -> bool:
        return (
            self.processor_deadline is not None
            and self.controller_notified_at is None
            and self.closed_at is None
        )

    def overdue(self, now: dt.datetime) -> list[str]:
        """The notifications whose deadline has passed at `now`, in words."""
        now = _naive(now)
        late = []
        if self.open and now > self.authority_deadline:
            late.append(f"authority notification due {self.authority_deadline:%Y-%m-%d %H:%M} UTC")
        if self.awaiting_processor and now > self.processor_deadline:  # type: ignore[operator]
            late.append(
                f"notification from processor {self.processor} due"
                f" {self.processor_deadline:%Y-%m-%d %H:%M} UTC"
            )
        return late


def _naive(when: dt.datetime) -> dt.datetime:
    """UTC without tzinfo, as the warehouse stores timestamps (naive input is UTC)."""
    return when.astimezone(dt.UTC).replace(tzinfo=None) if when.tzinfo else when


def _not_future(name: str, when: dt.datetime | None, now: dt.datetime) -> None:
    if when is not None and _naive(when) > _naive(now):
        raise BreachError(f"{name}: {when:%Y-%m-%d %H:%M} is in the future")


def record_breach(
    con: duckdb.DuckDBPyConnection,
    policy: Policy,
    description: str,
    aware_at: dt.datetime,
    now: dt.datetime,
    *,
    processor: str | None = None,
    processor_aware_at: dt.datetime | None = None,
    processor_notified_at: dt.datetime | None = None,
    subjects_affected: int | None = None,
    source: str = "manual",
) -> Breach:
    """Record a breach with its deadlines; runs inside the caller's transaction, if any.

    `aware_at`: when the controller became aware (the authority deadline runs from it).
    `processor_aware_at`: when the processor became aware (its deadline runs from it);
    `processor_notified_at`: when it notified the controller, if it already has.
    """
    if not description.strip():
        raise BreachError("--description: describe the breach (what happened, which data)")
    if processor is not None and processor not in {p.name for p in policy.processors}:
        raise BreachError(f"--processor: no processor {processor!r} in {policy.source}")
    if processor is None and (processor_aware_at or processor_notified_at):
        raise BreachError("--processor: the processor's times need the processor's name")
    if subjects_affected is not None and subjects_affected < 0:
        raise BreachError("--subjects: must be zero or more")
    for name, when in (
        ("--aware-at", aware_at),
        ("--processor-aware-at", processor_aware_at),
        ("--processor-notified-at", processor_notified_at),
    ):
        _not_future(name, when, now)
    deadlines = policy.breach_notification
    aware = _naive(aware_at)
    processor_aware = _naive(processor_aware_at) if processor_aware_at else None
    ensure_breaches(con)
    breach_id = f"B-{uuid.uuid4().hex[:12]}"
    con.execute(
        f"INSERT INTO {BREACHES} (breach_id, recorded_at, aware_at, source, processor,"
        " processor_aware_at, subjects_affected, authority_deadline, processor_deadline,"
        " controller_notified_at, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            breach_id,
            _naive(now),
            aware,
            source,
            processor,
            processor_aware,
            subjects_affected,
            aware + dt.timedelta(hours=deadlines.authority_hours),
            processor_aware + dt.timedelta(hours=deadlines.processor_hours)
            if processor_aware
            else None,
            _naive(processor_notified_at) if processor_notified_at else None,
            description.strip(),
        ],
    )
    return get_breach(con, breach_id)


def get_breach(con: duckdb.DuckDBPyConnection, breach_id: str) -> Breach:
    """A breach by id; BreachError if there is none."""
    rows = (
        con.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM {BREACHES} WHERE breach_id = ?", [breach_id]
        ).fetchall()
        if has_table(con, "audit", "breaches")
        else []
    )
    if not rows:
        raise BreachError(f"no breach {breach_id!r} (see `lethe breach list`)")
    return Breach(*rows[0])


def mark_notified(
    con: duckdb.DuckDBPyConnection, breach_id: str, party: Party, at: dt.datetime, now: dt.datetime
) -> Breach:
    """Record a notification: to the authority, or from the processor to the controller."""
    breach = get_breach(con, breach_id)
    _not_future("--at", at, now)
    if party == "processor" and breach.processor is None:
        raise BreachError(f"{breach_id}: no processor is named in this breach")
    column = "authority_notified_at" if party == "authority" else "controller_notified_at"
    con.execute(f"UPDATE {BREACHES} SET {column} = ? WHERE breach_id = ?", [_naive(at), breach_id])
    return get_breach(con, breach_id)


def close_breach(
    con: duckdb.DuckDBPyConnection, breach_id: str, reason: str, now: dt.datetime
) -> Breach:
    """Close a breach assessed as unlikely to result in a risk (no authority notification)."""
    if not reason.strip():
        raise BreachError("--reason: say why the breach is unlikely to result in a risk")
    get_breach(con, breach_id)
    con.execute(
        f"UPDATE {BREACHES} SET closed_at = ?, closed_reason = ? WHERE breach_id = ?",
        [_naive(now), reason.strip(), breach_id],
    )
    return get_breach(con, breach_id)


def list_breaches(con: duckdb.DuckDBPyConnection) -> list[Breach]:
    """Every breach record, oldest first."""
    if not has_table(con, "audit", "breaches"):
        return []
    rows = con.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM {BREACHES} ORDER BY aware_at, breach_id"
    ).fetchall()
    return [Breach(*r) for r in rows]


def overdue_breaches(
    con: duckdb.DuckDBPyConnection, now: dt.datetime
) -> list[tuple[Breach, list[str]]]:
    """Breaches with a notification past its deadline at `now`, and which ones."""
    return [(b, late) for b in list_breaches(con) if (late := b.overdue(now))]
