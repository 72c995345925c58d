"""Retention enforcement with the default policy on a hand-made warehouse (tests/retention_cases).

Every default rule is checked on both sides of its boundary at T = 2026-03-01, plus the
newsletter-only contact, anonymization with surrogates, pseudonymization with vault
tokens, idempotence, monotonicity and the audit ledger. A whole pipeline run (asset
checks included) is in test_forensic.py, which scans its files too.
"""

from __future__ import annotations

import csv
import datetime as dt
import shutil
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import retention_cases as rc
import yaml
from conftest import DEFAULT_POLICY, write_landing
from renaming import Renaming, suffixed

from lethe.compliance.consent_health import build_consent_health
from lethe.declaration.policy import Policy, load_policy
from lethe.engine.audit import verify
from lethe.engine.enforcement import EnforcementResult, enforce
from lethe.engine.ingest import ingest_table
from lethe.engine.tagging import tag_all, tagged_tables
from lethe.engine.vault import open_vault, reidentify
from lethe.engine.warehouse import connect
from lethe.eshop import SCHEMA_FILE
from lethe.operations.home import Home

T, T2 = rc.T, rc.T2
CONTACT_IDENTIFIERS = ("email", "phone", "first_name", "last_name", "street", "city")


@dataclass
class Enforced:
    home: Home
    before: dict[str, dict[str, dict]]  # table -> key -> row, tagged at T, not enforced
    result: EnforcementResult


@pytest.fixture(scope="module")
def enforced(tmp_path_factory: pytest.TempPathFactory, policy: Policy) -> Enforced:
    """The cases ingested, tagged and enforced as of T (run id `run-T`)."""
    home = rc.prepare(tmp_path_factory.mktemp("enforced") / "home", policy)
    con = rc.read_only(home)
    try:
        before = {t: rc.keyed(con, t) for t in ("contacts", "consents", "orders", "shipments")}
    finally:
        con.close()
    return Enforced(home, before, enforce(home, policy, T, "run-T"))


@pytest.fixture(scope="module")
def after(enforced: Enforced) -> dict[str, list[dict]]:
    con = rc.read_only(enforced.home)
    try:
        return {t: rc.rows(con, t) for t in ("contacts", "consents", "orders", "shipments")}
    finally:
        con.close()


def by_key(after: dict[str, list[dict]], table: str) -> dict[str, dict]:
    key = rc.TABLES[table].key
    return {r[key]: r for r in after[table] if r[key] is not None}


# --- contacts --------------------------------------------------------------------------------


def test_contacts_a_purpose_keeps_whole_are_untouched(enforced: Enforced, after) -> None:
    contacts = by_key(after, "contacts")
    for cid in rc.WHOLE_CONTACTS:
        assert contacts[cid] == enforced.before["contacts"][cid], cid
    # account boundary: last_active_at + 2y == T is over, T + 1 day is not
    assert "acc_in" in contacts and "acc_exact" not in contacts


def test_contact_kept_only_for_the_newsletter(enforced: Enforced, after) -> None:
    row = by_key(after, "contacts")["nl_only"]
    contract = {c: row[c] for c in rc.TABLES["contacts"].column_names}
    assert contract == {
        "contact_id": "nl_only",
        "email": "zx-nl_only@example.test",
        "first_name": "Firstname-nl_only-x",
        "phone": None,
        "last_name": None,
        "street": None,
        "city": None,
        "postal_code": "110",  # first 3 characters
        "country": "CZ",  # kept
        "birth_date": dt.date(1980, 1, 1),  # year only
        "created_at": None,
        "last_active_at": None,
    }
    assert row["_purposes"] == ["newsletter"]
    assert row["_state"] == "active"


