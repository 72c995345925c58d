"""Analyst datasets: k-anonymity, generalization, suppression, scope (restricted, held,
pseudonymized, anonymized rows), lineage, and the release on generated data."""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import DEFAULT_POLICY, TABLES, write_landing_set

from assets.analytics import analytics_assets
from lethe.compliance.analytics import (
    SUBJECTS,
    check_k_anonymity,
    datasets,
    exports_dir,
    label_order,
    policy_digest,
    release,
    release_plan,
)
from lethe.declaration.policy import Policy, PolicyError, load_policy, parse_policy
from lethe.declaration.yamldoc import parse_yaml
from lethe.engine.enforcement import enforce
from lethe.engine.ingest import ingest_table
from lethe.engine.warehouse import connect
from lethe.eshop.generate import generate
from lethe.operations.home import Home
from pipelines.definitions import defs

T = dt.date(2026, 3, 1)
DATASETS = datasets(load_policy(DEFAULT_POLICY))
ORDERS = DATASETS["orders_by_month"]


def order_set(home: Home, specs: list[dict[str, Any]], holds: list[dict[str, Any]] | None = None):
    """One contact per spec (active account) with one order each, by default in January 2026,
    billed in Prague (CZ-1), CZK 700, contract still open."""
    contacts, orders = [], []
    for i, spec in enumerate(specs, start=1):
        cid = spec.get("contact_id", f"C{i}")
        if cid not in [c["contact_id"] for c in contacts]:
            contacts.append({"contact_id": cid, "last_active_at": "2025-06-01T00:00:00"})
        orders.append(
            {
                "order_id": f"O{i}",
                "contact_id": cid,
                "ordered_at": spec.get("ordered_at", "2026-01-10T10:00:00"),
                "completed_at": None,
                "total_amount": spec.get("amount", "700.00"),
                "billing_postal_code": spec.get("postal", "11000"),
            }
        )
    write_landing_set(home.landing, contacts=contacts, orders=orders, holds=holds or [])


@pytest.fixture
def released(
    home: Home, policy: Policy, warehouse: Callable[[dt.date], duckdb.DuckDBPyConnection]
) -> Callable[..., tuple[duckdb.DuckDBPyConnection, Any]]:
    """`released(specs, holds=None, before=None)`: build, tag, optionally alter, release."""

    def build(specs, holds=None, before=None):
        order_set(home, specs, holds)
        con = warehouse(T)
        if before:
            for sql in before:
                con.execute(sql)
        return con, release(con, home, policy, ORDERS)

    return build


def rows(con: duckdb.DuckDBPyConnection, dataset: str = "orders_by_month") -> list[tuple]:
    return con.execute(f"SELECT * FROM analytics.{dataset} ORDER BY ALL").fetchall()


def test_cell_of_k_subjects_released(released) -> None:
    con, result = released([{}] * 5)
    assert rows(con) == [("2026-01", "CZ-1", "CZK 500-1000", "CZK", 5, 5, 3500)]
    assert (result.records, result.generalized, result.suppressed) == (5, 0, 0)
    assert check_k_anonymity(con, ORDERS, 5).passed


def test_unique_combination_is_suppressed(released) -> None:
    # Five buyers in Prague and one alone in Brno: Brno is generalized (CZ-*, any amount,
    # the quarter) and, still alone, suppressed.
    con, result = released([{}] * 5 + [{"postal": "60200", "amount": "99.00"}])
    assert rows(con) == [("2026-01", "CZ-1", "CZK 500-1000", "CZK", 5, 5, 3500)]
    assert (result.records, result.suppressed, result.suppressed_cells) == (6, 1, 1)
    assert result.suppressed_share == pytest.approx(1 / 6)
    assert check_k_anonymity(con, ORDERS, 5).passed


def test_small_cells_generalized_to_country(released) -> None:
    con, result = released([{"postal": "11000"}] * 3 + [{"postal": "60200"}] * 3)
    assert rows(con) == [("2026-01", "CZ-*", "CZK 500-1000", "CZK", 6, 6, 4200)]
    assert (result.generalized, result.suppressed) == (6, 0)


