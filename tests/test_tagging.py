"""Purpose tagging with the default policy, each rule checked on both sides of its boundary.

A value is kept while `as_of < anchor + keep` (SPEC "Policy as code"), so a row whose
retention ends exactly at the as-of instant is no longer kept, and one a day (or a
second) later still is. One hand-made warehouse is re-tagged at several as-of dates.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import duckdb
import pytest
import sqlglot
from conftest import TABLES, TAGGED_TABLES, ingest_all, tags, write_landing

from lethe.declaration.policy import HOLD_PURPOSE, Policy
from lethe.declaration.strategies import quote
from lethe.engine.tagging import tag_all, tag_plan, tag_select
from lethe.engine.warehouse import connect

T = dt.date(2026, 3, 1)
OLD = "2015-01-01T00:00:00"  # long expired for every purpose


def ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


CONTACTS: list[dict[str, Any]] = [
    # account: T < last_active_at + 2y
    {"contact_id": "acc_exact", "last_active_at": "2024-03-01T00:00:00"},
    {"contact_id": "acc_in", "last_active_at": "2024-03-02T00:00:00"},
    {"contact_id": "acc_second", "last_active_at": "2024-03-01T00:00:01"},
    {"contact_id": "acc_leap", "last_active_at": "2024-02-29T00:00:00"},
    {"contact_id": "acc_null", "last_active_at": None},
    # buyers (contract / accounting)
    *({"contact_id": c, "last_active_at": OLD} for c in ("ctr_exact", "ctr_in", "ctr_open")),
    *({"contact_id": c, "last_active_at": OLD} for c in ("ctr_two", "ctr_open_closed")),
    *({"contact_id": c, "last_active_at": OLD} for c in ("acct_exact", "acct_in", "acct_leap")),
    # newsletter and consent evidence
    *(
        {"contact_id": c, "last_active_at": OLD}
        for c in (
            "nl_exact",
            "nl_in",
            "nl_wd_before",
            "nl_wd_at",
            "nl_wd_after",
            "nl_leap",
            "nl_other",
            "ev_w_exact",
            "ev_w_in",
            "ev_g_exact",
            "ev_g_in",
        )
    ),
    # litigation holds on contacts whose everything expired
    *(
        {"contact_id": c, "last_active_at": OLD}
        for c in ("hold_open", "hold_released", "hold_future", "hold_none")
    ),
]

ORDERS: list[dict[str, Any]] = [
    # contract: T < completed_at + 3y + 1y, open while completed_at is null
    {
        "order_id": "o_ctr_exact",
        "contact_id": "ctr_exact",
        "ordered_at": "2022-02-01T00:00:00",
        "completed_at": "2022-03-01T00:00:00",
    },
    {
        "order_id": "o_ctr_in",
        "contact_id": "ctr_in",
        "ordered_at": "2022-02-01T00:00:00",
        "completed_at": "2022-03-02T00:00:00",
    },
    {
        "order_id": "o_ctr_open",
        "contact_id": "ctr_open",
        "ordered_at": "2025-12-01T00:00:00",
        "completed_at": None,
    },
    {
        "order_id": "o_two_old",
        "contact_id": "ctr_two",
        "ordered_at": "2014-12-01T00:00:00",
        "completed_at": "2015-01-01T00:00:00",
    },
    {
        "order_id": "o_two_new",
        "contact_id": "ctr_two",
        "ordered_at": "2024-12-01T00:00:00",
        "completed_at": "2025-01-01T00:00:00",
    },
    {
        "order_id": "o_oc_open",
        "contact_id": "ctr_open_closed",
        "ordered_at": "2026-01-01T00:00:00",
        "completed_at": None,
    },
    {
        "order_id": "o_oc_closed",
        "contact_id": "ctr_open_closed",
        "ordered_at": "2025-01-01T00:00:00",
        "completed_at": "2025-02-01T00:00:00",
    },
    # accounting: T < ordered_at + 10y
    {
        "order_id": "o_acct_exact",
        "contact_id": "acct_exact",
        "ordered_at": "2016-03-01T00:00:00",
        "completed_at": "2016-03-05T00:00:00",
    },
    {
        "order_id": "o_acct_in",
        "contact_id": "acct_in",
        "ordered_at": "2016-03-02T00:00:00",
        "completed_at": "2016-03-05T00:00:00",
    },
    {
        "order_id": "o_acct_leap",
        "contact_id": "acct_leap",
        "ordered_at": "2016-02-29T00:00:00",
        "completed_at": "2016-03-03T00:00:00",
    },
    # holds: everything long over
    *(
        {
            "order_id": f"o_{c}",
            "contact_id": c,
            "ordered_at": "2010-01-01T00:00:00",
            "completed_at": "2010-01-05T00:00:00",
        }
        for c in ("hold_open", "hold_released", "hold_future", "hold_none")
    ),
]

SHIPMENTS: list[dict[str, Any]] = [
    {"shipment_id": f"s_{o}", "order_id": f"o_{o}", "shipped_at": "2010-01-02T00:00:00"}
    for o in ("ctr_exact", "ctr_in", "hold_open", "hold_released", "hold_future", "hold_none")
] + [{"shipment_id": "s_ctr_open", "order_id": "o_ctr_open", "delivered_at": None}]

CONSENTS: list[dict[str, Any]] = [
    # newsletter: not withdrawn (or withdrawn after T) and T < granted_at + 3y
    {"consent_id": "k_nl_exact", "contact_id": "nl_exact", "granted_at": "2023-03-01T00:00:00"},
    {"consent_id": "k_nl_in", "contact_id": "nl_in", "granted_at": "2023-03-02T00:00:00"},
    {
        "consent_id": "k_nl_wd_before",
        "contact_id": "nl_wd_before",
        "granted_at": "2025-01-01T00:00:00",
        "withdrawn_at": "2026-02-01T00:00:00",
    },
    {
        "consent_id": "k_nl_wd_at",
        "contact_id": "nl_wd_at",
        "granted_at": "2025-01-01T00:00:00",
        "withdrawn_at": "2026-03-01T00:00:00",
    },
    {
        "consent_id": "k_nl_wd_after",
        "contact_id": "nl_wd_after",
        "granted_at": "2025-01-01T00:00:00",
        "withdrawn_at": "2026-04-01T00:00:00",
    },
    {"consent_id": "k_nl_leap", "contact_id": "nl_leap", "granted_at": "2024-02-29T00:00:00"},
    {
        "consent_id": "k_nl_other",
        "contact_id": "nl_other",
        "purpose": "account",
        "granted_at": "2025-06-01T00:00:00",
    },
    # consent_evidence: T < (withdrawn_at, or granted_at + 3y) + 3y
    {
        "consent_id": "k_ev_w_exact",
        "contact_id": "ev_w_exact",
        "granted_at": "2020-01-01T00:00:00",
        "withdrawn_at": "2023-03-01T00:00:00",
    },
    {
        "consent_id": "k_ev_w_in",
        "contact_id": "ev_w_in",
        "granted_at": "2020-01-01T00:00:00",
        "withdrawn_at": "2023-03-02T00:00:00",
    },
    {"consent_id": "k_ev_g_exact", "contact_id": "ev_g_exact", "granted_at": "2020-03-01T00:00:00"},
    {"consent_id": "k_ev_g_in", "contact_id": "ev_g_in", "granted_at": "2020-03-02T00:00:00"},
    *(
        {
            "consent_id": f"k_{c}",
            "contact_id": c,
            "granted_at": "2010-01-01T00:00:00",
            "withdrawn_at": "2011-01-01T00:00:00",
        }
        for c in ("hold_open", "hold_released", "hold_future", "hold_none")
    ),
]

HOLDS: list[dict[str, Any]] = [
    {"hold_id": "h_open", "contact_id": "hold_open", "released_at": None},
    {"hold_id": "h_released", "contact_id": "hold_released", "released_at": "2026-01-01T00:00:00"},
    {"hold_id": "h_future", "contact_id": "hold_future", "released_at": "2026-06-01T00:00:00"},
]


@pytest.fixture(scope="module")
def tag_at(
    tmp_path_factory: pytest.TempPathFactory, policy: Policy
) -> Iterator[Callable[[dt.date], duckdb.DuckDBPyConnection]]:
    """Ingest the hand-made set once; `tag_at(T)` re-tags everything as of T."""
    root = tmp_path_factory.mktemp("tagging")
    landing = root / "landing"
    for name, rows in (
        ("contacts", CONTACTS),
        ("consents", CONSENTS),
        ("orders", ORDERS),
        ("shipments", SHIPMENTS),
        ("holds", HOLDS),
    ):
        write_landing(landing, name, rows)
    con = connect(root / "warehouse.duckdb")
    results = ingest_all(con, landing, policy)
    for name, result in results.items():
        assert result.rows_quarantined == 0, (name, result.problems)
        assert result.rows_loaded == result.rows_read > 0, name

    def at(as_of: dt.date) -> duckdb.DuckDBPyConnection:
        tag_all(con, policy, as_of)
        return con

    yield at
    con.close()


def purposes(con: duckdb.DuckDBPyConnection, table: str, key: str) -> list[str]:
    return tags(con, table, key)["purposes"]


# --- account -------------------------------------------------------------------------------


def test_account_boundary(tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection]) -> None:
    con = tag_at(T)
    exact = tags(con, "contacts", "acc_exact")
    assert exact == {
        "purposes": [],
        "legal_bases": [],
        "retain_until": ts("2026-03-01T00:00:00"),
        "state": "expired",
    }
    assert tags(con, "contacts", "acc_in") == {
        "purposes": ["account"],
        "legal_bases": ["contract"],
        "retain_until": ts("2026-03-02T00:00:00"),
        "state": "active",
    }
    second = tags(con, "contacts", "acc_second")
    assert second["purposes"] == ["account"]
    assert second["retain_until"] == ts("2026-03-01T00:00:01")
    assert purposes(con, "contacts", "acc_null") == []
    assert tags(con, "contacts", "acc_null")["state"] == "expired"


def test_account_ends_a_day_later(tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection]) -> None:
    con = tag_at(dt.date(2026, 3, 2))
    assert purposes(con, "contacts", "acc_in") == []
    assert tags(con, "contacts", "acc_in")["state"] == "expired"
    con = tag_at(dt.date(2026, 2, 28))
    assert purposes(con, "contacts", "acc_exact") == ["account"]


def test_account_29_february(tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection]) -> None:
    # 29 Feb 2024 + 2y = 28 Feb 2026
    con = tag_at(dt.date(2026, 2, 28))
    leap = tags(con, "contacts", "acc_leap")
    assert leap["purposes"] == []
    assert leap["retain_until"] == ts("2026-02-28T00:00:00")
    assert leap["state"] == "expired"
    con = tag_at(dt.date(2026, 2, 27))
    leap = tags(con, "contacts", "acc_leap")
    assert leap["purposes"] == ["account"]
    assert leap["state"] == "active"


# --- contract ------------------------------------------------------------------------------


def test_contract_boundary(tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection]) -> None:
    con = tag_at(T)
    # completed exactly T - 4y: contract over, only the 10-year accounting duty is left
    exact = tags(con, "orders", "o_ctr_exact")
    assert exact["purposes"] == ["accounting"]
    assert exact["legal_bases"] == ["legal_obligation"]
    assert exact["retain_until"] == ts("2032-02-01T00:00:00")
    assert purposes(con, "contacts", "ctr_exact") == []
    assert tags(con, "shipments", "s_ctr_exact") == {
        "purposes": [],
        "legal_bases": [],
        "retain_until": ts("2026-03-01T00:00:00"),
        "state": "expired",
    }
    # completed T - 4y + 1 day: contract still runs
    inside = tags(con, "orders", "o_ctr_in")
    assert sorted(inside["purposes"]) == ["accounting", "contract"]
    assert sorted(inside["legal_bases"]) == ["contract", "legal_obligation"]
    assert inside["retain_until"] == ts("2032-02-01T00:00:00")  # the last purpose's end
    assert inside["state"] == "active"


def test_contract_inherited_by_buyer_and_shipment(
    tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection],
) -> None:
    con = tag_at(T)
    assert tags(con, "contacts", "ctr_in") == {
        "purposes": ["contract"],
        "legal_bases": ["contract"],
        "retain_until": ts("2026-03-02T00:00:00"),
        "state": "active",
    }
    assert tags(con, "shipments", "s_ctr_in") == {
        "purposes": ["contract"],
        "legal_bases": ["contract"],
        "retain_until": ts("2026-03-02T00:00:00"),
        "state": "active",
    }
    con = tag_at(dt.date(2026, 3, 2))
    assert purposes(con, "contacts", "ctr_in") == []
    assert purposes(con, "shipments", "s_ctr_in") == []
    assert purposes(con, "orders", "o_ctr_in") == ["accounting"]


def test_open_contract_has_no_end(tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection]) -> None:
    for when in (T, dt.date(2040, 1, 1)):
        con = tag_at(when)
        order = tags(con, "orders", "o_ctr_open")
        assert "contract" in order["purposes"]
        assert order["retain_until"] is None
        assert order["state"] == "active"
        for table, key in (("contacts", "ctr_open"), ("shipments", "s_ctr_open")):
            row = tags(con, table, key)
            assert row["purposes"] == ["contract"], (when, table)
            assert row["retain_until"] is None, (when, table)


def test_buyer_kept_until_last_contract_ends(
    tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection],
) -> None:
    con = tag_at(T)
    assert purposes(con, "orders", "o_two_old") == []
    buyer = tags(con, "contacts", "ctr_two")
    assert buyer["purposes"] == ["contract"]
    assert buyer["retain_until"] == ts("2029-01-01T00:00:00")
    # one open and one closed order: open-ended
    both = tags(con, "contacts", "ctr_open_closed")
    assert both["purposes"] == ["contract"]
    assert both["retain_until"] is None
    assert tags(con, "orders", "o_oc_closed")["retain_until"] == ts("2035-01-01T00:00:00")


# --- accounting ----------------------------------------------------------------------------


def test_accounting_boundary(tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection]) -> None:
    con = tag_at(T)
    assert tags(con, "orders", "o_acct_exact") == {
        "purposes": [],
        "legal_bases": [],
        "retain_until": ts("2026-03-01T00:00:00"),
        "state": "expired",
    }
    assert tags(con, "orders", "o_acct_in") == {
        "purposes": ["accounting"],
        "legal_bases": ["legal_obligation"],
        "retain_until": ts("2026-03-02T00:00:00"),
        "state": "active",
    }
    # accounting keeps no contact column: the buyer is not kept by it
    assert purposes(con, "contacts", "acct_in") == []


def test_accounting_29_february(tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection]) -> None:
    # 29 Feb 2016 + 10y = 28 Feb 2026
    assert purposes(tag_at(dt.date(2026, 2, 28)), "orders", "o_acct_leap") == []
    assert purposes(tag_at(dt.date(2026, 2, 27)), "orders", "o_acct_leap") == ["accounting"]


# --- newsletter ----------------------------------------------------------------------------


def test_newsletter_boundary(tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection]) -> None:
    con = tag_at(T)
    # granted exactly T - 3y: newsletter over, the evidence is kept 3 more years
    assert tags(con, "consents", "k_nl_exact") == {
        "purposes": ["consent_evidence"],
        "legal_bases": ["legitimate_interest"],
        "retain_until": ts("2029-03-01T00:00:00"),
        "state": "active",
    }
    assert tags(con, "contacts", "nl_exact")["purposes"] == []
    # granted T - 3y + 1 day
    inside = tags(con, "consents", "k_nl_in")
    assert sorted(inside["purposes"]) == ["consent_evidence", "newsletter"]
    assert sorted(inside["legal_bases"]) == ["consent", "legitimate_interest"]
    assert inside["retain_until"] == ts("2029-03-02T00:00:00")
    # a contact kept only by the newsletter
    assert tags(con, "contacts", "nl_in") == {
        "purposes": ["newsletter"],
        "legal_bases": ["consent"],
        "retain_until": ts("2026-03-02T00:00:00"),
        "state": "active",
    }


def test_newsletter_withdrawal(tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection]) -> None:
    con = tag_at(T)
    for key in ("nl_wd_before", "nl_wd_at"):
        row = tags(con, "consents", f"k_{key}")
        assert row["purposes"] == ["consent_evidence"], key
        assert row["state"] == "active"
        assert purposes(con, "contacts", key) == [], key
    assert tags(con, "consents", "k_nl_wd_before")["retain_until"] == ts("2029-02-01T00:00:00")
    # withdrawn after T: still subscribed until the withdrawal
    after = tags(con, "consents", "k_nl_wd_after")
    assert sorted(after["purposes"]) == ["consent_evidence", "newsletter"]
    contact = tags(con, "contacts", "nl_wd_after")
    assert contact["purposes"] == ["newsletter"]
    assert contact["retain_until"] == ts("2026-04-01T00:00:00")
    con = tag_at(dt.date(2026, 4, 1))
    assert purposes(con, "consents", "k_nl_wd_after") == ["consent_evidence"]
    assert purposes(con, "contacts", "nl_wd_after") == []


def test_newsletter_29_february(tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection]) -> None:
    # 29 Feb 2024 + 3y = 28 Feb 2027
    assert purposes(tag_at(dt.date(2027, 2, 28)), "contacts", "nl_leap") == []
    con = tag_at(dt.date(2027, 2, 27))
    assert purposes(con, "contacts", "nl_leap") == ["newsletter"]
    assert tags(con, "contacts", "nl_leap")["retain_until"] == ts("2027-02-28T00:00:00")


def test_newsletter_only_for_newsletter_consents(
    tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection],
) -> None:
    con = tag_at(T)
    assert purposes(con, "consents", "k_nl_other") == ["consent_evidence"]
    assert purposes(con, "contacts", "nl_other") == []


# --- consent evidence ----------------------------------------------------------------------


def test_consent_evidence_after_withdrawal(
    tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection],
) -> None:
    con = tag_at(T)
    assert tags(con, "consents", "k_ev_w_exact") == {
        "purposes": [],
        "legal_bases": [],
        "retain_until": ts("2026-03-01T00:00:00"),
        "state": "expired",
    }
    assert tags(con, "consents", "k_ev_w_in") == {
        "purposes": ["consent_evidence"],
        "legal_bases": ["legitimate_interest"],
        "retain_until": ts("2026-03-02T00:00:00"),
        "state": "active",
    }


def test_consent_evidence_never_withdrawn(
    tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection],
) -> None:
    # granted + 3y + 3y
    con = tag_at(T)
    exact = tags(con, "consents", "k_ev_g_exact")
    assert exact["purposes"] == []
    assert exact["state"] == "expired"
    assert exact["retain_until"] == ts("2026-03-01T00:00:00")
    inside = tags(con, "consents", "k_ev_g_in")
    assert inside["purposes"] == ["consent_evidence"]
    assert inside["retain_until"] == ts("2026-03-02T00:00:00")
    # evidence alone never keeps the contact
    assert purposes(con, "contacts", "ev_g_in") == []


# --- litigation hold -----------------------------------------------------------------------


def _subject_rows(con: duckdb.DuckDBPyConnection, contact: str) -> dict[str, dict[str, Any]]:
    return {
        "contacts": tags(con, "contacts", contact),
        "consents": tags(con, "consents", f"k_{contact}"),
        "orders": tags(con, "orders", f"o_{contact}"),
        "shipments": tags(con, "shipments", f"s_{contact}"),
    }


def test_open_hold_keeps_every_row(tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection]) -> None:
    con = tag_at(T)
    for table, row in _subject_rows(con, "hold_none").items():
        assert row["purposes"] == [], table  # control: everything expired
        assert row["state"] == "expired", table
    for table, row in _subject_rows(con, "hold_open").items():
        assert row == {
            "purposes": [HOLD_PURPOSE],
            "legal_bases": ["legitimate_interest"],
            "retain_until": None,
            "state": "active",
        }, table
    # still held decades later: an open hold has no end
    con = tag_at(dt.date(2060, 1, 1))
    for table, row in _subject_rows(con, "hold_open").items():
        assert row["purposes"] == [HOLD_PURPOSE], table


def test_released_hold_keeps_nothing(
    tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection],
) -> None:
    con = tag_at(T)
    for table, row in _subject_rows(con, "hold_released").items():
        assert HOLD_PURPOSE not in row["purposes"], table
        assert row["purposes"] == [], table
        assert row["state"] == "expired", table


def test_hold_released_after_as_of(tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection]) -> None:
    con = tag_at(T)
    for table, row in _subject_rows(con, "hold_future").items():
        assert row["purposes"] == [HOLD_PURPOSE], table
        assert row["retain_until"] == ts("2026-06-01T00:00:00"), table
    con = tag_at(dt.date(2026, 6, 1))
    for table, row in _subject_rows(con, "hold_future").items():
        assert row["purposes"] == [], table


# --- the tagged tables as a whole -----------------------------------------------------------


def test_every_row_tagged_and_nothing_lost(
    tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection],
) -> None:
    expected = {"contacts": CONTACTS, "consents": CONSENTS, "orders": ORDERS}
    expected["shipments"] = SHIPMENTS
    for when in (T, dt.date(2026, 3, 2)):
        con = tag_at(when)
        for table in TAGGED_TABLES:
            rows = con.execute(
                f"SELECT count(*), count(_purposes), count(_legal_bases), count(_state),"
                f" count(DISTINCT {TABLES[table].key}), count(_ingested_at) FROM core.{table}"
            ).fetchone()
            n = len(expected[table])
            assert rows == (n, n, n, n, n, n), (when, table)
            states = {
                r[0] for r in con.execute(f"SELECT DISTINCT _state FROM core.{table}").fetchall()
            }
            assert states <= {"active", "expired"}, table
            # state and purposes agree
            bad = con.execute(
                f"SELECT count(*) FROM core.{table} WHERE (len(_purposes) = 0)"
                " <> (_state = 'expired')"
            ).fetchone()[0]
            assert bad == 0, table


def test_retagging_is_idempotent(tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection]) -> None:
    def snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
        return {
            t: con.execute(f"SELECT * FROM core.{t} ORDER BY {TABLES[t].key}").fetchall()
            for t in TAGGED_TABLES
        }

    first = snapshot(tag_at(T))
    tag_at(dt.date(2031, 1, 1))
    assert snapshot(tag_at(T)) == first


def test_contract_columns_survive_tagging(
    tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection],
) -> None:
    con = tag_at(T)
    for table in TAGGED_TABLES:
        cols = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'core' AND table_name = ? ORDER BY ordinal_position",
                [table],
            ).fetchall()
        ]
        assert cols[: len(TABLES[table].columns)] == TABLES[table].column_names
        assert {"_purposes", "_legal_bases", "_retain_until", "_state", "_ingested_at"} <= set(cols)
    row = con.execute(
        "SELECT total_amount, completed_at FROM core.orders WHERE order_id = 'o_ctr_open'"
    ).fetchone()
    assert str(row[0]) == "100.00"
    assert row[1] is None


# --- engine-neutral plans ------------------------------------------------------------------


@pytest.mark.parametrize("table", TAGGED_TABLES)
def test_a_table_is_read_once_when_it_is_tagged(policy: Policy, table: str) -> None:
    # A window that comes down from a parent joins the parent's status by the foreign key
    # of the rows being tagged, instead of through a second scan of the same table.
    sql = tag_select(policy, table, T, list(policy.data_schema.tables[table].column_names))
    assert sql.count(f"core.{quote(table)} ") == 1, sql


@pytest.mark.parametrize("table", TAGGED_TABLES)
def test_tag_plan_transpiles_to_postgres(
    tag_at: Callable[[dt.date], duckdb.DuckDBPyConnection], policy: Policy, table: str
) -> None:
    con = tag_at(T)
    plan = tag_plan(con, policy, table, T)
    assert plan.statements
    for sql in plan.statements:
        assert sqlglot.parse_one(sql, read="duckdb") is not None
    postgres = plan.transpile("postgres")
    assert len(postgres) == len(plan.statements)
    for sql in postgres:
        assert sql.strip()
        assert f"core.{table}".lower() in sql.lower().replace('"', "")
        assert sqlglot.parse_one(sql, read="postgres") is not None
    assert all(s.strip() for s in plan.transpile("spark"))
