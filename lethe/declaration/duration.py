"""Calendar durations of the policy: `Nd`, `Nw`, `Nm`, `Ny`, summed with `+`.

Months and years are calendar units, so 29 Feb + 1y = 28 Feb (as `relativedelta`
and SQL interval arithmetic both do).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from dateutil.relativedelta import relativedelta

from lethe.errors import LetheError

_TERM = re.compile(r"^\s*(\d+)\s*([dwmy])\s*$")


class DurationError(LetheError, ValueError):
    """A duration string that does not follow `N[d|w|m|y] (+ N[d|w|m|y])*`."""


@dataclass(frozen=True)
class Duration:
    """A calendar duration: years and months are added before days."""

    years: int = 0
    months: int = 0
    days: int = 0
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse `3y + 1y`, `80d`, `2w`, `1m`; raise DurationError naming the bad term."""
        if not isinstance(text, str) or not text.strip():
            raise DurationError(f"expected a duration like '3y + 1y', got {text!r}")
        years = months = days = 0
        for term in text.split("+"):
            match = _TERM.match(term)
            if not match:
                raise DurationError(
                    f"bad duration term {term.strip()!r} in {text!r} (use Nd, Nw, Nm or Ny)"
                )
            n, unit = int(match.group(1)), match.group(2)
            if unit == "y":
                years += n
            elif unit == "m":
                months += n
            elif unit == "w":
                days += 7 * n
            else:
                days += n
        return cls(years, months, days, " + ".join(t.strip() for t in text.split("+")))

    def add_to(self, when: dt.date | dt.datetime) -> dt.date | dt.datetime:
        """Add this duration to a date or datetime with calendar arithmetic."""
        return when + relativedelta(years=self.years, months=self.months, days=self.days)

    def subtract_from(self, when: dt.date | dt.datetime) -> dt.date | dt.datetime:
        """The instant this duration before `when` (calendar arithmetic)."""
        return when - relativedelta(years=self.years, months=self.months, days=self.days)

    def sql(self) -> str:
        """The duration as a DuckDB/PostgreSQL interval literal."""
        return (
            f"INTERVAL '{self.years} years {self.months} months {self.days} days'"
            if (self.years or self.months or self.days)
            else "INTERVAL '0 days'"
        )

    def __str__(self) -> str:
        return self.text or f"{self.years}y + {self.months}m + {self.days}d"
