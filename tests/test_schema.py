"""The declared schema: the default e-shop file, validation on load (each refusal one line
naming the file, line and key), the policy checked against its schema, the Fides export."""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import DEFAULT_POLICY, lethe_cli
from fideslang.models import Dataset

from lethe.declaration.fides import fides_yaml
from lethe.declaration.policy import PolicyError, load_policy
from lethe.declaration.schema import SchemaError, default_schema, load_schema, parse_schema
from lethe.eshop import SCHEMA_FILE


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))


def refused(raw: dict[str, Any], change: Callable[[dict[str, Any]], Any]) -> str:
    data = copy.deepcopy(raw)
    change(data)
    with pytest.raises(SchemaError) as info:
        parse_schema(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), "bad.yaml")
    message = str(info.value)
    assert re.match(r"bad\.yaml:\d+: ", message), message
    assert "\n" not in message
    return message


def test_default_schema_declares_the_shop() -> None:
    schema = default_schema()
    assert list(schema.tables) == ["contacts", "consents", "orders", "shipments", "holds"]
    assert schema.subject_table.name == "contacts"
    assert [fk.ref_table for fk in schema.path_to_subject("shipments")] == ["orders", "contacts"]
    assert schema.path_to_subject("contacts") == ()
    email = schema.tables["contacts"].column("email")
    assert (email.header, email.type, email.category) == ("email", "text", "user.contact.email")


def test_tables_load_referenced_tables_first(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    data["tables"] = dict(reversed(list(data["tables"].items())))
    schema = parse_schema(yaml.safe_dump(data, sort_keys=False))
    order = list(schema.tables)
    for table in schema.tables.values():
        for fk in table.foreign_keys:
            assert order.index(fk.ref_table) < order.index(table.name)


def _rename_ref(data: dict[str, Any]) -> None:
    data["tables"]["orders"]["references"] = {"contact_id": "customers"}


def _cycle(data: dict[str, Any]) -> None:
    data["tables"]["orders"]["columns"]["shipment_id"] = {
        "type": "text",
        "category": "system.operations",
    }
    data["tables"]["orders"]["references"]["shipment_id"] = "shipments"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["tables"]["contacts"]["columns"]["email"].update(category="user.mail"),
            r"tables\.contacts\.columns\.email\.category: .*'user\.mail' is not a data category",
        ),
        (_rename_ref, r"tables\.orders\.references\.contact_id: unknown table 'customers'"),
        (_cycle, r"tables\.\w+\.references: a reference cycle \((orders|shipments) -> "),
        (
            lambda d: d["tables"]["contacts"].pop("subject"),
            r"tables: exactly one table needs `subject: true` \(found none\)",
        ),
        (
            lambda d: d["tables"]["orders"].update(subject=True),
            r"tables: exactly one table needs `subject: true` \(found contacts, orders\)",
        ),
        (
            lambda d: d["tables"]["orders"].update(key="order_no"),
            r"tables\.orders: .*key: 'order_no' is not one of its columns",
        ),
        (
            lambda d: d["tables"]["orders"]["columns"]["total_amount"].update(type="money"),
            r"tables\.orders\.columns\.total_amount\.type: Input should be 'text'",
        ),
        (
            lambda d: d["tables"]["orders"]["references"].update(invoice="contacts"),
            r"tables\.orders: .*references\.invoice: not one of its columns",
        ),
        (
            lambda d: d["tables"]["orders"]["source"].update(csv={"encoding": "klingon"}),
            r"tables\.orders\.source\.csv\.encoding: .*unknown encoding 'klingon'",
        ),
        (lambda d: d.update(timezone="Mars/Olympus"), r"timezone: .*unknown time zone"),
        (
            lambda d: d["tables"]["orders"]["columns"]["contact_id"].update(type="integer"),
            r"tables\.orders\.references\.contact_id: a integer column cannot hold the text key",
        ),
    ],
    ids=[
        "unknown-category",
        "missing-table",
        "cycle",
        "no-subject",
        "two-subjects",
        "key-not-a-column",
        "unknown-type",
        "reference-not-a-column",
        "encoding",
        "timezone",
        "reference-type",
    ],
)
def test_schema_refusals_name_line_and_key(raw: dict[str, Any], change, expected: str) -> None:
    data = copy.deepcopy(raw)
    data["tables"]["orders"].setdefault("source", {})
    assert re.search(expected, refused(data, change))


def test_error_names_the_line_of_the_key(raw: dict[str, Any]) -> None:
    text = SCHEMA_FILE.read_text(encoding="utf-8").replace(
        "category: user.contact.email", "category: user.contact.e_mail"
    )
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "user.contact.e_mail" in t)
    with pytest.raises(SchemaError) as info:
        parse_schema(text, "shop.yaml")
    assert str(info.value).startswith(f"shop.yaml:{line}: tables.contacts.columns.email.category")


def _renamed_policy(tmp_path: Path, schema_change: Callable[[dict], Any] | None = None) -> Path:
    """The default policy naming a copy of the default schema (optionally changed)."""
    schema = yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))
    if schema_change:
        schema_change(schema)
    (tmp_path / "shop.schema.yaml").write_text(yaml.safe_dump(schema, sort_keys=False))
    policy = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    policy = {"schema": "shop.schema.yaml", **policy}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False, allow_unicode=True))
    return path


