"""Synthetic, realistic Czech (cs_CZ) landing data: contacts, consents, orders and shipments.

Faker only fills small pools of names and addresses once; every row is then sampled from
those pools with numpy and assembled with vectorized Polars expressions, so a million
contacts take seconds. Dates spread over 15 years before the reference date so that every
rule of the default policy has rows on both sides of its boundary.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from faker import Faker

from lethe.declaration.schema import Table, default_schema
from lethe.operations.files import replacing

# The e-shop's tables, as the default schema declares them.
CONTACTS, CONSENTS, ORDERS, SHIPMENTS = (
    default_schema().tables[name] for name in ("contacts", "consents", "orders", "shipments")
)
HOUR = 3_600_000_000  # microseconds
DAY = 24 * HOUR
YEARS = 15
POOL = 2000  # Faker draws per pool: enough variety, still well under a second
CHUNK = 1_000_000  # contacts generated (with their rows) and written at a time

SK_SHARE = 0.06
EMAIL_DOMAINS = {
    "seznam.cz": 0.40,
    "gmail.com": 0.22,
    "email.cz": 0.12,
    "centrum.cz": 0.08,
    "post.cz": 0.05,
    "outlook.com": 0.04,
    "volny.cz": 0.03,
    "atlas.cz": 0.03,
    "icloud.com": 0.03,
}
CZ_MOBILE = np.array(
    [*range(601, 609), *range(702, 706), *range(720, 740), *range(770, 780), *range(790, 800)]
)
SK_MOBILE = np.array([901, 902, 903, 904, 905, 906, 907, 908, 910, 911, 912, 914, 915, 916, 940])
ORDERS_PER_CONTACT = [0.27, 0.30, 0.20, 0.12, 0.07, 0.04]  # 0..5 orders, mean ~1.54
CARRIERS = {"Zásilkovna": 0.35, "PPL": 0.20, "Česká pošta": 0.20, "DPD": 0.15, "GLS": 0.10}
METHODS = {"double_opt_in": 0.60, "checkbox": 0.30, "paper_form": 0.10}
WORDINGS = [
    "Souhlasím se zasíláním obchodních sdělení a novinek na můj e-mail.",
    "Chci dostávat newsletter s novinkami a slevami. Souhlas mohu kdykoli odvolat.",
    "Souhlasím se zpracováním mé e-mailové adresy za účelem zasílání newsletteru po dobu 3 let.",
]
TRACKING_ALPHABET = b"0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
# Contact columns copied onto bills and parcels.
PERSON = ("first_name", "last_name", "street", "city", "postal_code", "country")

_DTYPES: dict[str, pl.DataType] = {
    "text": pl.String(),
    "date": pl.Date(),
    # Naive timestamps holding UTC: maps straight onto DuckDB TIMESTAMP.
    "timestamp": pl.Datetime("us"),
    "decimal": pl.Decimal(12, 2),
}


@dataclass(frozen=True)
class _Pool:
    """Values of two groups (male/female, CZ/SK) in one Series: the first group is `split` long."""

    values: pl.Series
    split: int

    def draw(self, rng: np.random.Generator, second: np.ndarray) -> np.ndarray:
        """Random indices into `values`: from the second group where `second`, else the first."""
        n = len(second)
        first_idx = rng.integers(0, self.split, n)
        second_idx = rng.integers(self.split, len(self.values), n)
        return np.where(second, second_idx, first_idx)


@dataclass(frozen=True)
class _Pools:
    """Everything drawn from Faker, aligned so that rows can be sampled by index."""

    first: _Pool  # male, then female
    first_ascii: pl.Series  # `first` folded for e-mail addresses, same positions
    last: _Pool  # male, then female (Czech surnames differ by gender)
    last_ascii: pl.Series
    streets: _Pool  # CZ, then SK
    cities: _Pool  # CZ, then SK
    postcodes: pl.Series  # one per city, same positions, so a city always has its code


def generate(
    landing: Path,
    contacts: int,
    seed: int = 0,
    reference: dt.date | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, int]:
    """Write synthetic contacts, consents, orders and shipments as Parquet into `landing`.

    All timestamps (naive, UTC) and dates fall before `reference` (default: today in UTC),
    spread over the 15 years before it. The same `seed`, `contacts` and `reference` give
    byte-identical files: contacts come in chunks of `CHUNK`, the k-th drawn from the random
    stream seeded with `[seed, k]`. `progress(table, rows)` is called for each file once all
    are written. Returns the row count per table.
    """
    if contacts < 0:
        raise ValueError(f"contacts must be >= 0, got {contacts}")
    reference = reference or dt.datetime.now(dt.UTC).date()
    ref = _micros(reference)
    start = _micros(_years_before(reference, YEARS))
    pools = _pools(seed)
    landing.mkdir(parents=True, exist_ok=True, mode=0o700)
    tables = (CONTACTS, CONSENTS, ORDERS, SHIPMENTS)
    counts = dict.fromkeys((t.name for t in tables), 0)
    invoices: dict[int, int] = {}  # invoices numbered so far per year
    with ExitStack() as stack:
        writers: dict[str, pq.ParquetWriter] = {}

        def write(table: Table, df: pl.DataFrame) -> None:
            frame = df.select(pl.col(c.name).cast(_DTYPES[c.type]) for c in table.columns)
            data = frame.to_arrow()
            if table.name not in writers:
                temp = stack.enter_context(replacing(landing / f"{table.name}.parquet"))
                writer = pq.ParquetWriter(temp, data.schema, compression="zstd")
                writers[table.name] = stack.enter_context(writer)
            writers[table.name].write_table(data)
            counts[table.name] += frame.height

        # In chunks of contacts, each with its own random stream: memory stays that of one
        # chunk at any size, and the data depends only on the seed and the size.
        for chunk, first in enumerate(range(0, max(contacts, 1), CHUNK)):
            rng = np.random.default_rng([seed, chunk])
            n = min(CHUNK, contacts - first)
            # Each table is narrowed to what the later ones read once it is written.
            people = _contacts(rng, pools, n, start, ref, first)
            write(CONTACTS, people)
            people = people.select("contact_id", "created_at", "phone", *PERSON)
            write(CONSENTS, _consents(rng, people, ref, counts[CONSENTS.name]))
            orders = _orders(rng, pools, people, ref, counts[ORDERS.name], invoices)
            write(ORDERS, orders)
            orders = orders.select("order_id", "ordered_at", "_owner")
            write(SHIPMENTS, _shipments(rng, pools, people, orders, ref, counts[SHIPMENTS.name]))
    if progress is not None:
        for name, rows in counts.items():
            progress(name, rows)
    return counts


def _micros(day: dt.date) -> int:
    """Microseconds since the epoch at midnight UTC of `day`."""
    return (day - dt.date(1970, 1, 1)).days * DAY


def _years_before(day: dt.date, years: int) -> dt.date:
    """Same calendar day `years` earlier; 29 Feb falls back to 28 Feb."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)


