"""The re-consent list: whom to ask for (renewed) consent, with e-mail and first name only.

From the e-mail marketing seed document: contacts without a valid purpose for marketing can
be asked for consent, and consents about to lapse renewed before they do. For every purpose
based on consent (GDPR Art. 6(1)(a)) that keeps the data subjects (the schema's subject
table, e.g. contacts), two segments:

- `consent_expiring`: the consent is valid now and ends within the policy's
  `consent_health.expiring_within` (30 days by default);
- `no_valid_consent`: the subject is kept for another purpose (an account, a contract), has
  no valid consent and never withdrew one (a row of the purpose's anchor table past its
  `ends_early_at`): a withdrawal is respected, never asked again.

Restricted, anonymized and held subjects are never listed. The list holds the subject's
e-mail address and first name (its columns of categories `user.contact.email` and
`user.name.first`, under their own names), purpose and segment, nothing more, and is
rewritten on every run after enforcement, so a subject erased by a run is gone from it
after that run.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import duckdb

from lethe.declaration.policy import HOLD_PURPOSE, Policy, Purpose
from lethe.declaration.schema import Column, Schema
from lethe.declaration.strategies import literal, quote
from lethe.engine.plan import Plan, timestamp_literal
from lethe.engine.reach import reach
from lethe.engine.states import RowState
from lethe.engine.tagging import purpose_status_sql
from lethe.engine.warehouse import sql_type
from lethe.operations.files import write_csv
from lethe.operations.home import Home

SEGMENTS = ("consent_expiring", "no_valid_consent")
# What the list shows of a subject, by data category: whom to write to and how to greet.
EMAIL = "user.contact.email"
FIRST_NAME = "user.name.first"


def addressee_columns(schema: Schema) -> tuple[Column, ...]:
    """The subject table's columns the list shows, in this order: its e-mail address and
    first name (the first column of each category; a category not declared is left out)."""
    columns = schema.subject_table.columns
    found = (next((c for c in columns if c.category == cat), None) for cat in (EMAIL, FIRST_NAME))
    return tuple(c for c in found if c is not None)


def consent_purposes(policy: Policy) -> list[Purpose]:
    """The purposes based on consent that keep the data subjects (e.g. the newsletter)."""
    subjects = policy.data_schema.subject_table.name
    return [
        p for p in policy.purposes.values() if p.legal_basis == "consent" and subjects in p.keeps
    ]


def _withdrawn(schema: Schema, purpose: Purpose, as_of: str) -> str | None:
    """Subject keys that withdrew a consent of `purpose`: rows of its anchor table past its
    `ends_early_at` (None: the policy has no withdrawal)."""
    ends = purpose.retention.ends_early_at
    if ends is None:
        return None
    table = schema.tables[purpose.retention.table]
    r = reach(schema, table.name, "a")
    return (
        f"SELECT {r.subject} FROM core.{quote(table.name)} a{r.joins}"
        f" JOIN ({purpose_status_sql(schema, purpose, table.name, as_of)}) s"
        f" ON s._k = a.{quote(table.key)}"
        # NOT IN over a NULL is never true: a row whose subject is gone must not hide all.
        f" WHERE a.{quote(ends.column)} <= {as_of} AND {r.subject} IS NOT NULL"
    )


def consent_health_plan(policy: Policy, as_of: dt.date) -> Plan:
    """The SELECT of the list: the subject's e-mail and first name (`addressee_columns`),
    purpose and segment; one row per segment."""
    schema = policy.data_schema
    subjects = schema.subject_table
    key = quote(subjects.key)
    shown = addressee_columns(schema)
    email = next((quote(c.name) for c in shown if c.category == EMAIL), None)
    t = timestamp_literal(as_of)
    window = policy.consent_health.expiring_within.sql()
    parts = []
    # Nobody can be asked without an e-mail address to ask at.
    for p in consent_purposes(policy) if email else ():
        status = purpose_status_sql(schema, p, subjects.name, t)
        name = literal(p.name)
        parts.append(
            f"SELECT _k AS _subject, {name} AS purpose, 'consent_expiring' AS segment"
            f" FROM ({status}) WHERE _active AND NOT _open AND _end < {t} + {window}"
        )
        withdrawn = _withdrawn(schema, p, t)
        parts.append(
            f"SELECT c.{key}, {name}, 'no_valid_consent' FROM core.{quote(subjects.name)} c"
            f" WHERE c.{key} NOT IN (SELECT _k FROM ({status}) WHERE _active)"
            + (f" AND c.{key} NOT IN ({withdrawn})" if withdrawn else "")
        )
    segments = " UNION ALL ".join(parts) or (
        f"SELECT CAST(NULL AS {sql_type(subjects, subjects.key)}) AS _subject,"
        " CAST(NULL AS VARCHAR) AS purpose, CAST(NULL AS VARCHAR) AS segment WHERE false"
    )
    items = "".join(f"c.{quote(c.name)}, " for c in shown)
    reachable = f" AND c.{email} IS NOT NULL" if email else ""
    by_address = f", c.{email}" if email else ""
    return Plan(
        "consent health",
        (
            f"SELECT {items}s.purpose, s.segment FROM core.{quote(subjects.name)} c"
            f" JOIN ({segments}) s ON s._subject = c.{key}"
            f" WHERE c._state = {RowState.ACTIVE.sql}{reachable}"
            f" AND NOT list_contains(c._purposes, {literal(HOLD_PURPOSE)})"
            f" ORDER BY s.segment, s.purpose{by_address}",
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
