"""Access and portability exports: one zip per request with JSON, CSVs and an HTML summary.

The documents of all pending subjects are read with one query per table (set-based);
only writing the zips is per subject. Each zip holds `subject.json` (validated against
`lethe/schemas/subject_export.schema.json`), one CSV per table and `index.html`, a letter
to the subject in Czech and English (lethe.rights.letter).
Exports live under `exports/requests/`, are logged in `audit.export_log` and expire
after the policy's export retention (30 days).
"""

from __future__ import annotations

import datetime as dt
import json
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import jsonschema
import polars as pl

from lethe.declaration.policy import Policy
from lethe.declaration.schema import Schema
from lethe.declaration.strategies import literal, quote
from lethe.engine.reach import reach
from lethe.engine.retention import pseudonym_columns
from lethe.engine.vault import reidentify
from lethe.operations.files import csv_bytes, replacing
from lethe.operations.home import Home
from lethe.rights import letter
from lethe.rights.requests import Request, subject_tables, subject_token_kinds

FORMAT = "lethe-subject-export/1"
TAGS = ("_purposes", "_legal_bases", "_retain_until", "_state")
# Portability covers what the subject gave us under consent or contract (GDPR Art. 20(1)).
PORTABLE_BASES = ("consent", "contract")


def schema(policy: Policy | None = None) -> dict[str, Any]:
    """The JSON schema every subject export is validated against; given a policy, one that
    also requires exactly its subject's key and the tables a subject's rights reach."""
    text = resources.files("lethe").joinpath("schemas/subject_export.schema.json").read_text()
    shipped = json.loads(text)
    if policy is None:
        return shipped
    props = shipped["properties"]
    key = policy.data_schema.subject_table.key
    props["subject"] = {
        **props["subject"],
        "required": [key],
        "properties": {key: props["subject"]["additionalProperties"]},
        "additionalProperties": False,
    }
    tables = subject_tables(policy)
    props["tables"] = {
        **props["tables"],
        "required": tables,
        "properties": {t: props["tables"]["additionalProperties"] for t in tables},
        "additionalProperties": False,
    }
    return shipped


def export_dir(home: Home) -> Path:
    return home.exports / "requests"


def _subject_select(schema: Schema, table: str) -> str:
    """Rows of `table` owned by a subject of temp `_export_owner`, with a `_subject` column."""
    r = reach(schema, table, "t")
    return (
        f"SELECT m._subject, t.* FROM core.{quote(table)} t{r.joins}"
        f" JOIN _export_owner m ON CAST({r.subject} AS VARCHAR) = m._match"
    )


def subject_rows(
    con: duckdb.DuckDBPyConnection, policy: Policy, subjects: list[str]
) -> dict[str, pl.DataFrame]:
    """Every row held about the subjects, per table, with a `_subject` column.

    Needs the vault attached AS vault: rows kept as pseudonyms (invoices kept for
    accounting) carry the subject only as a token, so a subject owns its key and the
    tokens that stand for it.
    """
    schema = policy.data_schema
    kinds = ", ".join(literal(k) for k in subject_token_kinds(schema))
    con.execute("CREATE OR REPLACE TEMP TABLE _export_subjects (subject_key VARCHAR)")
    con.execute(
        "INSERT INTO _export_subjects SELECT unnest(CAST(? AS VARCHAR[]))", [list(subjects)]
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _export_owner AS"
        " SELECT subject_key AS _subject, subject_key AS _match FROM _export_subjects"
        " UNION ALL SELECT s.subject_key, t.token FROM _export_subjects s JOIN vault.tokens t"
        f" ON t.kind IN ({kinds}) AND t.value = s.subject_key"
    )
    return {table: con.sql(_subject_select(schema, table)).pl() for table in subject_tables(policy)}


def _reidentify(
    con: duckdb.DuckDBPyConnection, frames: dict[str, pl.DataFrame], policy: Policy
) -> dict[str, pl.DataFrame]:
    """Replace vault tokens in the subjects' own rows by the values they stand for."""
    for table, frame in frames.items():
        for p in pseudonym_columns(policy, table):
            if frame.is_empty() or p.column not in frame.columns:
                continue
            tokens = reidentify(con, frame[p.column].drop_nulls().cast(pl.String))
            mapping = dict(zip(tokens["token"], tokens["value"], strict=True))
            frames[table] = frames[table].with_columns(
                pl.col(p.column).replace(mapping).alias(p.column)
            )
    return frames


