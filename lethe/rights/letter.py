"""The letters a data subject reads: the access or portability export's `index.html` and the
erasure answer, in Czech and English (the policy's `letters.language` first).

An access letter gives everything GDPR Art. 15(1) asks for, from the export document and
the policy: the controller and its DPO, the purposes and legal bases that concern this
subject (only theirs), the categories of their data (Fides categories in words), the
recipients that received them (a processor with its contract end), how long each purpose
and each record is kept, the rights to rectification, erasure, restriction and objection,
the right to complain to the supervisory authority, and the source of the data. Each record
is a list of labelled values (the schema's labels), print-width, with dates and amounts
written as in the letter's language. Every value is HTML-escaped by the template engine.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import Any

import jinja2

from lethe.declaration.letters import Language, Wording
from lethe.declaration.policy import Anchor, Policy, Processor, Purpose
from lethe.declaration.schema import Column, Table
from lethe.rights import language as words

TAGS = ("_purposes", "_legal_bases", "_retain_until", "_state")
_DEFAULT_TRANSFERS = "none outside the EU/EEA"


@cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("lethe", "rights/templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _humanized(name: str) -> str:
    return name.replace("_", " ").strip().capitalize()


def column_label(table: Table, name: str, language: Language) -> str:
    """What the letter calls a column: its label in the language, else its source header,
    else its description, else its name in words (a carried extra column: its name)."""
    column: Column | None = table.declared.get(name)
    if column is None:
        return _humanized(name)
    if language in column.label:
        return column.label[language]
    if column.header != name:
        return column.header
    return column.description or _humanized(name)


def table_label(table: Table, language: Language) -> str:
    """What the letter calls a table: its label in the language, else its name in words."""
    return table.label.get(language) or _humanized(table.name)


def wording(item: Purpose | Processor, language: Language) -> Wording:
    """A purpose or processor as the letter names it: its own wording in the language, else
    its name and the policy's description."""
    return item.letter.get(language) or Wording(title=_humanized(item.name), text=item.description)


def _anchor(policy: Policy, anchor: Anchor, language: Language) -> str:
    table = policy.data_schema.tables[anchor.table]
    label = column_label(table, anchor.column, language)
    quoted = f"„{label}“" if language == "cs" else f"“{label}”"
    text = f"{quoted} ({table_label(table, language)})"
    if anchor.plus:
        text += words.PHRASES[language]["rule_plus"].format(
            duration=words.duration(anchor.plus, language)
        )
    return text


def retention_rule(policy: Policy, purpose: Purpose, language: Language) -> str:
    """A purpose's retention in words: `4 roky, počítáno od údaje „Dokončeno“ ...`."""
    t = words.PHRASES[language]
    r = purpose.retention
    first, *others = r.anchors
    keep = r.keep
    if keep.years or keep.months or keep.days:
        text = t["rule_from"].format(
            duration=words.duration(keep, language), anchor=_anchor(policy, first, language)
        )
    else:
        text = t["rule_until"].format(anchor=_anchor(policy, first, language))
    for other in others:
        text += t["rule_or"].format(anchor=_anchor(policy, other, language))
    if r.open_while_null:
        text += t["rule_open"]
    if r.ends_early_at:
        text += t["rule_early"].format(anchor=_anchor(policy, r.ends_early_at, language))
    return text


def _parse(value: Any, kind: str) -> Any:
    """A JSON value of the export back to its declared type (text on failure)."""
    try:
        if kind == "timestamp":
            return dt.datetime.fromisoformat(str(value))
        if kind == "date":
            return dt.date.fromisoformat(str(value)[:10])
        if kind in ("decimal", "integer"):
            return Decimal(str(value))
    except ValueError:
        return value
    return value


@dataclass(frozen=True)
class _Formatter:
    language: Language
    zone: zoneinfo.ZoneInfo

    def local(self, value: dt.datetime) -> dt.datetime:
        """A stored (UTC) timestamp in the schema's time zone."""
        return value.replace(tzinfo=dt.UTC).astimezone(self.zone)

    def value(self, value: Any, kind: str) -> str:
        t = words.PHRASES[self.language]
        if value is None or value == "":
            return t["empty"]
        parsed = _parse(value, kind)
        if isinstance(parsed, dt.datetime):
            return words.timestamp(self.local(parsed), self.language)
        if isinstance(parsed, dt.date):
            return words.date(parsed, self.language)
        if isinstance(parsed, Decimal):
            return words.number(parsed, self.language)
        if isinstance(parsed, bool):
            return t["yes"] if parsed else t["no"]
        if isinstance(parsed, list | dict):
            return ", ".join(str(v) for v in parsed) if isinstance(parsed, list) else str(parsed)
        return str(parsed)

    def day(self, value: Any) -> str:
        parsed = _parse(value, "timestamp")
        if isinstance(parsed, dt.datetime):
            return words.date(self.local(parsed).date(), self.language)
        return str(value)


