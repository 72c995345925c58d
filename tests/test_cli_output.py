"""What the command line prints: summaries that fit 80 columns with the counts the UI shows,
requests with their next step and answer, every policy error at once, the documented exit
codes, and no LETHE_HOME created by a command that only reads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest
from conftest import lethe_cli, write_landing_set
from retention_cases import T, write_cases

from lethe.compliance.summary import RUN_ACTIONS, run_actions
from lethe.engine.warehouse import connect
from lethe.operations.home import Home

AS_OF = "2026-03-01"
# At AS_OF: C1 only kept for the newsletter (its other columns erased by three strategies:
# erase, truncate and prefix, so three ledger entries for one row), C2 kept for its account,
# C3 by nothing (anonymized); O1 (C3's, 2012) anonymized, O2 (2020) kept only for
# accounting (pseudonymized); S1 (O1's) deleted.
CONTACTS = [
    {"contact_id": "C1"},
    {"contact_id": "C2", "last_active_at": "2025-06-01T00:00:00"},
    {"contact_id": "C3"},
]
CONSENTS = [{"consent_id": "K1", "contact_id": "C1", "granted_at": "2025-06-01T00:00:00"}]
ORDERS = [
    {"order_id": "O1", "contact_id": "C3"},
    {
        "order_id": "O2",
        "contact_id": "C2",
        "ordered_at": "2020-01-01T00:00:00",
        "completed_at": "2020-01-05T00:00:00",
    },
]
SHIPMENTS = [{"shipment_id": "S1", "order_id": "O1"}]
EXPECTED = {
    "contacts": {"erase": 1, "anonymize": 1},
    "orders": {"anonymize": 1, "pseudonymize": 1},
    "shipments": {"delete": 1},
}


def lethe80(*args: str, home: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`lethe ARGS` on an 80-column terminal."""
    return lethe_cli(*args, home=home, cwd=cwd, timeout=180, COLUMNS="80")


def assert_fits_80(text: str) -> None:
    """Every line at most 80 characters and nothing cut short."""
    too_long = [line for line in text.splitlines() if len(line) > 80]
    assert not too_long, too_long
    # Nothing cut short: the only ellipsis allowed ends a gone subject's shortened keyed hash.
    assert "…" not in re.sub(r"kh_[0-9a-f]{8}…", "", text), text