def test_newsletter_boundaries(after) -> None:
    contacts = by_key(after, "contacts")
    # granted_at + 3y: exactly T is over, a day later is not
    assert "nl_exact" not in contacts
    assert contacts["nl_in"]["email"] == "zx-nl_in@example.test"
    assert contacts["nl_in"]["last_name"] is None
    # withdrawn exactly at T: over; withdrawn the day after T: still kept
    assert "nl_wd_at" not in contacts
    assert contacts["nl_wd_after"]["_purposes"] == ["newsletter"]
    assert contacts["nl_wd_after"]["first_name"] == "Firstname-nl_wd_after-x"


def test_contacts_no_purpose_keeps_are_anonymized(enforced: Enforced, after) -> None:
    ids = {r["contact_id"] for r in after["contacts"]}
    assert ids.isdisjoint(rc.ANONYMIZED_CONTACTS)
    anonymized = [r for r in after["contacts"] if r["_state"] == "anonymized"]
    assert len(anonymized) == len(rc.ANONYMIZED_CONTACTS)
    for row in anonymized:
        assert rc.SURROGATE.fullmatch(row["contact_id"]), row["contact_id"]
        for col in (*CONTACT_IDENTIFIERS, "created_at", "last_active_at"):
            assert row[col] is None, (col, row)
        assert row["postal_code"] == "110"
        assert row["birth_date"] == dt.date(1980, 1, 1)
        assert row["country"] == "CZ"
        assert row["_purposes"] == []
    assert len({r["contact_id"] for r in anonymized}) == len(anonymized)
    assert len(after["contacts"]) == len(enforced.before["contacts"])  # anonymized, not deleted


def test_surrogates_appear_nowhere_else(enforced: Enforced, after) -> None:
    surrogates = {r["contact_id"] for r in after["contacts"] if r["_state"] == "anonymized"}
    con = rc.read_only(enforced.home)
    try:
        texts = [
            *rc.all_text(con, "core", "consents"),
            *rc.all_text(con, "core", "orders"),
            *rc.all_text(con, "core", "shipments"),
            *rc.all_text(con, "core", "holds"),
            *rc.all_text(con, "audit", "ledger"),
        ]
    finally:
        con.close()
    vault = open_vault(enforced.home.vault)
    try:
        texts += rc.all_text(vault, "vault", "tokens")
    finally:
        vault.close()
    for surrogate in surrogates:
        assert not [t for t in texts if surrogate in t], surrogate


# --- orders ----------------------------------------------------------------------------------


def test_orders_under_a_running_contract_are_untouched(enforced: Enforced, after) -> None:
    orders = by_key(after, "orders")
    for oid in rc.KEPT_ORDERS:
        assert orders[oid] == enforced.before["orders"][oid], oid


def test_orders_kept_only_for_accounting_are_pseudonymized(enforced: Enforced, after) -> None:
    orders = by_key(after, "orders")
    pseudo = ("contact_id", "billing_name", "billing_street")
    for oid in rc.PSEUDONYMIZED_ORDERS:
        row, old = orders[oid], enforced.before["orders"][oid]
        assert row["_state"] == "pseudonymized"
        assert row["_purposes"] == ["accounting"]
        for col in pseudo:
            assert rc.TOKEN.fullmatch(row[col]), (oid, col, row[col])
        for col in rc.TABLES["orders"].column_names:
            if col not in pseudo:
                assert row[col] == old[col], (oid, col)
    # contract boundary: completed_at + 4y == T is over (pseudonymized), T + 1 day is not
    assert orders["o_ctr_exact"]["_state"] == "pseudonymized"
    assert orders["o_ctr_in"]["contact_id"] == "ctr_in"


def test_same_value_same_token_and_the_vault_maps_it_back(enforced: Enforced, after) -> None:
    orders = by_key(after, "orders")
    a, b = orders["o_two_a"], orders["o_two_b"]
    for col in ("contact_id", "billing_name", "billing_street"):
        assert a[col] == b[col], col  # two orders of one buyer: one token per value
    others = {orders[o]["contact_id"] for o in rc.PSEUDONYMIZED_ORDERS}
    assert len(others) == 4  # o_ctr_exact, acct_two (2 orders), two_runs, acct_in
    vault = open_vault(enforced.home.vault)
    try:
        back = dict(
            reidentify(vault, [a["contact_id"], a["billing_name"], a["billing_street"]]).iter_rows()
        )
    finally:
        vault.close()
    assert back == {
        a["contact_id"]: "acct_two",
        a["billing_name"]: "Billname-acct_two-x",
        a["billing_street"]: "Billstreet-acct_two-x 7",
    }


