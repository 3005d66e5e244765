"""The admin console's second part in a real headless Chromium: the viewer's 403 on the
retry button's POST, a bulk retry on the Queue page and a retry of all its filters
match, Test connection on the Servers page, marking an activity done, a POST without its
CSRF token (or from another origin) refused, and the screenshots of docs/admin.md
(MAILSYNC_SCREENSHOTS=DIR).

Skipped when Chromium or its driver is missing; failed instead under
MAILSYNC_REQUIRE_SERVERS=1 (`.ci/run` installs them).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.test_web_browser import _login, _shoot, _wait, browser  # noqa: F401
from tests.web_helpers import Site, make_site

pytestmark = pytest.mark.servers


@pytest.fixture
def site(tmp_path, smtp_server) -> Iterator[Site]:
    yield from make_site(tmp_path, smtp_server, inbox=True)


def _severe(driver) -> list[dict[str, str]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
            and "403" not in e["message"]]


def test_a_viewers_retry_post_is_refused_403_in_the_browser(browser, site):  # noqa: F811
    from selenium.webdriver.common.by import By

    _login(browser, site, "victor")
    mid = site.ids["Never there"]
    browser.get(f"http://{site.host}:{site.port}/messages/{mid}")
    assert browser.find_elements(By.ID, "actions") == []
    # The form the operator's button is, with this session's own CSRF token (from the
    # logout form), submitted by the browser itself: the page's CSP lets no script of
    # its own run, WebDriver's runs outside it.
    browser.execute_script(
        "const f = document.createElement('form'); f.method = 'post';"
        f"f.action = '/messages/{mid}/retry';"
        "const t = document.createElement('input'); t.type = 'hidden'; t.name = 'csrf';"
        "t.value = document.querySelector('form.logout input[name=csrf]').value;"
        "f.appendChild(t); document.body.appendChild(f); f.submit();")
    _wait(browser, lambda d: d.current_url.endswith(f"/messages/{mid}/retry"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Forbidden"
    assert "retry needs the operator role; victor is a viewer" in \
        browser.find_element(By.ID, "error").text
    browser.get(f"http://{site.host}:{site.port}/messages/{mid}")
    assert browser.find_element(By.ID, "s-status").text == "failed"  # unchanged


def test_bulk_retry_on_the_queue_page(browser, site):  # noqa: F811
    from selenium.webdriver.common.by import By

    _login(browser, site, "olga")
    browser.find_element(By.ID, "nav-queue").click()
    _wait(browser, lambda d: d.current_url.endswith("/queue"))
    later = site.ids["Later"]
    row = browser.find_element(By.ID, f"q-{later}")
    assert "deferred" in row.text
    _shoot(browser, "queue")
    browser.find_element(By.ID, f"sel-{later}").click()
    browser.find_element(By.ID, "bulk-retry").click()
    _wait(browser, lambda d: "done=retry" in d.current_url)
    assert browser.find_element(By.ID, "done").text == "retry: 1 message done."
    assert "queued" in browser.find_element(By.ID, f"q-{later}").text
    browser.get(f"http://{site.host}:{site.port}/messages/{later}")
    assert "retry by olga (admin console)" in browser.find_element(By.ID, "timeline").text
    assert _severe(browser) == []


def test_retry_all_matching_the_queue_pages_filters(browser, site):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _login(browser, site, "olga")
    browser.get(f"http://{site.host}:{site.port}/queue")
    later = site.ids["Later"]
    Select(browser.find_element(By.ID, "f-account")).select_by_value("support")
    browser.find_element(By.ID, "apply").click()
    _wait(browser, lambda d: "account=support" in d.current_url)
    button = browser.find_element(By.ID, "all-retry")
    assert button.text == "Retry all deferred that match (1)"
    button.click()
    _wait(browser, lambda d: "done=retry" in d.current_url)
    assert browser.find_element(By.ID, "done").text == "retry: 1 message done (all that matched)."
    # The filters stay in force after the action.
    assert Select(browser.find_element(By.ID, "f-account")).first_selected_option.text == \
        "support"
    assert "queued" in browser.find_element(By.ID, f"q-{later}").text
    assert browser.find_elements(By.ID, "all-retry") == []
    assert _severe(browser) == []


def test_test_connection_on_the_servers_page(browser, site):  # noqa: F811
    from selenium.webdriver.common.by import By

    _login(browser, site, "olga")
    browser.find_element(By.ID, "nav-servers").click()
    _wait(browser, lambda d: d.current_url.endswith("/servers"))
    browser.find_element(By.ID, "test-outgoing-main").click()
    _wait(browser, lambda d: d.find_elements(By.ID, "tested"))
    assert browser.find_element(By.ID, "tested").text.startswith("main: OK")
    _shoot(browser, "servers")
    browser.find_element(By.ID, "test-incoming-drop").click()
    _wait(browser, lambda d: "drop (incoming)" in d.find_element(By.ID, "tested").text)
    assert browser.find_element(By.ID, "tested").text == "drop (incoming): OK"
    assert _severe(browser) == []


def test_activities_inbox_and_configuration_in_the_browser(browser, site):  # noqa: F811
    from selenium.webdriver.common.by import By

    _login(browser, site, "olga")
    browser.find_element(By.ID, "nav-inbox").click()
    _wait(browser, lambda d: d.current_url.endswith("/inbox"))
    bounce = browser.find_element(By.CSS_SELECTOR, "a[id^=bounce-]")
    _shoot(browser, "inbox")
    bounce.click()
    _wait(browser, lambda d: d.current_url.endswith(f"/messages/{site.ids['Bounced later']}"))
    assert browser.find_element(By.ID, "s-status").text == "bounced"
    browser.find_element(By.ID, "nav-activities").click()
    _wait(browser, lambda d: d.current_url.endswith("/activities"))
    _shoot(browser, "activities")
    reply = site.activities["reply"]
    assert "2 days overdue" in browser.find_element(By.ID, f"a-{reply}").text
    browser.find_element(By.ID, f"done-{reply}").click()
    _wait(browser, lambda d: d.find_elements(By.ID, "triggered"))
    assert "Call for alice" in browser.find_element(By.ID, "triggered").text
    browser.find_element(By.ID, "nav-config").click()
    _wait(browser, lambda d: d.current_url.endswith("/config"))
    assert "password_hash" in browser.find_element(By.ID, "config-text").text
    assert "No changes." in browser.find_element(By.ID, "plan").text
    _shoot(browser, "config")
    assert _severe(browser) == []


def test_a_post_without_its_csrf_token_is_refused_in_the_browser(browser, site):  # noqa: F811
    from selenium.webdriver.common.by import By

    _login(browser, site, "olga")
    mid = site.ids["Never there"]
    page = f"http://{site.host}:{site.port}/messages/{mid}"
    browser.get(page)
    # The operator's own Retry button, its form's hidden CSRF input taken out through
    # WebDriver (the page's CSP lets no script of its own run): the browser then sends
    # the form, with the session's cookie, from the console's own page.
    browser.execute_script(
        "document.querySelector('#action-retry').form"
        ".querySelector('input[name=csrf]').remove();")
    browser.find_element(By.ID, "action-retry").click()
    _wait(browser, lambda d: d.current_url.endswith(f"/messages/{mid}/retry"))
    assert "CSRF token is missing or wrong" in browser.find_element(By.TAG_NAME, "body").text
    # A form of another origin (a data: page) posting to the console, with a token that
    # is this session's own: refused, as the browser says where it comes from.
    browser.get(page)
    token = browser.find_element(By.CSS_SELECTOR, "form.logout input[name=csrf]") \
        .get_attribute("value")
    browser.get("data:text/html,<form id=f method=post action='" + page + "/retry'>"
                f"<input type=hidden name=csrf value='{token}'>"
                "<button id=go>Retry</button></form>")
    browser.find_element(By.ID, "go").click()
    _wait(browser, lambda d: d.current_url.endswith(f"/messages/{mid}/retry"))
    body = browser.find_element(By.TAG_NAME, "body").text
    assert body.startswith(("refused:", "not logged in")), body
    browser.get(page)
    assert browser.find_element(By.ID, "s-status").text == "failed"  # unchanged
    assert "retry by olga" not in browser.find_element(By.TAG_NAME, "body").text
