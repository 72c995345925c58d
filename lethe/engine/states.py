"""The state of a core row (SPEC "Warehouse"), one enum for every stage that reads or sets it."""

from __future__ import annotations

from enum import StrEnum


class RowState(StrEnum):
    """What a core row is now: kept for a purpose, restricted, pseudonymized or anonymized."""

    ACTIVE = "active"
    # No purpose keeps the row: only between tagging and enforcement within a run.
    EXPIRED = "expired"
    RESTRICTED = "restricted"
    PSEUDONYMIZED = "pseudonymized"
    ANONYMIZED = "anonymized"

    @property
    def sql(self) -> str:
        """The state as a SQL string literal."""
        return f"'{self.value}'"


# The states a row can have after a run (expired rows are anonymized or deleted in it).
STORED_STATES = tuple(s for s in RowState if s is not RowState.EXPIRED)
