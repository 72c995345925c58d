"""Data subjects: resolve `--subject` (a contact_id or an e-mail address) to a contact_id."""

from __future__ import annotations

import string

import duckdb

from lethe.errors import LetheError

_UPPER, _LOWER = string.ascii_uppercase, string.ascii_lowercase
_ASCII_LOWER = str.maketrans(_UPPER, _LOWER)


class UnknownSubjectError(LetheError):
    """No contact (or more than one) matches the given subject."""


def resolve_subject(con: duckdb.DuckDBPyConnection, subject: str) -> str:
    """The contact_id for a contact_id or e-mail; the message never echoes the e-mail.

    Whitespace around the subject is ignored (str.strip(): the same Unicode whitespace
    that makes a key blank at ingest), except that a contact_id matching exactly as given
    wins: ingest keeps a non-blank key as delivered, so every loaded contact can be named.
    """
    stripped = subject.strip()
    if not stripped:
        raise UnknownSubjectError("--subject: empty subject")
    if "@" in stripped:
        # Case-insensitive for ASCII letters only: Unicode lower() maps look-alikes onto
        # ASCII (the Kelvin sign K to k, İ to i), which would resolve someone else's address.
        rows = con.execute(
            f"SELECT contact_id FROM core.contacts WHERE translate(email, '{_UPPER}', '{_LOWER}')"
            " = ? AND _state <> 'anonymized'",
            [stripped.translate(_ASCII_LOWER)],
        ).fetchall()
        if len(rows) > 1:
            raise UnknownSubjectError(
                f"--subject: {len(rows)} contacts share that e-mail address; give a contact_id"
            )
        if not rows:
            raise UnknownSubjectError("--subject: no contact has that e-mail address")
        return rows[0][0]
    found = con.execute(
        "SELECT contact_id FROM core.contacts WHERE contact_id IN (?, ?)"
        " ORDER BY contact_id <> ? LIMIT 1",
        [subject, stripped, subject],
    ).fetchone()
    if not found:
        raise UnknownSubjectError("--subject: no contact with that contact_id")
    return found[0]
