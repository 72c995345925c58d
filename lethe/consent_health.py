"""The re-consent list: whom to ask for (renewed) consent, with e-mail and first name only.

From the e-mail marketing seed document: contacts without a valid purpose for marketing can
be asked for consent, and consents about to lapse renewed before they do. For every purpose
based on consent (GDPR Art. 6(1)(a)) that keeps contacts, two segments:

- `consent_expiring`: the consent is valid now and ends within the policy's
  `consent_health.expiring_within` (30 days by default);
- `no_valid_consent`: the contact is kept for another purpose (an account, a contract), has
  no valid consent and never withdrew one: a withdrawal is respected, never asked again.

Restricted, anonymized and held contacts are never listed. The list holds e-mail, first
name, purpose and segment, nothing more, and is rewritten on every run after enforcement,
so a contact erased by a run is gone from it after that run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import duckdb

from lethe.files import write_csv
from lethe.home import Home
from lethe.plan import Plan, timestamp_literal
from lethe.policy import HOLD_PURPOSE, Policy, Purpose
from lethe.strategies import literal, quote
from lethe.tables import TABLES
from lethe.tagging import purpose_status_sql

SEGMENTS = ("consent_expiring", "no_valid_consent")


def consent_purposes(policy: Policy) -> list[Purpose]:
    """The purposes based on consent that keep contacts (e.g. the newsletter)."""
    return [
        p for p in policy.purposes.values() if p.legal_basis == "consent" and "contacts" in p.keeps
    ]


def _withdrawn(purpose: Purpose, as_of: str) -> str | None:
    """Contacts that withdrew a consent of `purpose` (None: the policy has no withdrawal)."""
    ends = purpose.retention.ends_early_at
    table = TABLES[purpose.retention.table]
    if ends is None or "contact_id" not in table.column_names:
        return None
    return (
        f"SELECT a.contact_id FROM core.{quote(table.name)} a"
        f" JOIN ({purpose_status_sql(purpose, table.name, as_of)}) s"
        f" ON s._k = a.{quote(table.key)} WHERE a.{quote(ends.column)} <= {as_of}"
    )


def consent_health_plan(policy: Policy, as_of: dt.date) -> Plan:
    """The SELECT of the list: (email, first_name, purpose, segment), one row per segment."""
    t = timestamp_literal(as_of)
    window = policy.consent_health.expiring_within.sql()
    parts = []
    for p in consent_purposes(policy):
        status = purpose_status_sql(p, "contacts", t)
        name = literal(p.name)
        parts.append(
            f"SELECT _k AS contact_id, {name} AS purpose, 'consent_expiring' AS segment"
            f" FROM ({status}) WHERE _active AND NOT _open AND _end < {t} + {window}"
        )
        withdrawn = _withdrawn(p, t)
        parts.append(
            f"SELECT c.contact_id, {name}, 'no_valid_consent' FROM core.contacts c"
            f" WHERE c.contact_id NOT IN (SELECT _k FROM ({status}) WHERE _active)"
            + (f" AND c.contact_id NOT IN ({withdrawn})" if withdrawn else "")
        )
    segments = " UNION ALL ".join(parts) or (
        "SELECT CAST(NULL AS VARCHAR) AS contact_id, CAST(NULL AS VARCHAR) AS purpose,"
        " CAST(NULL AS VARCHAR) AS segment WHERE false"
    )
    return Plan(
        "consent health",
        (
            f"SELECT c.email, c.first_name, s.purpose, s.segment FROM core.contacts c"
            f" JOIN ({segments}) s ON s.contact_id = c.contact_id"
            " WHERE c._state = 'active' AND c.email IS NOT NULL"
            f" AND NOT list_contains(c._purposes, {literal(HOLD_PURPOSE)})"
            " ORDER BY s.segment, s.purpose, c.email",
        ),
    )


def consent_health_path(home: Home) -> Path:
    """Where the re-consent list is written."""
    return home.exports / "compliance" / "consent_health.csv"


@dataclass(frozen=True)
class ConsentHealth:
    """The list's size per segment (counts only) and where it was written."""

    counts: dict[str, int]
    path: Path


def build_consent_health(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy, as_of: dt.date
) -> ConsentHealth:
    """Write the re-consent list as CSV (atomically) and count it per segment."""
    (select,) = consent_health_plan(policy, as_of).statements
    listed = con.sql(select).pl()
    path = write_csv(consent_health_path(home), listed)
    counts = dict.fromkeys(SEGMENTS, 0)
    for segment, n in listed.group_by("segment").len().iter_rows():
        counts[segment] = int(n)
    return ConsentHealth(counts, path)