def test_orders_no_purpose_keeps_are_anonymized(after) -> None:
    orders = by_key(after, "orders")
    assert orders.keys().isdisjoint(rc.ANONYMIZED_ORDERS)
    # accounting boundary: ordered_at + 10y == T is over, T + 1 day is not
    assert orders["o_acct_in"]["_state"] == "pseudonymized"
    anonymized = [r for r in after["orders"] if r["_state"] == "anonymized"]
    kept = {"total_amount", "currency", "billing_country", "ordered_at"}
    for row in anonymized:
        for col in rc.TABLES["orders"].column_names:
            if col not in kept:
                assert row[col] is None, (col, row)
        assert row["_purposes"] == []
    assert sorted(
        (r["ordered_at"], r["total_amount"], r["currency"], r["billing_country"])
        for r in anonymized
    ) == [
        (dt.datetime(2010, 1, 1), Decimal("555.00"), "CZK", "CZ"),  # o_held_released
        (dt.datetime(2014, 7, 1), Decimal("222.00"), "EUR", "SK"),  # o_acct_old, month only
        (dt.datetime(2016, 3, 1), Decimal("111.00"), "CZK", "CZ"),  # o_acct_exact
    ]


def test_anonymized_rows_do_not_reveal_the_generalized_values(after) -> None:
    for row in after["orders"]:
        if row["_state"] == "anonymized" and row["_retain_until"] is not None:
            # at most what the month-truncated ordered_at tells
            assert row["_retain_until"] == row["ordered_at"].replace(
                year=row["ordered_at"].year + 10
            )
    for row in after["contacts"]:
        if row["_state"] == "anonymized":
            assert row["_retain_until"] is None, row


# --- shipments and consents ------------------------------------------------------------------


def test_shipments_end_with_the_orders_contract(enforced: Enforced, after) -> None:
    shipments = by_key(after, "shipments")
    assert set(shipments) == {*rc.KEPT_SHIPMENTS, "s_held", "s_held_future"}
    for sid in shipments:
        assert shipments[sid] == enforced.before["shipments"][sid]
    # completed_at exactly T - 4y: deleted; T - 4y + 1 day: kept
    assert "s_ctr_exact" not in shipments and "s_ctr_in" in shipments


def test_consents_end_with_consent_evidence(enforced: Enforced, after) -> None:
    consents = by_key(after, "consents")
    assert set(consents) == {*rc.KEPT_CONSENTS, "k_held", "k_held_future"}
    for kid in consents:
        assert consents[kid] == enforced.before["consents"][kid]
    # withdrawn_at + 3y == T: deleted, a day later: kept; granted_at + 6y likewise
    assert "k_ev_w_exact" not in consents and "k_ev_w_in" in consents
    assert "k_ev_g_exact" not in consents and "k_ev_g_in" in consents
    assert consents["k_ev_w_in"]["_purposes"] == ["consent_evidence"]


def test_nothing_is_left_past_retention(enforced: Enforced, policy: Policy) -> None:
    from lethe.compliance.inspection import rows_past_retention

    con = rc.read_only(enforced.home)
    try:
        assert rows_past_retention(con, policy) == dict.fromkeys(rc.TAGGED_TABLES, 0)
    finally:
        con.close()


