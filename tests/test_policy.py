"""Policy as code: the default policy encodes the SPEC rules; bad policies are refused."""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import DEFAULT_POLICY, REPO, TABLES, lethe_cli
from typer.testing import CliRunner

from lethe.cli import app
from lethe.declaration.duration import Duration
from lethe.declaration.policy import HOLD_PURPOSE, Policy, PolicyError, load_policy, parse_policy
from lethe.declaration.strategies import Erase, Keep, Prefix, Surrogate, Truncate

ALL = {name: tuple(t.column_names) for name, t in TABLES.items()}
BILLING = (
    "billing_name",
    "billing_street",
    "billing_city",
    "billing_postal_code",
    "billing_country",
)


def years(n: int) -> tuple[int, int, int]:
    return (n, 0, 0)


def dur(d: Duration) -> tuple[int, int, int]:
    return (d.years, d.months, d.days)


# --- the default policy ------------------------------------------------------------------


def test_default_policy_purposes(policy: Policy) -> None:
    assert list(policy.purposes) == [
        "account",
        "contract",
        "accounting",
        "newsletter",
        "consent_evidence",
    ]
    assert list(policy.all_purposes())[-1] == HOLD_PURPOSE
    assert policy.owner == "team:privacy"
    for name, p in policy.purposes.items():
        assert p.name == name
        assert p.description.strip()


def test_account(policy: Policy) -> None:
    p = policy.purposes["account"]
    assert p.legal_basis == "contract"
    assert p.keeps == {"contacts": ALL["contacts"]}
    assert [(a.table, a.column, a.plus) for a in p.retention.anchors] == [
        ("contacts", "last_active_at", None)
    ]
    assert dur(p.retention.keep) == years(2)
    assert not p.retention.open_while_null
    assert p.retention.ends_early_at is None
    assert p.retention.only_where == {}


def test_contract(policy: Policy) -> None:
    p = policy.purposes["contract"]
    assert p.legal_basis == "contract"
    assert p.keeps == {
        "orders": ALL["orders"],
        "shipments": ALL["shipments"],
        "contacts": ALL["contacts"],
    }
    assert [(a.table, a.column, a.plus) for a in p.retention.anchors] == [
        ("orders", "completed_at", None)
    ]
    assert dur(p.retention.keep) == years(4)  # 3y + 1y
    assert str(p.retention.keep) == "3y + 1y"
    assert p.retention.open_while_null  # completed_at null: contract still running


def test_accounting(policy: Policy) -> None:
    p = policy.purposes["accounting"]
    assert p.legal_basis == "legal_obligation"
    assert set(p.keeps) == {"orders"}
    assert set(p.keeps["orders"]) == {
        "order_id",
        "ordered_at",
        "invoice_number",
        "total_amount",
        "currency",
        *BILLING,
    }
    assert "contact_id" not in p.keeps["orders"]
    assert [(a.table, a.column, a.plus) for a in p.retention.anchors] == [
        ("orders", "ordered_at", None)
    ]
    assert dur(p.retention.keep) == years(10)
    assert not p.retention.open_while_null
    # SPEC: while accounting is the only purpose left these become vault tokens.
    assert set(p.pseudonymizes["orders"]) == {"contact_id", "billing_name", "billing_street"}


def test_newsletter(policy: Policy) -> None:
    p = policy.purposes["newsletter"]
    assert p.legal_basis == "consent"
    assert p.keeps == {
        "contacts": ("contact_id", "email", "first_name"),
        "consents": ALL["consents"],
    }
    assert [(a.table, a.column, a.plus) for a in p.retention.anchors] == [
        ("consents", "granted_at", None)
    ]
    assert dur(p.retention.keep) == years(3)
    assert p.retention.only_where == {"consents.purpose": "newsletter"}
    assert p.retention.ends_early_at is not None
    assert (p.retention.ends_early_at.table, p.retention.ends_early_at.column) == (
        "consents",
        "withdrawn_at",
    )
    assert not p.retention.open_while_null


def test_consent_evidence(policy: Policy) -> None:
    p = policy.purposes["consent_evidence"]
    assert p.legal_basis == "legitimate_interest"
    assert p.keeps == {"consents": ALL["consents"]}
    anchors = p.retention.anchors
    assert [(a.table, a.column) for a in anchors] == [
        ("consents", "withdrawn_at"),
        ("consents", "granted_at"),
    ]
    assert anchors[0].plus is None
    assert anchors[1].plus is not None and dur(anchors[1].plus) == years(3)
    assert dur(p.retention.keep) == years(3)
    assert p.retention.only_where == {}
    assert not p.retention.open_while_null


def test_litigation_hold(policy: Policy) -> None:
    hold = policy.litigation_hold
    assert hold.name == HOLD_PURPOSE
    assert set(hold.keeps) == {"contacts", "consents", "orders", "shipments"}
    for table, cols in hold.keeps.items():
        assert cols == ALL[table]
    assert hold.retention.table == "holds"
    assert hold.retention.open_while_null
    assert dur(hold.retention.keep) == (0, 0, 0)


