"""Anonymized analyst datasets: k-anonymous aggregates over generalized quasi-identifiers.

Each dataset is a relational plan generated from the policy (DuckDB-dialect SQL, parsed
by SQLGlot through `lethe.plan.Plan`), run after retention enforcement:

1. Records: one row per source row with its quasi-identifiers generalized to labels
   (month, region = country + postal district, amount band, birth-year band, ...) and
   `_subject`, the data subject where known (NULL for an anonymized row: a subject of its
   own). Restricted rows, rows under litigation hold and pseudonymized rows (kept for
   accounting only) are left out; anonymized rows stay in, so statistics stay complete.
2. Generalization ladder: cells with at least k subjects (GROUP BY the labels, HAVING) are
   released; the records of smaller cells move one step up the ladder (region → country,
   month → quarter, ...) and are grouped again; what is still too small at the top is
   suppressed.
3. Release: the released records grouped by their final labels. Every released row counts
   at least k distinct subjects, and no row holds an identifier or a token.

Only the warehouse is read: the vault is never opened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from lethe.errors import LetheError
from lethe.files import replacing
from lethe.home import Home
from lethe.plan import Plan
from lethe.policy import HOLD_PURPOSE, Analytics, Policy
from lethe.strategies import literal, quote
from lethe.warehouse import table_columns, transaction

SCHEMA = "analytics"
RELEASES = f"{SCHEMA}.releases"
RELEASED_STATES = ("active", "anonymized")
SUBJECTS = "subjects"
ANY = "*"


def exports_dir(home: Home) -> Path:
    """Where the Parquet extracts of the analyst datasets go."""
    return home.exports / "analytics"


@dataclass(frozen=True)
class OutputColumn:
    """A released column: its SQL type, data category, and the core columns it derives from."""

    name: str
    sql_type: str
    category: str
    description: str
    sources: tuple[str, ...] = ()  # "table.column" in core


@dataclass(frozen=True)
class Dataset:
    """An analyst dataset: quasi-identifier labels, measures and the generalization ladder."""

    name: str
    description: str
    quasi_identifiers: tuple[OutputColumn, ...]
    measures: tuple[OutputColumn, ...]  # the first one is always `subjects`
    records: Callable[[Analytics], str]  # SELECT _exclusion, _subject, labels, inputs
    aggregates: dict[str, str]  # measure → aggregate over the records (alias `r`)
    ladder: tuple[str, ...]  # quasi-identifiers generalized one step further, level by level

    @property
    def columns(self) -> tuple[OutputColumn, ...]:
        return (*self.quasi_identifiers, *self.measures)

    @property
    def labels(self) -> list[str]:
        return [c.name for c in self.quasi_identifiers]

    def lineage(self) -> dict[str, list[tuple[str, str]]]:
        """Released column → the (core table, column) pairs it is computed from."""
        return {
            c.name: [(t, col) for t, _, col in (s.partition(".") for s in c.sources)]
            for c in self.columns
        }

    @property
    def tables(self) -> list[str]:
        """The core tables the dataset reads, in first-use order."""
        return list(dict.fromkeys(t for pairs in self.lineage().values() for t, _ in pairs))


# --- label expressions -----------------------------------------------------------------------


def _band_case(value: str, bounds: tuple[float, ...], label: Callable[[str], str]) -> str:
    """WHEN clauses putting `value` into half-open bands `<b0`, `b0-b1`, ..., `bn+`."""
    pairs = zip(bounds, bounds[1:], strict=False)
    edges = [f"<{bounds[0]:g}"] + [f"{lo:g}-{hi:g}" for lo, hi in pairs]
    whens = " ".join(
        f"WHEN {value} < {hi!r} THEN {literal(label(text))}"
        for hi, text in zip(bounds, edges, strict=True)
    )
    return f"{whens} ELSE {literal(label(f'{bounds[-1]:g}+'))}"


def region(country: str, postal_code: str, digits: int) -> str:
    """`CZ-1`: the country and the postal district (first digits); `CZ-*` without one."""
    code = f"regexp_replace(coalesce({postal_code}, ''), '[^0-9]', '', 'g')"
    return (
        f"CASE WHEN {country} IS NULL THEN '{ANY}'"
        f" WHEN length({code}) < {digits} THEN {country} || '-{ANY}'"
        f" ELSE {country} || '-' || left({code}, {digits}) END"
    )


def amount_band(amount: str, currency: str, bands: dict[str, tuple[float, ...]]) -> str:
    """`CZK 500-1000` (lower bound included); a currency without bands gets `EUR any`."""
    per_currency = " ".join(
        f"WHEN {currency} = {literal(cur)} THEN CASE"
        f" {_band_case(amount, bounds, lambda t, c=cur: f'{c} {t}')} END"
        for cur, bounds in bands.items()
    )
    return (
        f"CASE WHEN {amount} IS NULL OR {currency} IS NULL THEN 'unknown' {per_currency}"
        f" ELSE {currency} || ' any' END"
    )


def year_band(year: str, width: int) -> str:
    """`1980-1989` for a band of `width` years; `unknown` for NULL."""
    lo = f"({year} - {year} % {width})"
    return (
        f"CASE WHEN {year} IS NULL THEN 'unknown' ELSE CAST({lo} AS VARCHAR) || '-'"
        f" || CAST({lo} + {width - 1} AS VARCHAR) END"
    )


def delivery_band(shipped: str, delivered: str, bounds: tuple[float, ...]) -> str:
    """Days from shipping to delivery in bands; `not delivered` while it is open."""
    days = f"(date_diff('minute', {shipped}, {delivered}) / 1440.0)"
    return (
        f"CASE WHEN {shipped} IS NULL THEN 'unknown' WHEN {delivered} IS NULL THEN"
        f" 'not delivered' {_band_case(days, bounds, lambda t: f'{t} days')} END"
    )


def _widen_years(label: str, width: int) -> str:
    """`1980-1989` or `2019` → a band of `width` years; other labels stay."""
    first = f"TRY_CAST(split_part({label}, '-', 1) AS INTEGER)"
    return f"CASE WHEN {first} IS NULL THEN {label} ELSE {year_band(first, width)} END"


# One generalization step per quasi-identifier: label SQL → a coarser label SQL.
STEPS: dict[str, Callable[[str, Analytics], str]] = {
    "region": lambda v, a: (
        f"CASE WHEN {v} = '{ANY}' THEN {v} ELSE split_part({v}, '-', 1) || '-{ANY}' END"
    ),
    "period": lambda v, a: (
        f"CASE WHEN regexp_matches({v}, '^[0-9]{{4}}-[0-9]{{2}}$') THEN left({v}, 4) || '-Q'"
        f" || CAST(CAST(ceil(CAST(right({v}, 2) AS INTEGER) / 3.0) AS INTEGER) AS VARCHAR)"
        f" ELSE {v} END"
    ),
    "amount_band": lambda v, a: (
        f"CASE WHEN {v} = 'unknown' THEN {v} ELSE split_part({v}, ' ', 1) || ' any' END"
    ),
    "birth_years": lambda v, a: _widen_years(v, 2 * a.birth_year_band),
    "first_order_year": lambda v, a: _widen_years(v, 5),
    "carrier": lambda v, a: f"'{ANY}'",
    "delivery_time": lambda v, a: (
        f"CASE WHEN {v} IN ('unknown', 'not delivered') THEN {v} ELSE 'delivered' END"
    ),
}


# --- records ---------------------------------------------------------------------------------


def _exclusion(main: str, *related: str) -> str:
    """Why a record is left out (NULL: it is released).

    Held or restricted (the row itself or its subject's contact), pseudonymized (kept for
    accounting only), or not enforced yet (`expired`).
    """
    aliases = (main, *related)
    held = " OR ".join(f"list_contains({a}._purposes, {literal(HOLD_PURPOSE)})" for a in aliases)
    restricted = " OR ".join(f"{a}._state = 'restricted'" for a in aliases)
    released = ", ".join(literal(s) for s in RELEASED_STATES)
    return (
        f"CASE WHEN {held} THEN 'held' WHEN {restricted} THEN 'restricted'"
        f" WHEN {main}._state NOT IN ({released}) THEN {main}._state END"
    )


def _order_records(a: Analytics) -> str:
    return (
        f"SELECT {_exclusion('o', 'c')} AS _exclusion, o.contact_id AS _subject,"
        " coalesce(strftime(o.ordered_at, '%Y-%m'), 'unknown') AS period,"
        f" {region('o.billing_country', 'o.billing_postal_code', a.region_postal_digits)}"
        f" AS region, {amount_band('o.total_amount', 'o.currency', a.amount_bands)}"
        " AS amount_band, coalesce(o.currency, 'unknown') AS currency,"
        " o.total_amount AS _amount"
        " FROM core.orders o LEFT JOIN core.contacts c ON c.contact_id = o.contact_id"
    )


def _customer_records(a: Analytics) -> str:
    # First order among the orders analytics may use: pseudonymized orders carry a token,
    # not the contact_id, and the vault is never opened to link them.
    first_orders = (
        "SELECT contact_id, min(ordered_at) AS first_at FROM core.orders o"
        " WHERE o._state = 'active' AND NOT list_contains(o._purposes,"
        f" {literal(HOLD_PURPOSE)}) GROUP BY contact_id"
    )
    return (
        f"SELECT {_exclusion('c')} AS _exclusion, c.contact_id AS _subject,"
        f" {year_band('year(c.birth_date)', a.birth_year_band)} AS birth_years,"
        f" {region('c.country', 'c.postal_code', a.region_postal_digits)} AS region,"
        " CASE WHEN c._state = 'anonymized' THEN 'unknown' WHEN f.first_at IS NULL THEN 'none'"
        " ELSE CAST(year(f.first_at) AS VARCHAR) END AS first_order_year"
        f" FROM core.contacts c LEFT JOIN ({first_orders}) f ON f.contact_id = c.contact_id"
    )


def _shipment_records(a: Analytics) -> str:
    return (
        f"SELECT {_exclusion('s', 'o', 'c')} AS _exclusion, o.contact_id AS _subject,"
        " coalesce(s.carrier, 'unknown') AS carrier,"
        f" {region('s.country', 's.postal_code', a.region_postal_digits)} AS region,"
        f" {delivery_band('s.shipped_at', 's.delivered_at', a.delivery_day_bands)}"
        " AS delivery_time,"
        " date_diff('minute', s.shipped_at, s.delivered_at) / 1440.0 AS _days"
        " FROM core.shipments s LEFT JOIN core.orders o ON o.order_id = s.order_id"
        " LEFT JOIN core.contacts c ON c.contact_id = o.contact_id"
    )


def _subjects_column(what: str, source: str) -> OutputColumn:
    return OutputColumn(
        SUBJECTS,
        "BIGINT",
        "statistic.count",
        f"Distinct data subjects ({what}) in the row: at least k (the k-anonymity class size).",
        (source,),
    )


_REGION = (
    "Country and postal district (first digit of the postal code), e.g. CZ-1; CZ-* when the"
    " district is unknown or generalized away, * when the country is."
)

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="orders_by_month",
            description=(
                "Orders per month, billing region and amount band: counts and sums for sales"
                " analysis. Anonymized orders count; restricted, held and pseudonymized"
                " (accounting-only) orders do not."
            ),
            quasi_identifiers=(
                OutputColumn(
                    "period",
                    "VARCHAR",
                    "generalized.date",
                    "Month ordered (YYYY-MM), or its quarter (YYYY-Qn) where generalized.",
                    ("orders.ordered_at",),
                ),
                OutputColumn(
                    "region",
                    "VARCHAR",
                    "generalized.location",
                    _REGION,
                    ("orders.billing_country", "orders.billing_postal_code"),
                ),
                OutputColumn(
                    "amount_band",
                    "VARCHAR",
                    "generalized.amount",
                    "Order total band, lower bound included (e.g. CZK 500-1000); 'CZK any'"
                    " where generalized.",
                    ("orders.total_amount", "orders.currency"),
                ),
                OutputColumn(
                    "currency", "VARCHAR", "financial.currency", "Currency.", ("orders.currency",)
                ),
            ),
            measures=(
                _subjects_column(
                    "buyers; each anonymized order counts as one", "orders.contact_id"
                ),
                OutputColumn(
                    "orders", "BIGINT", "statistic.count", "Orders.", ("orders.order_id",)
                ),
                OutputColumn(
                    "total_amount",
                    "DECIMAL(18,2)",
                    "statistic.sum",
                    "Sum of the order totals, in the row's currency.",
                    ("orders.total_amount",),
                ),
            ),
            records=_order_records,
            aggregates={"orders": "count(*)", "total_amount": "sum(r._amount)"},
            ladder=("region", "amount_band", "period"),
        ),
        Dataset(
            name="customers_by_cohort",
            description=(
                "Contacts per birth-year band, region and year of first order: customer"
                " cohorts. Anonymized contacts count (their first order is unknown);"
                " restricted and held contacts do not."
            ),
            quasi_identifiers=(
                OutputColumn(
                    "birth_years",
                    "VARCHAR",
                    "generalized.birth_year",
                    "Birth-year band (e.g. 1980-1989), widened where generalized.",
                    ("contacts.birth_date",),
                ),
                OutputColumn(
                    "region",
                    "VARCHAR",
                    "generalized.location",
                    _REGION,
                    ("contacts.country", "contacts.postal_code"),
                ),
                OutputColumn(
                    "first_order_year",
                    "VARCHAR",
                    "generalized.date",
                    "Year of the contact's first order analytics may use (a 5-year band where"
                    " generalized); 'none' without one, 'unknown' for anonymized contacts."
                    " Orders kept for accounting only are pseudonymized and not linked.",
                    ("orders.ordered_at", "orders.contact_id"),
                ),
            ),
            measures=(_subjects_column("contacts", "contacts.contact_id"),),
            records=_customer_records,
            aggregates={},
            ladder=("region", "birth_years", "first_order_year"),
        ),
        Dataset(
            name="shipments_by_carrier",
            description=(
                "Shipments per carrier, delivery region and delivery-time band: carrier"
                " performance. Restricted and held shipments do not count."
            ),
            quasi_identifiers=(
                OutputColumn(
                    "carrier", "VARCHAR", "logistics.carrier", "Carrier.", ("shipments.carrier",)
                ),
                OutputColumn(
                    "region",
                    "VARCHAR",
                    "generalized.location",
                    _REGION,
                    ("shipments.country", "shipments.postal_code"),
                ),
                OutputColumn(
                    "delivery_time",
                    "VARCHAR",
                    "generalized.duration",
                    "Days from shipping to delivery, in bands (lower bound included).",
                    ("shipments.shipped_at", "shipments.delivered_at"),
                ),
            ),
            measures=(
                _subjects_column("recipients' buyers", "orders.contact_id"),
                OutputColumn(
                    "shipments",
                    "BIGINT",
                    "statistic.count",
                    "Shipments.",
                    ("shipments.shipment_id",),
                ),
                OutputColumn(
                    "avg_delivery_days",
                    "DOUBLE",
                    "statistic.mean",
                    "Mean days from shipping to delivery of the delivered shipments.",
                    ("shipments.shipped_at", "shipments.delivered_at"),
                ),
            ),
            records=_shipment_records,
            aggregates={"shipments": "count(*)", "avg_delivery_days": "round(avg(r._days), 1)"},
            ladder=("region", "delivery_time", "carrier"),
        ),
    )
}


# --- the release plan ------------------------------------------------------------------------


def _subjects(alias: str) -> str:
    """Distinct subjects; a record without one (anonymized) is a subject of its own."""
    return f"count(DISTINCT {alias}_subject) + count(*) FILTER (WHERE {alias}_subject IS NULL)"


def release_plan(policy: Policy, dataset: Dataset) -> Plan:
    """Statements that stage `_an_released` (the release) and `_an_suppressed` (left out).

    `_an_pending` holds the records not yet released, with their labels at the current
    level; `_an_cells` the cells of that level with at least k subjects.
    """
    labels = dataset.labels

    def cols(alias: str = "") -> str:
        return ", ".join(f"{alias}{quote(c)}" for c in labels)

    same = " AND ".join(f"c.{quote(c)} = p.{quote(c)}" for c in labels)
    in_cells = f"EXISTS (SELECT 1 FROM _an_cells c WHERE {same})"
    statements = [
        f"CREATE OR REPLACE TEMP TABLE _an_all AS {dataset.records(policy.analytics)}",
        "CREATE OR REPLACE TEMP TABLE _an_rec AS SELECT row_number() OVER () AS _row, *"
        " FROM _an_all WHERE _exclusion IS NULL",
        f"CREATE OR REPLACE TEMP TABLE _an_pending AS SELECT _row, _subject, {cols()} FROM _an_rec",
        f"CREATE OR REPLACE TEMP TABLE _an_assigned AS SELECT _row, 0 AS _level, {cols()}"
        " FROM _an_pending WHERE false",
    ]
    for level in range(len(dataset.ladder) + 1):
        if level:  # records not released yet: one quasi-identifier one step coarser
            step = dataset.ladder[level - 1]
            stepped = ", ".join(
                f"{STEPS[c](f'p.{quote(c)}', policy.analytics)} AS {quote(c)}"
                if c == step
                else f"p.{quote(c)}"
                for c in labels
            )
            statements.append(
                "CREATE OR REPLACE TEMP TABLE _an_pending AS SELECT p._row, p._subject,"
                f" {stepped} FROM _an_pending p WHERE NOT {in_cells}"
            )
        statements += [
            f"CREATE OR REPLACE TEMP TABLE _an_cells AS SELECT {cols()} FROM _an_pending"
            f" GROUP BY {cols()} HAVING {_subjects('')} >= {policy.k_anonymity}",
            f"INSERT INTO _an_assigned SELECT p._row, {level}, {cols('p.')}"
            f" FROM _an_pending p WHERE {in_cells}",
        ]
    measures = ", ".join(
        f"CAST({_subjects('r.') if m.name == SUBJECTS else dataset.aggregates[m.name]}"
        f" AS {m.sql_type}) AS {quote(m.name)}"
        for m in dataset.measures
    )
    statements += [
        "CREATE OR REPLACE TEMP TABLE _an_suppressed AS SELECT * FROM _an_pending p"
        f" WHERE NOT {in_cells}",
        f"CREATE OR REPLACE TEMP TABLE _an_released AS SELECT {cols('a.')}, {measures}"
        f" FROM _an_assigned a JOIN _an_rec r ON r._row = a._row GROUP BY {cols('a.')}",
    ]
    return Plan(f"release {dataset.name}", tuple(statements))


@dataclass(frozen=True)
class Release:
    """What one release of a dataset contains and left out (counts only)."""

    dataset: str
    k: int
    rows: int  # released rows (cells)
    records: int  # source rows in scope
    generalized: int  # records released at a coarser level than their own
    suppressed: int  # records in cells still smaller than k at the top of the ladder
    suppressed_cells: int
    excluded: dict[str, int]  # source rows out of scope, by reason
    min_subjects: int | None
    path: Path

    @property
    def suppressed_share(self) -> float:
        return self.suppressed / self.records if self.records else 0.0

    @property
    def generalized_share(self) -> float:
        return self.generalized / self.records if self.records else 0.0


def _ensure_releases(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {RELEASES} (
            dataset VARCHAR NOT NULL, released_at TIMESTAMP NOT NULL, k INTEGER NOT NULL,
            rows BIGINT, records BIGINT, generalized BIGINT, suppressed BIGINT,
            suppressed_cells BIGINT, excluded_restricted BIGINT, excluded_held BIGINT,
            excluded_pseudonymized BIGINT, excluded_other BIGINT)"""
    )


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return int(con.execute(sql).fetchall()[0][0])