def test_generalization_climbs_the_ladder(released) -> None:
    # Different months, regions and amounts: only the quarter brings five together.
    specs = [
        {"ordered_at": f"2026-0{1 + i % 3}-10T10:00:00", "postal": f"{1 + i}0000", "amount": a}
        for i, a in enumerate(["100", "700", "1500", "3000", "9000"])
    ]
    con, result = released(specs)
    assert rows(con) == [("2026-Q1", "CZ-*", "CZK any", "CZK", 5, 5, 14300)]
    assert result.generalized == 5


def test_k_counts_distinct_subjects_not_rows(released) -> None:
    con, result = released([{"contact_id": "C1"}] * 6)
    assert rows(con) == []
    assert result.suppressed == 6


def test_restricted_and_held_rows_absent(released) -> None:
    specs = [{}] * 5 + [{"contact_id": "C6"}, {"contact_id": "C7"}]
    con, result = released(
        specs,
        holds=[{"contact_id": "C7"}],
        before=["UPDATE core.orders SET _state = 'restricted' WHERE order_id = 'O6'"],
    )
    assert rows(con) == [("2026-01", "CZ-1", "CZK 500-1000", "CZK", 5, 5, 3500)]
    assert result.excluded == {"restricted": 1, "held": 1, "pseudonymized": 0, "other": 0}
    assert result.records == 5


def test_restricted_contact_excludes_its_orders(released) -> None:
    con, result = released(
        [{}] * 6, before=["UPDATE core.contacts SET _state = 'restricted' WHERE contact_id = 'C6'"]
    )
    assert rows(con)[0][4] == 5
    assert result.excluded["restricted"] == 1


def test_anonymized_rows_still_count_pseudonymized_do_not(released) -> None:
    con, result = released(
        [{}] * 6,
        before=[
            "UPDATE core.orders SET contact_id = NULL, billing_postal_code = NULL,"
            " _state = 'anonymized', _purposes = [] WHERE order_id IN ('O1', 'O2')",
            "UPDATE core.orders SET contact_id = 'tok_x', _state = 'pseudonymized'"
            " WHERE order_id = 'O3'",
        ],
    )
    # O1, O2 have no postal code (CZ-*): 2 of their own, then merged with the others
    # generalized from CZ-1 (3 buyers, too few alone): 5 subjects in CZ-*.
    assert rows(con) == [("2026-01", "CZ-*", "CZK 500-1000", "CZK", 5, 5, 3500)]
    assert result.excluded["pseudonymized"] == 1


def test_check_fails_on_a_row_below_k_a_repeat_or_an_identifier(released) -> None:
    con, _ = released([{}] * 5)
    con.execute(
        "INSERT INTO analytics.orders_by_month VALUES ('2026-02', 'CZ-1', 'x', 'CZK', 2, 2, 1)"
    )
    check = check_k_anonymity(con, ORDERS, 5)
    assert not check.passed and check.violations == 1
    assert "1 rows with fewer than 5 subjects" in check.describe()
    con.execute("INSERT INTO analytics.orders_by_month SELECT * FROM analytics.orders_by_month")
    assert check_k_anonymity(con, ORDERS, 5).duplicates == 2
    con.execute("ALTER TABLE analytics.orders_by_month ADD COLUMN contact_id VARCHAR")
    assert check_k_anonymity(con, ORDERS, 5).unexpected_columns == ("contact_id",)


def test_k_from_the_policy(released, policy: Policy, home: Home) -> None:
    con, _ = released([{}] * 5)
    strict = release(con, home, policy.model_copy(update={"k_anonymity": 6}), ORDERS)
    assert (strict.k, strict.rows, strict.suppressed) == (6, 0, 5)


def test_parquet_extract_written_atomically(released, home: Home) -> None:
    con, result = released([{}] * 5)
    assert result.path == exports_dir(home) / "orders_by_month.parquet"
    assert pl.read_parquet(result.path).rows() == rows(con)
    assert [p.name for p in exports_dir(home).iterdir()] == ["orders_by_month.parquet"]


def test_vault_never_opened(released, home: Home) -> None:
    released([{}] * 5)
    assert not home.vault.exists()