def _fold(name: str) -> str:
    """Lowercase ASCII letters only, for e-mail local parts: 'Šťastná' -> 'stastna'."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z]", "", ascii_name.lower())


def _pools(seed: int) -> _Pools:
    """Draw the Faker pools once: a few thousand calls, never one per row."""
    cz, sk = Faker("cs_CZ"), Faker("sk_SK")
    cz.seed_instance(seed)
    sk.seed_instance(seed)
    male = [cz.first_name_male() for _ in range(POOL)]
    female = [cz.first_name_female() for _ in range(POOL)]
    male_last = [cz.last_name_male() for _ in range(POOL)]
    female_last = [cz.last_name_female() for _ in range(POOL)]
    cz_streets = [cz.street_name() for _ in range(POOL)]
    sk_streets = [sk.street_name() for _ in range(POOL // 4)]
    # Unique city names, each with one postcode, so city and postal code always agree.
    cz_cities = list(dict.fromkeys(cz.city() for _ in range(POOL)))
    sk_cities = list(dict.fromkeys(sk.city() for _ in range(POOL // 4)))
    postcodes = [cz.postcode() for _ in cz_cities] + [sk.postcode() for _ in sk_cities]
    first = male + female
    last = male_last + female_last
    return _Pools(
        first=_Pool(pl.Series(first, dtype=pl.String), len(male)),
        first_ascii=pl.Series([_fold(s) for s in first], dtype=pl.String),
        last=_Pool(pl.Series(last, dtype=pl.String), len(male_last)),
        last_ascii=pl.Series([_fold(s) for s in last], dtype=pl.String),
        streets=_Pool(pl.Series(cz_streets + sk_streets, dtype=pl.String), len(cz_streets)),
        cities=_Pool(pl.Series(cz_cities + sk_cities, dtype=pl.String), len(cz_cities)),
        postcodes=pl.Series(postcodes, dtype=pl.String),
    )


def _between(rng: np.random.Generator, lo: np.ndarray, hi: int, skew: float = 1.0) -> np.ndarray:
    """Random instants in [lo, hi); skew < 1 pulls them toward hi."""
    span = hi - lo
    offset = (span * rng.random(len(lo)) ** skew).astype(np.int64)
    # Float rounding can land exactly on span; keep the upper bound exclusive.
    return lo + np.minimum(offset, span - 1)


def _choice(rng: np.random.Generator, weights: dict[str, float], n: int) -> pl.Series:
    """`n` values drawn from the keys of `weights` with those probabilities."""
    idx = rng.choice(len(weights), n, p=list(weights.values()))
    return pl.Series(list(weights), dtype=pl.String).gather(idx)


def _timestamps(micros: np.ndarray) -> pl.Series:
    """Microseconds since the epoch as naive (UTC) timestamps."""
    return pl.Series(micros, dtype=pl.Int64).cast(pl.Datetime("us"))


def _null_where(values: pl.Series, missing: np.ndarray) -> pl.Series:
    """`values` with nulls where the boolean mask `missing` is set."""
    return values.scatter(np.flatnonzero(missing), None)


def _ids(prefix: str, n: int, before: int = 0) -> pl.Series:
    """`C00000001`-style keys numbered after `before`; wider numbers just grow, so they stay
    unique."""
    number = pl.int_range(before + 1, before + n + 1, dtype=pl.Int64).cast(pl.String).str.zfill(8)
    return pl.select(pl.concat_str(pl.lit(prefix), number)).to_series()


def _codes(rng: np.random.Generator, n: int, alphabet: bytes, width: int) -> pl.Series:
    """Random fixed-width strings, built as one Arrow buffer instead of n Python strings."""
    chars = np.frombuffer(alphabet, dtype=np.uint8)[rng.integers(0, len(alphabet), (n, width))]
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64)
    array = pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(chars.tobytes())
    )
    return pl.Series(array)


def _phones(rng: np.random.Generator, sk: np.ndarray) -> pl.Series:
    """Mobile numbers `+420 6xx xxx xxx` (Slovak: `+421 9xx xxx xxx`) from random digits."""
    n = len(sk)
    digits = rng.integers(0, 1_000_000, n)
    frame = pl.DataFrame(
        {
            "sk": sk,
            "prefix": np.where(sk, rng.choice(SK_MOBILE, n), rng.choice(CZ_MOBILE, n)),
            "high": digits // 1000,
            "low": digits % 1000,
        }
    )
    return frame.select(
        pl.concat_str(
            pl.when("sk").then(pl.lit("+421")).otherwise(pl.lit("+420")),
            pl.col("prefix").cast(pl.String),
            pl.col("high").cast(pl.String).str.zfill(3),
            pl.col("low").cast(pl.String).str.zfill(3),
            separator=" ",
        )
    ).to_series()


def _ips(rng: np.random.Generator, n: int) -> pl.Series:
    """Random dotted IPv4 addresses."""
    octets = rng.integers(0, 256, (n, 4))
    octets[:, 0] = rng.integers(1, 224, n)  # unicast first octet
    frame = pl.DataFrame(octets, schema=["a", "b", "c", "d"])
    return frame.select(
        pl.concat_str([pl.col(c).cast(pl.String) for c in "abcd"], separator=".")
    ).to_series()


def _names(rng: np.random.Generator, pools: _Pools, n: int) -> pl.DataFrame:
    """First and last names (about half women) and their ASCII folds."""
    female = rng.random(n) < 0.5
    first = pools.first.draw(rng, female)
    last = pools.last.draw(rng, female)
    return pl.DataFrame(
        {
            "first_name": pools.first.values.gather(first),
            "last_name": pools.last.values.gather(last),
            "first_ascii": pools.first_ascii.gather(first),
            "last_ascii": pools.last_ascii.gather(last),
        }
    )


def _full_name(names: pl.DataFrame) -> pl.Series:
    """`first_name last_name`, as billing and recipient names are written."""
    return names.select(pl.concat_str("first_name", "last_name", separator=" ")).to_series()


def _addresses(rng: np.random.Generator, pools: _Pools, sk: np.ndarray) -> pl.DataFrame:
    """Street with house number, city, its postcode and country (CZ, or SK where `sk`)."""
    city = pools.cities.draw(rng, sk)
    frame = pl.DataFrame(
        {
            "street": pools.streets.values.gather(pools.streets.draw(rng, sk)),
            "number": rng.integers(1, 400, len(sk)),
            "city": pools.cities.values.gather(city),
            "postal_code": pools.postcodes.gather(city),
            "sk": sk,
        }
    )
    return frame.select(
        pl.concat_str("street", pl.col("number").cast(pl.String), separator=" ").alias("street"),
        "city",
        "postal_code",
        pl.when("sk").then(pl.lit("SK")).otherwise(pl.lit("CZ")).alias("country"),
    )


def _contacts(
    rng: np.random.Generator, pools: _Pools, n: int, start: int, ref: int, before: int
) -> pl.DataFrame:
    """`n` contacts (numbered after `before`) created uniformly between `start` and `ref`,
    ~6% of them in Slovakia."""
    sk = rng.random(n) < SK_SHARE
    created = start + rng.integers(0, ref - start, n)
    # Skewed toward the present: a bit over half the contacts were active in the last 2 years.
    last_active = _between(rng, created, ref, skew=0.5)
    # 18 to 80 years old when they signed up.
    birth_days = created // DAY - rng.integers(18 * 365, 80 * 365, n)
    frame = pl.concat(
        [
            _names(rng, pools, n),
            _addresses(rng, pools, sk),
            pl.DataFrame(
                {
                    "contact_id": _ids("C", n, before),
                    "number": pl.int_range(before + 1, before + n + 1, dtype=pl.Int64, eager=True),
                    "domain": _choice(rng, EMAIL_DOMAINS, n),
                    "phone": _null_where(_phones(rng, sk), rng.random(n) < 0.05),
                    "birth_date": _null_where(
                        pl.Series(birth_days, dtype=pl.Int32).cast(pl.Date), rng.random(n) < 0.03
                    ),
                    "created_at": _timestamps(created),
                    "last_active_at": _timestamps(last_active),
                }
            ),
        ],
        how="horizontal",
    )
    # The row number makes the address unique: names hold no digits, so no two can collide.
    email = pl.concat_str(
        "first_ascii",
        pl.lit("."),
        "last_ascii",
        pl.col("number").cast(pl.String),
        pl.lit("@"),
        "domain",
    )
    return frame.with_columns(email=email).select(CONTACTS.column_names)


def _consents(
    rng: np.random.Generator, contacts: pl.DataFrame, ref: int, before: int
) -> pl.DataFrame:
    """Newsletter consents for ~40% of contacts, a quarter of them renewed by a second row
    (numbered after `before`)."""
    created = contacts["created_at"].dt.epoch("us").to_numpy()
    holders = np.flatnonzero(rng.random(contacts.height) < 0.4)
    first = _between(rng, created[holders], ref)
    renewed = rng.random(len(holders)) < 0.25
    owner = np.concatenate([holders, holders[renewed]])
    granted = np.concatenate([first, _between(rng, first[renewed], ref)])
    order = np.argsort(granted, kind="stable")  # consent ids follow time
    owner, granted = owner[order], granted[order]
    n = len(owner)
    withdrawn = _between(rng, granted, ref)
    method = _choice(rng, METHODS, n)
    return pl.DataFrame(
        {
            "consent_id": _ids("K", n, before),
            "contact_id": contacts["contact_id"].gather(owner),
            "purpose": pl.repeat("newsletter", n, dtype=pl.String, eager=True),
            "granted_at": _timestamps(granted),
            "withdrawn_at": _null_where(_timestamps(withdrawn), rng.random(n) >= 0.3),
            # A paper form carries no IP address.
            "ip_address": _null_where(_ips(rng, n), (method == "paper_form").to_numpy()),
            "method": method,
            "wording": pl.Series(WORDINGS, dtype=pl.String).gather(
                rng.integers(0, len(WORDINGS), n)
            ),
        }
    )


def _orders(
    rng: np.random.Generator,
    pools: _Pools,
    contacts: pl.DataFrame,
    ref: int,
    before: int,
    invoices: dict[int, int],
) -> pl.DataFrame:
    """0..5 orders per contact (numbered after `before`); keeps `_owner` (the buyer's row)
    for the shipments. Invoice numbers run on per year from `invoices`, which is updated."""
    created = contacts["created_at"].dt.epoch("us").to_numpy()
    per_contact = rng.choice(len(ORDERS_PER_CONTACT), contacts.height, p=ORDERS_PER_CONTACT)
    owner = np.repeat(np.arange(contacts.height), per_contact)
    ordered = _between(rng, created[owner], ref)
    order = np.argsort(ordered, kind="stable")  # order ids and invoice numbers follow time
    owner, ordered = owner[order], ordered[order]
    n = len(owner)
    completed = ordered + rng.integers(0, 31 * DAY, n)
    # Open contracts are mostly recent orders, plus a few long-running ones.
    open_rate = np.where(ref - ordered < 90 * DAY, 0.3, 0.015)
    still_open = (completed >= ref) | (rng.random(n) < open_rate)

    buyer = contacts.select(pl.col("contact_id", *PERSON).gather(owner))
    sk = (buyer["country"] == "SK").to_numpy()
    # Most bills go to the buyer; some to another person or address (gift, company, old address).
    other = pl.Series(rng.random(n) < 0.08)
    billing = _addresses(rng, pools, sk)
    eur = sk | (rng.random(n) < 0.02)
    # Whole crowns (CZK has no coins below 1 Kč); euro prices keep their cents.
    price = np.exp(rng.normal(7.2, 0.9, n))
    cents = np.where(eur, np.rint(price / 25 * 100), np.rint(price) * 100).astype(np.int64)
    year = pl.col("ordered_at").dt.year()
    frame = pl.DataFrame(
        {
            "order_id": _ids("O", n, before),
            "contact_id": buyer["contact_id"],
            "ordered_at": _timestamps(ordered),
            "completed_at": _null_where(_timestamps(completed), still_open),
            "total_amount": (pl.Series(cents).cast(pl.Decimal(12, 2)) / 100).cast(
                pl.Decimal(12, 2)
            ),
            "currency": pl.Series(np.where(eur, "EUR", "CZK"), dtype=pl.String),
            "billing_name": _full_name(buyer).zip_with(~other, _full_name(_names(rng, pools, n))),
            "billing_street": buyer["street"].zip_with(~other, billing["street"]),
            "billing_city": buyer["city"].zip_with(~other, billing["city"]),
            "billing_postal_code": buyer["postal_code"].zip_with(~other, billing["postal_code"]),
            "billing_country": buyer["country"],
            "_owner": owner,
        }
    )
    issued = pl.DataFrame(
        {"year": list(invoices), "issued": list(invoices.values())},
        schema={"year": pl.Int32, "issued": pl.Int64},
    )
    frame = (
        frame.with_columns(year.alias("year"))
        .join(issued, on="year", how="left", maintain_order="left")
        .with_columns(
            invoice_number=pl.concat_str(
                pl.lit("FV"),
                year.cast(pl.String),
                (pl.col("issued").fill_null(0) + pl.int_range(1, pl.len() + 1).over(year))
                .cast(pl.String)
                .str.zfill(6),
            )
        )
    )
    for y, count in frame.group_by("year").len().iter_rows():
        invoices[y] = invoices.get(y, 0) + count
    return frame.drop("year", "issued")


def _shipments(
    rng: np.random.Generator,
    pools: _Pools,
    contacts: pl.DataFrame,
    orders: pl.DataFrame,
    ref: int,
    before: int,
) -> pl.DataFrame:
    """A shipment for ~90% of orders, sent within 3 days, ~3% never delivered (numbered
    after `before`)."""
    ordered = orders["ordered_at"].dt.epoch("us").to_numpy()
    shipped = ordered + rng.integers(2 * HOUR, 3 * DAY, len(ordered))
    picked = np.flatnonzero((rng.random(len(ordered)) < 0.9) & (shipped < ref))
    shipped = shipped[picked]
    n = len(picked)
    delivered = shipped + rng.integers(12 * HOUR, 6 * DAY, n)
    lost = (delivered >= ref) | (rng.random(n) < 0.03)

    owner = orders["_owner"].to_numpy()[picked]
    recipient = contacts.select(pl.col("phone", *PERSON).gather(owner))
    sk = (recipient["country"] == "SK").to_numpy()
    # Usually the buyer at home; sometimes someone else or another address (work, gift).
    other = pl.Series(rng.random(n) < 0.12)
    address = _addresses(rng, pools, sk)
    return pl.DataFrame(
        {
            "shipment_id": _ids("S", n, before),
            "order_id": orders["order_id"].gather(picked),
            "carrier": _choice(rng, CARRIERS, n),
            "tracking_number": _codes(rng, n, TRACKING_ALPHABET, 12),
            "recipient_name": _full_name(recipient).zip_with(
                ~other, _full_name(_names(rng, pools, n))
            ),
            "recipient_phone": recipient["phone"].zip_with(~other, _phones(rng, sk)),
            "street": recipient["street"].zip_with(~other, address["street"]),
            "city": recipient["city"].zip_with(~other, address["city"]),
            "postal_code": recipient["postal_code"].zip_with(~other, address["postal_code"]),
            "country": recipient["country"],
            "shipped_at": _timestamps(shipped),
            "delivered_at": _null_where(_timestamps(delivered), lost),
        }
    )
