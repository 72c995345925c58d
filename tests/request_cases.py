"""Hand-made landing data and the shared pipeline scenario of the data-subject-request tests.

Every person carries distinctive personal values derived from their contact_id, each with
a terminator (`-x`), so no value is a substring of another and a test can look for them
both in query results and in the raw bytes of any file under LETHE_HOME.

The scenario (`scenario()`, see the comment above `Scenario`) runs the real Dagster
pipeline four times on one LETHE_HOME, which is the slow part, so it is built once per
session and shared by test_requests, test_exports and test_request_forensics. The
warehouse is built with `PRAGMA force_compression='uncompressed'` so that the subjects'
values are findable in the raw bytes of the file before the erasure.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from conftest import (
    DEFAULT_POLICY,
    TABLES,
    TAGGED_TABLES,
    home_env,
    ingest_all,
    write_landing,
    write_landing_set,
)

from lethe.declaration.policy import Policy, load_policy
from lethe.engine.enforcement import enforce
from lethe.engine.keyhash import key_hash, read_secret
from lethe.engine.tagging import tag_all
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from lethe.rights.answers import answer_pending
from lethe.rights.requests import Request, apply_pending, record_request
from pipelines.launch import RunOutcome, run_pipeline

T = dt.date(2026, 3, 1)  # the as-of date of every run
ACTIVE = "2025-06-01T00:00:00"  # last_active_at that keeps a contact for its account
OLD = "2012-01-01T00:00:00"  # long expired for every purpose


# --- hand-made rows ---------------------------------------------------------------------------


def person(cid: str, last_active_at: str = ACTIVE, **extra: Any) -> dict[str, Any]:
    n = sum(ord(ch) * (i + 1) for i, ch in enumerate(cid)) % 10_000
    return {
        "contact_id": cid,
        "email": f"mail.{cid}.x@example.test",
        "phone": f"+420 777 {n:04d} {cid}-x",
        "first_name": f"First-{cid}-x",
        "last_name": f"Surname-{cid}-x",
        "street": f"Street-{cid}-x 12",
        "city": "Praha",
        "postal_code": "11000",
        "country": "CZ",
        "birth_date": "1980-05-17",
        "created_at": "2011-01-01T00:00:00",
        "last_active_at": last_active_at,
        **extra,
    }


def full_name(p: dict[str, Any]) -> str:
    return f"{p['first_name']} {p['last_name']}"


def order_for(
    oid: str,
    p: dict[str, Any],
    ordered_at: str,
    completed_at: str | None,
    billing_email: str | None = "same",
    **extra: Any,
) -> dict[str, Any]:
    """An order whose billing fields copy the buyer's name, street and (extra) e-mail."""
    return {
        "order_id": oid,
        "contact_id": p["contact_id"],
        "ordered_at": ordered_at,
        "completed_at": completed_at,
        "invoice_number": f"FV-{oid}",
        "total_amount": "1234.50",
        "currency": "CZK",
        "billing_name": full_name(p),
        "billing_street": p["street"],
        "billing_city": p["city"],
        "billing_postal_code": p["postal_code"],
        "billing_country": p["country"],
        # Not in the contract: carried as an extra column.
        "billing_email": p["email"] if billing_email == "same" else billing_email,
        **extra,
    }


def shipment_for(sid: str, oid: str, p: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "shipment_id": sid,
        "order_id": oid,
        "carrier": "PPL",
        "tracking_number": f"TRK-{sid}-x",
        "recipient_name": full_name(p),
        "recipient_phone": p["phone"],
        "street": p["street"],
        "city": p["city"],
        "postal_code": p["postal_code"],
        "country": p["country"],
        "shipped_at": "2025-12-02T08:00:00",
        "delivered_at": "2025-12-03T12:00:00",
        **extra,
    }


def consent_for(
    kid: str, p: dict[str, Any], granted_at: str, withdrawn_at: str | None = None
) -> dict[str, Any]:
    return {
        "consent_id": kid,
        "contact_id": p["contact_id"],
        "purpose": "newsletter",
        "granted_at": granted_at,
        "withdrawn_at": withdrawn_at,
        "ip_address": f"198.51.100.{len(kid)}",
        "method": "double_opt_in",
        "wording": f"Chci dostávat newsletter ({kid}).",
    }