def test_rows_loaded_after_tagging_are_not_erased_by_enforce(
    tmp_path: Path, policy: Policy
) -> None:
    home = rc.prepare(tmp_path / "home", policy)  # tagged as of T
    fresh = rc.contact("fresh", "2026-02-01T00:00:00")  # account keeps it until 2028
    write_landing(home.landing, "contacts", [fresh])
    con = connect(home.warehouse)
    try:
        ingest_table(con, home.landing, "contacts", policy)
    finally:
        con.close()
    enforce(home, policy, T, "run-T")
    con = rc.read_only(home)
    try:
        row = rc.keyed(con, "contacts").get("fresh")
    finally:
        con.close()
    assert row is not None
    assert {c: row[c] for c in rc.TABLES["contacts"].column_names} == {
        **fresh,
        "birth_date": dt.date(1980, 5, 17),
        "created_at": dt.datetime(2011, 1, 1),
        "last_active_at": dt.datetime(2026, 2, 1),
    }


# --- the ledger ------------------------------------------------------------------------------


def ledger(home: Home) -> list[dict]:
    con = rc.read_only(home)
    try:
        cur = con.execute("SELECT * FROM audit.ledger ORDER BY seq")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()


def test_ledger_records_every_action(enforced: Enforced) -> None:
    entries = ledger(enforced.home)
    assert enforced.result.ledger_entries == len(entries)
    assert {e["run_id"] for e in entries} == {"run-T"}
    assert {e["as_of"] for e in entries} == {T}
    assert all(e["reason"] for e in entries)
    assert all(e["key_count"] == len(e["keys"]) for e in entries)
    names = rc.key_names(enforced.home)  # the ledger stores keyed hashes, never a raw key
    assert not {k for e in entries for k in e["keys"]} - set(names)

    def keys(action: str, table: str, strategy: str | None = None) -> list[str]:
        found = [
            names[k]
            for e in entries
            if e["action"] == action
            and e["table_name"] == table
            and (strategy is None or e["strategy"] == strategy)
            for k in e["keys"]
        ]
        return sorted(found)

    assert keys("anonymize", "contacts", "anonymize") == sorted(rc.ANONYMIZED_CONTACTS)
    assert keys("delete", "shipments", "delete") == sorted(rc.DELETED_SHIPMENTS)
    assert keys("delete", "consents", "delete") == sorted(rc.DELETED_CONSENTS)
    assert keys("pseudonymize", "orders", "pseudonymize") == sorted(rc.PSEUDONYMIZED_ORDERS)
    assert keys("anonymize", "orders", "anonymize") == sorted(rc.ANONYMIZED_ORDERS)
    assert keys("erase", "contacts", "erase") == sorted(rc.NEWSLETTER_CONTACTS)
    assert keys("erase", "contacts", "prefix") == sorted(rc.NEWSLETTER_CONTACTS)
    assert keys("erase", "contacts", "truncate") == sorted(rc.NEWSLETTER_CONTACTS)
    by_strategy = {
        (e["table_name"], e["strategy"]): e["columns"] for e in entries if e["action"] == "erase"
    }
    assert {"phone", "last_name", "street"} <= set(by_strategy["contacts", "erase"])
    assert by_strategy["contacts", "prefix"] == ["postal_code"]
    assert by_strategy["contacts", "truncate"] == ["birth_date"]
    pseudo = [e for e in entries if e["action"] == "pseudonymize"]
    assert [e["columns"] for e in pseudo] == [["contact_id", "billing_name", "billing_street"]]
    # nobody held was touched
    touched = {names[k] for e in entries for k in e["keys"]}
    assert touched.isdisjoint({"held", "held_future", "o_held", "s_held", "k_held"})


def test_ledger_never_holds_an_erased_value(enforced: Enforced) -> None:
    con = rc.read_only(enforced.home)
    try:
        text = "\n".join(rc.all_text(con, "audit", "ledger"))
    finally:
        con.close()
    assert "run-T" in text  # the rendering shows what the ledger holds
    leaked = {what for what, value in rc.erased_values().items() if value in text}
    assert not leaked


def test_ledger_verifies(enforced: Enforced) -> None:
    con = rc.read_only(enforced.home)
    try:
        result = verify(con)
    finally:
        con.close()
    assert result.ok, result.problem
    assert result.entries == enforced.result.ledger_entries > 0