def test_plans_are_engine_neutral(policy: Policy) -> None:
    for dataset in DATASETS.values():
        assert release_plan(policy, dataset).transpile("postgres")


# --- lineage and metadata --------------------------------------------------------------------

EXPECTED_LINEAGE = {
    "orders_by_month": {
        "period": {("core/orders", "ordered_at")},
        "region": {("core/orders", "billing_country"), ("core/orders", "billing_postal_code")},
        "amount_band": {("core/orders", "total_amount"), ("core/orders", "currency")},
        SUBJECTS: {("core/orders", "contact_id")},
    },
    "customers_by_cohort": {
        "birth_years": {("core/contacts", "birth_date")},
        "region": {("core/contacts", "country"), ("core/contacts", "postal_code")},
        "first_order_year": {("core/orders", "ordered_at"), ("core/orders", "contact_id")},
    },
    "shipments_by_carrier": {
        "carrier": {("core/shipments", "carrier")},
        "delivery_time": {("core/shipments", "shipped_at"), ("core/shipments", "delivered_at")},
        SUBJECTS: {("core/orders", "contact_id")},
    },
}


def _spec(key: dg.AssetKey) -> dg.AssetSpec:
    assets_def = defs().resolve_asset_graph().assets_def_for_key(key)
    return next(s for s in assets_def.specs if s.key == key)


@pytest.mark.parametrize("name", list(DATASETS))
def test_lineage_names_the_upstream_columns(name: str) -> None:
    spec = _spec(dg.AssetKey(["analytics", name]))
    lineage: dg.TableColumnLineage = spec.metadata["dagster/column_lineage"]
    got = {
        col: {(d.asset_key.to_user_string(), d.column_name) for d in deps}
        for col, deps in lineage.deps_by_column.items()
    }
    for col, expected in EXPECTED_LINEAGE[name].items():
        assert got[col] == expected
    assert set(got) == {c.name for c in DATASETS[name].columns}
    # every upstream column exists in its core table, and the asset depends on that table
    parents = defs().resolve_asset_graph().get(spec.key).parent_keys
    for deps in lineage.deps_by_column.values():
        for d in deps:
            assert d.column_name in TABLES[d.asset_key.path[-1]].column_names
            assert d.asset_key in parents
    readable = spec.metadata["column_lineage"].value  # the Markdown a compliance officer reads
    for expected in EXPECTED_LINEAGE[name].values():
        for key, column in expected:
            assert f"`{key}.{column}`" in readable


@pytest.mark.parametrize("name", list(DATASETS))
def test_compliance_metadata(name: str) -> None:
    spec = _spec(dg.AssetKey(["analytics", name]))
    assert spec.owners == ["team:privacy"]
    assert spec.description and "vault is never opened" in spec.description
    assert spec.metadata["purposes"] == "statistics"
    assert spec.metadata["legal_bases"] == "legitimate_interest"
    assert "6(1)(f)" in spec.metadata["legal_basis_articles"]
    assert "k = 5" in spec.metadata["retention"].value
    schema = spec.metadata["dagster/column_schema"]
    for column in schema.columns:
        category = column.tags["data_category"]
        assert category.split(".")[0] in ("generalized", "statistic", "financial", "logistics")
    assert "purpose/statistics" in spec.tags
    assert dg.AssetKey(["core", "retention_enforcement"]) in (
        defs().resolve_asset_graph().get(spec.key).parent_keys
    )


def test_lineage_from_landing_to_core() -> None:
    spec = _spec(dg.AssetKey(["ingest", "contacts"]))
    deps = spec.metadata["dagster/column_lineage"].deps_by_column["email"]
    assert [(d.asset_key, d.column_name) for d in deps] == [
        (dg.AssetKey(["landing", "contacts"]), "email")
    ]
    spec = _spec(dg.AssetKey(["core", "contacts"]))
    deps = spec.metadata["dagster/column_lineage"].deps_by_column["email"]
    assert [(d.asset_key, d.column_name) for d in deps] == [
        (dg.AssetKey(["ingest", "contacts"]), "email")
    ]


# --- generated data --------------------------------------------------------------------------