@dataclass
class Record:
    """One row of the subject's data: labelled values and why and how long it is kept."""

    fields: list[tuple[str, str]]
    why: str
    how_long: str
    state: str | None


@dataclass
class Section:
    title: str
    count: str
    records: list[Record] = field(default_factory=list)


def _subject_purposes(policy: Policy, tables: dict[str, list[dict]]) -> list[Purpose]:
    """The purposes the subject's rows are kept for, in policy order."""
    named = {p for rows in tables.values() for row in rows for p in row.get("_purposes") or ()}
    return [p for name, p in policy.all_purposes().items() if name in named]


def _recipients(policy: Policy, tables: dict[str, list[dict]]) -> list[Processor]:
    """Processors that receive a table of the subject's rows kept for the processor's purpose."""
    return [
        p
        for p in policy.processors
        if any(
            p.purpose in (row.get("_purposes") or ())
            for table in p.data_shared
            for row in tables.get(table, ())
        )
    ]


def _categories(policy: Policy, tables: dict[str, list[dict]], language: Language) -> list[str]:
    """The data categories of the values held about the subject, in words, once each."""
    found: dict[str, None] = {}
    for name, rows in tables.items():
        for column in policy.data_schema.tables[name].columns:
            if any(row.get(column.name) not in (None, "") for row in rows):
                found[words.category(column.category, language)] = None
    return list(found)


def _record(policy: Policy, table: Table, row: dict[str, Any], fmt: _Formatter) -> Record:
    language = fmt.language
    t = words.PHRASES[language]
    purposes = policy.all_purposes()
    holds_purposes = set(policy.purpose_columns(table.name))
    names = [*table.column_names, *(c for c in row if c not in table.declared and c[0] != "_")]
    fields = []
    for name in names:
        value = row.get(name)
        if name in holds_purposes and value in purposes:
            shown = wording(purposes[value], language).title
        else:
            kind = table.declared[name].type if name in table.declared else "text"
            shown = fmt.value(value, kind)
        fields.append((column_label(table, name, language), shown))
    kept_for = [purposes[p] for p in row.get("_purposes") or () if p in purposes]
    why = ", ".join(wording(p, language).title for p in kept_for) or t["empty"]
    if row.get("_retain_until"):
        how_long = t["until"].format(date=fmt.day(row["_retain_until"]))
    else:
        running = [p for p in kept_for if p.retention.open_while_null] or kept_for
        titles = ", ".join(wording(p, language).title for p in running) or t["empty"]
        how_long = t["open_ended"].format(purposes=titles)
    state = words.STATES[language].get(row.get("_state") or "")
    return Record(fields, why, how_long, state)