# --- idempotence and monotonicity -------------------------------------------------------------


def copy_home(src: Home, dst: Path) -> Home:
    shutil.copytree(src.root, dst)
    return Home(dst)


def test_same_as_of_twice_changes_nothing(
    enforced: Enforced, policy: Policy, tmp_path: Path
) -> None:
    home = copy_home(enforced.home, tmp_path / "again")
    first = rc.comparable(home)
    tokens = rc.vault_values(home)
    con = rc.read_only(home)
    try:
        raw_before = {t: rc.rows(con, t) for t in rc.TAGGED_TABLES}
    finally:
        con.close()
    result = enforce(home, policy, T, "run-T-again")
    assert result.ledger_entries == 0
    assert all(not counts for counts in result.counts.values()), result.counts
    con = rc.read_only(home)
    try:
        # surrogates and tokens included: the second run keeps them as they are
        assert {t: rc.rows(con, t) for t in rc.TAGGED_TABLES} == raw_before
        assert con.execute("SELECT count(*) FROM audit.ledger").fetchone()[0] == len(
            ledger(enforced.home)
        )
    finally:
        con.close()
    assert rc.comparable(home) == first
    assert rc.vault_values(home) == tokens  # no new token issued


@pytest.fixture(scope="module")
def monotone(
    enforced: Enforced, policy: Policy, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Home, Home]:
    """(T then T2, T2 directly) from the same tagged, not yet enforced warehouse."""
    root = tmp_path_factory.mktemp("monotone")
    stepwise = rc.prepare(root / "stepwise", policy)
    direct = copy_home(stepwise, root / "direct")
    enforce(stepwise, policy, T, "run-T")
    enforce(stepwise, policy, T2, "run-T2")
    enforce(direct, policy, T2, "run-T2")
    return stepwise, direct


def test_enforcing_t1_then_t2_equals_t2_directly(monotone: tuple[Home, Home]) -> None:
    stepwise, direct = monotone
    a = rc.comparable(stepwise, drop=("_retain_until",))
    b = rc.comparable(direct, drop=("_retain_until",))
    assert a == b
    # not vacuous: T2 did more than T (o_run_2 pseudonymized, two_runs anonymized)
    orders = {dict(r)["order_id"]: dict(r) for r in a["orders"]}
    assert orders["o_run_2"]["_state"] == "pseudonymized"
    assert orders["o_run_2"]["contact_id"] == ("token", "user.unique_id", "two_runs")


def test_enforcing_t1_then_t2_equals_t2_directly_tags_included(
    monotone: tuple[Home, Home],
) -> None:
    stepwise, direct = monotone
    assert rc.comparable(stepwise) == rc.comparable(direct)


def test_same_value_keeps_its_token_across_runs(monotone: tuple[Home, Home]) -> None:
    stepwise, _ = monotone
    con = rc.read_only(stepwise)
    try:
        got = con.execute(
            "SELECT order_id, contact_id, billing_name, billing_street FROM core.orders"
            " WHERE order_id IN ('o_run_1', 'o_run_2') ORDER BY order_id"
        ).fetchall()
    finally:
        con.close()
    (_, *first), (_, *second) = got
    assert first == second  # o_run_1 pseudonymized at T, o_run_2 at T2: same tokens
    assert all(rc.TOKEN.fullmatch(t) for t in first)


# --- a renamed schema: the same results, row for row -----------------------------------------


def _renamed_landing(landing: Path, r: Renaming) -> None:
    """Rename the landing files of the default schema and their headers as `r` does."""
    for path in sorted(landing.glob("*.csv")):
        table = path.stem
        with path.open(newline="", encoding="utf-8") as fh:
            header, *body = list(csv.reader(fh))
        renamed = landing / f"{r.table(table)}.csv"
        with renamed.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([[r.column(table, c) for c in header], *body])
        path.unlink()