def build_generated(root: Path, contacts: int, policy: Policy) -> Home:
    """Generate, ingest, tag and enforce as of the reference date, then release everything."""
    home = Home(root).ensure()
    generate(home.landing, contacts, seed=7, reference=T)
    con = connect(home.warehouse)
    try:
        for table in ("contacts", "consents", "orders", "shipments", "holds"):
            ingest_table(con, home.landing, table, policy)
    finally:
        con.close()
    enforce(home, policy, T, f"test-{uuid.uuid4()}")
    return home


@pytest.fixture(
    scope="module",
    params=[20_000, pytest.param(100_000, marks=pytest.mark.slow)],
    ids=lambda n: f"{n // 1000}k",
)
def generated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[duckdb.DuckDBPyConnection, dict, Home]]:
    policy = load_policy(DEFAULT_POLICY)
    home = build_generated(tmp_path_factory.mktemp("generated") / "home", request.param, policy)
    con = connect(home.warehouse)
    results = {name: release(con, home, policy, d) for name, d in DATASETS.items()}
    yield con, results, home
    con.close()


def test_k_anonymity_holds_on_generated_data(generated) -> None:
    con, results, home = generated
    for name, dataset in DATASETS.items():
        check = check_k_anonymity(con, dataset, 5)
        assert check.passed, (name, check.describe())
        # Cross-check from the Parquet extract, independently of the SQL: every
        # quasi-identifier combination once, each with at least k subjects.
        frame = pl.read_parquet(exports_dir(home) / f"{name}.parquet")
        assert frame.height == results[name].rows > 0
        assert frame.select(dataset.labels).is_duplicated().sum() == 0
        assert frame[SUBJECTS].min() >= 5
        # Little is lost: under 2% suppressed.
        assert results[name].suppressed_share < 0.02, (name, results[name])


def test_generated_counts_are_conserved(generated) -> None:
    con, results, home = generated
    orders = pl.read_parquet(exports_dir(home) / "orders_by_month.parquet")
    core = con.sql("SELECT _state, _purposes FROM core.orders").pl()
    in_scope = core.filter(
        pl.col("_state").is_in(["active", "anonymized"])
        & ~pl.col("_purposes").list.contains("litigation_hold")
    ).height
    assert results["orders_by_month"].records == in_scope
    assert orders["orders"].sum() + results["orders_by_month"].suppressed == in_scope
    assert core.filter(pl.col("_state") == "anonymized").height > 0  # they count
    customers = pl.read_parquet(exports_dir(home) / "customers_by_cohort.parquet")
    contacts = con.execute("SELECT count(*) FROM core.contacts").fetchone()[0]
    assert customers[SUBJECTS].sum() + results["customers_by_cohort"].suppressed == contacts


def test_no_identifier_or_token_released(generated) -> None:
    con, _, _ = generated
    released = set()
    for name in DATASETS:
        for row in con.execute(f"SELECT * FROM analytics.{name}").fetchall():
            released.update(str(v) for v in row)
    identifiers = {
        str(v)
        for (v,) in con.execute(
            "SELECT contact_id FROM core.contacts UNION ALL SELECT email FROM core.contacts"
            " UNION ALL SELECT phone FROM core.contacts UNION ALL SELECT last_name"
            " FROM core.contacts UNION ALL SELECT contact_id FROM core.orders"  # tokens too
            " UNION ALL SELECT invoice_number FROM core.orders"
        ).fetchall()
        if v is not None
    }
    assert not released & identifiers


