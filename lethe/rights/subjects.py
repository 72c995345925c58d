"""Data subjects: resolve `--subject` (a subject's key or e-mail address) to its key.

The subject table is the declared one (`subject: true`); its e-mail column is the one of
category `user.contact.email`.
"""

from __future__ import annotations

import duckdb

from lethe.declaration.schema import Schema
from lethe.declaration.strategies import quote
from lethe.engine.states import RowState
from lethe.errors import LetheError

EMAIL = "user.contact.email"
# Characters that NFC maps onto ASCII (the Kelvin sign to K, the Greek question mark to ;,
# the Greek varia to `): an address holding one is a look-alike of an ASCII address, so it
# keeps its own raw spelling as its key and matches only exactly as stored.
_ONTO_ASCII = "\u212a\u037e\u1fef"


class UnknownSubjectError(LetheError):
    """No subject (or more than one) matches the given subject."""


def email_column(schema: Schema) -> str | None:
    """The subject table's e-mail column (category `user.contact.email`), if it has one."""
    return next((c.name for c in schema.subject_table.columns if c.category == EMAIL), None)


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


def subjects_with_email(
    con: duckdb.DuckDBPyConnection, schema: Schema, address: str, other_than: str | None = None
) -> list[str]:
    """Keys of the subjects (not anonymized) whose e-mail has the key of `address`, leaving
    out `other_than`; one set-based scan. None without an e-mail column."""
    column = email_column(schema)
    if column is None:
        return []
    table = schema.subject_table
    key = f"CAST(c.{quote(table.key)} AS VARCHAR)"
    return [
        r[0]
        for r in con.execute(
            f"WITH given AS (SELECT CAST(? AS VARCHAR) AS address) SELECT {key}"
            f" FROM core.{quote(table.name)} c, given g"
            f" WHERE {email_key('c.' + quote(column))} = {email_key('g.address')}"
            f" AND c._state <> {RowState.ANONYMIZED.sql} AND {key} IS DISTINCT FROM ? ORDER BY 1",
            [address.strip(), other_than],
        ).fetchall()
    ]


def resolve_subject(con: duckdb.DuckDBPyConnection, schema: Schema, subject: str) -> str:
    """The subject's key for a key or e-mail; the message never echoes the e-mail.

    Whitespace around the subject is ignored (str.strip(): the same Unicode whitespace
    that makes a key blank at ingest), except that a key matching exactly as given wins:
    ingest keeps a non-blank key as delivered, so every loaded subject can be named.
    """
    table = schema.subject_table
    stripped = subject.strip()
    if not stripped:
        raise UnknownSubjectError("--subject: empty subject")
    if "@" in stripped:
        if email_column(schema) is None:
            raise UnknownSubjectError(
                f"--subject: {table.name} has no e-mail column (category {EMAIL});"
                f" give the {table.key}"
            )
        rows = subjects_with_email(con, schema, stripped)
        if len(rows) > 1:
            raise UnknownSubjectError(
                f"--subject: {len(rows)} {table.name} rows share that e-mail address;"
                f" give the {table.key}"
            )
        if not rows:
            raise UnknownSubjectError(f"--subject: no {table.name} row has that e-mail address")
        return rows[0]
    key = f"CAST({quote(table.key)} AS VARCHAR)"
    found = con.execute(
        f"SELECT {key} FROM core.{quote(table.name)} WHERE {key} IN (?, ?)"
        f" ORDER BY {key} <> ? LIMIT 1",
        [subject, stripped, subject],
    ).fetchone()
    if not found:
        raise UnknownSubjectError(f"--subject: no {table.name} row has that {table.key}")
    return found[0]