def test_when_unkept(policy: Policy) -> None:
    contacts = policy.when_unkept["contacts"]
    assert contacts.row == "anonymize"
    assert contacts.column.default == Erase()
    assert contacts.column.for_column("email") == Erase()
    assert contacts.column.for_column("birth_date") == Truncate(to="year")
    assert contacts.column.for_column("postal_code") == Prefix(length=3)
    assert contacts.column.for_column("country") == Keep()
    anon = contacts.anonymized_rules()
    assert anon.for_column("contact_id") == Surrogate()
    assert anon.for_column("last_name") == Erase()

    orders = policy.when_unkept["orders"].anonymized_rules()
    assert policy.when_unkept["orders"].row == "anonymize"
    for col in ("total_amount", "currency", "billing_country"):
        assert orders.for_column(col) == Keep()
    assert orders.for_column("ordered_at") == Truncate(to="month")
    for col in ("contact_id", "billing_name", "invoice_number", "completed_at"):
        assert orders.for_column(col) == Erase()

    assert policy.when_unkept["shipments"].row == "delete"
    assert policy.when_unkept["consents"].row == "delete"


def test_operations(policy: Policy) -> None:
    ops = policy.operations
    assert dur(ops.backups) == (0, 0, 80)
    assert dur(ops.access_log) == (0, 0, 30)
    assert dur(ops.export_log.keep) == (0, 0, 90)
    assert ops.export_log.purge_when_over == 1000
    assert dur(ops.export_log.every) == (0, 0, 7)


def test_purposes_for_tables(policy: Policy) -> None:
    names = {t: [p.name for p in policy.purposes_for(t)] for t in ALL}
    assert names["contacts"] == ["account", "contract", "newsletter", HOLD_PURPOSE]
    assert names["consents"] == ["newsletter", "consent_evidence", HOLD_PURPOSE]
    assert names["orders"] == ["contract", "accounting", HOLD_PURPOSE]
    assert names["shipments"] == ["contract", HOLD_PURPOSE]
    assert names["holds"] == []


# --- invalid policies ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))


def refused(base: dict[str, Any], change: Callable[[dict[str, Any]], Any]) -> str:
    data = copy.deepcopy(base)
    change(data)
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "bad.yaml")
    message = str(info.value)
    assert re.match(r"bad\.yaml(:\d+)?: ", message), message
    assert "\n" not in message
    return message


def test_unmodified_copy_is_valid(base: dict[str, Any]) -> None:
    text = yaml.safe_dump(base, allow_unicode=True, sort_keys=False)
    assert list(parse_policy(text, "copy.yaml").purposes) == list(base["purposes"])


def test_unknown_legal_basis(base: dict[str, Any]) -> None:
    msg = refused(base, lambda d: d["purposes"]["account"].update(legal_basis="because"))
    assert "purposes.account.legal_basis" in msg
    assert "legitimate_interest" in msg  # says what is allowed


def test_missing_legal_basis(base: dict[str, Any]) -> None:
    msg = refused(base, lambda d: d["purposes"]["newsletter"].pop("legal_basis"))
    assert "purposes.newsletter.legal_basis" in msg
    assert "required" in msg


def test_unknown_table(base: dict[str, Any]) -> None:
    msg = refused(base, lambda d: d["purposes"]["account"].update(keeps={"invoices": "*"}))
    assert "purposes.account.keeps" in msg
    assert "unknown table 'invoices'" in msg


def test_unknown_column(base: dict[str, Any]) -> None:
    msg = refused(
        base,
        lambda d: d["purposes"]["newsletter"]["keeps"].update(contacts=["email", "shoe_size"]),
    )
    assert "purposes.newsletter.keeps" in msg
    assert "unknown column 'shoe_size'" in msg


def test_unknown_retention_column(base: dict[str, Any]) -> None:
    msg = refused(
        base, lambda d: d["purposes"]["account"]["retention"].update({"from": "contacts.seen_at"})
    )
    assert "purposes.account.retention.from" in msg
    assert "seen_at" in msg


def test_bad_duration(base: dict[str, Any]) -> None:
    msg = refused(base, lambda d: d["purposes"]["account"]["retention"].update(keep="2 years"))
    assert "purposes.account.retention.keep" in msg
    assert "'2 years'" in msg


def test_bad_operations_duration(base: dict[str, Any]) -> None:
    msg = refused(base, lambda d: d["operations"].update(backups="80x"))
    assert "operations.backups" in msg
    assert "'80x'" in msg


def test_missing_when_unkept_table(base: dict[str, Any]) -> None:
    msg = refused(base, lambda d: d["when_unkept"].pop("shipments"))
    assert "when_unkept.shipments" in msg
    assert "missing" in msg