def test_materialize_analytics_assets(home: Home) -> None:
    order_set(home, [{}] * 5)
    from assets.enforcement import enforcement_assets
    from assets.ingest import ingest_assets
    from pipelines.resources import PolicyResource, WarehouseResource

    policy = load_policy(DEFAULT_POLICY)
    # Analytics are built from the core tables as enforcement leaves them (tagged too).
    result = dg.materialize(
        [*ingest_assets(policy), *enforcement_assets(policy), *analytics_assets(policy)],
        resources={
            "warehouse": WarehouseResource(home=str(home.root)),
            "policy": PolicyResource(path=str(DEFAULT_POLICY), as_of=T.isoformat()),
        },
        selection=dg.AssetSelection.groups("ingest", "enforcement", "core", "analytics"),
        raise_on_error=False,
    )
    assert result.success
    checks = {
        e.asset_key.path[-1]: e
        for e in result.get_asset_check_evaluations()
        if e.check_name == "k_anonymity"
    }
    assert set(checks) == set(DATASETS) and all(c.passed for c in checks.values())
    md = result.asset_materializations_for_node("analytics__orders_by_month")[0].metadata
    assert md["dagster/row_count"].value == 1
    assert md["suppressed_records"].value == 0
    assert "dagster/column_lineage" in md
    # the extract says which run's date it reflects: the run's own as-of date
    extract = pq.read_schema(exports_dir(home) / "orders_by_month.parquet").metadata
    assert extract[b"lethe.as_of"] == T.isoformat().encode()


# --- declarations ----------------------------------------------------------------------------


