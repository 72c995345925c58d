"""The letters a data subject reads: the access export's index.html in Czech and English,
with every item of GDPR Art. 15(1) and only this subject's purposes and recipients, and the
erasure answer in both languages. The letter is also rendered in Debian's chromium (when
installed): print-width, with screenshots kept for review."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import DEFAULT_POLICY, REPO, ingest_and_tag, write_landing_set
from test_ui import CHROMIUM, CHROMIUM_ARGS

from lethe.declaration.policy import Policy, PolicyError, load_policy, parse_policy
from lethe.engine.ingest import ingest_table
from lethe.engine.tagging import tag_all
from lethe.engine.warehouse import connect
from lethe.operations.home import Home
from lethe.rights import language as words
from lethe.rights.answers import answer_pending
from lethe.rights.letter import erasure, retention_rule, wording
from lethe.rights.requests import record_request

AS_OF = dt.date(2026, 3, 1)
RESULTS = REPO / "bench" / "results"
NBSP = "\u00a0"
# The subject: one order (completed, so kept for the contract's limitation period and for
# accounting) with one shipment; no account activity for years, no consent.
SUBJECT = "C0001"
NAME = "<b>Nováková</b>"  # markup in a value must be shown, never run
FORMULA = "=HYPERLINK(0)"


def _letters(page: str) -> dict[str, str]:
    """The text of each language's letter (its <article>), tags removed."""
    out = {}
    for lang, body in re.findall(r'<article id="(\w+)" lang="\w+">(.*?)</article>', page, re.S):
        text = html.unescape(re.sub(r"<[^>]+>", " ", body))
        out[lang] = re.sub(r"[ \t\r\n]+", " ", text)  # no-break spaces stay
    return out


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(DEFAULT_POLICY)


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, policy: Policy) -> dict[str, bytes]:
    """The access export of a subject with one order, beside a newsletter subscriber."""
    home = Home(tmp_path_factory.mktemp("letter") / "home").ensure()
    write_landing_set(
        home.landing,
        contacts=[
            {"contact_id": SUBJECT, "first_name": FORMULA, "last_name": NAME},
            {"contact_id": "C0002", "last_active_at": "2025-06-01T00:00:00"},
        ],
        consents=[{"contact_id": "C0002", "granted_at": "2025-01-01T00:00:00"}],
        orders=[
            {
                "contact_id": SUBJECT,
                "ordered_at": "2025-11-20T14:35:00",
                "completed_at": "2025-11-25T10:00:00",
                "total_amount": "12345.50",
            }
        ],
        shipments=[{"order_id": "O0001", "shipped_at": "2025-11-21T08:00:00"}],
    )
    con = ingest_and_tag(home.warehouse, home.landing, policy, AS_OF)
    try:
        record_request(con, policy.data_schema, "access", SUBJECT)
        answer_pending(con, home, policy, AS_OF, "run-letter")
    finally:
        con.close()
    (path,) = (home.exports / "requests").glob("*-access.zip")
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_letter_in_czech_first_then_english(export: dict[str, bytes]) -> None:
    page = export["index.html"].decode("utf-8")
    assert page.startswith("<!doctype html>")
    assert '<html lang="cs">' in page  # the default policy's language
    assert list(_letters(page)) == ["cs", "en"]


@pytest.mark.parametrize("lang", ["cs", "en"])
def test_letter_names_only_the_subjects_purposes_and_recipients(
    export: dict[str, bytes], policy: Policy, lang: str
) -> None:
    text = _letters(export["index.html"].decode("utf-8"))[lang]
    purposes = policy.all_purposes()
    for name in ("contract", "accounting"):
        assert wording(purposes[name], lang).title in text, name
        assert words.LEGAL_BASES[lang][purposes[name].legal_basis] in text
        assert retention_rule(policy, purposes[name], lang) in text
    for name in ("account", "newsletter", "consent_evidence", "litigation_hold"):
        assert wording(purposes[name], lang).title not in text, name
    assert words.LEGAL_BASES[lang]["consent"] not in text
    processors = {p.name: p for p in policy.processors}
    for name in ("monkeydata", "balikobot"):  # they receive orders and shipments
        assert wording(processors[name], lang).title in text, name
    assert wording(processors["smartemailing"], lang).title not in text  # the newsletter's
    ended = words.date(dt.date(2022, 5, 27), lang)
    assert words.PHRASES[lang]["contract_ended"].format(date=ended) in text