def test_unknown_when_unkept_column(base: dict[str, Any]) -> None:
    msg = refused(base, lambda d: d["when_unkept"]["contacts"]["column"].update(shoe="erase"))
    assert "when_unkept.contacts" in msg
    assert "'shoe'" in msg


def test_unknown_strategy(base: dict[str, Any]) -> None:
    msg = refused(base, lambda d: d["when_unkept"]["contacts"]["column"].update(email="shred"))
    assert "when_unkept.contacts" in msg
    assert "unknown strategy 'shred'" in msg


def test_unknown_top_level_key(base: dict[str, Any]) -> None:
    msg = refused(base, lambda d: d.update(retention_days=30))
    assert "retention_days" in msg
    assert "not permitted" in msg


def test_unknown_purpose_key(base: dict[str, Any]) -> None:
    msg = refused(base, lambda d: d["purposes"]["account"].update(colour="red"))
    assert "purposes.account.colour" in msg


def test_reserved_purpose_name(base: dict[str, Any]) -> None:
    msg = refused(
        base,
        lambda d: d["purposes"].update({HOLD_PURPOSE: copy.deepcopy(d["purposes"]["account"])}),
    )
    assert f"purposes.{HOLD_PURPOSE}" in msg


def test_yaml_alias_refused() -> None:
    text = DEFAULT_POLICY.read_text(encoding="utf-8").replace(
        '    keeps:\n      contacts: "*"\n    retention:\n      from: contacts.last_active_at',
        '    keeps: &everything\n      contacts: "*"\n    retention:\n'
        "      from: contacts.last_active_at",
        1,
    )
    text = text.replace(
        '    keeps:\n      consents: "*"\n    retention:\n      from: [',
        "    keeps: *everything\n    retention:\n      from: [",
        1,
    )
    assert "&everything" in text and "*everything" in text
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "alias.yaml")
    assert re.fullmatch(
        r"alias\.yaml: not valid YAML: line \d+: aliases are not allowed in a policy",
        str(info.value),
    )


def test_alias_bomb_refused_quickly() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    with pytest.raises(PolicyError, match="aliases are not allowed"):
        parse_policy(bomb, "bomb.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("purposes: [unclosed\n", "not valid YAML"),
        ("purposes:\n  account: {legal_basis: contract\n", "not valid YAML"),
        ("\tpurposes: {}\n", "not valid YAML"),
        ("just some words", "a policy is a YAML mapping"),
        ("- a\n- b\n", "a policy is a YAML mapping"),
        ("", "a policy is a YAML mapping"),
    ],
)
def test_not_a_policy(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "junk.yaml")
    assert str(info.value).startswith(f"junk.yaml: {expected}")
    assert "\n" not in str(info.value)


def test_missing_sections_named(base: dict[str, Any]) -> None:
    msg = refused(base, lambda d: d.pop("litigation_hold"))
    assert "litigation_hold" in msg


def test_load_policy_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(tmp_path / "nope.yaml")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(PolicyError) as info:
        load_policy(binary)
    assert str(binary) in str(info.value)


def test_policy_is_frozen(policy: Policy) -> None:
    with pytest.raises(ValueError):
        policy.purposes["account"].legal_basis = "consent"  # type: ignore[misc]


# --- `lethe policy check` ------------------------------------------------------------------


def test_cli_policy_check_lists_purposes() -> None:
    result = CliRunner().invoke(app, ["policy", "check", str(DEFAULT_POLICY)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name in ("account", "contract", "accounting", "newsletter", "consent_evidence"):
        assert f"{name}: " in text
    assert "account: contract; 2y from contacts.last_active_at" in text
    assert "accounting: legal_obligation; 10y from orders.ordered_at" in text
    assert f"{HOLD_PURPOSE}: legitimate_interest" in text
    assert "valid (5 purposes)" in text


def _lethe(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return lethe_cli(*args, cwd=cwd, timeout=60, **env)


def test_cli_policy_check_default_from_anywhere(tmp_path: Path) -> None:
    result = _lethe("policy", "check", cwd=tmp_path, LETHE_HOME=str(tmp_path / "h"))
    assert result.returncode == 0, result.stderr
    assert "valid (5 purposes)" in result.stdout
    assert str(REPO / "policies" / "default.yaml") in result.stdout


def test_cli_policy_check_bad_file_one_line(tmp_path: Path) -> None:
    data = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    data["purposes"]["newsletter"]["legal_basis"] = "marketing"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    result = _lethe("policy", "check", str(bad), cwd=tmp_path, LETHE_HOME=str(tmp_path / "h"))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert str(bad) in lines[0]
    assert "purposes.newsletter.legal_basis" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_policy_check_missing_file(tmp_path: Path) -> None:
    result = _lethe(
        "policy", "check", str(tmp_path / "none.yaml"), cwd=tmp_path, LETHE_HOME=str(tmp_path)
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "none.yaml" in lines[0] and "cannot read policy" in lines[0]