def release(
    con: duckdb.DuckDBPyConnection, home: Home, policy: Policy, dataset: Dataset
) -> Release:
    """Build `analytics.<dataset>` and its Parquet extract from the enforced warehouse."""
    try:
        for sql in release_plan(policy, dataset).statements:
            con.execute(sql)
        excluded = {"restricted": 0, "held": 0, "pseudonymized": 0, "other": 0}
        for reason, n in con.execute(
            "SELECT _exclusion, count(*) FROM _an_all WHERE _exclusion IS NOT NULL GROUP BY 1"
        ).fetchall():
            key = reason if reason in excluded else "other"
            excluded[key] += int(n)
        records = _count(con, "SELECT count(*) FROM _an_rec")
        generalized = _count(con, "SELECT count(*) FROM _an_assigned WHERE _level > 0")
        suppressed = _count(con, "SELECT count(*) FROM _an_suppressed")
        labels = ", ".join(quote(c) for c in dataset.labels)
        suppressed_cells = _count(
            con, f"SELECT count(*) FROM (SELECT DISTINCT {labels} FROM _an_suppressed)"
        )
        columns = ", ".join(quote(c.name) for c in dataset.columns)
        table = f"{SCHEMA}.{quote(dataset.name)}"
        with transaction(con):
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            con.execute(
                f"CREATE OR REPLACE TABLE {table} AS SELECT {columns} FROM _an_released"
                f" ORDER BY {labels}"
            )
            _ensure_releases(con)
            con.execute(f"DELETE FROM {RELEASES} WHERE dataset = ?", [dataset.name])
            con.execute(
                f"INSERT INTO {RELEASES} SELECT ?, now()::TIMESTAMP, ?, count(*), ?, ?, ?, ?,"
                f" ?, ?, ?, ? FROM {table}",
                [
                    dataset.name,
                    policy.k_anonymity,
                    records,
                    generalized,
                    suppressed,
                    suppressed_cells,
                    excluded["restricted"],
                    excluded["held"],
                    excluded["pseudonymized"],
                    excluded["other"],
                ],
            )
        rows, min_subjects = con.execute(
            f"SELECT count(*), min({quote(SUBJECTS)}) FROM {table}"
        ).fetchall()[0]
    finally:
        for temp in ("all", "rec", "pending", "cells", "assigned", "suppressed", "released"):
            con.execute(f"DROP TABLE IF EXISTS _an_{temp}")
    path = exports_dir(home) / f"{dataset.name}.parquet"
    with replacing(path) as temp_path:
        con.execute(f"COPY {table} TO {literal(str(temp_path))} (FORMAT parquet)")
    return Release(
        dataset=dataset.name,
        k=policy.k_anonymity,
        rows=int(rows),
        records=records,
        generalized=generalized,
        suppressed=suppressed,
        suppressed_cells=suppressed_cells,
        excluded=excluded,
        min_subjects=None if min_subjects is None else int(min_subjects),
        path=path,
    )