def _policy_text(change: Callable[[dict[str, Any]], Any]) -> str:
    data = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    change(data)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def _declared(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda d: d["analytics"]["datasets"][name]


_ORD = _declared("orders_by_month")
_CUS = _declared("customers_by_cohort")
_SHI = _declared("shipments_by_carrier")
_DS = "analytics.datasets"


@pytest.mark.parametrize(
    ("change", "key", "expected"),
    [
        (
            lambda d: _ORD(d).update(source="invoices"),
            f"{_DS}.orders_by_month.source",
            "unknown table 'invoices'",
        ),
        (
            lambda d: _ORD(d)["dimensions"]["period"].update(column="ordred_at"),
            f"{_DS}.orders_by_month.dimensions.period.column",
            "orders has no column 'ordred_at'",
        ),
        (
            lambda d: _ORD(d)["dimensions"]["region"].update(column="shipments.postal_code"),
            f"{_DS}.orders_by_month.dimensions.region.column",
            "'shipments' is not on the way from 'orders' to its subject (orders, contacts)",
        ),
        (
            lambda d: _ORD(d)["dimensions"]["currency"].update(ladder=["month"]),
            f"{_DS}.orders_by_month.dimensions.currency.ladder",
            "step 1 (month): cannot apply to a text column (currency)",
        ),
        (
            lambda d: _ORD(d)["dimensions"]["currency"].update(ladder=["value", {"bands": [1]}]),
            f"{_DS}.orders_by_month.dimensions.currency.ladder",
            "step 2 (bands): cannot apply to a text column (currency)",
        ),
        (
            lambda d: _ORD(d)["dimensions"]["period"].update(ladder=[{"prefix": 3}]),
            f"{_DS}.orders_by_month.dimensions.period.ladder",
            "step 1 ({prefix: 3}): cannot apply to a timestamp column (ordered_at)",
        ),
        (
            lambda d: _SHI(d)["dimensions"]["carrier"].update(ladder=["value", "ended"]),
            f"{_DS}.shipments_by_carrier.dimensions.carrier.ladder",
            "step 2 (ended): cannot apply to a text column (carrier)",
        ),
        (
            lambda d: _ORD(d)["dimensions"]["period"].update(ladder=["month", "week"]),
            f"{_DS}.orders_by_month.dimensions.period.ladder",
            "step 2: unknown step 'week' (known: value, month",
        ),
        (
            lambda d: _ORD(d)["dimensions"]["amount_band"].update(
                ladder=[{"bands": {"CZK": [1000, 500]}}, "unit"]
            ),
            f"{_DS}.orders_by_month.dimensions.amount_band.ladder",
            "step 1: bands.CZK: expected strictly ascending positive band bounds",
        ),
        (
            lambda d: _ORD(d)["dimensions"]["amount_band"].pop("unit"),
            f"{_DS}.orders_by_month.dimensions.amount_band.ladder",
            "step 1 (bands): bands per unit need `unit:`",
        ),
        (
            lambda d: _ORD(d)["dimensions"]["region"].pop("within"),
            f"{_DS}.orders_by_month.dimensions.region.ladder",
            "step 2 (within): needs `within:`, the column it keeps",
        ),
        (
            lambda d: _ORD(d)["dimensions"]["region"].update(within="total_amount"),
            f"{_DS}.orders_by_month.dimensions.region.within",
            "orders.total_amount is decimal, not text",
        ),
        (
            lambda d: _CUS(d)["dimensions"]["first_order_year"].update(first="orders.currency"),
            f"{_DS}.customers_by_cohort.dimensions.first_order_year.first",
            "orders.currency is text, not a date or timestamp",
        ),
        (
            lambda d: _CUS(d)["dimensions"]["first_order_year"].update(first="invoices.at"),
            f"{_DS}.customers_by_cohort.dimensions.first_order_year.first",
            "unknown table 'invoices'",
        ),
        (
            lambda d: _CUS(d)["dimensions"]["first_order_year"].update(ladder=["value"]),
            f"{_DS}.customers_by_cohort.dimensions.first_order_year.ladder",
            "step 1 (value): cannot apply to the first event (orders.ordered_at)",
        ),
        (
            lambda d: _SHI(d)["dimensions"]["delivery_time"].update(
                days=["carrier", "delivered_at"]
            ),
            f"{_DS}.shipments_by_carrier.dimensions.delivery_time.days",
            "shipments.carrier is text, not a date or timestamp",
        ),
        (
            lambda d: _ORD(d)["dimensions"]["currency"].pop("column"),
            f"{_DS}.orders_by_month.dimensions.currency",
            "needs a value: column, days or first",
        ),
        (
            lambda d: _ORD(d)["measures"]["total_amount"].update(sum="currency"),
            f"{_DS}.orders_by_month.measures.total_amount.sum",
            "sum applies to numbers or days, not text (orders.currency)",
        ),
        (
            lambda d: _ORD(d)["measures"]["orders"].update(sum="total_amount"),
            f"{_DS}.orders_by_month.measures.orders",
            "expected one of count: rows, sum: VALUE or avg: VALUE",
        ),
        (
            lambda d: _ORD(d)["measures"].update(subjects={"count": "rows"}),
            f"{_DS}.orders_by_month.measures",
            "subjects: `subjects` is always released",
        ),
        (
            lambda d: _ORD(d).update(generalize=["region", "month"]),
            f"{_DS}.orders_by_month.generalize",
            "unknown dimension 'month'",
        ),
        (
            lambda d: _ORD(d).update(generalize=["region", "region", "period"]),
            f"{_DS}.orders_by_month.generalize",
            "region is named 2 times but its ladder has 1 step(s) above the first",
        ),
        (
            lambda d: _ORD(d).update(dimensions={}),
            f"{_DS}.orders_by_month.dimensions",
            "expected a mapping of dimension name",
        ),
        (
            lambda d: _ORD(d).update(k=1),
            f"{_DS}.orders_by_month.k",
            "greater than or equal to 2",
        ),
        (
            lambda d: _ORD(d).update(k=3),
            f"{_DS}.orders_by_month.k",
            "3 is below the policy's k_anonymity (5)",
        ),
        (
            lambda d: d["analytics"]["datasets"].update({"Sales-2026": copy.deepcopy(_ORD(d))}),
            f"{_DS}",
            "Sales-2026: a dataset name is a-z, 0-9 and _",
        ),
    ],
)
def test_declaration_refused_naming_key_and_line(change, key: str, expected: str) -> None:
    text = _policy_text(change)
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "bad.yaml")
    message = str(info.value)
    assert "\n" not in message and "(and" not in message  # one error, no follow-ups
    # A message that names a key below `key` points at that key's own line.
    named = expected.split(": ", 1)[0] if ": " in expected else None
    line = parse_yaml(text).line_of([*key.split("."), *([named] if named else [])])
    assert re.match(rf"bad\.yaml:{line}: ", message), message
    assert key in message and expected in message, message