@pytest.mark.parametrize("lang", ["cs", "en"])
def test_letter_holds_every_item_of_article_15(
    export: dict[str, bytes], policy: Policy, lang: str
) -> None:
    text = _letters(export["index.html"].decode("utf-8"))[lang]
    t = words.PHRASES[lang]
    assert policy.controller is not None
    assert policy.controller.name in text and policy.controller.contact in text
    assert f"{t['dpo']} {t['no_dpo']}" in text  # none appointed, and says so
    for category in ("user.contact.email", "user.name", "user.behavior.purchase_history"):
        assert words.category(category, lang) in text, category
    assert words.category("user.privacy_preferences", lang) not in text  # no consent of theirs
    for right in ("rectification", "erasure", "restriction", "objection", "portability"):
        assert t[f"right_{right}"] in text, right
    article = "čl. {} GDPR" if lang == "cs" else "GDPR Art. {}"
    for number in (16, 17, 18, 21, 77):
        assert article.format(number) in text
    authority = policy.letters.authority
    assert authority.name[lang] in text
    assert authority.address in text and authority.web in text
    assert policy.letters.source[lang] in text
    assert policy.letters.automated_decisions[lang] in text
    # retention per record, in words: the contact and shipment end with the contract's
    # limitation period (completed + 4 years), the invoice with accounting (ordered + 10 y)
    assert t["until"].format(date=words.date(dt.date(2029, 11, 25), lang)) in text
    assert t["until"].format(date=words.date(dt.date(2035, 11, 20), lang)) in text


