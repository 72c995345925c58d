"""The synthetic generator: contract columns, keys, determinism and retention boundaries."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from conftest import TABLES, TAGGED_TABLES

from lethe.eshop.generate import generate

REFERENCE = dt.date(2026, 5, 1)
T = dt.datetime(2026, 5, 1)
CONTACTS = 2000
DTYPES = {
    "text": pl.String(),
    "date": pl.Date(),
    "timestamp": pl.Datetime("us"),
    "decimal": pl.Decimal(12, 2),
}


def years_before(years: int) -> dt.datetime:
    return T.replace(year=T.year - years)


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("landing")
    generate(path, CONTACTS, seed=7, reference=REFERENCE)
    return path


@pytest.fixture(scope="module")
def frames(landing: Path) -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(landing / f"{name}.parquet") for name in TAGGED_TABLES}


def test_counts_progress_and_files(tmp_path: Path) -> None:
    steps: list[tuple[str, int]] = []
    counts = generate(
        tmp_path / "new" / "landing",
        300,
        reference=REFERENCE,
        progress=lambda step, rows: steps.append((step, rows)),
    )
    assert list(counts) == ["contacts", "consents", "orders", "shipments"]
    assert steps == list(counts.items())
    assert counts["contacts"] == 300
    files = sorted(p.name for p in (tmp_path / "new" / "landing").iterdir())
    assert files == sorted(f"{name}.parquet" for name in counts)  # no temp files left over
    for name, rows in counts.items():
        assert pl.read_parquet(tmp_path / "new" / "landing" / f"{name}.parquet").height == rows


def test_same_seed_gives_identical_files(landing: Path, tmp_path: Path) -> None:
    generate(tmp_path, CONTACTS, seed=7, reference=REFERENCE)
    for name in TAGGED_TABLES:
        file = f"{name}.parquet"
        assert (tmp_path / file).read_bytes() == (landing / file).read_bytes(), name


def test_other_seed_gives_other_data(frames: dict[str, pl.DataFrame], tmp_path: Path) -> None:
    generate(tmp_path, CONTACTS, seed=8, reference=REFERENCE)
    for name in TAGGED_TABLES:
        assert not pl.read_parquet(tmp_path / f"{name}.parquet").equals(frames[name]), name


def test_columns_and_types_follow_the_contract(frames: dict[str, pl.DataFrame]) -> None:
    for name, df in frames.items():
        table = TABLES[name]
        assert df.columns == table.column_names
        for column in table.columns:
            assert df.schema[column.name] == DTYPES[column.type], (name, column.name)
            if not column.nullable:
                assert df[column.name].null_count() == 0, (name, column.name)


def test_keys_unique_and_foreign_keys_valid(frames: dict[str, pl.DataFrame]) -> None:
    for name, df in frames.items():
        assert df[TABLES[name].key].is_unique().all(), name
    contact_ids = frames["contacts"]["contact_id"]
    assert frames["orders"]["contact_id"].is_in(contact_ids.implode()).all()
    assert frames["consents"]["contact_id"].is_in(contact_ids.implode()).all()
    assert frames["shipments"]["order_id"].is_in(frames["orders"]["order_id"].implode()).all()
    assert frames["orders"]["invoice_number"].is_unique().all()


def test_value_formats(frames: dict[str, pl.DataFrame]) -> None:
    contacts, orders = frames["contacts"], frames["orders"]
    assert contacts["contact_id"].str.contains(r"^C\d{8}$").all()
    assert orders["order_id"].str.contains(r"^O\d{8}$").all()
    assert orders["invoice_number"].str.contains(r"^FV\d{10}$").all()
    assert frames["shipments"]["shipment_id"].str.contains(r"^S\d{8}$").all()
    assert frames["consents"]["consent_id"].str.contains(r"^K\d{8}$").all()
    assert contacts["email"].is_unique().all()
    assert contacts["email"].str.contains(r"^[a-z]+\.[a-z]+\d+@[a-z]+\.[a-z]+$").all()
    assert contacts["phone"].drop_nulls().str.contains(r"^\+42[01] \d{3} \d{3} \d{3}$").all()
    assert set(contacts["country"]) == {"CZ", "SK"}
    assert (contacts["country"] == "CZ").mean() > 0.8
    assert set(orders["currency"]) == {"CZK", "EUR"}
    assert (orders["total_amount"] > 0).all()
    assert set(frames["consents"]["purpose"]) == {"newsletter"}
    assert set(frames["consents"]["method"]) == {"double_opt_in", "checkbox", "paper_form"}
    assert contacts["birth_date"].null_count() > 0


def test_billing_and_recipient_usually_copy_the_contact(frames: dict[str, pl.DataFrame]) -> None:
    contacts = frames["contacts"].with_columns(
        name=pl.concat_str("first_name", "last_name", separator=" ")
    )
    orders = frames["orders"].join(contacts, on="contact_id")
    assert (orders["billing_name"] == orders["name"]).mean() > 0.8
    assert (orders["billing_street"] == orders["street"]).mean() > 0.8
    shipments = frames["shipments"].join(
        frames["orders"].select("order_id", "contact_id"), on="order_id"
    )
    shipments = shipments.join(contacts, on="contact_id", suffix="_contact")
    assert (shipments["recipient_name"] == shipments["name"]).mean() > 0.8
    assert (shipments["street"] == shipments["street_contact"]).mean() > 0.8


def test_every_date_before_reference(frames: dict[str, pl.DataFrame]) -> None:
    for name, df in frames.items():
        for column in TABLES[name].columns:
            if column.type == "timestamp":
                assert (df[column.name].drop_nulls() < T).all(), (name, column.name)
                assert (df[column.name].drop_nulls() >= years_before(15)).all()
    assert (frames["contacts"]["birth_date"].drop_nulls() < REFERENCE).all()


def test_events_are_in_order(frames: dict[str, pl.DataFrame]) -> None:
    contacts, orders, shipments = frames["contacts"], frames["orders"], frames["shipments"]
    assert (contacts["last_active_at"] >= contacts["created_at"]).all()
    assert (contacts["birth_date"] < contacts["created_at"].dt.date()).drop_nulls().all()
    buyers = orders.join(contacts, on="contact_id")
    assert (buyers["ordered_at"] >= buyers["created_at"]).all()
    assert (orders["completed_at"] >= orders["ordered_at"]).drop_nulls().all()
    sent = shipments.join(orders, on="order_id")
    assert (sent["shipped_at"] > sent["ordered_at"]).all()
    assert (sent["delivered_at"] > sent["shipped_at"]).drop_nulls().all()
    consents = frames["consents"].join(contacts, on="contact_id")
    assert (consents["granted_at"] >= consents["created_at"]).all()
    assert (consents["withdrawn_at"] >= consents["granted_at"]).drop_nulls().all()


def test_both_sides_of_every_default_boundary(frames: dict[str, pl.DataFrame]) -> None:
    contacts, orders = frames["contacts"], frames["orders"]
    consents, shipments = frames["consents"], frames["shipments"]

    def both_sides(column: pl.Series, boundary: dt.datetime) -> None:
        values = column.drop_nulls()
        assert (values < boundary).sum() > 20, column.name
        assert (values >= boundary).sum() > 20, column.name

    both_sides(contacts["last_active_at"], years_before(2))  # account
    both_sides(orders["completed_at"], years_before(4))  # contract
    both_sides(orders["ordered_at"], years_before(10))  # accounting
    both_sides(consents["granted_at"], years_before(3))  # newsletter
    both_sides(consents["withdrawn_at"], years_before(3))  # consent_evidence
    assert 0.02 < orders["completed_at"].is_null().mean() < 0.1  # open contracts
    assert 0.2 < consents["withdrawn_at"].is_not_null().mean() < 0.4
    assert shipments["delivered_at"].null_count() > 0
    renewed = consents.group_by("contact_id").len().filter(pl.col("len") > 1)
    assert renewed.height > 0
    assert orders["contact_id"].n_unique() < contacts.height  # some contacts never ordered


def test_default_reference_is_today(tmp_path: Path) -> None:
    generate(tmp_path, 50)
    today = dt.datetime.combine(dt.datetime.now(dt.UTC).date(), dt.time())
    contacts = pl.read_parquet(tmp_path / "contacts.parquet")
    assert (contacts["last_active_at"] < today + dt.timedelta(days=1)).all()
    assert (contacts["created_at"] >= today - dt.timedelta(days=15 * 366)).all()


def test_negative_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="contacts"):
        generate(tmp_path, -1)