@dataclass(frozen=True)
class KCheck:
    """The k-anonymity check of a released table."""

    k: int
    rows: int
    violations: int  # rows with fewer than k subjects
    duplicates: int  # quasi-identifier combinations released more than once
    unexpected_columns: tuple[str, ...]  # columns the dataset does not declare
    min_subjects: int | None

    @property
    def passed(self) -> bool:
        return not (self.violations or self.duplicates or self.unexpected_columns)

    def describe(self) -> str:
        if self.passed:
            return f"{self.rows} rows, each with at least {self.k} subjects"
        problems = []
        if self.violations:
            problems.append(f"{self.violations} rows with fewer than {self.k} subjects")
        if self.duplicates:
            problems.append(f"{self.duplicates} quasi-identifier combinations repeated")
        if self.unexpected_columns:
            problems.append("undeclared columns: " + ", ".join(self.unexpected_columns))
        return "; ".join(problems)


class MissingReleaseError(LetheError):
    """The dataset was never released (no analytics table)."""


def check_k_anonymity(con: duckdb.DuckDBPyConnection, dataset: Dataset, k: int) -> KCheck:
    """Check the released table: every quasi-identifier combination appears once and counts
    at least k subjects, and the table holds only the declared columns."""
    present = table_columns(con, SCHEMA, dataset.name)
    if not present:
        raise MissingReleaseError(f"{SCHEMA}.{dataset.name} does not exist")
    declared = {c.name for c in dataset.columns}
    table = f"{SCHEMA}.{quote(dataset.name)}"
    labels = ", ".join(quote(c) for c in dataset.labels if c in present)
    rows, violations, min_subjects = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE {quote(SUBJECTS)} IS NULL"
        f" OR {quote(SUBJECTS)} < ?), min({quote(SUBJECTS)}) FROM {table}",
        [k],
    ).fetchall()[0]
    duplicates = _count(
        con,
        f"SELECT count(*) FROM (SELECT {labels} FROM {table} GROUP BY {labels}"
        " HAVING count(*) > 1)",
    )
    return KCheck(
        k=k,
        rows=int(rows),
        violations=int(violations),
        duplicates=duplicates,
        unexpected_columns=tuple(c for c in present if c not in declared),
        min_subjects=None if min_subjects is None else int(min_subjects),
    )
