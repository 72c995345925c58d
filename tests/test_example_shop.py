"""The example shop end to end (examples/shop/): its own schema and policy, its Czech
windows-1250 exports, `lethe run` with the CLI, then requests on its own subjects. The same
rows, renamed back, must give what the default e-shop gives."""

from __future__ import annotations

import shutil

import pytest
from conftest import REPO
from reliability import run_cli

from lethe.declaration.policy import load_policy
from lethe.engine.warehouse import connect
from lethe.operations.home import Home

SHOP = REPO / "examples" / "shop"
POLICY = SHOP / "policy.yaml"
AS_OF = "2026-02-01"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Home:
    home = Home(tmp_path_factory.mktemp("shop") / "home").ensure()
    for f in (SHOP / "landing").glob("*.csv"):
        shutil.copy(f, home.landing / f.name)
    result = run_cli(home, "run", "--as-of", AS_OF, timeout=600, LETHE_POLICY=str(POLICY))
    assert result.returncode == 0, result.stderr[-2000:]
    return home


def _count(home: Home, sql: str) -> int:
    con = connect(home.warehouse, read_only=True)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def test_the_shop_runs_end_to_end(shop: Home) -> None:
    policy = load_policy(POLICY)
    con = connect(shop.warehouse, read_only=True)
    try:
        tables = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'core'"
            ).fetchall()
        }
        states = dict(
            con.execute("SELECT _state, count(*) FROM core.objednavky GROUP BY ALL").fetchall()
        )
        released = con.execute("SELECT count(*) FROM analytics.releases").fetchone()[0]
    finally:
        con.close()
    assert set(policy.data_schema.tables) <= tables
    # No e-shop table was made for a shop that declares other names.
    assert not tables & {"contacts", "orders", "shipments", "consents", "holds"}
    # Old invoices kept for accounting only are pseudonymized, the oldest anonymized.
    assert states.get("pseudonymized", 0) > 0 and states.get("anonymized", 0) > 0
    assert released > 0


def test_requests_on_the_shops_own_subjects(shop: Home) -> None:
    con = connect(shop.warehouse, read_only=True)
    try:
        reader, erased = (
            r[0]
            for r in con.execute(
                "SELECT cislo_zakaznika FROM core.zakaznici WHERE _state = 'active'"
                " ORDER BY 1 LIMIT 2"
            ).fetchall()
        )
    finally:
        con.close()
    for kind, subject in (("access", reader), ("erasure", erased)):
        result = run_cli(shop, "request", kind, "--subject", subject, LETHE_POLICY=str(POLICY))
        assert result.returncode == 0, result.stderr
    rerun = run_cli(shop, "run", "--as-of", AS_OF, timeout=600, LETHE_POLICY=str(POLICY))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    kept = "SELECT count(*) FROM core.zakaznici WHERE cislo_zakaznika = '{}'"
    assert _count(shop, kept.format(erased)) == 0
    assert _count(shop, kept.format(reader)) == 1
    assert len(list((shop.exports / "requests").glob("*.zip"))) == 1


def test_the_shops_files_are_gone_from_landing(shop: Home) -> None:
    assert not list(shop.landing.glob("*.csv"))
