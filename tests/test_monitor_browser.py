"""A real headless Chromium (Debian's chromium + chromium-driver) against a running system.

Real broker, sandbox LCS and EHM, router with its loops, tracker and monitor web server on
a free port: the page loads after signing in, its counts change once transfers flow, and a
transfer's timeline opens. The screenshot is saved under tests/artifacts/ (not committed).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from casebridge.stack import Stack
from router import Settings
from router.settings import RetrySettings, Topics
from tests.monitor_support import OPERATOR_TOKEN, keyed, requested_events, running_monitor
from tests.support import Systems, produce

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = CHROMIUM
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1600",
    ]:
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, CSP violations included
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver: webdriver.Chrome, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def csp_violations(driver: webdriver.Chrome) -> list[str]:
    """Console lines since the last call that report a Content-Security-Policy violation."""
    lines = [str(entry.get("message", "")) for entry in driver.get_log("browser")]
    return [line for line in lines if "Content Security Policy" in line or "Content-Security-Policy" in line]


def wait_text(driver: webdriver.Chrome, element_id: str, expected: str, timeout: float = 90) -> None:
    WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: text_of(d, element_id) == expected)


async def test_monitor_page_in_chromium_counts_change_and_timeline_opens(
    browser: webdriver.Chrome,
    systems: Systems,
    kafka_bootstrap: str,
    topic_prefix: str,
    tmp_path: Path,
    retry_settings: RetrySettings,
) -> None:
    """Sign in, see zero; transfers flow; counts change; a timeline opens; no personal data shown; screenshot saved."""
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        group_id=f"{topic_prefix}-router",
        retry=retry_settings,
    )
    stack = Stack(settings, tmp_path / "state", systems=systems.deployed())
    lcs = systems.lcs_client
    async with stack:
        with running_monitor(kafka_bootstrap, topic_prefix, tmp_path / "m.sqlite3") as (server, _):

            def sign_in() -> None:
                browser.get(server.url + "/")
                assert browser.current_url.endswith("/login")  # no token, no page
                browser.find_element(By.ID, "token").send_keys(OPERATOR_TOKEN)
                browser.find_element(By.ID, "sign-in").click()
                wait_text(browser, "total-transfers", "0")
                assert "ops-duty-1 (operator)" == text_of(browser, "me")

            await asyncio.to_thread(sign_in)

            children = [lcs.create_child(locality="North") for _ in range(2)]
            requests = [lcs.request_stepdown(child) for child in children]
            children.append(lcs.create_child(locality="East"))
            held = lcs.request_stepdown(children[-1], consent=None)  # G1: held
            held_id = f"north-somerset-lcs-{held}".lower()
            personal = {
                str(record[k])
                for record in map(lcs.child, children)
                for k in ("given_name", "family_name", "date_of_birth", "nhs_number")
            }
            transfer_id = f"north-somerset-lcs-{requests[0]}".lower()

            def counts_change_and_timeline_opens() -> list[str]:
                wait_text(browser, "total-transfers", "3")
                wait_text(browser, "count-completed", "2")
                wait_text(browser, "count-held", "1")
                browser.find_element(By.ID, "search-input").send_keys(transfer_id)
                browser.find_element(By.ID, "search-button").click()
                WebDriverWait(browser, 30).until(
                    lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline .timeline-event")
                )
                assert transfer_id == text_of(browser, "timeline-transfer-id")
                rows = browser.find_elements(By.CSS_SELECTOR, "#timeline .timeline-event")
                ARTIFACTS.mkdir(exist_ok=True)
                shot = ARTIFACTS / "monitor-page.png"
                assert browser.save_screenshot(str(shot))
                print(f"screenshot: {shot}")
                shown = browser.page_source
                assert [] == sorted(p for p in personal if p in shown)  # no personal data on the page
                events = [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows]
                # an operator's POST from the page passes the same-origin guard (fetch sends the page's Origin)
                browser.find_element(By.ID, "milestone-button").click()
                wait_text(browser, "action-result", "recorded step-down-meeting-held", timeout=30)
                return events

            events = await asyncio.to_thread(counts_change_and_timeline_opens)

            def replay_is_previewed_then_confirmed() -> tuple[list[str], str, str]:
                """The held transfer's Replay button previews (its dead letter, the reason, a router consuming);
                nothing is replayed until the confirmation, which replays exactly that one."""
                search = browser.find_element(By.ID, "search-input")
                search.clear()
                search.send_keys(held_id)
                browser.find_element(By.ID, "search-button").click()
                WebDriverWait(browser, 30).until(lambda d: text_of(d, "timeline-transfer-id") == held_id)
                WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.ID, "replay-button"))
                browser.find_element(By.ID, "replay-button").click()
                WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".replay-letter"))
                [row] = browser.find_elements(By.CSS_SELECTOR, ".replay-letter")
                cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
                summary, router = text_of(browser, "replay-preview-summary"), text_of(browser, "replay-router")
                assert "" == text_of(browser, "replay-result")  # previewed, not replayed
                ARTIFACTS.mkdir(exist_ok=True)
                assert browser.save_screenshot(str(ARTIFACTS / "monitor-replay-preview.png"))
                browser.find_element(By.ID, "replay-confirm-button").click()
                wait_text(browser, "replay-result", "replayed 1", timeout=60)
                return cells, summary, router

            cells, summary, router = await asyncio.to_thread(replay_is_previewed_then_confirmed)
            assert (held_id, "north-somerset", "waiting") == (cells[1], cells[2], cells[-1])
            assert "G1" in cells[4] and ("would replay 1 dead letter(s)", "router: consuming") == (summary, router)

            def no_csp_violations_then_sign_out() -> None:
                assert [] == csp_violations(browser)  # the page ran under the CSP without tripping it
                # the check can see one: an inline script, which the policy must block
                browser.execute_script(
                    "const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
                    " document.body.appendChild(s);"
                )
                assert browser.execute_script("return window.ran === undefined")
                WebDriverWait(browser, 10).until(lambda d: csp_violations(d))
                browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()
                WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("/login"))
                browser.get(server.url + "/")
                assert browser.current_url.endswith("/login")  # signed out: the session is gone

            await asyncio.to_thread(no_csp_violations_then_sign_out)
    assert ["requested", "validated", "delivered", "acknowledged", "source-closed"] == events[:5]
    assert (ARTIFACTS / "monitor-page.png").stat().st_size > 10_000


def banner_kinds(driver: webdriver.Chrome) -> list[str]:
    """The kinds of line the page's banner shows now ([] when it is hidden)."""
    if not driver.find_element(By.ID, "banner").is_displayed():
        return []
    return [str(li.get_attribute("data-kind")) for li in driver.find_elements(By.CSS_SELECTOR, "#banner-list li")]