def section(stdout: str, title: str) -> list[list[str]]:
    """The rows of the printed table titled `title` (after its header and rule), as cells
    split at runs of two or more spaces."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(title))
    rows = []
    for line in lines[start + 3 :]:
        if not line.strip():
            break
        rows.append([c for c in (part.strip() for part in line.split("  ")) if c])
    return rows


@pytest.fixture(scope="module")
def summary_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Home, str]:
    home = Home(tmp_path_factory.mktemp("summary") / "home")
    write_landing_set(
        home.landing, contacts=CONTACTS, consents=CONSENTS, orders=ORDERS, shipments=SHIPMENTS
    )
    result = lethe80("run", "--as-of", AS_OF, home=home.root)
    assert result.returncode == 0, result.stderr
    return home, result.stdout


def test_run_summary_fits_80_columns(summary_run: tuple[Home, str]) -> None:
    _, stdout = summary_run
    assert_fits_80(stdout)
    assert f"Lethe warehouse as of {AS_OF}" in stdout


def test_run_summary_counts_equal_the_enforcement_metadata_and_the_ledger(
    summary_run: tuple[Home, str],
) -> None:
    """`lethe run` prints what the enforcement asset's materialization shows and the ledger
    records: a row whose columns were erased by three strategies counts once."""
    home, stdout = summary_run
    printed = {
        row[0]: {a: int(n.replace(",", "")) for a, n in zip(RUN_ACTIONS, row[1:], strict=True)}
        for row in section(stdout, "Done by this run")
    }
    expected = {t: {a: EXPECTED.get(t, {}).get(a, 0) for a in RUN_ACTIONS} for t in printed}
    assert printed == expected
    instance = dg.DagsterInstance.from_config(str(home.dagster))
    try:
        (run,) = instance.get_runs()
        event = instance.get_latest_materialization_event(
            dg.AssetKey(["core", "retention_enforcement"])
        )
        assert event is not None and event.run_id == run.run_id
        metadata = event.asset_materialization.metadata
    finally:
        instance.dispose()
    for action, label in RUN_ACTIONS.items():
        assert metadata[label].value == sum(t[action] for t in printed.values()), label
    per_table = metadata["per_table"].value
    assert {t: {a: per_table.get(t, {}).get(a, 0) for a in RUN_ACTIONS} for t in printed} == (
        printed
    )
    con = connect(home.warehouse, read_only=True)
    try:
        ledger = run_actions(con, run.run_id)
        entries = con.execute(
            "SELECT count(*) FROM audit.ledger WHERE run_id = ? AND table_name = 'contacts'"
            " AND action = 'erase'",
            [run.run_id],
        ).fetchone()[0]
    finally:
        con.close()
    assert entries == 3  # one per strategy, all for C1
    assert {t: {a: ledger.get(t, {}).get(a, 0) for a in RUN_ACTIONS} for t in printed} == printed


def test_run_summary_lists_purposes_and_legal_bases_apart(summary_run: tuple[Home, str]) -> None:
    _, stdout = summary_run
    purposes = section(stdout, "Rows kept per purpose")
    assert purposes[0] == ["account", "contract", "contacts", "1"]  # C2
    named = [row[0] for row in purposes if len(row) == 4]
    assert named == [
        "account",
        "contract",
        "accounting",
        "newsletter",
        "consent_evidence",
        "litigation_hold",
    ]
    bases = section(stdout, "Rows kept per legal basis")
    assert [row[0] for row in bases if len(row) == 3] == [
        "GDPR Art. 6(1)(b) contract",
        "GDPR Art. 6(1)(c) legal obligation",
        "GDPR Art. 6(1)(a) consent",
        "GDPR Art. 6(1)(f) legitimate interest",
    ]
    # One row per legal basis and table: `contract` is a basis once per table it keeps.
    assert bases[0] == ["GDPR Art. 6(1)(b) contract", "contacts", "1"]


def test_lists_fit_80_columns(summary_run: tuple[Home, str], tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    shutil.copytree(summary_run[0].root, home.root)
    recorded = lethe80(
        "breach",
        "record",
        "--description",
        "lost laptop",
        "--processor",
        "balikobot",
        home=home.root,
    )
    assert recorded.returncode == 0, recorded.stderr
    refused = lethe80("processor", "export", "monkeydata", home=home.root)
    assert refused.returncode == 1  # contract ended: refused, and a breach record opened
    listed = lethe80("breach", "list", home=home.root)
    assert listed.returncode == 0, listed.stderr
    assert_fits_80(listed.stdout)
    rows = section(listed.stdout, "Breaches")
    assert [row[3] for row in rows if row[0].startswith("B-")] == ["open", "open"]
    processors = lethe80("processor", "list", home=home.root)
    assert processors.returncode == 0, processors.stderr
    assert_fits_80(processors.stdout)


# --- requests: the next step, then the answer ------------------------------------------------


def test_request_says_what_happens_next_and_requests_shows_the_answer(
    summary_run: tuple[Home, str], tmp_path: Path
) -> None:
    home = Home(tmp_path / "home")
    shutil.copytree(summary_run[0].root, home.root)
    asked = {}
    for kind, subject in (("access", "C2"), ("erasure", "C1")):
        result = lethe80("request", kind, "--subject", subject, home=home.root)
        assert result.returncode == 0, result.stderr
        assert_fits_80(result.stdout)
        first, *rest = result.stdout.splitlines()
        asked[kind] = first.split(":")[0]
        assert re.fullmatch(rf"R-\w+: {kind} request recorded; due by \d{{4}}-\d\d-\d\d", first)
        text = " ".join(" ".join(rest).split())
        assert text.startswith("Next: the next pipeline run carries it out (`lethe run` now,")
        assert (
            "then `lethe requests` shows "
            + ("the path of its export" if kind == "access" else "it done and what is still kept")
            in text
        )
    assert lethe80("run", "--as-of", AS_OF, home=home.root).returncode == 0
    result = lethe80("requests", home=home.root)
    assert result.returncode == 0, result.stderr
    assert_fits_80(result.stdout)
    answers = result.stdout.split("Answers (files under LETHE_HOME):\n")[1]
    lines = {line.split()[0]: line.split(maxsplit=1)[1] for line in answers.splitlines()}
    export = lines[asked["access"]]
    assert re.fullmatch(rf"exports/requests/{asked['access']}-access\.zip", export)
    assert (home.root / export).is_file()
    assert lines[asked["erasure"]] == "0 rows still kept; 0 earlier exports deleted"


# --- policy errors ----------------------------------------------------------------------------

# Each change makes one error on the line of the text it puts in; the first three are errors
# of single fields, the last three of the policy as a whole (found once the fields are valid).
FIELD_ERRORS = {
    "    legal_basis: consent\n": (
        "    legal_basis: marketing\n",
        "purposes.newsletter.legal_basis: Input should be 'consent'",
    ),
    "      keep: 2y\n": ("      keep: forever\n", "purposes.account.retention.keep: bad duration"),
    "  backups: 80d\n": ("  backups: 80x\n", "operations.backups: bad duration"),
}
WHOLE_ERRORS = {
    "      country: keep\n": (
        "      country: keep\n      shoe_size: erase\n",
        "when_unkept.contacts.column.shoe_size: unknown column 'shoe_size'",
    ),
    "  backups: 80d\n": ("  backups: 300y\n", "operations.backups: 300y is longer than 200 years"),
    "    purpose: newsletter\n": (
        "    purpose: marketing\n",
        "processors.smartemailing.purpose: unknown purpose 'marketing'",
    ),
}


def broken_policy(folder: Path, changes: dict[str, tuple[str, str]]) -> tuple[Path, list[str]]:
    """The default policy with `changes` made, and the error lines expected (in file order)."""
    text = (Path(__file__).parent.parent / "policies" / "default.yaml").read_text("utf-8")
    for old, (new, _) in changes.items():
        assert text.count(old) >= 1, old
        text = text.replace(old, new, 1)
    path = folder / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    lines = text.splitlines()
    expected = []
    for new, message in changes.values():
        number = lines.index(new.splitlines()[-1]) + 1
        expected.append((number, f"error: {path}:{number}: {message}"))
    return path, [e for _, e in sorted(expected)]


@pytest.mark.parametrize("changes", [FIELD_ERRORS, WHOLE_ERRORS], ids=["fields", "whole"])
@pytest.mark.parametrize(
    "command", [("policy", "check"), ("run", "--as-of", AS_OF, "--policy")], ids=["check", "run"]
)
def test_every_policy_error_at_once_with_its_line(
    tmp_path: Path, changes: dict[str, tuple[str, str]], command: tuple[str, ...]
) -> None:
    policy, expected = broken_policy(tmp_path, changes)
    result = lethe80(*command, str(policy), home=tmp_path / "home")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(expected), result.stderr
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), (line, start)


# --- read-only commands outside a LETHE_HOME -------------------------------------------------

NEEDS_A_WAREHOUSE = [
    ("requests",),
    ("audit", "verify"),
    ("processor", "list"),
    ("breach", "list"),
    ("backup",),
]


@pytest.mark.parametrize("args", NEEDS_A_WAREHOUSE, ids=" ".join)
def test_read_only_command_elsewhere_creates_nothing(tmp_path: Path, args: tuple[str, ...]) -> None:
    """Run in a folder without LETHE_HOME: no empty `.lethe/` is left behind, and the
    refusal is one line saying where it looked and what to do."""
    result = lethe_cli(*args, cwd=tmp_path, timeout=60, COLUMNS="80")
    assert result.returncode == 1, result.stderr
    assert list(tmp_path.iterdir()) == []
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        f"error: no Lethe warehouse here: LETHE_HOME is not set and {tmp_path / '.lethe'}"
        " has none (run `lethe run` first, or set LETHE_HOME)"
    )


def test_read_only_command_on_a_missing_lethe_home_creates_nothing(tmp_path: Path) -> None:
    named = tmp_path / "elsewhere"
    result = lethe_cli("requests", cwd=tmp_path, timeout=60, LETHE_HOME=str(named))
    assert result.returncode == 1 and not named.exists()
    assert result.stderr.strip() == (
        f"error: no Lethe warehouse in LETHE_HOME {named} (run `lethe run` first)"
    )


@pytest.mark.parametrize("args", [("policy", "check"), ("schema", "check")], ids=" ".join)
def test_checks_elsewhere_create_nothing(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = lethe_cli(*args, cwd=tmp_path, timeout=60, COLUMNS="80")
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
    assert_fits_80(result.stdout)


# --- exit codes, as the README's table documents them -----------------------------------------


def readme_exit_codes() -> dict[int, str]:
    """The README's exit-code table: code -> meaning."""
    text = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d) \| (.+) \|$", text, flags=re.MULTILINE)
    return {int(code): meaning for code, meaning in rows}


