"""Every kind of generated SQL plan parses with SQLGlot and renders for PostgreSQL.

Runs hand the statements straight to DuckDB; this is where a generator bug that only
another engine would trip over shows up (SPEC "Engines and scale").
"""

from __future__ import annotations

import datetime as dt

import pytest
import sqlglot
from conftest import DEFAULT_POLICY, TABLES, TAGGED_TABLES

from lethe.compliance.analytics import datasets, release_plan
from lethe.compliance.consent_health import consent_health_plan
from lethe.declaration.policy import load_policy
from lethe.engine.plan import Plan
from lethe.engine.retention import enforcement_plan
from lethe.engine.warehouse import TAG_COLUMNS

POLICY = load_policy(DEFAULT_POLICY)
AS_OF = dt.date(2026, 3, 1)


def plans() -> dict[str, Plan]:
    out = {
        f"enforce {t}": enforcement_plan(
            POLICY, t, [*TABLES[t].column_names, "loyalty_tier", *TAG_COLUMNS], AS_OF
        )
        for t in TAGGED_TABLES
    }
    out["consent health"] = consent_health_plan(POLICY, AS_OF)
    out.update({f"release {name}": release_plan(POLICY, d) for name, d in datasets(POLICY).items()})
    return out


@pytest.mark.parametrize("name", list(plans()))
def test_plan_parses_and_renders_for_postgres(name: str) -> None:
    plan = plans()[name]
    plan.check()
    postgres = plan.transpile("postgres")
    assert len(postgres) == len(plan.statements)
    for sql in postgres:
        assert sqlglot.parse_one(sql, read="postgres") is not None


def test_check_refuses_a_broken_statement() -> None:
    with pytest.raises(sqlglot.errors.ParseError):
        Plan("broken", ("SELECT CASE WHEN FROM core.contacts",)).check()
