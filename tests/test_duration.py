"""Policy durations: parsing, errors and calendar arithmetic (Python and SQL agree)."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from lethe.declaration.duration import Duration, DurationError


@pytest.mark.parametrize(
    ("text", "years", "months", "days"),
    [
        ("3y + 1y", 4, 0, 0),
        ("80d", 0, 0, 80),
        ("2w", 0, 0, 14),
        ("1m", 0, 1, 0),
        ("10y", 10, 0, 0),
        ("0d", 0, 0, 0),
        ("1y+2m+3w+4d", 1, 2, 25),
        ("  6m  +  1y ", 1, 6, 0),
    ],
)
def test_parse(text: str, years: int, months: int, days: int) -> None:
    d = Duration.parse(text)
    assert (d.years, d.months, d.days) == (years, months, days)


def test_text_is_kept_readable() -> None:
    assert str(Duration.parse("3y+1y")) == "3y + 1y"
    assert str(Duration.parse("80d")) == "80d"


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("3y + 2x", "2x"),
        ("3 years", "3 years"),
        ("y", "y"),
        ("-1d", "-1d"),
        ("1.5y", "1.5y"),
        ("1y + ", ""),
        ("2Y", "2Y"),
    ],
)
def test_bad_term_is_named(text: str, bad: str) -> None:
    with pytest.raises(DurationError) as info:
        Duration.parse(text)
    assert f"bad duration term {bad!r}" in str(info.value)
    assert "Nd, Nw, Nm or Ny" in str(info.value)


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_duration_is_refused(text: str) -> None:
    with pytest.raises(DurationError, match="expected a duration"):
        Duration.parse(text)


def test_duration_error_is_a_value_error() -> None:
    # pydantic validators turn ValueErrors into validation errors naming the key.
    assert issubclass(DurationError, ValueError)


CALENDAR_CASES = [
    (dt.date(2020, 2, 29), "1y", dt.date(2021, 2, 28)),
    (dt.date(2020, 2, 29), "4y", dt.date(2024, 2, 29)),
    (dt.date(2024, 2, 29), "2y", dt.date(2026, 2, 28)),
    (dt.date(2024, 1, 31), "1m", dt.date(2024, 2, 29)),
    (dt.date(2023, 1, 31), "1m", dt.date(2023, 2, 28)),
    (dt.date(2024, 1, 31), "1m + 1d", dt.date(2024, 3, 1)),
    (dt.date(2024, 3, 31), "1m", dt.date(2024, 4, 30)),
    (dt.date(2025, 12, 31), "2w", dt.date(2026, 1, 14)),
    (dt.date(2026, 1, 1), "80d", dt.date(2026, 3, 22)),
    (dt.date(2016, 3, 1), "10y", dt.date(2026, 3, 1)),
    (dt.date(2022, 3, 1), "3y + 1y", dt.date(2026, 3, 1)),
    (dt.date(2026, 3, 1), "0d", dt.date(2026, 3, 1)),
]


@pytest.mark.parametrize(("start", "text", "end"), CALENDAR_CASES)
def test_add_to_date(start: dt.date, text: str, end: dt.date) -> None:
    assert Duration.parse(text).add_to(start) == end


def test_add_to_datetime_keeps_the_time() -> None:
    start = dt.datetime(2020, 2, 29, 13, 45, 10)
    assert Duration.parse("1y").add_to(start) == dt.datetime(2021, 2, 28, 13, 45, 10)


@pytest.mark.parametrize(("start", "text", "end"), CALENDAR_CASES)
def test_sql_interval_matches_add_to(start: dt.date, text: str, end: dt.date) -> None:
    d = Duration.parse(text)
    con = duckdb.connect()
    try:
        got_date = con.execute(f"SELECT CAST(CAST(? AS DATE) + {d.sql()} AS DATE)", [start])
        assert got_date.fetchone()[0] == d.add_to(start) == end
        ts = dt.datetime.combine(start, dt.time(13, 45, 10))
        got_ts = con.execute(f"SELECT CAST(? AS TIMESTAMP) + {d.sql()}", [ts]).fetchone()[0]
        assert got_ts == d.add_to(ts)
    finally:
        con.close()


def test_zero_duration_sql() -> None:
    assert Duration.parse("0d").sql() == "INTERVAL '0 days'"
    assert "4 years" in Duration.parse("3y + 1y").sql()
