"""The record of processing activities (GDPR Art. 30), generated from the policy and warehouse.

Art. 30(1) asks for: the controller and its data protection officer; the purposes; the
categories of data subjects and of personal data; the recipients (processors); transfers
to third countries; the time limits for erasure; the security measures. All of it comes
from the policy, so the record cannot drift from what Lethe enforces; live counts (rows per
purpose and state, processor exports, breaches, analyst releases) come from the warehouse.
Counts only: the record holds no personal data.

Written as JSON (machine-readable), Markdown and HTML under exports/compliance, each file
replaced atomically.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from lethe.compliance.breaches import list_breaches
from lethe.compliance.catalog import after_retention, column_categories
from lethe.compliance.processors import processor_report
from lethe.compliance.summary import summarize
from lethe.declaration.policy import LEGAL_BASIS_ARTICLE, Policy
from lethe.engine.states import STORED_STATES
from lethe.engine.warehouse import has_table
from lethe.operations.files import write_text
from lethe.operations.home import Home

FORMAT = "lethe-record-of-processing/1"
NAME = "record_of_processing"


def record_dir(home: Home) -> Path:
    """Where the record (and the other compliance documents) are written."""
    return home.exports / "compliance"


def _categories(policy: Policy, table: str, columns: tuple[str, ...]) -> list[str]:
    categories = column_categories(policy, table)
    return sorted({categories[c] for c in columns})


def _releases(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    if not has_table(con, "analytics", "releases"):
        return []
    cursor = con.execute(
        "SELECT dataset, k, rows, records, generalized, suppressed FROM analytics.releases"
        " ORDER BY dataset"
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def build_record(
    con: duckdb.DuckDBPyConnection, policy: Policy, as_of: dt.date, now: dt.datetime
) -> dict[str, Any]:
    """The record as a JSON-ready document."""
    summaries = {s.table: s for s in summarize(con, policy)}
    processors = processor_report(con, policy, now)
    access = {a.processor.name: a for a in processors.access}
    exports = processors.exports
    activities = []
    for p in policy.all_purposes().values():
        recipients = [x.name for x in policy.processors if x.purpose == p.name]
        activities.append(
            {
                "purpose": p.name,
                "description": p.description,
                "legal_basis": p.legal_basis,
                "legal_basis_article": LEGAL_BASIS_ARTICLE[p.legal_basis],
                "data_subjects": list(p.data_subjects),
                "personal_data": {t: list(cols) for t, cols in p.keeps.items()},
                "pseudonymized": {t: list(cols) for t, cols in p.pseudonymizes.items()},
                "data_categories": {t: _categories(policy, t, cols) for t, cols in p.keeps.items()},
                "recipients": recipients,
                "retention": p.retention.describe(),
                "live_rows": {
                    t: summaries[t].by_purpose.get(p.name, 0) for t in p.keeps if t in summaries
                },
            }
        )
    breaches = list_breaches(con)
    return {
        "format": FORMAT,
        "title": "Record of processing activities (GDPR Art. 30)",
        "generated_at": now.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "as_of": as_of.isoformat(),
        "policy": policy.source,
        "controller": policy.controller.model_dump() if policy.controller else None,
        "activities": activities,
        "after_retention": {t: after_retention(policy, t) for t in policy.when_unkept},
        "processors": [
            {
                "name": x.name,
                "description": x.description,
                "purpose": x.purpose,
                "data_shared": {t: list(cols) for t, cols in x.data_shared.items()},
                "data_categories": {
                    t: _categories(policy, t, cols) for t, cols in x.data_shared.items()
                },
                "contract_end": x.contract_end.isoformat() if x.contract_end else None,
                "export_access": access[x.name].allowed,
                "access": access[x.name].reason,
                "transfers": x.transfers,
                "exports": exports.get(x.name, {}).get("export", 0),
                "refused_exports": exports.get(x.name, {}).get("refused", 0),
            }
            for x in policy.processors
        ],
        "analytics": {
            "purpose": policy.analytics.purpose,
            "legal_basis": policy.analytics.legal_basis,
            "legal_basis_article": LEGAL_BASIS_ARTICLE[policy.analytics.legal_basis],
            "description": policy.analytics.description,
            "k_anonymity": policy.k_anonymity,
            "releases": _releases(con),
        },
        "security_measures": list(policy.security_measures),
        "operations": {
            "backups": str(policy.operations.backups),
            "access_log": str(policy.operations.access_log),
            "exports": str(policy.operations.exports),
            "export_log": f"purged every {policy.operations.export_log.every}: entries older"
            f" than {policy.operations.export_log.keep} once over"
            f" {policy.operations.export_log.purge_when_over}",
        },
        "warehouse": {
            s.table: {"rows": s.rows, "by_state": s.by_state, "held": s.held}
            for s in summaries.values()
        },
        "breaches": {
            "recorded": len(breaches),
            "open": sum(b.open for b in breaches),
            "overdue": sum(bool(b.overdue(now)) for b in breaches),
        },
    }


# --- rendering -------------------------------------------------------------------------------


@dataclass
class _Section:
    """A part of the human-readable record: paragraphs, a bullet list and/or a table."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


def _columns(tables: dict[str, list[str]]) -> str:
    return "; ".join(f"{t}: {', '.join(cols)}" for t, cols in tables.items()) or "none"