def _jsonable(frame: pl.DataFrame) -> list[dict[str, Any]]:
    rows = frame.drop("_subject").to_dicts()
    return json.loads(json.dumps(rows, default=str))


def _portable(frame: pl.DataFrame) -> pl.DataFrame:
    if frame.is_empty():
        return frame
    return frame.filter(
        pl.col("_legal_bases").list.eval(pl.element().is_in(PORTABLE_BASES)).list.any()
    )


def build_documents(
    con: duckdb.DuckDBPyConnection, policy: Policy, requests: list[Request], now: dt.datetime
) -> dict[str, dict[str, Any]]:
    """Export documents for access/portability requests, keyed by request id."""
    frames = _reidentify(con, subject_rows(con, policy, [r.subject_key for r in requests]), policy)
    purposes = {
        p.name: {
            "legal_basis": p.legal_basis,
            "description": p.description,
            "retention": p.retention.describe(),
        }
        for p in policy.all_purposes().values()
    }
    processors = [p.model_dump(mode="json") for p in policy.processors]
    key = policy.data_schema.subject_table.key
    docs = {}
    for request in requests:
        tables = {}
        for table, frame in frames.items():
            mine = frame.filter(pl.col("_subject") == request.subject_key)
            if request.type == "portability":
                mine = _portable(mine)
            keep = [c for c in mine.columns if not c.startswith("_") or c in (*TAGS, "_subject")]
            tables[table] = _jsonable(mine.select(keep))
        docs[request.request_id] = {
            "format": FORMAT,
            "kind": request.type,
            "request": {
                "id": request.request_id,
                "received_at": request.received_at.isoformat(),
                "deadline": request.deadline.isoformat(),
            },
            "subject": {key: request.subject_key},
            "generated_at": now.isoformat(),
            "tables": tables,
            "purposes": purposes,
            "processors": processors,
        }
    return docs


def _csv(rows: list[dict[str, Any]], contract: list[str]) -> bytes:
    extras = sorted({c for r in rows for c in r} - set(contract) - set(TAGS))
    columns = [*contract, *extras, *TAGS]
    present = [c for c in columns if any(c in r for r in rows)] or columns
    frame = pl.DataFrame(
        [
            {c: json.dumps(r.get(c)) if isinstance(r.get(c), list) else r.get(c) for c in present}
            for r in rows
        ],
        schema={c: pl.String for c in present},
    )
    return csv_bytes(frame)


def write_export(home: Home, policy: Policy, doc: dict[str, Any]) -> Path:
    """Validate and write one export zip atomically (owner-only); returns its path."""
    jsonschema.validate(doc, schema(policy))
    tables = policy.data_schema.tables
    target = export_dir(home) / f"{doc['request']['id']}-{doc['kind']}.zip"
    with replacing(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("subject.json", json.dumps(doc, ensure_ascii=False, indent=2))
        for table, rows in doc["tables"].items():
            zf.writestr(f"{table}.csv", _csv(rows, tables[table].column_names))
        zf.writestr("index.html", letter.render(doc, policy))
    return target


def log_export(
    con: duckdb.DuckDBPyConnection,
    request: Request,
    path: Path,
    now: dt.datetime,
    expires_at: dt.datetime,
) -> None:
    """Record an export in the export log (key and file name, never content)."""
    con.execute(
        "INSERT INTO audit.export_log VALUES (?, ?, ?, ?, 'data subject', ?, ?)",
        [now, request.request_id, request.type, request.subject_key, path.name, expires_at],
    )


def delete_exports(
    con: duckdb.DuckDBPyConnection, home: Home, where: str, params: list
) -> dict[str, int]:
    """Delete the export files the export log lists for `where` (a condition on the log);
    returns the files removed per subject key."""
    gone: dict[str, int] = {}
    for subject, name in con.execute(
        f"SELECT DISTINCT subject_key, file_name FROM audit.export_log WHERE {where}", params
    ).fetchall():
        path = export_dir(home) / name
        if path.exists():
            path.unlink()
            gone[subject] = gone.get(subject, 0) + 1
    return gone


def expire_exports(con: duckdb.DuckDBPyConnection, home: Home, now: dt.datetime) -> int:
    """Delete exports whose expiry passed; returns how many files were removed."""
    return sum(delete_exports(con, home, "expires_at <= ?", [now.replace(tzinfo=None)]).values())