async def test_monitor_page_banner_appears_and_goes_with_the_store_and_the_network(
    browser: webdriver.Chrome, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """No banner while all is well; another process locks the store while events arrive: the banner says the
    tracker is not storing (the counts stay as stored), and goes once the lock is released (the counts catch up);
    the browser offline: the banner says the page could not refresh, and goes once it is back online."""
    topics = Topics(topic_prefix)
    first, later = requested_events(f"{topic_prefix}-a", 3), requested_events(f"{topic_prefix}-b", 4)
    await produce(kafka_bootstrap, topics.events, keyed(first))
    db = tmp_path / "m.sqlite3"
    with running_monitor(kafka_bootstrap, topic_prefix, db) as (server, _):

        def sign_in() -> None:
            browser.get(server.url + "/")
            browser.find_element(By.ID, "token").send_keys(OPERATOR_TOKEN)
            browser.find_element(By.ID, "sign-in").click()
            wait_text(browser, "total-transfers", "3")
            assert [] == banner_kinds(browser)

        await asyncio.to_thread(sign_in)
        lock = sqlite3.connect(str(db), isolation_level=None, timeout=10)
        lock.execute("BEGIN EXCLUSIVE")  # the tracker cannot write; the page's reads go on (WAL)
        try:
            await produce(kafka_bootstrap, topics.events, keyed(later))

            def banner_says_not_storing() -> None:
                WebDriverWait(browser, 60, 0.3).until(lambda d: "tracker-not-storing" in banner_kinds(d))
                assert "3" == text_of(browser, "total-transfers")  # what is stored, not a guess
                assert "cannot store events (database is locked)" in text_of(browser, "banner")
                ARTIFACTS.mkdir(exist_ok=True)
                assert browser.save_screenshot(str(ARTIFACTS / "monitor-banner.png"))

            await asyncio.to_thread(banner_says_not_storing)
        finally:
            lock.execute("COMMIT")
            lock.close()

        def banner_goes_then_offline_and_back() -> None:
            wait_text(browser, "total-transfers", "7")
            WebDriverWait(browser, 30, 0.3).until(lambda d: [] == banner_kinds(d))
            offline = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
            browser.execute_cdp_cmd("Network.enable", {})
            browser.execute_cdp_cmd("Network.emulateNetworkConditions", offline)
            WebDriverWait(browser, 30, 0.3).until(lambda d: ["refresh-failed"] == banner_kinds(d))
            assert "This page could not refresh" in text_of(browser, "banner")
            browser.execute_cdp_cmd("Network.emulateNetworkConditions", {**offline, "offline": False})
            WebDriverWait(browser, 30, 0.3).until(lambda d: [] == banner_kinds(d))
            assert [] == csp_violations(browser)

        await asyncio.to_thread(banner_goes_then_offline_and_back)