def test_declared_dataset_drives_the_release(home: Home, warehouse) -> None:
    """A dataset the e-shop never had: from the declaration alone, with its own k, a
    column of the subject's table reached along the references, and a mean."""

    def declare(d: dict[str, Any]) -> None:
        d["analytics"]["datasets"] = {
            "orders_by_year": {
                "description": "Orders per year and buyer's district.",
                "source": "orders",
                "k": 6,
                "dimensions": {
                    "year": {"column": "ordered_at", "ladder": ["year", "any"]},
                    "district": {
                        "column": "contacts.postal_code",
                        "within": "contacts.country",
                        "ladder": [{"prefix": 2}, "within"],
                    },
                },
                "measures": {"mean_amount": {"avg": "total_amount", "round": 0}},
            }
        }

    policy = parse_policy(_policy_text(declare), "own.yaml")
    (orders_by_year,) = datasets(policy).values()
    assert orders_by_year.generalize == ("year", "district")  # each in turn by default
    assert orders_by_year.lineage()["district"] == [
        ("contacts", "country"),
        ("contacts", "postal_code"),
    ]
    amounts = ["600.00", "700.00", "800.00", "700.00", "650.00", "750.00"]
    order_set(home, [{"amount": a} for a in amounts])
    con = warehouse(T)
    result = release(con, home, policy, orders_by_year)
    assert rows(con, "orders_by_year") == [("2026", "CZ-11", 6, 700.0)]
    assert result.k == 6
    # the larger of the dataset's and the policy's k applies
    stricter = release(con, home, policy.model_copy(update={"k_anonymity": 7}), orders_by_year)
    assert (stricter.k, stricter.rows, stricter.suppressed) == (7, 0, 6)


# --- the Parquet extract: metadata and order ----------------------------------------------------


def test_extract_carries_metadata_and_sorts_bands_in_order(
    released, policy: Policy, home: Home
) -> None:
    """Five buyers in each of four amount bands (lexically 1000-2500 < 500-1000 < <500):
    the extract lists them by amount, says its as-of date, k, policy and what each column
    is, and that its period is a month (or a quarter where generalized)."""
    amounts = ["9000.00", "700.00", "100.00", "1500.00"]
    con, result = released([{"amount": a} for a in amounts for _ in range(5)])
    extract = release(con, home, policy, ORDERS, as_of=T)
    table = pq.read_table(extract.path)
    bands = ["CZK <500", "CZK 500-1000", "CZK 1000-2500", "CZK 5000-10000"]
    assert table["amount_band"].to_pylist() == bands  # rows in band order
    band_type = table.schema.field("amount_band").type
    assert pa.types.is_dictionary(band_type) and band_type.ordered
    assert table["amount_band"].chunk(0).dictionary.to_pylist() == bands
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["lethe.as_of"] == "2026-03-01"
    assert meta["lethe.k"] == "5"
    assert meta["lethe.policy_version"] == "1"
    assert meta["lethe.policy_digest"] == policy_digest(policy)
    assert meta["lethe.dataset"] == "orders_by_month"
    for column in ORDERS.columns:
        field = {
            k.decode(): v.decode() for k, v in table.schema.field(column.name).metadata.items()
        }
        assert field["description"] == column.description and field["description"]
    period = {k.decode(): v.decode() for k, v in table.schema.field("period").metadata.items()}
    assert period["granularity"] == "month or quarter"
    assert json.loads(period["order"]) == ["2026-01"]
    # Polars still reads the numbers and labels as they were released.
    frame = pl.read_parquet(extract.path)
    assert frame["orders"].to_list() == [5, 5, 5, 5]
    assert result.rows == extract.rows == 4


def test_labels_sort_by_their_numbers() -> None:
    labels = ["CZK any", "CZK 10000+", "EUR <20", "CZK 500-1000", "CZK <500", "unknown"]
    assert sorted(labels, key=label_order) == [
        "CZK <500",
        "CZK 500-1000",
        "CZK 10000+",
        "CZK any",
        "EUR <20",
        "unknown",
    ]
    years = ["2000-2009", "1980-1989", "1990-1999", "unknown"]
    assert sorted(years, key=label_order) == ["1980-1989", "1990-1999", "2000-2009", "unknown"]
    days = ["5+ days", "<1 days", "2-3 days", "1-2 days", "not delivered"]
    assert sorted(days, key=label_order) == [
        "<1 days",
        "1-2 days",
        "2-3 days",
        "5+ days",
        "not delivered",
    ]