@pytest.mark.parametrize("lang", ["cs", "en"])
def test_letter_formats_values_and_hides_internals(export: dict[str, bytes], lang: str) -> None:
    page = export["index.html"].decode("utf-8")
    text = _letters(page)[lang]
    amount = f"12{NBSP}345,50" if lang == "cs" else "12,345.50"
    ordered = "20. 11. 2025 14:35" if lang == "cs" else "20 November 2025, 14:35"
    born = "17. 5. 1980" if lang == "cs" else "17 May 1980"
    for shown in (amount, ordered, born):
        assert shown in text, shown
    labels = ("Částka celkem", "Objednáno") if lang == "cs" else ("Total amount", "Ordered")
    for label in labels:
        assert label in text
    for internal in ("_purposes", "_legal_bases", "_retain_until", "_state", "None", "['"):
        assert internal not in text, internal
    assert "total_amount" not in text and "legal_obligation" not in text
    assert not re.search(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", text)  # no ISO timestamps
    assert not re.search(r"\d{2}:\d{2}:\d{2}\.\d", text)  # nor microseconds
    assert "&lt;b&gt;Nováková&lt;/b&gt;" in page and NAME not in page  # escaped


def test_json_and_csv_stay_exact_and_formula_safe(export: dict[str, bytes]) -> None:
    document = json.loads(export["subject.json"])
    (contact,) = document["tables"]["contacts"]
    assert contact["first_name"] == FORMULA and contact["last_name"] == NAME
    assert contact["_purposes"] == ["contract"]
    (row,) = csv.DictReader(io.StringIO(export["contacts.csv"].decode("utf-8")))
    assert row["first_name"] == "'" + FORMULA
    assert json.loads(row["_purposes"]) == ["contract"]


def test_letter_renders_at_print_width(export: dict[str, bytes], tmp_path: Path) -> None:
    """Chromium shows the letter without horizontal scrolling at A4 width (794 px) and
    writes a screenshot of each language for review."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (make test installs the Debian chromium package)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    page_file = tmp_path / "index.html"
    page_file.write_bytes(export["index.html"])
    out = Path(os.environ.get("LETHE_E2E_ARTIFACTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 794, "height": 1123})
            page.goto(page_file.as_uri())
            assert page.evaluate("document.documentElement.scrollWidth") <= 794
            for lang in ("cs", "en"):
                article = page.locator(f"article#{lang}")
                assert article.bounding_box()["width"] <= 794
                shot = out / f"access-letter-{lang}.png"
                article.screenshot(path=str(shot))
                assert shot.stat().st_size > 10_000
                if RESULTS.is_dir():
                    shutil.copy(shot, RESULTS / shot.name)
        finally:
            browser.close()


def test_erasure_answer_in_both_languages(policy: Policy) -> None:
    kept = [
        {"table": "orders", "kept_for": ["accounting"], "until": "2030-01-10T09:00:00"},
        {"table": "orders", "kept_for": ["accounting"], "until": "2030-01-10T09:00:00"},
        {"table": "contacts", "kept_for": ["litigation_hold"], "until": "until released"},
    ]
    received = dt.datetime(2026, 2, 3, 10, 0)
    texts = erasure(policy, "R-0123456789ab", received, kept, exports_deleted=1)
    assert list(texts) == ["cs", "en"]
    accounting, hold = policy.purposes["accounting"], policy.litigation_hold
    for lang, text in texts.items():
        t = words.PHRASES[lang]
        assert "R-0123456789ab" in text
        assert words.date(received.date(), lang) in text
        assert wording(accounting, lang).title in text
        assert words.LEGAL_BASES[lang]["legal_obligation"] in text
        assert words.count(t["rows"], 2, lang) in text  # two invoices, one line
        assert t["until"].format(date=words.date(dt.date(2030, 1, 10), lang)) in text
        assert t["open_ended"].format(purposes=wording(hold, lang).title) in text
        assert words.count(t["erasure_exports"], 1, lang) in text
        assert policy.letters.authority.name[lang] in text
    assert "2 záznamy" in texts["cs"] and "2 records" in texts["en"]
    nothing = erasure(policy, "R-0123456789ab", received, [], exports_deleted=0)
    assert words.PHRASES["cs"]["erasure_nothing"] in nothing["cs"]
    assert words.PHRASES["en"]["erasure_nothing"] in nothing["en"]


def test_erasure_answer_carries_the_letter(tmp_path: Path, policy: Policy) -> None:
    home = Home(tmp_path / "home").ensure()
    write_landing_set(home.landing, contacts=[{"contact_id": SUBJECT}])
    con = ingest_and_tag(home.warehouse, home.landing, policy, AS_OF)
    try:
        request = record_request(con, policy.data_schema, "erasure", SUBJECT)
        answer_pending(con, home, policy, AS_OF, "run-erasure")
        (answer,) = con.execute(
            "SELECT answer FROM requests.requests WHERE request_id = ?", [request.request_id]
        ).fetchone()
    finally:
        con.close()
    letters = json.loads(answer)["letter"]
    assert set(letters) == {"cs", "en"}
    for lang, text in letters.items():
        assert request.request_id in text
        assert SUBJECT not in text  # the subject's key is not repeated to them
        assert words.PHRASES[lang]["greeting"] in text


def test_policy_language_orders_the_letters_and_is_validated() -> None:
    raw = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    raw["letters"]["language"] = "en"
    english = parse_policy(
        yaml.safe_dump(raw, allow_unicode=True), "en.yaml", DEFAULT_POLICY.parent
    )
    assert english.letters.order == ("en", "cs")
    raw["letters"]["language"] = "de"
    with pytest.raises(PolicyError, match=r"letters\.language"):
        parse_policy(yaml.safe_dump(raw, allow_unicode=True), "de.yaml", DEFAULT_POLICY.parent)
    raw["letters"]["language"] = "cs"
    raw["purposes"]["account"]["letter"] = {"cs": {"text": "bez názvu"}}
    with pytest.raises(PolicyError, match=r"purposes\.account\.letter\.cs\.title"):
        parse_policy(yaml.safe_dump(raw, allow_unicode=True), "title.yaml", DEFAULT_POLICY.parent)


def test_example_shop_letter_uses_its_own_labels(tmp_path: Path) -> None:
    """The Czech shop's letter: its Czech headers as labels, its English labels, Prague
    times, and none of its internal column names."""
    shop = REPO / "examples" / "shop"
    policy = load_policy(shop / "policy.yaml")
    home = Home(tmp_path / "home").ensure()
    for f in (shop / "landing").glob("*.csv"):
        shutil.copy(f, home.landing / f.name)
    con = connect(home.warehouse)
    try:
        for table in policy.data_schema.tables:
            ingest_table(con, home.landing, table, policy)
        tag_all(con, policy, AS_OF)
        (subject,) = con.execute(
            "SELECT z.cislo_zakaznika FROM core.zakaznici z JOIN core.objednavky o"
            " ON o.zakaznik = z.cislo_zakaznika WHERE z._state = 'active' ORDER BY 1 LIMIT 1"
        ).fetchone()
        record_request(con, policy.data_schema, "access", subject)
        answer_pending(con, home, policy, AS_OF, "run-shop")
    finally:
        con.close()
    (path,) = (home.exports / "requests").glob("*-access.zip")
    with zipfile.ZipFile(path) as zf:
        letters = _letters(zf.read("index.html").decode("utf-8"))
    assert "Částka celkem" in letters["cs"] and "Total amount" in letters["en"]
    assert "Objednávky" in letters["cs"] and "Orders" in letters["en"]
    assert "Europe/Prague" in letters["cs"]
    for internal in ("castka", "cislo_objednavky", "objednavky", "_purposes"):
        assert not re.search(rf"\b{internal}\b", letters["cs"] + letters["en"]), internal