# --- building warehouses and reading them -----------------------------------------------------


def policy() -> Policy:
    return load_policy(DEFAULT_POLICY)


def build(home: Home, *, uncompressed: bool = False, **tables: list[dict[str, Any]]) -> None:
    """Write the landing set, ingest it and tag it as of T (optionally uncompressed)."""
    write_landing_set(home.landing, **tables)
    pol = policy()
    con = connect(home.warehouse)
    try:
        if uncompressed:
            con.execute("PRAGMA force_compression='uncompressed'")
        ingest_all(con, home.landing, pol)
        tag_all(con, pol, T)
        con.execute("CHECKPOINT")
    finally:
        con.close()


def redeliver(home: Home, **tables: list[dict[str, Any]]) -> None:
    """Put rows into landing/ again (only the given tables)."""
    for name, rows in tables.items():
        write_landing(home.landing, name, rows)


def record(home: Home, *requests: tuple[str, str, dict[str, Any]]) -> list[Request]:
    """Record (type, subject, kwargs) requests on the home's warehouse."""
    con = connect(home.warehouse)
    try:
        schema = policy().data_schema
        return [record_request(con, schema, t, s, **kw) for t, s, kw in requests]
    finally:
        con.close()


def run(home: Home) -> RunOutcome:
    outcome = run_pipeline(home, T, str(DEFAULT_POLICY))
    assert outcome.success, outcome.errors
    return outcome


def run_steps(
    home: Home, policy: Policy, as_of: dt.date, run_id: str, *, intake_vault: bool = True
) -> None:
    """What the pipeline's request intake, tagging, enforcement and request answers assets
    do (assets/requests.py, tagging.py, enforcement.py), in that order, without Dagster.
    `intake_vault=False`: the intake is given no vault, so it registers no pseudonyms of erased
    subjects."""
    con = connect(home.warehouse)
    try:
        apply_pending(con, policy, as_of, run_id, vault=home.vault if intake_vault else None)
        tag_all(con, policy, as_of)
    finally:
        con.close()
    enforce(home, policy, as_of, run_id)
    con = connect(home.warehouse)
    try:
        answer_pending(con, home, policy, as_of, run_id)
    finally:
        con.close()


