"""A hand-made landing set for the retention-enforcement tests, as of T = 2026-03-01.

Every contact, order and shipment carries its own distinctive personal values (derived
from its key, with a terminator so that no value is a substring of another), so a test
can say exactly which values must be gone and which must survive, in query results as
well as in the raw bytes of files. Each row is named after the rule and the side of the
boundary it sits on (`_exact`: the retention ends exactly at T, so it is no longer kept;
`_in`: it ends a day later, so it still is).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb
from conftest import TABLES, TAGGED_TABLES, ingest_and_tag, write_landing_set

from lethe.declaration.policy import Policy
from lethe.engine.keyhash import key_hash, read_secret
from lethe.engine.warehouse import connect
from lethe.operations.home import Home

T = dt.date(2026, 3, 1)
T2 = dt.date(2026, 7, 1)  # o_run_2's contract (completed 2022-06-01) has ended by then
TOKEN = re.compile(r"tok_[0-9a-f]{32}")
SURROGATE = re.compile(r"anon-[0-9a-f]{32}")
OLD = "2012-01-01T00:00:00"  # long expired for every purpose


def contact(cid: str, last_active_at: str = OLD, **extra: Any) -> dict[str, Any]:
    n = sum(ord(ch) * (i + 1) for i, ch in enumerate(cid)) % 10_000
    return {
        "contact_id": cid,
        "email": f"zx-{cid}@example.test",
        "phone": f"+420 777 {n:04d}-{cid}",
        "first_name": f"Firstname-{cid}-x",
        "last_name": f"Qwertyson-{cid}-x",
        "street": f"Streetname-{cid}-x 12",
        "city": "Praha",
        "postal_code": "11000",
        "country": "CZ",
        "birth_date": "1980-05-17",
        "created_at": "2011-01-01T00:00:00",
        "last_active_at": last_active_at,
        **extra,
    }


def order(
    oid: str, cid: str, ordered_at: str, completed_at: str | None, **extra: Any
) -> dict[str, Any]:
    return {
        "order_id": oid,
        "contact_id": cid,
        "ordered_at": ordered_at,
        "completed_at": completed_at,
        "invoice_number": f"FV-{oid}",
        "total_amount": "1234.50",
        "currency": "CZK",
        "billing_name": f"Billname-{cid}-x",
        "billing_street": f"Billstreet-{cid}-x 7",
        "billing_city": "Brno",
        "billing_postal_code": "60200",
        "billing_country": "CZ",
        **extra,
    }


def shipment(sid: str, oid: str, **extra: Any) -> dict[str, Any]:
    return {
        "shipment_id": sid,
        "order_id": oid,
        "carrier": "PPL",
        "tracking_number": f"TRK-{sid}",
        "recipient_name": f"Recipient-{sid}-x",
        "recipient_phone": f"+420 603 {sid}-x",
        "street": f"Shipstreet-{sid}-x 3",
        "city": "Ostrava",
        "postal_code": "70200",
        "country": "CZ",
        "shipped_at": "2012-01-02T08:00:00",
        "delivered_at": "2012-01-03T12:00:00",
        **extra,
    }


def consent(kid: str, cid: str, granted_at: str, withdrawn_at: str | None = None) -> dict:
    return {
        "consent_id": kid,
        "contact_id": cid,
        "purpose": "newsletter",
        "granted_at": granted_at,
        "withdrawn_at": withdrawn_at,
        "ip_address": f"198.51.100.{len(kid)}",
        "method": "double_opt_in",
        "wording": "Chci dostávat newsletter.",
    }


CONTACTS = [
    # account: kept while T < last_active_at + 2y
    contact("acc_keep", "2025-06-01T00:00:00"),
    contact("acc_exact", "2024-03-01T00:00:00"),  # ends at T: anonymized
    contact("acc_in", "2024-03-02T00:00:00"),  # ends T+1d: kept
    contact("gone"),  # nothing keeps it: anonymized
    # newsletter: consent not withdrawn (or withdrawn after T) and T < granted_at + 3y
    contact("nl_only"),  # kept only for the newsletter
    contact("nl_exact"),  # granted T-3y: ended
    contact("nl_in"),  # granted T-3y+1d: kept for the newsletter
    contact("nl_wd_at"),  # withdrawn exactly at T: ended
    contact("nl_wd_after"),  # withdrawn T+1d: kept for the newsletter
    # consent_evidence: the consents row, T < (withdrawn_at or granted_at + 3y) + 3y
    contact("ev_w_exact"),
    contact("ev_w_in"),
    contact("ev_g_exact"),
    contact("ev_g_in"),
    # contract: T < completed_at + 3y + 1y (open while completed_at is null)
    contact("ctr_exact"),  # contract ended exactly at T: order pseudonymized (accounting)
    contact("ctr_in"),  # contract ends T+1d: buyer and order kept as they are
    contact("ctr_open"),  # order not completed: kept
    contact("two_runs"),  # one order pseudonymized at T, the other at T2 (same tokens)
    # accounting: T < ordered_at + 10y
    contact("acct_two"),  # two pseudonymized orders
    contact("acct_exact"),  # accounting ended exactly at T: order anonymized
    contact("acct_in"),  # accounting ends T+1d: order pseudonymized
    contact("acct_old"),  # long gone: order anonymized (ordered_at 2014-07-19 10:30)
    # litigation holds on contacts whose everything expired
    contact("held"),  # open hold (released_at null)
    contact("held_future"),  # released after T: still held
    contact("held_released"),  # released before T: enforced
]

ORDERS = [
    order("o_ctr_exact", "ctr_exact", "2022-02-01T00:00:00", "2022-03-01T00:00:00"),
    order("o_ctr_in", "ctr_in", "2022-02-01T00:00:00", "2022-03-02T00:00:00"),
    order("o_ctr_open", "ctr_open", "2010-05-01T00:00:00", None),
    order("o_two_a", "acct_two", "2020-01-10T09:00:00", "2020-01-15T00:00:00"),
    order("o_two_b", "acct_two", "2021-05-05T09:00:00", "2021-05-10T00:00:00"),
    order("o_run_1", "two_runs", "2019-01-01T00:00:00", "2019-01-05T00:00:00"),
    order("o_run_2", "two_runs", "2022-05-01T00:00:00", "2022-06-01T00:00:00"),
    order(
        "o_acct_exact",
        "acct_exact",
        "2016-03-01T00:00:00",
        "2016-03-05T00:00:00",
        total_amount="111.00",
    ),
    order("o_acct_in", "acct_in", "2016-03-02T00:00:00", "2016-03-05T00:00:00"),
    order(
        "o_acct_old",
        "acct_old",
        "2014-07-19T10:30:00",
        "2014-07-25T00:00:00",
        total_amount="222.00",
        currency="EUR",
        billing_country="SK",
    ),
    *(
        order(f"o_{c}", c, "2010-01-01T00:00:00", "2010-01-05T00:00:00", total_amount=amount)
        for c, amount in (
            ("held", "333.00"),
            ("held_future", "444.00"),
            ("held_released", "555.00"),
        )
    ),
]

SHIPMENTS = [
    # deleted once the order's contract ends: completed_at exactly T-4y → deleted
    shipment("s_ctr_exact", "o_ctr_exact"),
    shipment("s_ctr_in", "o_ctr_in"),  # completed_at T-4y+1d → kept
    shipment("s_ctr_open", "o_ctr_open", delivered_at=None),
    shipment("s_two_a", "o_two_a"),
    shipment("s_acct_old", "o_acct_old"),
    *(shipment(f"s_{c}", f"o_{c}") for c in ("held", "held_future", "held_released")),
]

CONSENTS = [
    consent("k_nl_only", "nl_only", "2024-06-01T00:00:00"),
    consent("k_nl_exact", "nl_exact", "2023-03-01T00:00:00"),
    consent("k_nl_in", "nl_in", "2023-03-02T00:00:00"),
    consent("k_nl_wd_at", "nl_wd_at", "2025-01-01T00:00:00", "2026-03-01T00:00:00"),
    consent("k_nl_wd_after", "nl_wd_after", "2025-01-01T00:00:00", "2026-03-02T00:00:00"),
    consent("k_ev_w_exact", "ev_w_exact", "2020-01-01T00:00:00", "2023-03-01T00:00:00"),
    consent("k_ev_w_in", "ev_w_in", "2020-01-01T00:00:00", "2023-03-02T00:00:00"),
    consent("k_ev_g_exact", "ev_g_exact", "2020-03-01T00:00:00"),
    consent("k_ev_g_in", "ev_g_in", "2020-03-02T00:00:00"),
    *(
        consent(f"k_{c}", c, "2010-01-01T00:00:00", "2011-01-01T00:00:00")
        for c in ("held", "held_future", "held_released")
    ),
]

HOLDS = [
    {"hold_id": "h_held", "contact_id": "held", "placed_at": "2025-01-01T00:00:00"},
    {
        "hold_id": "h_future",
        "contact_id": "held_future",
        "placed_at": "2025-01-01T00:00:00",
        "released_at": "2026-06-01T00:00:00",
    },
    {
        "hold_id": "h_released",
        "contact_id": "held_released",
        "placed_at": "2025-01-01T00:00:00",
        "released_at": "2026-01-01T00:00:00",
    },
]

HELD = ("held", "held_future")

# Contacts no purpose keeps at T: anonymized.
ANONYMIZED_CONTACTS = (
    "acc_exact",
    "gone",
    "nl_exact",
    "nl_wd_at",
    "ev_w_exact",
    "ev_w_in",
    "ev_g_exact",
    "ev_g_in",
    "ctr_exact",
    "acct_two",
    "acct_exact",
    "acct_in",
    "acct_old",
    "held_released",
)
# Contacts some purpose keeps whole (account or a running contract): untouched.
WHOLE_CONTACTS = ("acc_keep", "acc_in", "ctr_in", "ctr_open", "two_runs")
# Contacts kept only for the newsletter.
NEWSLETTER_CONTACTS = ("nl_only", "nl_in", "nl_wd_after")
PSEUDONYMIZED_ORDERS = ("o_ctr_exact", "o_two_a", "o_two_b", "o_run_1", "o_acct_in")
ANONYMIZED_ORDERS = ("o_acct_exact", "o_acct_old", "o_held_released")
KEPT_ORDERS = ("o_ctr_in", "o_ctr_open", "o_run_2")
KEPT_SHIPMENTS = ("s_ctr_in", "s_ctr_open")
DELETED_SHIPMENTS = ("s_ctr_exact", "s_two_a", "s_acct_old", "s_held_released")
KEPT_CONSENTS = (
    "k_nl_only",
    "k_nl_exact",
    "k_nl_in",
    "k_nl_wd_at",
    "k_nl_wd_after",
    "k_ev_w_in",
    "k_ev_g_in",
)
DELETED_CONSENTS = ("k_ev_w_exact", "k_ev_g_exact", "k_held_released")


def write_cases(landing, holds: bool = True) -> None:
    """Write the landing set (with the holds file unless `holds=False`)."""
    tables: dict[str, list[dict[str, Any]]] = {
        "contacts": CONTACTS,
        "consents": CONSENTS,
        "orders": ORDERS,
        "shipments": SHIPMENTS,
    }
    if holds:
        tables["holds"] = HOLDS
    write_landing_set(landing, **tables)


def key_names(home: Home, keys: Iterable[str] = ()) -> dict[str, str]:
    """{keyed hash: key} of every row key of the cases (and `keys`), with the home's vault
    secret: how the audit ledger names them."""
    secret = read_secret(home.vault)
    sets = {"contacts": CONTACTS, "consents": CONSENTS, "orders": ORDERS, "shipments": SHIPMENTS}
    every = [r[TABLES[t].key] for t, rows in sets.items() for r in rows] + [*keys]
    return {key_hash(secret, k): k for k in every}


def by_key(rows: list[dict[str, Any]], table: str) -> dict[str, dict[str, Any]]:
    key = TABLES[table].key
    return {r[key]: r for r in rows}


# The personal values that must be gone from everywhere once enforced at T: those of
# anonymized contacts (but not the ones their orders keep under accounting, which live
# on in the vault as the pseudonyms' values), those of deleted shipments, the erased
# columns of newsletter-only contacts, and the billing data of anonymized orders.
def erased_values() -> dict[str, str]:
    """{description: value} of every value that must not survive enforcement at T."""
    out: dict[str, str] = {}
    contacts = by_key(CONTACTS, "contacts")
    for cid in ANONYMIZED_CONTACTS:
        c = contacts[cid]
        for col in ("email", "phone", "first_name", "last_name", "street"):
            out[f"contacts.{col} of {cid}"] = c[col]
    for cid in NEWSLETTER_CONTACTS:
        c = contacts[cid]
        for col in ("phone", "last_name", "street"):
            out[f"contacts.{col} of {cid}"] = c[col]
    orders = by_key(ORDERS, "orders")
    for oid in ANONYMIZED_ORDERS:
        o = orders[oid]
        for col in ("billing_name", "billing_street", "invoice_number"):
            out[f"orders.{col} of {oid}"] = o[col]
    shipments = by_key(SHIPMENTS, "shipments")
    for sid in DELETED_SHIPMENTS:
        s = shipments[sid]
        for col in ("recipient_name", "recipient_phone", "street", "tracking_number"):
            out[f"shipments.{col} of {sid}"] = s[col]
    return out


def kept_values() -> dict[str, str]:
    """{description: value} of values a purpose (or a hold) still keeps at T."""
    contacts = by_key(CONTACTS, "contacts")
    out = {}
    for cid in (*WHOLE_CONTACTS, *HELD):
        for col in ("email", "phone", "last_name", "street"):
            out[f"contacts.{col} of {cid}"] = contacts[cid][col]
    for cid in NEWSLETTER_CONTACTS:
        for col in ("email", "first_name"):
            out[f"contacts.{col} of {cid}"] = contacts[cid][col]
    shipments = by_key(SHIPMENTS, "shipments")
    out["shipments.recipient_name of s_ctr_in"] = shipments["s_ctr_in"]["recipient_name"]
    return out


# --- building and reading warehouses --------------------------------------------------------


def prepare(root: Path, policy: Policy, as_of: dt.date = T, holds: bool = True) -> Home:
    """A LETHE_HOME at `root` with the cases ingested and tagged as of `as_of`."""
    home = Home(root).ensure()
    write_cases(home.landing, holds)
    ingest_and_tag(home.warehouse, home.landing, policy, as_of).close()
    return home


def rows(con: duckdb.DuckDBPyConnection, table: str, where: str = "true") -> list[dict]:
    """Every row of core.<table> (all columns, tags included) as dicts, in a stable order."""
    cur = con.execute(f"SELECT * FROM core.{table} WHERE {where}")
    names = [d[0] for d in cur.description]
    out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    return sorted(out, key=lambda r: repr(sorted(r.items())))


def keyed(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, dict]:
    """Rows of core.<table> with a key, by key (anonymized orders have none)."""
    key = TABLES[table].key
    return {r[key]: r for r in rows(con, table) if r[key] is not None}


def read_only(home: Home) -> duckdb.DuckDBPyConnection:
    return connect(home.warehouse, read_only=True)


def subject_rows(con: duckdb.DuckDBPyConnection, contact_id: str) -> dict[str, list[dict]]:
    """Every row of one contact in every core table (shipments through its orders)."""
    cid = "'" + contact_id.replace("'", "''") + "'"
    return {
        "contacts": rows(con, "contacts", f"contact_id = {cid}"),
        "consents": rows(con, "consents", f"contact_id = {cid}"),
        "orders": rows(con, "orders", f"contact_id = {cid}"),
        "shipments": rows(
            con,
            "shipments",
            f"order_id IN (SELECT order_id FROM core.orders WHERE contact_id = {cid})",
        ),
        "holds": rows(con, "holds", f"contact_id = {cid}"),
    }


def vault_values(home: Home) -> dict[str, tuple[str, str]]:
    """token -> (kind, value) of the vault under `home`."""
    con = connect(home.vault, read_only=True)
    try:
        return {
            t: (k, v) for t, k, v in con.execute("SELECT token, kind, value FROM tokens").fetchall()
        }
    finally:
        con.close()


def comparable(home: Home, drop: Iterable[str] = ()) -> dict[str, list[tuple]]:
    """Every core table as a sorted list of rows in which vault tokens are replaced by the
    (kind, value) they stand for and surrogates by a placeholder: two warehouses built
    the same way compare equal although their random tokens and surrogates differ."""
    tokens = vault_values(home) if home.vault.exists() else {}

    def unmask(value: Any) -> Any:
        if isinstance(value, str) and TOKEN.fullmatch(value):
            return ("token", *tokens.get(value, ("?", "?")))
        if isinstance(value, str) and SURROGATE.fullmatch(value):
            return "<surrogate>"
        return value

    con = read_only(home)
    try:
        out = {}
        for table in TAGGED_TABLES:
            data = [
                tuple(sorted((k, unmask(v)) for k, v in r.items() if k not in drop))
                for r in rows(con, table)
            ]
            out[table] = sorted(data, key=repr)
        return out
    finally:
        con.close()


def all_text(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> list[str]:
    """Every row of a table rendered as text (all columns, lists and JSON included)."""
    cur = con.execute(f"SELECT * FROM {schema}.{table}")
    return [repr(r) for r in cur.fetchall()]


def scan_files(root: Path, values: dict[str, str], skip: tuple[str, ...] = ()) -> dict:
    """{description: [files]} of the values whose UTF-8 bytes occur in any file under root."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if rel.parts and rel.parts[0] in skip:
            continue
        data = path.read_bytes()
        for what, value in values.items():
            if value.encode() in data:
                found.setdefault(what, []).append(str(rel))
    return found