def _context(doc: dict[str, Any], policy: Policy, language: Language) -> dict[str, Any]:
    t = words.PHRASES[language]
    schema = policy.data_schema
    fmt = _Formatter(language, zoneinfo.ZoneInfo(schema.timezone))
    tables: dict[str, list[dict]] = doc["tables"]
    generated = dt.datetime.fromisoformat(doc["generated_at"])
    sections = []
    for name, rows in tables.items():
        table = schema.tables[name]
        section = Section(table_label(table, language), words.count(t["rows"], len(rows), language))
        section.records = [_record(policy, table, row, fmt) for row in rows]
        sections.append(section)
    purposes = [
        {
            "words": wording(p, language),
            "basis": words.LEGAL_BASES[language][p.legal_basis],
            "retention": retention_rule(policy, p, language),
        }
        for p in _subject_purposes(policy, tables)
    ]
    all_purposes = policy.all_purposes()
    recipients = []
    for p in _recipients(policy, tables):
        notes = []
        if p.contract_end:
            key = "contract_ended" if p.contract_end <= generated.date() else "contract_until"
            notes.append(t[key].format(date=words.date(p.contract_end, language)))
        notes.append(
            t["no_transfers"]
            if p.transfers == _DEFAULT_TRANSFERS
            else f"{t['transfers']}: {p.transfers}"
        )
        recipients.append(
            {
                "words": wording(p, language),
                "purpose": wording(all_purposes[p.purpose], language).title,
                "notes": notes,
            }
        )
    letters = policy.letters
    held = [table_label(schema.tables[n], language) for n, rows in tables.items() if rows]
    kind = doc["kind"]
    subject_key, subject_value = next(iter(doc["subject"].items()))
    subject_table = schema.subject_table
    consent = any(p.legal_basis == "consent" for p in _subject_purposes(policy, tables))
    return {
        "lang": language,
        "t": t,
        "title": t[f"title_{kind}"],
        "intro": t[f"intro_{kind}"],
        "request": t["request"].format(
            id=doc["request"]["id"], received=fmt.day(doc["request"]["received_at"])
        ),
        "subject": (column_label(subject_table, subject_key, language), subject_value),
        "date": words.date(generated.date(), language),
        "controller": policy.controller,
        "purposes": purposes,
        "categories": _categories(policy, tables, language),
        "recipients": recipients,
        "sections": sections,
        "source": letters.source.get(language)
        or t["source_default"].format(tables=", ".join(held)),
        "automated": letters.automated_decisions.get(language),
        "consent": consent,
        "authority": letters.authority,
        "authority_name": letters.authority.name.get(language)
        or next(iter(letters.authority.name.values()), ""),
        "zone": schema.timezone,
    }


def render(doc: dict[str, Any], policy: Policy) -> str:
    """The export's `index.html`: the letter in each language, the policy's first."""
    letters = [_context(doc, policy, language) for language in policy.letters.order]
    return _templates().get_template("letter.html").render(letters=letters)


def erasure(
    policy: Policy,
    request_id: str,
    received_at: dt.datetime,
    kept: list[dict[str, Any]],
    exports_deleted: int,
) -> dict[Language, str]:
    """The answer to an erasure request as plain text per language: what was erased, which
    records are still kept (per table, purpose and end date, counted), and where to complain.

    `kept` are the answer's entries (`table`, `kept_for`, `until`); no key or value of the
    subject appears in the text.
    """
    texts: dict[Language, str] = {}
    schema = policy.data_schema
    purposes = policy.all_purposes()
    for language in policy.letters.order:
        t = words.PHRASES[language]
        fmt = _Formatter(language, zoneinfo.ZoneInfo(schema.timezone))
        groups: dict[tuple[str, tuple[str, ...], str], int] = {}
        for entry in kept:
            names = tuple(p for p in entry["kept_for"] if p in purposes)
            until = str(entry["until"])
            if isinstance(_parse(until, "timestamp"), dt.datetime):
                when = t["until"].format(date=fmt.day(until))
            else:  # no end date: kept while a purpose runs (a hold)
                titles = ", ".join(wording(purposes[p], language).title for p in names)
                when = t["open_ended"].format(purposes=titles or t["empty"])
            group = (entry["table"], names, when)
            groups[group] = groups.get(group, 0) + 1
        lines = [
            t["erasure_title"],
            "",
            t["greeting"],
            "",
            t["erasure_done"].format(id=request_id, received=fmt.day(received_at.isoformat())),
            "",
        ]
        if groups:
            lines.append(t["erasure_kept"])
            for (table, names, when), n in groups.items():
                why = "; ".join(
                    f"{wording(purposes[p], language).title}"
                    f" – {words.LEGAL_BASES[language][purposes[p].legal_basis]}"
                    for p in names
                )
                lines.append(
                    "- "
                    + t["erasure_kept_row"].format(
                        table=table_label(schema.tables[table], language),
                        rows=words.count(t["rows"], n, language),
                        purposes=why or t["empty"],
                        until=when,
                    )
                )
        else:
            lines.append(t["erasure_nothing"])
        if exports_deleted:
            lines += ["", words.count(t["erasure_exports"], exports_deleted, language)]
        authority = policy.letters.authority
        name = authority.name.get(language) or next(iter(authority.name.values()), "")
        lines += [
            "",
            t["complaint_text"],
            f"{name}, {authority.address}, {authority.email}, {authority.web}",
            "",
            t["regards"],
        ]
        if policy.controller:
            lines.append(f"{policy.controller.name} ({policy.controller.contact})")
        texts[language] = "\n".join(lines) + "\n"
    return texts