def _dump(path: Path, data: dict[str, Any]) -> None:
    # In the original order: the policy's purpose order is the order of `_purposes`.
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def _renamed_policy(root: Path) -> tuple[Policy, Renaming]:
    """The default policy and schema with every table and column renamed, written to `root`."""
    raw_schema = yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))
    r = suffixed(raw_schema)
    root.mkdir(parents=True)
    _dump(root / "schema.yaml", r.schema(raw_schema))
    raw_policy = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    _dump(root / "policy.yaml", r.policy(raw_policy, "schema.yaml"))
    return load_policy(root / "policy.yaml"), r


def _results(home: Home, policy: Policy, result: EnforcementResult, back: dict) -> dict[str, Any]:
    """Core rows (tokens unmasked), ledger, counts and re-consent list of an enforced home,
    with every table and column named as in the default schema (`back` maps renamed ones
    back)."""
    tables = {t: back.get(t, t) for t in tagged_tables(policy)}
    tokens = rc.vault_values(home)

    def plain(value: Any) -> Any:
        if isinstance(value, str) and rc.TOKEN.fullmatch(value):
            return ("token", *tokens[value])
        return "<surrogate>" if isinstance(value, str) and rc.SURROGATE.fullmatch(value) else value

    con = connect(home.warehouse)
    try:
        rows = {
            name: sorted(
                (
                    # `_ingested_at` says when each copy was loaded
                    tuple(
                        sorted(
                            (back.get((t, k), k), plain(v))
                            for k, v in row.items()
                            if k != "_ingested_at"
                        )
                    )
                    for row in rc.rows(con, t)
                ),
                key=repr,
            )
            for t, name in tables.items()
        }
        names = rc.key_names(home)  # each home hashes keys with its own vault's secret
        ledger = [
            (action, back.get(t, t), [back.get((t, c), c) for c in cols], keys, *rest)
            for action, t, cols, hashed, *rest in con.execute(
                "SELECT action, table_name, columns, keys, reason, strategy, details"
                " FROM audit.ledger ORDER BY seq"
            ).fetchall()
            for keys in [[names[k] for k in hashed]]
        ]
        listed = build_consent_health(con, home, policy, T)
    finally:
        con.close()
    with listed.path.open(encoding="utf-8") as fh:
        header, *consent_rows = list(csv.reader(fh))
    subjects = policy.data_schema.subject_table.name
    return {
        "rows": rows,
        "ledger": ledger,
        "counts": {back.get(t, t): c for t, c in result.counts.items()},
        "consent_health": ([back.get((subjects, c), c) for c in header], consent_rows),
    }


def test_renamed_schema_enforces_the_same_row_for_row(tmp_path: Path, policy: Policy) -> None:
    """Every table and column renamed (schema, policy, landing files and headers): tagging
    and enforcement give the same rows, ledger, counts and re-consent list as the default."""
    renamed_policy, r = _renamed_policy(tmp_path / "renamed")
    back: dict = {new: old for old, new in r.tables.items()}
    back |= {(r.table(t), new): old for (t, old), new in r.columns.items()}
    results = []
    for name, pol in (("default", policy), ("renamed", renamed_policy)):
        home = Home(tmp_path / name).ensure()
        rc.write_cases(home.landing)
        if pol is renamed_policy:
            _renamed_landing(home.landing, r)
        con = connect(home.warehouse)
        try:
            for table in pol.data_schema.tables:
                ingest_table(con, home.landing, table, pol)
            tag_all(con, pol, T)
        finally:
            con.close()
        results.append(_results(home, pol, enforce(home, pol, T, "run-T"), back))
    default, renamed = results
    assert set(default["rows"]) == {"contacts", "consents", "orders", "shipments"}
    for key in ("rows", "ledger", "counts", "consent_health"):
        assert renamed[key] == default[key], key
    # not vacuous: every kind of action happened, and someone is asked for consent
    assert {a for c in default["counts"].values() for a in c} >= {
        "anonymize",
        "pseudonymize",
        "delete",
        "retain",
    }
    assert default["consent_health"][0] == ["email", "first_name", "purpose", "segment"]
    assert default["consent_health"][1]
