"""The Dagster UI shows a compliance officer an analytics asset's purposes, legal basis and
column lineage, a core table's purposes and counts after enforcement, and the daily schedule
running: `dagster dev` on a small LETHE_HOME, driven by Debian's chromium through
Playwright, with screenshots kept as evidence.

Part of `make test` (which installs Playwright and Debian's chromium); skipped without them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BIN = Path(sys.executable).parent  # the virtualenv running the tests
AS_OF = "2026-03-01"
ASSET = "analytics/orders_by_month"
START_TIMEOUT = 90  # seconds for `dagster dev` to serve the code location


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LETHE_POLICY"}
    env.update(LETHE_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), NO_COLOR="1")
    return env


@pytest.fixture(scope="module")
def ui_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LETHE_HOME with one pipeline run (which also wrote its Dagster instance config)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (make test installs the Debian chromium package)")
    pytest.importorskip(
        "playwright.sync_api", reason="playwright not installed (make install-test)"
    )
    home = tmp_path_factory.mktemp("ui") / "home"
    for args in (("generate", "--contacts", "3000"), ("run", "--as-of", AS_OF)):
        done = subprocess.run(
            [str(BIN / "lethe"), *args], env=_env(home), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
    return home


@pytest.fixture(scope="module")
def dagster_ui(ui_home: Path) -> Iterator[str]:
    """`dagster dev` serving `ui_home`; yields its URL."""
    home = ui_home
    port = _free_port()
    log = (home.parent / "dagster-dev.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "dagster"), "dev", "-w", "workspace.yaml"]
        + ["-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=_env(home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the teardown ends all of it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, (home.parent / "dagster-dev.log").read_text()
                assert time.monotonic() < deadline, "dagster dev did not start"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


def test_analytics_asset_shows_purposes_legal_basis_and_lineage(
    dagster_ui: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    # The screenshot is the evidence: kept in LETHE_E2E_ARTIFACTS if set, else in tmp_path.
    shot = Path(os.environ.get("LETHE_E2E_ARTIFACTS", tmp_path)) / "analytics_asset.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            # Tall enough for the metadata table: the UI scrolls inside its own panes.
            page = browser.new_page(viewport={"width": 1400, "height": 2600})
            # The UI's "join the community" dialog would cover the page (it reads this key).
            page.add_init_script("window.localStorage.setItem('communityNux', '\"1\"')")
            page.goto(f"{dagster_ui}/assets/{ASSET}", timeout=60_000)
            metadata = page.get_by_text("column_lineage", exact=True)
            expect(metadata).to_be_visible(timeout=60_000)
            body = page.locator("body")
            expect(body).to_contain_text("purposes")
            expect(body).to_contain_text("statistics")
            expect(body).to_contain_text("legal_bases")
            expect(body).to_contain_text("legitimate_interest")
            expect(body).to_contain_text("GDPR Art. 6(1)(f) legitimate interest")
            for lineage in (
                "core/orders.ordered_at",
                "core/orders.billing_postal_code",
                "core/orders.contact_id",
            ):
                expect(body).to_contain_text(lineage)
            page.wait_for_timeout(1500)  # past the dialog's 1 s delay: prove it stays away
            expect(page.get_by_text("Join the Dagster community")).to_have_count(0)
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000


def _shot(tmp_path: Path, name: str) -> Path:
    """Where a screenshot is kept: LETHE_E2E_ARTIFACTS if set, else the test's tmp_path."""
    shot = Path(os.environ.get("LETHE_E2E_ARTIFACTS", tmp_path)) / name
    shot.parent.mkdir(parents=True, exist_ok=True)
    return shot


def _count(home: Path, sql: str) -> int:
    import duckdb

    con = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def test_core_asset_shows_its_count_after_enforcement_and_the_purpose_table(
    dagster_ui: str, ui_home: Path, tmp_path: Path
) -> None:
    """core/shipments as a compliance officer opens it: the row count is the table's now
    (after enforcement deleted shipments), and the purposes with their legal basis, counts
    and rules are on the page without a click. No pop-up covers it (nux is off)."""
    from playwright.sync_api import expect, sync_playwright

    rows = _count(ui_home, "SELECT count(*) FROM core.shipments")
    kept = _count(
        ui_home, "SELECT count(*) FROM core.shipments WHERE list_contains(_purposes, 'contract')"
    )
    delivered = _count(
        ui_home, "SELECT sum(rows_loaded) FROM core.ingest_log WHERE table_name = 'shipments'"
    )
    assert rows < delivered  # enforcement deleted some: a stale count would show
    shot = _shot(tmp_path, "core_shipments.png")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 2400})
            page.goto(f"{dagster_ui}/assets/core/shipments", timeout=60_000)
            expect(page.get_by_text("purposes_now", exact=True)).to_be_visible(timeout=60_000)
            status = page.get_by_text("Row count", exact=True).locator("xpath=..")
            expect(status).to_contain_text(f"{rows:,}")
            # the innermost row of the purpose table for the contract
            contract = page.locator("tr:not(:has(tr))", has_text="GDPR Art. 6(1)(b) contract")
            expect(contract.first).to_contain_text(str(kept))
            body = page.locator("body")
            for text in (
                "rows kept",
                "expire in 30 d",
                "next expiry",
                "Performing the purchase contract",
                "With no purpose left: deleted.",
            ):
                expect(body).to_contain_text(text)
            page.wait_for_timeout(1500)  # past the community dialog's 1 s delay
            expect(page.get_by_text("Join the Dagster community")).to_have_count(0)
            page.get_by_text("purposes_now", exact=True).scroll_into_view_if_needed()
            # The last columns are read without scrolling sideways at this width.
            for last in ("next expiry", "afterwards"):
                expect(page.get_by_text(last, exact=True).first).to_be_in_viewport(ratio=1)
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000


def test_daily_schedule_is_running(dagster_ui: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    shot = _shot(tmp_path, "daily_schedule.png")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(
                f"{dagster_ui}/locations/pipelines.definitions/schedules/daily_retention",
                timeout=60_000,
            )
            body = page.locator("body")
            expect(body).to_contain_text("Next tick", timeout=60_000)
            expect(body).to_contain_text("2:00:00 AM UTC")
            # the "Running" row's switch is on: the schedule runs without anyone starting it
            switch = page.locator("tr", has_text="Running").locator("input[type=checkbox]")
            expect(switch).to_be_checked()
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