def _sections(record: dict[str, Any]) -> list[_Section]:
    controller = record["controller"]
    out = [
        _Section(
            "Controller",
            [
                f"{controller['name']}, {controller['contact']}; data protection officer:"
                f" {controller['dpo'] or 'none appointed'}."
                if controller
                else "Not stated: add `controller` (name, contact, dpo) to the policy.",
                f"Generated {record['generated_at']} as of {record['as_of']} from"
                f" {record['policy']}.",
            ],
        )
    ]
    for a in record["activities"]:
        live = ", ".join(f"{t}: {n:,}" for t, n in a["live_rows"].items())
        out.append(
            _Section(
                f"Processing activity: {a['purpose']}",
                [a["description"]],
                header=["", ""],
                rows=[
                    ["Legal basis", a["legal_basis_article"]],
                    ["Data subjects", ", ".join(a["data_subjects"]) or "not stated"],
                    ["Personal data", _columns(a["personal_data"])],
                    ["Pseudonymized", _columns(a["pseudonymized"])],
                    ["Data categories", _columns(a["data_categories"])],
                    ["Recipients", ", ".join(a["recipients"]) or "none (controller only)"],
                    ["Retention", a["retention"]],
                    ["Rows kept now", live or "none"],
                ],
            )
        )
    out.append(
        _Section(
            "Time limits for erasure: what happens once no purpose keeps the data",
            items=[f"{t}: {text}" for t, text in record["after_retention"].items()],
        )
    )
    out.append(
        _Section(
            "Recipients: processors (GDPR Art. 28)",
            header=[
                "processor",
                "purpose",
                "data shared",
                "contract end",
                "access now",
                "transfers",
                "exports / refused (export-log window)",
            ],
            rows=[
                [
                    f"{x['name']}: {x['description']}",
                    x["purpose"],
                    _columns(x["data_shared"]),
                    x["contract_end"] or "open-ended",
                    ("yes, " if x["export_access"] else "no, ") + x["access"],
                    x["transfers"],
                    f"{x['exports']} / {x['refused_exports']}",
                ]
                for x in record["processors"]
            ],
        )
    )
    an = record["analytics"]
    out.append(
        _Section(
            f"Analyst datasets: {an['purpose']}",
            [
                f"{an['description']} Legal basis: {an['legal_basis_article']}."
                f" Every released row counts at least {an['k_anonymity']} data subjects."
            ],
            header=["dataset", "rows", "records", "generalized", "suppressed"],
            rows=[
                [r["dataset"], *(f"{r[c]:,}" for c in ("rows", "records", "generalized"))]
                + [f"{r['suppressed']:,}"]
                for r in an["releases"]
            ],
        )
    )
    out.append(_Section("Technical and organizational measures", items=record["security_measures"]))
    ops = record["operations"]
    out.append(
        _Section(
            "Lethe's own data",
            items=[
                f"Backups: kept {ops['backups']}",
                f"Access log: kept {ops['access_log']}",
                f"Export log: {ops['export_log']}",
                f"Exports: kept {ops['exports']}",
            ],
        )
    )
    states = STORED_STATES
    out.append(
        _Section(
            "Warehouse now",
            header=["table", "rows", *states, "held"],
            rows=[
                [t, f"{w['rows']:,}", *(f"{w['by_state'].get(s, 0):,}" for s in states)]
                + [f"{w['held']:,}"]
                for t, w in record["warehouse"].items()
            ],
        )
    )
    b = record["breaches"]
    out.append(
        _Section(
            "Personal data breaches (GDPR Art. 33)",
            [f"{b['recorded']} recorded, {b['open']} open, {b['overdue']} overdue."],
        )
    )
    return out


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(record: dict[str, Any]) -> str:
    """The record as Markdown."""
    lines = [f"# {record['title']}", ""]
    for s in _sections(record):
        lines += [f"## {s.title}", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        if s.items:
            lines += [f"- {i}" for i in s.items] + [""]
        if s.header:
            lines.append("| " + " | ".join(_md_cell(h) for h in s.header) + " |")
            lines.append("|" + "---|" * len(s.header))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in s.rows]
            lines.append("")
    return "\n".join(lines)


def render_html(record: dict[str, Any]) -> str:
    """The record as a self-contained HTML page."""
    e = html.escape
    body = [f"<h1>{e(record['title'])}</h1>"]
    for s in _sections(record):
        body.append(f"<h2>{e(s.title)}</h2>")
        body += [f"<p>{e(p)}</p>" for p in s.paragraphs]
        if s.items:
            body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in s.items) + "</ul>")
        if s.header:
            head = "".join(f"<th>{e(h)}</th>" for h in s.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in s.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = (
        "body{font-family:sans-serif;max-width:72rem;margin:2rem auto;line-height:1.4}"
        "table{border-collapse:collapse;margin:0.5rem 0}"
        "td,th{border:1px solid #ccc;padding:0.25rem 0.5rem;vertical-align:top;text-align:left}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(record['title'])}</title><style>{style}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_record(home: Home, record: dict[str, Any]) -> dict[str, Path]:
    """Write the record as JSON, Markdown and HTML; returns the paths by format."""
    base = record_dir(home) / NAME
    return {
        "json": write_text(
            base.with_suffix(".json"), json.dumps(record, indent=2, ensure_ascii=False) + "\n"
        ),
        "md": write_text(base.with_suffix(".md"), render_markdown(record)),
        "html": write_text(base.with_suffix(".html"), render_html(record)),
    }


def publish_record(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy, as_of: dt.date, now: dt.datetime
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Build the record from the policy and warehouse and write its three files."""
    record = build_record(con, policy, as_of, now)
    return record, write_record(home, record)
