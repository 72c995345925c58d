"""The Dagster Definitions: assets, compliance metadata, checks, resources, job, schedule."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from conftest import DEFAULT_POLICY, REPO, TABLES, TAGGED_TABLES
from renaming import suffixed

from lethe.declaration.policy import PolicyError, load_policy
from lethe.eshop import SCHEMA_FILE
from pipelines.definitions import build_definitions, defs
from pipelines.resources import PolicyResource, WarehouseResource

SHOP_POLICY = REPO / "examples" / "shop" / "policy.yaml"

DEFS = defs()

INGEST_KEYS = [dg.AssetKey(["ingest", t]) for t in TABLES]
CORE_KEYS = [dg.AssetKey(["core", t]) for t in TABLES]
TAGS_KEY = dg.AssetKey(["core", "purpose_tags"])


def spec_of(key: dg.AssetKey, definitions: dg.Definitions = DEFS) -> dg.AssetSpec:
    graph = definitions.resolve_asset_graph()
    assets_def = graph.assets_def_for_key(key)
    return next(s for s in assets_def.specs if s.key == key)


def test_definitions_validate() -> None:
    dg.Definitions.validate_loadable(DEFS)


def test_asset_keys() -> None:
    keys = {k.to_user_string() for k in DEFS.resolve_asset_graph().get_all_asset_keys()}
    assert {
        "core/contacts",
        "core/consents",
        "core/orders",
        "core/shipments",
        "core/holds",
        "core/purpose_tags",
        "ingest/contacts",
        "ingest/holds",
    } <= keys


@pytest.mark.parametrize(
    "key", [*INGEST_KEYS, *CORE_KEYS, TAGS_KEY], ids=lambda k: k.to_user_string()
)
def test_owned_by_privacy_team(key: dg.AssetKey) -> None:
    assert "team:privacy" in spec_of(key).owners
    assert spec_of(key).description


def test_ingest_dependencies_follow_foreign_keys() -> None:
    graph = DEFS.resolve_asset_graph()
    for table in TABLES.values():
        parents = graph.get(dg.AssetKey(["ingest", table.name])).parent_keys
        ingest_parents = {k for k in parents if k.path[0] == "ingest"}
        assert ingest_parents == {
            dg.AssetKey(["ingest", fk.ref_table]) for fk in table.foreign_keys
        }
    assert set(INGEST_KEYS) <= graph.get(TAGS_KEY).parent_keys


@pytest.mark.parametrize("table", list(TABLES))
def test_column_schema_has_data_categories(table: str) -> None:
    schema = spec_of(dg.AssetKey(["core", table])).metadata["dagster/column_schema"]
    columns = {c.name: c for c in schema.columns}
    assert list(columns) == TABLES[table].column_names
    for col in TABLES[table].columns:
        assert columns[col.name].tags["data_category"] == col.category
        assert columns[col.name].type
        # what the column is, in words: its description or its English label
        assert columns[col.name].description == (col.description or col.label["en"])


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
    check_keys = set(DEFS.resolve_asset_graph().asset_check_keys)
    for key in INGEST_KEYS:
        assert dg.AssetCheckKey(key, "no_quarantined_rows") in check_keys


def test_resources() -> None:
    assert set(DEFS.resources) >= {"warehouse", "policy"}
    assert isinstance(DEFS.resources["warehouse"], WarehouseResource)
    assert isinstance(DEFS.resources["policy"], PolicyResource)


def test_job_selects_every_asset() -> None:
    job = DEFS.resolve_job_def("lethe_pipeline")
    assert job.name == "lethe_pipeline"
    selected = job.asset_layer.executable_asset_keys
    assert set(INGEST_KEYS) | {TAGS_KEY} <= set(selected)


def test_daily_schedule() -> None:
    schedule = DEFS.resolve_schedule_def("daily_retention")
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


# --- definitions built from another policy and schema: the example shop ----------------------


@pytest.fixture(scope="module")
def shop() -> dg.Definitions:
    return build_definitions(load_policy(SHOP_POLICY))


def test_shop_definitions_have_one_asset_per_declared_table(shop: dg.Definitions) -> None:
    dg.Definitions.validate_loadable(shop)
    schema = load_policy(SHOP_POLICY).data_schema
    graph = shop.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    declared = {"zakaznici", "souhlasy", "objednavky", "zasilky", "blokace"}
    assert {f"core/{t}" for t in declared} <= keys
    assert {f"landing/{t}" for t in declared} <= keys
    assert not {k for k in keys if k.split("/")[-1] in TABLES}  # nothing of the e-shop
    for table in schema.tables.values():
        parents = graph.get(dg.AssetKey(["ingest", table.name])).parent_keys
        assert parents == {
            dg.AssetKey(["landing", table.name]),
            *(dg.AssetKey(["ingest", fk.ref_table]) for fk in table.foreign_keys),
        }
    assert {dg.AssetKey(["ingest", t]) for t in declared} <= graph.get(TAGS_KEY).parent_keys
    job = shop.resolve_job_def("lethe_pipeline").asset_layer.executable_asset_keys
    assert {dg.AssetKey(["core", t]) for t in declared} <= set(job)


def test_shop_assets_carry_their_column_schema_and_categories(shop: dg.Definitions) -> None:
    spec = spec_of(dg.AssetKey(["core", "zakaznici"]), shop)
    assert spec.description.startswith("core.zakaznici: Registrovaní zákazníci")
    columns = {c.name: c for c in spec.metadata["dagster/column_schema"].columns}
    assert list(columns)[:3] == ["cislo_zakaznika", "email", "telefon"]
    assert columns["email"].tags["data_category"] == "user.contact.email"
    assert columns["datum_narozeni"].type == "DATE"
    assert columns["zalozeno"].tags["data_category"] == "system.operations"
    assert set(spec.metadata["purposes"].split(", ")) == {
        "account",
        "contract",
        "newsletter",
        "litigation_hold",
    }
    lineage = spec.metadata["dagster/column_lineage"].deps_by_column
    assert [(d.asset_key.path, d.column_name) for d in lineage["jmeno"]] == [
        (["ingest", "zakaznici"], "jmeno")
    ]
    ingest = spec_of(dg.AssetKey(["ingest", "zakaznici"]), shop)
    lineage = ingest.metadata["dagster/column_lineage"].deps_by_column
    assert [(d.asset_key.path, d.column_name) for d in lineage["jmeno"]] == [
        (["landing", "zakaznici"], "Jméno")
    ]
    landing = spec_of(dg.AssetKey(["landing", "objednavky"]), shop)
    headers = {c.name: c for c in landing.metadata["dagster/column_schema"].columns}
    assert headers["Částka celkem"].tags["data_category"] == "user.financial"
    assert "';'-separated windows-1250, decimal ','" in landing.description
    orders = spec_of(dg.AssetKey(["core", "objednavky"]), shop)
    assert "10y from objednavky.objednano" in orders.metadata["retention"].value


def test_shop_checks_and_hold_table_come_from_the_policy(shop: dg.Definitions) -> None:
    graph = shop.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    for table in ("zakaznici", "souhlasy", "objednavky", "zasilky", "blokace"):
        assert (f"ingest/{table}", "no_quarantined_rows") in checks
    assert ("core/retention_enforcement", "held_zakaznici_untouched") in checks
    # the hold table (blokace) serves the hold: it is loaded, never tagged
    assert set(spec_of(TAGS_KEY, shop).metadata["retention_rules"].value) == {
        "zakaznici",
        "souhlasy",
        "objednavky",
        "zasilky",
    }
    blokace = spec_of(dg.AssetKey(["core", "blokace"]), shop)
    assert blokace.metadata["purposes"] == "litigation_hold"
    consent = spec_of(dg.AssetKey(["compliance", "consent_health"]), shop)
    lineage = consent.metadata["dagster/column_lineage"].deps_by_column
    assert {(d.asset_key.to_user_string(), d.column_name) for d in lineage["email"]} == {
        ("core/zakaznici", "email")
    }


def test_runs_of_the_definitions_use_their_policy(shop: dg.Definitions) -> None:
    resource = shop.resources["policy"]
    assert resource.path == str(SHOP_POLICY.resolve())
    assert resource.load().data_schema.subject_table.name == "zakaznici"
    schedule = shop.resolve_schedule_def("daily_retention")
    when = dt.datetime(2026, 3, 1, 2, 0, tzinfo=dt.UTC)
    request = schedule.evaluate_tick(
        dg.build_schedule_context(scheduled_execution_time=when)
    ).run_requests[0]
    assert request.run_config["resources"]["policy"]["config"] == {
        "as_of": "2026-03-01",
        "path": str(SHOP_POLICY.resolve()),
    }


def test_definitions_load_the_policy_lethe_policy_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LETHE_POLICY", str(SHOP_POLICY))
    keys = defs().resolve_asset_graph().get_all_asset_keys()
    assert dg.AssetKey(["core", "zakaznici"]) in keys
    assert dg.AssetKey(["core", "contacts"]) not in keys


def test_a_broken_policy_is_a_load_error_not_an_import_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\npurposes: {account: {legal_basis: maybe}}\n")
    imported = subprocess.run(
        [sys.executable, "-c", "import pipelines.definitions"],
        cwd=REPO,
        env={"LETHE_POLICY": str(broken), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert imported.returncode == 0, imported.stderr
    monkeypatch.setenv("LETHE_POLICY", str(broken))
    with pytest.raises(PolicyError, match=r"broken\.yaml:2: purposes\.account\.legal_basis"):
        defs()


def test_renamed_schema_gives_the_same_definitions_renamed(tmp_path: Path) -> None:
    raw_schema = yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))
    names = suffixed(raw_schema)
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(names.schema(raw_schema), sort_keys=False))
    raw_policy = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    (tmp_path / "policy.yaml").write_text(
        yaml.safe_dump(names.policy(raw_policy, "schema.yaml"), sort_keys=False)
    )
    renamed = build_definitions(load_policy(tmp_path / "policy.yaml"))

    def renamed_key(key: dg.AssetKey) -> dg.AssetKey:
        head, last = key.path[:-1], key.path[-1]
        return dg.AssetKey([*head, names.tables.get(last, last)])

    default_graph, renamed_graph = DEFS.resolve_asset_graph(), renamed.resolve_asset_graph()
    keys = set(default_graph.get_all_asset_keys())
    assert {renamed_key(k) for k in keys} == set(renamed_graph.get_all_asset_keys())
    for key in keys:
        assert {renamed_key(p) for p in default_graph.get(key).parent_keys} == (
            renamed_graph.get(renamed_key(key)).parent_keys
        ), key
    checks = {
        (renamed_key(k.asset_key), k.name)
        for k in default_graph.asset_check_keys
        if k.asset_key in keys
    }
    assert {(k.asset_key, k.name) for k in renamed_graph.asset_check_keys} == {
        (key, name.replace("held_contacts_", "held_contacts_x_")) for key, name in checks
    }
    for table in TABLES:
        key = dg.AssetKey(["core", table])
        default = spec_of(key).metadata["dagster/column_schema"].columns
        columns = spec_of(renamed_key(key), renamed).metadata["dagster/column_schema"].columns
        assert [(names.column(table, c.name), c.type, c.tags) for c in default] == [
            (c.name, c.type, c.tags) for c in columns
        ]


# --- what a compliance officer sees on the core assets (issue 15) -----------------------------


def _records(table: dg.TableMetadataValue) -> dict[str, dict]:
    return {r.data["purpose"]: r.data for r in table.records}


def test_core_assets_are_the_tables_after_enforcement() -> None:
    graph = DEFS.resolve_asset_graph()
    enforcement = graph.assets_def_for_key(dg.AssetKey(["core", "retention_enforcement"]))
    for key in CORE_KEYS:
        assert graph.assets_def_for_key(key) is enforcement  # materialized by enforcement
        assert graph.get(key).parent_keys == {
            dg.AssetKey(["ingest", key.path[-1]]),
            dg.AssetKey(["core", "retention_enforcement"]),
        }


def test_core_assets_carry_a_purpose_table_from_policy_and_schema() -> None:
    contacts = _records(spec_of(dg.AssetKey(["core", "contacts"])).metadata["purposes_retention"])
    assert set(contacts) == {"account", "contract", "newsletter", "litigation_hold"}
    assert contacts["newsletter"]["columns kept"] == "contact_id, email, first_name"
    assert "2 years after the contact was last active" in contacts["account"]["retention"]
    assert "If only newsletter keeps it: phone," in contacts["account"]["afterwards"]
    orders = _records(spec_of(dg.AssetKey(["core", "orders"])).metadata["purposes_retention"])
    # the accounting-only orders' buyer, name and street become vault tokens: said, by name
    assert (
        "If only accounting keeps it: contact_id, billing_name and billing_street replaced by"
        " vault tokens; completed_at kept as is." in orders["contract"]["afterwards"]
    )
    assert orders["accounting"]["columns kept"].endswith(
        "as vault tokens: contact_id, billing_name, billing_street"
    )
    shipments = _records(spec_of(dg.AssetKey(["core", "shipments"])).metadata["purposes_retention"])
    assert shipments["contract"]["afterwards"] == "With no purpose left: deleted."
    holds = _records(spec_of(dg.AssetKey(["core", "holds"])).metadata["purposes_retention"])
    assert list(holds) == ["litigation_hold"]


def test_orders_retention_text_names_the_pseudonymized_columns() -> None:
    text = spec_of(dg.AssetKey(["core", "orders"])).metadata["retention"].value
    assert (
        "While only accounting keeps a row, contact_id, billing_name and billing_street are"
        " replaced by vault tokens (pseudonymized)." in text
    )


def test_nothing_past_retention_per_core_table_and_blocking_checks() -> None:
    graph = DEFS.resolve_asset_graph()
    specs = {
        (s.asset_key.to_user_string(), s.name): s for a in graph.assets_defs for s in a.check_specs
    }
    for table in TAGGED_TABLES:
        assert specs[(f"core/{table}", "nothing_past_retention")].blocking
    assert ("core/holds", "nothing_past_retention") not in specs  # never tagged
    assert specs[("core/retention_enforcement", "ledger_chain_intact")].blocking
    assert specs[("core/retention_enforcement", "nothing_past_retention")].blocking
    assert not specs[("ingest/orders", "no_quarantined_rows")].blocking
    analytics = graph.get(dg.AssetKey(["analytics", "orders_by_month"])).parent_keys
    assert dg.AssetKey(["core", "orders"]) in analytics


def test_dagster_defaults_schedule_running_in_process_pipeline_order() -> None:
    schedule = DEFS.resolve_schedule_def("daily_retention")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    # every job, the UI's implicit "Materialize all" job included, runs in one process
    assert DEFS.resolve_implicit_global_asset_job_def().executor_def is dg.in_process_executor
    assert DEFS.resolve_job_def("lethe_pipeline").executor_def is dg.in_process_executor


def test_instance_config_turns_the_community_popup_off(tmp_path: Path) -> None:
    from lethe.operations.home import Home
    from pipelines.instance import prepare_instance

    home = Home(tmp_path / "home").ensure()
    instance = prepare_instance(home)
    try:
        config = yaml.safe_load((home.dagster / "dagster.yaml").read_text())
        assert config["nux"] == {"enabled": False}
        assert config["telemetry"] == {"enabled": False}
    finally:
        instance.dispose()


def test_policy_resource_tags_a_run_without_a_date_with_its_as_of(tmp_path: Path) -> None:
    @dg.asset
    def day(policy: PolicyResource) -> str:
        return policy.as_of_date().isoformat()

    with dg.instance_for_test() as instance:
        dated = dg.materialize(
            [day], resources={"policy": PolicyResource(as_of="2026-03-01")}, instance=instance
        )
        undated = dg.materialize([day], resources={"policy": PolicyResource()}, instance=instance)
        today = dt.datetime.now(dt.UTC).date().isoformat()
        assert undated.output_for_node("day") == today
        assert instance.get_run_by_id(undated.run_id).tags["lethe/as_of"] == today
        assert instance.get_run_by_id(dated.run_id).tags["lethe/as_of"] == "2026-03-01"