def test_policy_is_validated_against_the_schema_it_names(tmp_path: Path) -> None:
    policy = load_policy(_renamed_policy(tmp_path))
    assert policy.data_schema.source == str(tmp_path / "shop.schema.yaml")

    def drop_billing_name(schema: dict) -> None:
        del schema["tables"]["orders"]["columns"]["billing_name"]

    with pytest.raises(PolicyError) as info:
        load_policy(_renamed_policy(tmp_path, drop_billing_name))
    # Both uses of the dropped column, one line each, with their lines in the policy.
    lines = str(info.value).splitlines()
    assert len(lines) == 2, lines
    for line, key in zip(lines, ("keeps", "pseudonymizes"), strict=True):
        assert re.fullmatch(
            rf".*policy\.yaml:\d+: purposes\.accounting\.{key}: orders: unknown column"
            " 'billing_name'",
            line,
        ), line


def test_policy_naming_a_missing_or_broken_schema_is_refused(tmp_path: Path) -> None:
    policy = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"schema": "nope.yaml", **policy}, sort_keys=False))
    with pytest.raises(PolicyError, match=r"policy\.yaml:1: schema: .*nope\.yaml: cannot read"):
        load_policy(path)

    def two_subjects(schema: dict) -> None:
        schema["tables"]["orders"]["subject"] = True

    with pytest.raises(PolicyError, match="exactly one table needs `subject: true`"):
        load_policy(_renamed_policy(tmp_path, two_subjects))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda p: p["when_unkept"]["contacts"]["column"].update(
                email={"truncate": {"to": "year"}}
            ),
            r"when_unkept\.contacts\.column\.email: truncate applies to date or timestamp columns,"
            r" not text",
        ),
        (
            lambda p: p["when_unkept"]["orders"]["anonymized"].update(
                ordered_at={"prefix": {"length": 3}}
            ),
            r"when_unkept\.orders\.anonymized\.ordered_at: prefix applies to text columns,"
            r" not timestamp",
        ),
        (
            lambda p: p["purposes"]["accounting"]["pseudonymizes"]["orders"].append("total_amount"),
            r"purposes\.accounting\.pseudonymizes\.orders: pseudonymize applies to text columns",
        ),
    ],
    ids=["year-of-text", "prefix-of-date", "token-in-decimal"],
)
def test_strategy_that_cannot_apply_to_the_type_is_refused(
    tmp_path: Path, change, expected: str
) -> None:
    policy = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    change(policy)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False, allow_unicode=True))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert re.search(expected, str(info.value)), str(info.value)
    assert re.match(r".*policy\.yaml:\d+: ", str(info.value))


def test_fides_export_is_a_valid_fides_dataset() -> None:
    schema = default_schema()
    manifest = yaml.safe_load(fides_yaml(schema, "eshop"))
    dataset = Dataset.model_validate(manifest["dataset"][0])
    assert dataset.fides_key == "eshop"
    collections = {c.name: c for c in dataset.collections}
    assert set(collections) == set(schema.tables)
    for table in schema.tables.values():
        fields = {f.name: f for f in collections[table.name].fields}
        assert set(fields) == set(table.column_names)
        for column in table.columns:
            assert fields[column.name].data_categories == [column.category]
        assert fields[table.key].fides_meta.primary_key is True
    ref = collections["shipments"].fields
    order_id = next(f for f in ref if f.name == "order_id")
    assert [(r.field, r.direction) for r in order_id.fides_meta.references] == [
        ("orders.order_id", "to")
    ]


def _lethe(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return lethe_cli(*args, home=tmp_path / "home", cwd=tmp_path, timeout=120, COLUMNS="80")


def test_cli_schema_check_and_export(tmp_path: Path) -> None:
    ok = _lethe(tmp_path, "schema", "check", str(SCHEMA_FILE))
    assert ok.returncode == 0, ok.stderr
    assert "shipments: key shipment_id, 12 columns; subject via orders -> contacts" in ok.stdout
    assert all(len(line) <= 80 for line in ok.stdout.splitlines())

    bad = tmp_path / "bad.yaml"
    bad.write_text(SCHEMA_FILE.read_text(encoding="utf-8").replace("subject: true", ""))
    refused = _lethe(tmp_path, "schema", "check", str(bad))
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "exactly one table" in refused.stderr
    assert "Traceback" not in refused.stderr

    out = tmp_path / "fides.yaml"
    exported = _lethe(tmp_path, "schema", "export", "--fides", "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    Dataset.model_validate(yaml.safe_load(out.read_text())["dataset"][0])
    assert not (tmp_path / "home").exists()  # read-only commands create no LETHE_HOME


def test_schema_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="cannot read schema"):
        load_schema(tmp_path / "nope.yaml")
    with pytest.raises(SchemaError, match=r"junk\.yaml: not valid YAML: line 2: expected ','"):
        parse_schema("tables: [unclosed\n", "junk.yaml")
