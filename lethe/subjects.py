"""Data subjects: resolve `--subject` (a contact_id or an e-mail address) to a contact_id."""

from __future__ import annotations

import duckdb

from lethe.errors import LetheError

# Characters that NFC maps onto ASCII (the Kelvin sign to K, the Greek question mark to ;,
# the Greek varia to `): an address holding one is a look-alike of an ASCII address, so it
# keeps its own raw spelling as its key and matches only exactly as stored.
_ONTO_ASCII = "\u212a\u037e\u1fef"


class UnknownSubjectError(LetheError):
    """No contact (or more than one) matches the given subject."""


def email_key(expr: str) -> str:
    """SQL for the lookup key of the e-mail address in the SQL expression `expr`.

    Two addresses share a key when they are canonically equivalent (NFC) and differ only in
    letter case: NFD and NFC spellings, `ZDENĚK` and `zdeněk`. Case is mapped one letter to
    one letter (DuckDB's lower), so no fold turns non-ASCII into ASCII: ß stays ß, not ss, and
    the dotted İ becomes i + combining dot (as Unicode case folding has it), never a plain i.
    Final sigma folds to σ so upper-case Greek finds it. `expr` is evaluated several times:
    pass a column or a constant, not a parameter placeholder.
    """
    folded = f"nfc_normalize(lower(replace(nfc_normalize({expr}), '\u0130', 'i\u0307')))"
    return (
        f"CASE WHEN regexp_matches({expr}, '[{_ONTO_ASCII}]') THEN {expr}"
        f" ELSE replace({folded}, '\u03c2', '\u03c3') END"
    )


def contacts_with_email(
    con: duckdb.DuckDBPyConnection, email: str, other_than: str | None = None
) -> list[str]:
    """contact_ids of the contacts (not anonymized) whose e-mail has the key of `email`,
    leaving out `other_than`; one set-based scan."""
    return [
        r[0]
        for r in con.execute(
            f"WITH given AS (SELECT CAST(? AS VARCHAR) AS email) SELECT c.contact_id"
            f" FROM core.contacts c, given g WHERE {email_key('c.email')} = {email_key('g.email')}"
            " AND c._state <> 'anonymized' AND c.contact_id IS DISTINCT FROM ?"
            " ORDER BY c.contact_id",
            [email.strip(), other_than],
        ).fetchall()
    ]


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
        rows = contacts_with_email(con, stripped)
        if len(rows) > 1:
            raise UnknownSubjectError(
                f"--subject: {len(rows)} contacts share that e-mail address; give a contact_id"
            )
        if not rows:
            raise UnknownSubjectError("--subject: no contact has that e-mail address")
        return rows[0]
    found = con.execute(
        "SELECT contact_id FROM core.contacts WHERE contact_id IN (?, ?)"
        " ORDER BY contact_id <> ? LIMIT 1",
        [subject, stripped, subject],
    ).fetchone()
    if not found:
        raise UnknownSubjectError("--subject: no contact with that contact_id")
    return found[0]
