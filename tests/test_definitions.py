"""The Dagster Definitions: assets, compliance metadata, checks, resources, job, schedule."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest

from lethe.tables import TABLES
from pipelines.definitions import defs
from pipelines.resources import PolicyResource, WarehouseResource

INGEST_KEYS = [dg.AssetKey(["core", t]) for t in TABLES]
TAGS_KEY = dg.AssetKey(["core", "purpose_tags"])


def spec_of(key: dg.AssetKey) -> dg.AssetSpec:
    graph = defs.resolve_asset_graph()
    assets_def = graph.assets_def_for_key(key)
    return next(s for s in assets_def.specs if s.key == key)


def test_definitions_validate() -> None:
    dg.Definitions.validate_loadable(defs)


def test_asset_keys() -> None:
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {
        "core/contacts",
        "core/consents",
        "core/orders",
        "core/shipments",
        "core/holds",
        "core/purpose_tags",
    } <= keys


@pytest.mark.parametrize("key", [*INGEST_KEYS, TAGS_KEY], ids=lambda k: k.to_user_string())
def test_owned_by_privacy_team(key: dg.AssetKey) -> None:
    assert "team:privacy" in spec_of(key).owners
    assert spec_of(key).description


def test_ingest_dependencies_follow_foreign_keys() -> None:
    graph = defs.resolve_asset_graph()
    for table in TABLES.values():
        parents = graph.get(dg.AssetKey(["core", table.name])).parent_keys
        core_parents = {k for k in parents if k.path[0] == "core"}
        assert core_parents == {dg.AssetKey(["core", fk.ref_table]) for fk in table.foreign_keys}
    assert set(INGEST_KEYS) <= graph.get(TAGS_KEY).parent_keys


@pytest.mark.parametrize("table", list(TABLES))
def test_column_schema_has_data_categories(table: str) -> None:
    schema = spec_of(dg.AssetKey(["core", table])).metadata["dagster/column_schema"]
    columns = {c.name: c for c in schema.columns}
    assert list(columns) == TABLES[table].column_names
    for col in TABLES[table].columns:
        assert columns[col.name].tags["data_category"] == col.category
        assert columns[col.name].type


def test_compliance_metadata_on_ingest_assets() -> None:
    contacts = spec_of(dg.AssetKey(["core", "contacts"]))
    assert set(contacts.metadata["purposes"].split(", ")) == {
        "account",
        "contract",
        "newsletter",
        "litigation_hold",
    }
    assert "contract" in contacts.metadata["legal_bases"]
    assert "user.contact.email" in contacts.metadata["data_categories"]
    assert "purpose/account" in contacts.tags
    assert "legal_basis/consent" in contacts.tags
    orders = spec_of(dg.AssetKey(["core", "orders"]))
    assert "legal_obligation" in orders.metadata["legal_bases"]
    assert "accounting" in orders.metadata["purposes"]
    retention = orders.metadata["retention"]
    assert "10y from orders.ordered_at" in getattr(retention, "value", retention)


def test_purpose_tags_metadata() -> None:
    spec = spec_of(TAGS_KEY)
    for name in ("account", "contract", "accounting", "newsletter", "consent_evidence"):
        assert f"purpose/{name}" in spec.tags
    md = spec.metadata["purposes"].value
    assert "GDPR Art. 6(1)(c) legal obligation" in md
    assert set(spec.metadata["retention_rules"].value) == {
        "contacts",
        "consents",
        "orders",
        "shipments",
    }


def test_ingest_assets_have_quarantine_check() -> None:
    check_keys = set(defs.resolve_asset_graph().asset_check_keys)
    for key in INGEST_KEYS:
        assert dg.AssetCheckKey(key, "no_quarantined_rows") in check_keys


def test_resources() -> None:
    assert set(defs.resources) >= {"warehouse", "policy"}
    assert isinstance(defs.resources["warehouse"], WarehouseResource)
    assert isinstance(defs.resources["policy"], PolicyResource)


def test_job_selects_every_asset() -> None:
    job = defs.resolve_job_def("lethe_pipeline")
    assert job.name == "lethe_pipeline"
    selected = job.asset_layer.executable_asset_keys
    assert set(INGEST_KEYS) | {TAGS_KEY} <= set(selected)


def test_daily_schedule() -> None:
    schedule = defs.resolve_schedule_def("daily_retention")
    assert schedule.job_name == "lethe_pipeline"
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "UTC"
    when = dt.datetime(2026, 3, 1, 2, 0, tzinfo=dt.UTC)
    context = dg.build_schedule_context(scheduled_execution_time=when)
    request = schedule.evaluate_tick(context).run_requests[0]
    assert request.run_key == "2026-03-01"
    assert request.run_config["resources"]["policy"]["config"]["as_of"] == "2026-03-01"


def test_policy_resource_as_of() -> None:
    assert PolicyResource(as_of="2026-03-01").as_of_date() == dt.date(2026, 3, 1)
    assert PolicyResource().as_of_date() == dt.datetime.now(dt.UTC).date()
