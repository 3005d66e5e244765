"""The admin console in a real headless Chromium (Debian's chromium and chromium-driver,
driven by selenium): log in, filter the history, open a message, retry it as operator
and see its status change; hostile mail HTML runs no script and loads nothing; the
screenshots of docs/admin.md (written when MAILSYNC_SCREENSHOTS=DIR says where).

Skipped when Chromium or its driver is missing; failed instead under
MAILSYNC_REQUIRE_SERVERS=1 (`.ci/run` installs them).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need
from tests.web_helpers import PASSWORDS, Site, make_site

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

pytestmark = pytest.mark.servers


@pytest.fixture
def browser() -> Iterator[object]:
    need(Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(),
         f"Chromium ({CHROMIUM}) and its driver ({CHROMEDRIVER}) are not installed "
         "(apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
                # The mail's frame in the page's own process: its console and network
                # events then reach the logs read below (an out-of-process frame's do not).
                "--disable-site-isolation-trials",
                "--disable-features=IsolateOrigins,site-per-process"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


class _Listener:
    """A TCP listener on the hostile image's port that records every connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.hits: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    self.hits.append(conn.recv(1024))
                except OSError:
                    self.hits.append(b"")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def site(tmp_path, smtp_server) -> Iterator[Site]:
    yield from make_site(tmp_path, smtp_server)


def _login(driver, site: Site, name: str) -> None:
    from selenium.webdriver.common.by import By

    base = f"http://{site.host}:{site.port}"
    driver.get(base + "/history")
    assert "/login" in driver.current_url
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[name])
    driver.find_element(By.ID, "login").click()
    _wait(driver, lambda d: d.current_url.endswith("/history"))


def _wait(driver, until) -> None:
    # An element read while the page it was on is being replaced (after a POST) is stale:
    # look again at the next poll, as for an element not there yet.
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 10, ignored_exceptions=(StaleElementReferenceException,)).until(until)


def _shoot(driver, name: str) -> None:
    where = os.environ.get("MAILSYNC_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(where) / f"{name}.png"))


def test_log_in_filter_open_and_retry_as_operator(browser, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = browser
    driver.get(f"http://{site.host}:{site.port}/login")
    _shoot(driver, "login")
    _login(driver, site, "olga")
    rows = driver.find_elements(By.CSS_SELECTOR, "#history tbody tr")
    assert len(rows) == 4
    # The pages' links apart, each readable on its own (not "History Queue Inbox").
    links = driver.find_elements(By.CSS_SELECTOR, "header.top nav a")
    assert [a.text for a in links] == ["History", "Queue", "Inbox", "Activities", "Servers",
                                       "Configuration"]
    for left, right in itertools.pairwise(links):
        assert right.rect["x"] - (left.rect["x"] + left.rect["width"]) >= 12
    # The search box shows its whole hint.
    search = driver.find_element(By.ID, "f-q")
    assert driver.execute_script(
        "const e = arguments[0], c = document.createElement('canvas').getContext('2d');"
        "c.font = getComputedStyle(e).font;"
        "return c.measureText(e.placeholder).width <= e.clientWidth;", search)
    _shoot(driver, "history")
    Select(driver.find_element(By.ID, "f-status")).select_by_value("failed")
    driver.find_element(By.ID, "apply").click()
    _wait(driver, lambda d: "status=failed" in d.current_url)
    rows = driver.find_elements(By.CSS_SELECTOR, "#history tbody tr")
    assert len(rows) == 1 and "Never there" in rows[0].text
    assert "status=failed" in driver.current_url
    rows[0].find_element(By.LINK_TEXT, "Never there").click()
    mid = site.ids["Never there"]
    _wait(driver, lambda d: d.current_url.endswith(f"/messages/{mid}"))
    assert driver.find_element(By.ID, "s-status").text == "failed"
    _shoot(driver, "message")
    driver.find_element(By.ID, "action-retry").click()
    _wait(driver, lambda d: "done=retry" in d.current_url)
    assert driver.find_element(By.ID, "done").text == "retry: done."
    assert driver.find_element(By.ID, "s-status").text == "queued"
    assert "retry by olga (admin console)" in driver.find_element(By.ID, "timeline").text
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []  # no CSP violation, no failed load of the console's own files


def test_a_viewer_sees_no_buttons(browser, site):
    from selenium.webdriver.common.by import By

    _login(browser, site, "victor")
    browser.get(f"http://{site.host}:{site.port}/messages/{site.ids['Never there']}")
    assert browser.find_elements(By.ID, "actions") == []


def test_hostile_mail_html_runs_no_script_and_loads_nothing(browser, site):
    from selenium.webdriver.common.by import By

    pixel = _Listener(site.pixel_port)
    try:
        _login(browser, site, "victor")
        browser.get_log("performance")  # what the login loaded: not this test's
        browser.get(f"http://{site.host}:{site.port}/messages/{site.ids['Quote Q-1042']}")
        frame = browser.find_element(By.ID, "html")
        browser.switch_to.frame(frame)
        assert "Hi there" in browser.find_element(By.TAG_NAME, "body").text
        browser.switch_to.default_content()
        frame.location_once_scrolled_into_view  # noqa: B018 - scrolls the frame into view
        _shoot(browser, "message-html")
        import time

        time.sleep(1.0)  # time for any load the page would make
        console = browser.get_log("browser")
        assert not any("MAILSCRIPT" in e["message"] and "console-api" in e.get("source", "")
                       for e in console), console
        sent: dict[str, str] = {}       # request id -> URL
        blocked: dict[str, str] = {}    # request id -> why the browser did not send it
        answered: set[str] = set()
        for entry in browser.get_log("performance"):
            event = json.loads(entry["message"])["message"]
            params = event.get("params", {})
            if event["method"] == "Network.requestWillBeSent":
                sent[params["requestId"]] = params["request"]["url"]
            elif event["method"] == "Network.loadingFailed" and params.get("blockedReason"):
                blocked[params["requestId"]] = params["blockedReason"]
            elif event["method"] == "Network.responseReceived":
                answered.add(params["requestId"])
        mid = site.ids["Quote Q-1042"]
        console = f"http://{site.host}:{site.port}"
        ours = {f"{console}/messages/{mid}", f"{console}/messages/{mid}/html",
                f"{console}/static/admin.css", f"{console}/static/favicon.svg"}
        mail = {rid: url for rid, url in sent.items() if url not in ours}
        assert any(str(site.pixel_port) in url for url in mail.values()), sent  # it was tried
        for rid, url in mail.items():  # ... and refused by the frame's policy, never sent
            assert blocked.get(rid) == "csp" and rid not in answered, (url, blocked)
    finally:
        pixel.close()
    assert pixel.hits == []  # the remote image was never asked for


def test_chromium_is_the_one_ci_installs():
    need(shutil.which("chromium") is not None, "chromium is not installed")
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "chromium chromium-driver" in ci