def query(home: Home, sql: str, params: list | None = None) -> list[tuple]:
    con = connect(home.warehouse, read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def dicts(home: Home, sql: str, params: list | None = None) -> list[dict[str, Any]]:
    con = connect(home.warehouse, read_only=True)
    try:
        cur = con.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def snapshot(home: Home) -> dict[str, dict[Any, dict[str, Any]]]:
    """Every tagged core table (all columns) by key, for before/after comparisons.

    Anonymized orders have no key: they are listed under ("anonymized", n)."""
    out = {}
    for table in TAGGED_TABLES:
        key = TABLES[table].key
        rows = sorted(dicts(home, f"SELECT * FROM core.{table}"), key=repr)
        out[table] = {
            (r[key] if r[key] is not None else ("anonymized", i)): r for i, r in enumerate(rows)
        }
    return out


def subject_snapshot(home: Home, cid: str) -> dict[str, list[dict[str, Any]]]:
    """One contact's rows in every tagged table (shipments through its orders)."""
    out = {}
    for table in TAGGED_TABLES:
        where = (
            "order_id IN (SELECT order_id FROM core.orders WHERE contact_id = ?)"
            if table == "shipments"
            else "contact_id = ?"
        )
        rows = dicts(home, f"SELECT * FROM core.{table} WHERE {where}", [cid])
        out[table] = sorted(rows, key=lambda r: str(r[TABLES[table].key]))
    return out


def ledger(home: Home) -> list[dict[str, Any]]:
    return dicts(home, "SELECT * FROM audit.ledger ORDER BY seq")


def hashed(home: Home, key: str) -> str:
    """The keyed hash of `key` with the home's vault secret: how the ledger names every key,
    and Lethe's own tables a gone subject's."""
    return key_hash(read_secret(home.vault), key)


def answer(home: Home, request_id: str) -> tuple[str, dict[str, Any] | None]:
    status, text = query(
        home, "SELECT status, answer FROM requests.requests WHERE request_id = ?", [request_id]
    )[0]
    return status, json.loads(text) if text else None


def files_under(root: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in skip
    )


def scan(root: Path, values: dict[str, str], skip: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """{description: [relative files]} of the values whose UTF-8 bytes occur in a file."""
    found: dict[str, list[str]] = {}
    for path in files_under(root, skip):
        data = path.read_bytes()
        for what, value in values.items():
            if value.encode() in data:
                found.setdefault(what, []).append(str(path.relative_to(root)))
    return found


def read_zip(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def materializations(home: Home, run_id: str) -> list[str]:
    """Asset keys materialized by one run of the Dagster instance under LETHE_HOME."""
    instance = dg.DagsterInstance.from_config(str(home.dagster))
    try:
        records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        return ["/".join(r.dagster_event.asset_key.path) for r in records]
    finally:
        instance.dispose()


# --- the shared scenario ----------------------------------------------------------------------
#
# Run 1: access, portability, rectification, objection, restriction, and an access export
# of a subject (GONE) who asks for erasure later.
# Run 2: 50 erasure requests in one run (ERIN by e-mail, with orders under accounting and
# quarantined rows; HELD under an open hold; GONE, who got an access export in run 1; 47
# more), while the restricted subject's rows are delivered again.
# Run 3: nothing new (a second erasure run).
# Run 4: ERIN's contact row is delivered again.

ACC = person("c-acc")  # access: an order under accounting (pseudonymized), an open order
PORT = person("c-port")  # portability: account, active and evidence-only consents, an invoice
RECT = person("c-rect")  # rectification: e-mail, surname and street copied into orders/shipments
OBJ = person("c-obj")  # objection: active newsletter consent
RESTR = person("c-restr")  # restriction: rows in every table
GONE = person("c-gone")  # access in run 1 (by e-mail), erasure in run 2
OTHER = person("c-other")  # asks nothing
ERIN = person("c-erin")  # erased, given by e-mail; orders under accounting; quarantined copies
HELD = person("c-held", OLD)  # erased while under an open litigation hold
CTRL = person("c-ctrl")  # never erased: its values must still be found by the scan
BULK = [person(f"c-bulk-{i:02d}") for i in range(47)]  # 47 more erasures: 50 in one run
XTRA = BULK[0]  # erased; its e-mail is also in an order's extra column billing_email

RECT_NEW = {
    "email": "rectified.c-rect.x@example.test",
    "last_name": "Newsurname-c-rect-x",
    "street": "Newstreet-c-rect-x 5",
}

CONTACTS = [ACC, PORT, RECT, OBJ, RESTR, GONE, OTHER, ERIN, HELD, CTRL, *BULK]
ORDERS = [
    # contract ended 2024-01-15: pseudonymized for accounting (until 2030-01-10) in run 1
    order_for("o-acc-1", ACC, "2020-01-10T09:00:00", "2020-01-15T00:00:00"),
    order_for("o-acc-2", ACC, "2025-12-01T09:00:00", None),  # contract open
    order_for("o-port-1", PORT, "2020-02-10T09:00:00", "2020-02-15T00:00:00"),  # accounting
    order_for("o-rect-1", RECT, "2025-12-01T09:00:00", None),
    order_for("o-restr-1", RESTR, "2025-12-01T09:00:00", None),
    order_for("o-other-1", OTHER, "2025-12-01T09:00:00", None),
    # contract ended 2024-01-15; accounting keeps it until 2030-01-10
    order_for("o-erin-1", ERIN, "2020-01-10T09:00:00", "2020-01-15T00:00:00", billing_email=None),
    # contract still running: the erasure ends it, accounting keeps it until 2035-12-01
    order_for("o-erin-2", ERIN, "2025-12-01T09:00:00", None, billing_email=None),
    order_for("o-held-1", HELD, "2010-01-01T00:00:00", "2010-01-05T00:00:00"),
    order_for("o-ctrl-1", CTRL, "2025-12-01T09:00:00", None),
    order_for("o-xtra-1", XTRA, "2025-11-01T09:00:00", None),
]
SHIPMENTS = [
    shipment_for("s-acc-2", "o-acc-2", ACC),
    shipment_for("s-rect-1", "o-rect-1", RECT),
    shipment_for("s-restr-1", "o-restr-1", RESTR),
    shipment_for("s-other-1", "o-other-1", OTHER),
    shipment_for("s-erin-2", "o-erin-2", ERIN),
    shipment_for("s-held-1", "o-held-1", HELD, shipped_at=OLD, delivered_at=OLD),
    shipment_for("s-ctrl-1", "o-ctrl-1", CTRL),
]
CONSENTS = [
    consent_for("k-acc", ACC, "2025-01-01T00:00:00"),
    consent_for("k-port-new", PORT, "2025-01-01T00:00:00"),
    # withdrawn: kept only as evidence (legitimate interest), so not portable
    consent_for("k-port-old", PORT, "2022-01-01T00:00:00", "2024-01-01T00:00:00"),
    consent_for("k-obj", OBJ, "2025-01-01T00:00:00"),
    consent_for("k-restr", RESTR, "2025-01-01T00:00:00"),
    consent_for("k-other", OTHER, "2025-01-01T00:00:00"),
    consent_for("k-erin", ERIN, "2025-01-01T00:00:00"),
    consent_for("k-held", HELD, "2010-01-01T00:00:00", "2011-01-01T00:00:00"),
    consent_for("k-ctrl", CTRL, "2025-01-01T00:00:00"),
]
HOLDS = [
    {
        "hold_id": "h-held",
        "contact_id": HELD["contact_id"],
        "reason": "court case 12/2025",
        "placed_at": "2025-01-01T00:00:00",
        "released_at": None,
    }
]
# Rejected input rows: three copy ERIN's values (found by contact_id, e-mail and order),
# one is OTHER's and must stay quarantined.
BAD_CONTACTS = [
    person("c-erin-typo", email=ERIN["email"].upper(), phone=ERIN["phone"], birth_date="1980-13-45")
]
BAD_ORDERS = [
    order_for(
        "o-erin-bad", ERIN, "2025-12-01T09:00:00", None, billing_email=None, total_amount="x"
    ),
    order_for("o-other-bad", OTHER, "2025-12-01T09:00:00", None, total_amount="y"),
]
BAD_SHIPMENTS = [shipment_for("s-erin-bad", "o-erin-2", ERIN, shipped_at="yesterday")]

ERASED = [ERIN, HELD, GONE, *BULK]  # 50 erasure requests in run 2
RUN1 = ("access", "portability", "rect", "obj", "restr", "gone_access")


def values_of(p: dict[str, Any], cols: tuple[str, ...] = ("email", "phone", "last_name", "street")):
    return {f"{col} of {p['contact_id']}": p[col] for col in cols}


def rows_of(table: str, cid: str) -> list[dict[str, Any]]:
    """The landing rows of one contact in `table` (shipments through its orders)."""
    if table == "contacts":
        return [p for p in CONTACTS if p["contact_id"] == cid]
    if table == "shipments":
        mine = {o["order_id"] for o in ORDERS if o["contact_id"] == cid}
        return [x for x in SHIPMENTS if x["order_id"] in mine]
    rows = {"consents": CONSENTS, "orders": ORDERS}[table]
    return [r for r in rows if r["contact_id"] == cid]


@dataclass
class Scenario:
    home: Home
    ids: dict[str, str] = field(default_factory=dict)  # run-1 request name -> request id
    erasures: dict[str, str] = field(default_factory=dict)  # contact_id -> erasure request id
    erasure_subjects: dict[str, str] = field(default_factory=dict)  # contact_id -> as given
    quarantine_before: list[tuple] = field(default_factory=list)
    before_scan: dict[str, list[str]] = field(default_factory=dict)
    runs: list[RunOutcome] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # after each run
    subjects_after_run1: dict[str, dict[str, Any]] = field(default_factory=dict)
    held_before: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    exports_run1: dict[str, dict[str, bytes]] = field(default_factory=dict)  # zip contents
    export_names_run1: dict[str, str] = field(default_factory=dict)
    exports_after_run2: list[str] = field(default_factory=list)
    scan_after_run2: dict[str, list[str]] = field(default_factory=dict)
    scan_after_run4: dict[str, list[str]] = field(default_factory=dict)
    materialized_run2: list[str] = field(default_factory=list)
    ledger_after_run2: list[dict[str, Any]] = field(default_factory=list)


SCANNED = {
    **values_of(ERIN),
    **values_of(GONE),
    **values_of(XTRA, ("email",)),
    "email of c-ctrl": CTRL["email"],
    "street of c-ctrl": CTRL["street"],
}


def build_scenario(root: Path) -> Scenario:
    home = Home(root).ensure()
    s = Scenario(home)
    build(
        home,
        uncompressed=True,
        contacts=[*CONTACTS, *BAD_CONTACTS],
        consents=CONSENTS,
        orders=[*ORDERS, *BAD_ORDERS],
        shipments=[*SHIPMENTS, *BAD_SHIPMENTS],
        holds=HOLDS,
    )
    s.quarantine_before = query(
        home, "SELECT table_name, row_number, column_name FROM core.quarantine ORDER BY ALL"
    )
    s.before_scan = scan(home.root, SCANNED, skip=("backups",))
    s.held_before = subject_snapshot(home, HELD["contact_id"])

    # Run 1
    made = record(
        home,
        ("access", ACC["contact_id"], {}),
        ("portability", PORT["contact_id"], {}),
        ("rectification", RECT["contact_id"], {"changes": dict(RECT_NEW)}),
        ("objection", OBJ["email"], {}),
        ("restriction", RESTR["contact_id"], {}),
        ("access", GONE["email"].upper(), {}),
    )
    s.ids = {name: r.request_id for name, r in zip(RUN1, made, strict=True)}
    s.runs.append(run(home))
    s.snapshots.append(snapshot(home))
    for p in (ACC, PORT, RECT, OBJ, RESTR):
        s.subjects_after_run1[p["contact_id"]] = subject_snapshot(home, p["contact_id"])
    for name in ("access", "portability", "gone_access"):
        path = next((home.exports / "requests").glob(f"{s.ids[name]}-*.zip"))
        s.export_names_run1[name] = path.name
        s.exports_run1[name] = read_zip(path)

    # Run 2: 50 erasures; the restricted subject's rows are delivered again.
    s.erasure_subjects = {p["contact_id"]: p["contact_id"] for p in ERASED}
    s.erasure_subjects[ERIN["contact_id"]] = ERIN["email"]
    made = record(home, *(("erasure", subj, {}) for subj in s.erasure_subjects.values()))
    s.erasures = {r.subject_key: r.request_id for r in made}
    redeliver(home, **{t: rows_of(t, RESTR["contact_id"]) for t in TAGGED_TABLES})
    s.runs.append(run(home))
    s.snapshots.append(snapshot(home))
    s.exports_after_run2 = sorted(p.name for p in (home.exports / "requests").glob("*.zip"))
    s.scan_after_run2 = scan(home.root, SCANNED, skip=("backups",))
    s.materialized_run2 = materializations(home, s.runs[1].run_id)
    s.ledger_after_run2 = ledger(home)

    # Run 3: nothing new.
    s.runs.append(run(home))
    s.snapshots.append(snapshot(home))

    # Run 4: ERIN's contact row delivered again.
    redeliver(home, contacts=[ERIN])
    s.runs.append(run(home))
    s.snapshots.append(snapshot(home))
    s.scan_after_run4 = scan(home.root, SCANNED, skip=("backups",))
    return s


_CACHE: dict[str, Scenario] = {}


def scenario(tmp_path_factory) -> Scenario:
    """The shared scenario, built once per session (several test modules read it)."""
    if "scenario" not in _CACHE:
        home = Home(tmp_path_factory.mktemp("requests") / "home")
        with home_env(home):
            _CACHE["scenario"] = build_scenario(home.root)
    return _CACHE["scenario"]