def corrupt_home(root: Path) -> Path:
    """A LETHE_HOME whose warehouse file is not a DuckDB database."""
    home = Home(root / "home").ensure()
    home.warehouse.write_bytes(b"not a database" * 1000)
    return home.root


EXIT_CASES = {
    "policy check": (0, lambda tmp: ("policy", "check")),
    "invalid policy": (
        1,
        lambda tmp: ("policy", "check", str(broken_policy(tmp, FIELD_ERRORS)[0])),
    ),
    "no warehouse": (1, lambda tmp: ("requests",)),
    "unknown option": (2, lambda tmp: ("run", "--bogus")),
    "missing argument": (2, lambda tmp: ("request",)),
    "not a date": (2, lambda tmp: ("run", "--as-of", "2026-13-01")),
    "not a number": (2, lambda tmp: ("generate", "--contacts", "many")),
    "unknown request type": (2, lambda tmp: ("request", "forget", "--subject", "C1")),
    "unexpected": (3, lambda tmp: ("audit", "verify")),
}


@pytest.mark.parametrize("case", EXIT_CASES)
def test_exit_codes_are_the_readmes(tmp_path: Path, case: str) -> None:
    """Each documented exit code from a real invocation, with its one-line message."""
    code, args = EXIT_CASES[case]
    assert code in readme_exit_codes()
    home = corrupt_home(tmp_path) if case == "unexpected" else tmp_path / "home"
    result = lethe_cli(*args(tmp_path), home=home, cwd=tmp_path, timeout=60, COLUMNS="80")
    assert result.returncode == code, (result.stdout, result.stderr)
    errors = result.stderr.strip().splitlines()
    if code == 0:
        assert errors == []
    else:
        assert errors and all(line.startswith("error: ") for line in errors), result.stderr
        assert "Traceback" not in result.stderr
    if code == 2:
        assert len(errors) == 1 and "Usage:" not in result.stderr + result.stdout
    if code == 3:
        assert len(errors) == 1 and "unexpected" in errors[0] and "LETHE_DEBUG=1" in errors[0]
        debug = lethe_cli(*args(tmp_path), home=home, cwd=tmp_path, timeout=60, LETHE_DEBUG="1")
        assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_lethe_warehouse_puts_the_duckdb_file_elsewhere_and_the_vault_stays_home(
    tmp_path: Path,
) -> None:
    """LETHE_WAREHOUSE as a file path (SPEC "Engines and scale"): the runs, a request and the
    audit use that file; LETHE_HOME holds no warehouse, the vault stays in LETHE_HOME (apart
    from the warehouse) and an erased subject's values are in neither file."""
    home, elsewhere = Home(tmp_path / "home").ensure(), tmp_path / "data" / "shop.duckdb"
    elsewhere.parent.mkdir()
    write_cases(home.landing)
    env = {"LETHE_WAREHOUSE": str(elsewhere)}
    assert lethe_cli("run", "--as-of", T.isoformat(), home=home.root, **env).returncode == 0
    erased = lethe_cli(
        "request", "erasure", "--subject", "zx-ctr_open@example.test", home=home.root, **env
    )
    assert erased.returncode == 0, erased.stderr
    assert lethe_cli("run", "--as-of", T.isoformat(), home=home.root, **env).returncode == 0
    assert lethe_cli("audit", "verify", home=home.root, **env).returncode == 0
    assert not home.warehouse.exists()
    assert sorted(p.name for p in elsewhere.parent.iterdir()) == [elsewhere.name]
    con = connect(elsewhere, read_only=True)
    try:
        (done,) = con.execute(
            "SELECT count(*) FROM requests.requests WHERE status = 'done'"
        ).fetchone()
    finally:
        con.close()
    assert done == 1
    for path in (elsewhere, home.vault):
        assert b"Qwertyson-ctr_open-x" not in path.read_bytes(), path.name


def test_a_lethe_warehouse_url_of_another_engine_is_refused_in_one_line(tmp_path: Path) -> None:
    result = lethe_cli("requests", home=tmp_path / "home", LETHE_WAREHOUSE="mysql://db/shop")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: LETHE_WAREHOUSE: mysql:// is not a warehouse Lethe can use"
        " (a DuckDB file path or a postgresql:// URL)"
    ]
