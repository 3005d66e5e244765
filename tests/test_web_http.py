"""The admin console over HTTP: logins, sessions, CSRF, roles, security headers, the
History and Message pages, the operators' actions, and no secret in any page."""

from __future__ import annotations

import csv
import io
import logging
import re

import pytest

from mailsync.outbound import history as h
from mailsync.outbound.queue import OutboundStore
from mailsync.web import pages
from tests.outbound_helpers import show
from tests.web_helpers import PASSWORDS, Site, make_site, site_fixture  # noqa: F401

ACTIONS = ("retry", "hold", "release", "delete")


def _status(site: Site, mid: int) -> str:
    return str(OutboundStore(site.store).query(
        "SELECT status FROM messages WHERE id = ?", (mid,))[0][0])


def test_every_page_needs_a_login(site):
    c = site.client()
    for path in ("/", "/history", "/history.csv", f"/messages/{site.ids['Quote Q-1042']}",
                 f"/messages/{site.ids['Quote Q-1042']}/html",
                 f"/messages/{site.ids['Quote Q-1042']}/raw"):
        r = c.get(path)
        assert r.status == 303, path
        assert r.headers["location"].startswith("/login?next=")
    assert c.post("/messages/1/retry", {"csrf": "x"}).status == 403


def test_login_sets_a_strict_session_cookie_and_a_wrong_password_does_not(site, caplog):
    c = site.client()
    wrong = c.login("olga", "not-her-password")
    assert wrong.status == 401 and "Wrong name or password" in wrong.text
    assert not any("session" in k for k in c.jar)
    unknown = c.login("mallory", "whatever-password")
    assert unknown.status == 401 and "Wrong name or password" in unknown.text
    ok = c.login("olga")
    assert ok.status == 303 and ok.headers["location"] == "/history"
    (session,) = [v for v in ok.cookies if v.startswith("mailsync_session=")]
    attrs = [a.strip() for a in session.split(";")]
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attrs)
    assert "Secure" not in attrs  # plain HTTP on loopback: a Secure cookie would not come back
    page = c.get("/history")
    assert page.status == 200 and "olga" in page.text and "operator" in page.text
    assert "failed login of 'olga'" in caplog.text


def test_security_headers_on_every_response(site):
    c = site.client()
    c.login("victor")
    mid = site.ids["Quote Q-1042"]
    for path in ("/login", "/history", f"/messages/{mid}", "/messages/999999", "/nothing",
                 f"/messages/{mid}/raw", "/static/admin.css"):
        r = c.get(path)
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp, path
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["x-frame-options"] == "DENY", path
        if path != "/static/admin.css":
            assert r.headers["cache-control"] == "no-store", path
    page = c.get("/history").headers["content-security-policy"]
    assert "script-src" not in page and "frame-ancestors 'none'" in page
    assert "form-action 'self'" in page and "style-src 'self'" in page
    assert "unsafe-inline" not in page


def test_the_html_part_is_served_sandboxed_for_the_iframe_only(site):
    c = site.client()
    c.login("victor")
    mid = site.ids["Quote Q-1042"]
    page = c.get(f"/messages/{mid}")
    assert re.search(r'<iframe id="html" class="html" sandbox=""', page.text)
    assert "allow-scripts" not in page.text
    assert "MAILSCRIPT" not in page.text  # the HTML is never in the page itself
    frame = c.get(f"/messages/{mid}/html")
    assert frame.status == 200 and "MAILSCRIPT-RAN" in frame.text
    csp = frame.headers["content-security-policy"]
    assert csp.startswith("default-src 'none';") and "sandbox" in csp
    assert "frame-ancestors 'self'" in csp and "script" not in csp
    assert frame.headers["x-frame-options"] == "SAMEORIGIN"


def test_history_lists_messages_with_their_columns_and_a_partial_failure(site):
    c = site.client()
    c.login("victor")
    page = c.get("/history").text
    for subject in ("Quote Q-1042", "Partly there", "Never there", "Later"):
        assert subject in page
    row = page[page.index(f'id="m-{site.ids["Partly there"]}"'):]
    row = row[:row.index("</tr>")]
    assert 'chip-sent">sent<' in row and 'chip-failed">1 failed<' in row
    assert "alice" in row and "sales" in row and "main" in row
    assert "bad@example.org, ok@example.org" in row and "550 5.1.1 No such user" in row
    assert page.index("Later") < page.index("Quote Q-1042")  # newest first


@pytest.mark.parametrize(("query", "expected"), [
    ("status=failed", {"Never there"}),
    ("status=deferred", {"Later"}),
    ("account=support", {"Never there", "Later"}),
    ("user=alice", {"Quote Q-1042", "Partly there"}),
    ("server=main&status=sent", {"Quote Q-1042", "Partly there"}),
    ("since=1h", {"Quote Q-1042", "Partly there", "Never there", "Later"}),
    ("since=2099-01-01", set()),
    ("until=2099-01-01", {"Quote Q-1042", "Partly there", "Never there", "Later"}),
    ("until=1h", set()),  # all were made less than an hour ago
    ("since=1h&until=2099-01-01&user=bob", {"Never there", "Later"}),
    ("q=BAD%40example.org", {"Partly there", "Never there"}),
    ("q=q-10", {"Quote Q-1042"}),
    ("q=there&user=bob", {"Never there"}),
    ("q=100%25", set()),   # % is a character, not a wildcard
])
def test_history_filters_and_search(site, query, expected):
    c = site.client()
    c.login("victor")
    page = c.get(f"/history?{query}")
    assert page.status == 200
    shown = {s for s in site.ids if f">{s}</a>" in page.text}
    assert shown == expected


def test_history_search_finds_a_message_id(site):
    c = site.client()
    c.login("victor")
    mid = site.ids["Never there"]
    message_id = show(site.config_path, mid)["message_id"]
    for q in (message_id, message_id.strip("<>")):
        page = c.get("/history?" + "q=" + q.replace("@", "%40").replace("<", "%3C")
                     .replace(">", "%3E"))
        assert {s for s in site.ids if f">{s}</a>" in page.text} == {"Never there"}


def test_a_bad_filter_is_a_clear_400(site):
    c = site.client()
    c.login("victor")
    r = c.get("/history?status=lost")
    assert r.status == 400
    assert "status &#39;lost&#39; is not a status (allowed: queued, sending, sent" in r.text
    r = c.get("/history?since=yesterday")
    assert r.status == 400 and "since &#39;yesterday&#39; is neither a duration nor a date" \
        in r.text
    r = c.get("/history?until=soon")
    assert r.status == 400 and "until &#39;soon&#39; is neither a duration nor a date" in r.text
    r = c.get("/history?since=1h&until=2h")
    assert r.status == 400 and "until &#39;2h&#39; is not after since &#39;1h&#39;" in r.text


def test_history_pages_by_keyset(tmp_path, smtp_server):
    for s in make_site(tmp_path, smtp_server, more=60):
        c = s.client()
        c.login("victor")
        first = c.get("/history?account=support")
        ids = [int(x) for x in re.findall(r'<tr id="m-(\d+)">', first.text)]
        assert len(ids) == 50 and ids == sorted(ids, reverse=True)
        older = re.search(r'href="(/history\?[^"]+)" id="older"', first.text)
        assert older and "account=support" in older.group(1)
        second = c.get(older.group(1).replace("&amp;", "&"))
        more = [int(x) for x in re.findall(r'<tr id="m-(\d+)">', second.text)]
        assert len(more) == 12 and max(more) < min(ids)  # 60 bulk + 2 of support
        assert 'id="older"' not in second.text and 'id="newest"' in second.text


def test_message_page_shows_everything_of_a_message(site):
    c = site.client()
    c.login("victor")
    mid = site.ids["Partly there"]
    page = c.get(f"/messages/{mid}").text
    assert f"Message {mid}" in page and 'chip-failed">1 failed<' in page
    assert "ok@example.org" in page and "550 5.1.1 No such user" in page  # each reply
    assert "250" in page  # the accepted recipient's reply code
    assert 'id="timeline"' in page and "queued" in page and "sent" in page
    assert "two recipients" in page  # the text part
    assert 'id="actions"' not in page  # a viewer gets no buttons
    quote = c.get(f"/messages/{site.ids['Quote Q-1042']}").text
    assert "X-Order" in quote and "quote.pdf" in quote and "Hello Ada," in quote
    assert "Download the raw .eml" in quote


def test_attachments_and_the_raw_message_are_downloads(site):
    c = site.client()
    c.login("victor")
    mid = site.ids["Quote Q-1042"]
    index = re.search(rf'/messages/{mid}/parts/(\d+)', c.get(f"/messages/{mid}").text)
    assert index
    part = c.get(f"/messages/{mid}/parts/{index.group(1)}")
    assert part.status == 200 and part.body == b"%PDF-1.4 quote"
    assert part.headers["content-type"] == "application/octet-stream"
    assert part.headers["content-disposition"].startswith('attachment; filename="quote.pdf"')
    raw = c.get(f"/messages/{mid}/raw")
    assert raw.headers["content-type"] == "application/octet-stream"
    assert f"message-{mid}.eml" in raw.headers["content-disposition"]
    assert b"Subject: Quote Q-1042" in raw.body
    assert c.get(f"/messages/{mid}/parts/999").status == 404


def test_operator_retries_and_the_history_records_who(site):
    c = site.client()
    c.login("olga")
    mid = site.ids["Never there"]
    page = c.get(f"/messages/{mid}")
    assert 'id="action-retry"' in page.text and 'id="action-hold"' not in page.text
    r = c.post(f"/messages/{mid}/retry", {"csrf": page.csrf()})
    assert r.status == 303 and r.headers["location"] == f"/messages/{mid}?done=retry"
    assert _status(site, mid) == "queued"
    detail = show(site.config_path, mid)
    audit = detail["events"][-1]
    assert audit["status"] == "queued"
    assert audit["detail"] == "retry by olga (admin console): queued for an immediate retry"
    assert audit["at"]
    assert "retry by olga" in c.get(f"/messages/{mid}?done=retry").text


def test_operator_holds_releases_and_deletes(site):
    c = site.client()
    c.login("olga")
    mid = site.ids["Later"]
    for action, status in (("hold", "held"), ("release", "queued"), ("delete", "failed")):
        r = c.form_post(f"/messages/{mid}", f"/messages/{mid}/{action}")
        assert r.status == 303, r.text
        assert _status(site, mid) == status
    events = [e["detail"] for e in show(site.config_path, mid)["events"]]
    assert "hold by olga (admin console): held by an operator" in events
    assert "release by olga (admin console): released by an operator" in events
    assert "delete by olga (admin console): deleted from the queue by an operator" in events
    again = c.form_post(f"/messages/{mid}", f"/messages/{mid}/retry")
    assert again.status == 303  # failed: retry applies
    sent = site.ids["Quote Q-1042"]
    refused = c.form_post(f"/messages/{sent}", f"/messages/{sent}/hold")
    assert refused.status == 409
    assert "is sent; hold applies to queued, deferred messages" in refused.text


def test_a_viewer_may_not_act(site):
    c = site.client()
    c.login("victor")
    mid = site.ids["Never there"]
    for action in ACTIONS:
        r = c.form_post(f"/messages/{mid}", f"/messages/{mid}/{action}")
        assert r.status == 403 and "needs the operator role" in r.text
    assert _status(site, mid) == "failed"


def test_posts_without_a_good_csrf_token_or_from_another_site_are_refused(site):
    c = site.client()
    c.login("olga")
    mid = site.ids["Never there"]
    assert c.post(f"/messages/{mid}/retry", {}).status == 403
    assert c.post(f"/messages/{mid}/retry", {"csrf": "forged"}).status == 403
    token = c.get(f"/messages/{mid}").csrf()
    other = site.client()
    other.login("victor")
    assert other.post(f"/messages/{mid}/retry", {"csrf": token}).status == 403  # not its own
    cross = c.post(f"/messages/{mid}/retry", {"csrf": token},
                   headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert cross.status == 403
    assert _status(site, mid) == "failed"
    login_page = site.client()
    r = login_page.post("/login", {"name": "olga", "password": PASSWORDS["olga"]})
    assert r.status == 403 and "CSRF" in r.text


def test_logins_are_throttled_per_user_and_per_address(site):
    c = site.client()
    for _ in range(5):
        assert c.login("olga", "wrong-password-x").status == 401
    blocked = c.login("olga")  # the right password, but throttled: not even checked
    assert blocked.status == 429 and "Too many failed logins" in blocked.text
    assert int(blocked.headers["retry-after"]) > 0
    assert site.client().login("victor").status == 303  # another user still may
    for i in range(15):  # 20 failures from this address in all
        assert c.login(f"nobody{i}", "wrong-password-x").status == 401
    assert site.client().login("victor").status == 429  # the address is throttled now


def test_logout_ends_the_session(site):
    c = site.client()
    c.login("victor")
    kept = dict(c.jar)
    r = c.form_post("/history", "/logout")
    assert r.status == 303 and r.headers["location"] == "/login"
    assert c.get("/history").status == 303
    replay = site.client()
    replay.jar.update(kept)
    assert replay.get("/history").status == 303  # the old cookie no longer works


def test_a_changed_password_or_a_removed_user_ends_the_session(site, tmp_path):
    c = site.client()
    c.login("victor")
    assert c.get("/history").status == 200
    from mailsync.web.passwords import hash_password

    (tmp_path / "victor.hash").write_text(hash_password("a-new-password-3"))
    assert c.get("/history").status == 303
    assert c.login("victor", "a-new-password-3").status == 303
    assert c.get("/history").status == 200


def test_no_secret_in_any_page_or_log(site, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    c = site.client()
    c.login("olga", "wrong-password-x")
    c.login("olga")
    mid = site.ids["Quote Q-1042"]
    key = (site.config.daemon.state_dir / "admin-session.key").read_text().strip()
    secrets = [PASSWORDS["olga"], PASSWORDS["victor"], "wrong-password-x", key,
               *(part for n in PASSWORDS
                 for part in (tmp_path / f"{n}.hash").read_text().strip().split("$")[-2:]),
               *c.jar.values()]
    bodies = [c.get(p).text for p in ("/login", "/history", f"/messages/{mid}",
                                      "/history?status=lost", "/nothing")]
    bodies.append(c.form_post(f"/messages/{mid}", f"/messages/{mid}/hold").text)
    for secret in secrets:
        for body in bodies:
            assert secret not in body
        assert secret not in caplog.text
    assert "***" in repr(site.console.app.sessions)


def test_the_session_key_is_kept_in_state_dir_0600(site):
    path = site.config.daemon.state_dir / "admin-session.key"
    assert path.stat().st_mode & 0o777 == 0o600
    from mailsync.web.sessions import load_key

    assert load_key(site.config.daemon.state_dir, None) == path.read_bytes().strip()


def test_the_history_filters_export_as_a_csv_file(site, monkeypatch, caplog):
    """Download CSV: every message the filters select (not a page), the CLI's columns,
    as an attachment; more than the export's bound is refused, saying so."""
    c = site.client()
    c.login("victor")
    page = c.get("/history?user=bob")
    assert 'href="/history.csv?user=bob" id="export"' in page.text
    r = c.get("/history.csv?user=bob")
    assert r.status == 200
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert re.fullmatch(r'attachment; filename="mailsync-history-[0-9]{8}-[0-9]{6}\.csv";.*',
                        r.headers["content-disposition"])
    rows = list(csv.DictReader(io.StringIO(r.body.decode("utf-8-sig"))))
    assert {row["subject"] for row in rows} == {"Never there", "Later"}
    assert list(rows[0]) == list(h.SUMMARY_KEYS)
    assert "admin console: victor exported 2 messages of the history as CSV" in caplog.text
    everything = c.get("/history.csv")
    assert len(list(csv.DictReader(io.StringIO(everything.body.decode("utf-8-sig"))))) == 4
    paged = c.get(f"/history.csv?before={site.ids['Later']}")  # a page's keyset: not an export's
    assert paged.body == everything.body
    bad = c.get("/history.csv?since=soon")
    assert bad.status == 400 and "since 'soon' is neither a duration nor a date" in bad.text
    monkeypatch.setattr(pages, "EXPORT_CHUNK", 3)  # the 4 messages in two chunks
    chunked = c.get("/history.csv")
    assert chunked.body == everything.body
    monkeypatch.setattr(pages, "EXPORT_LIMIT", 3)
    big = c.get("/history.csv")
    assert big.status == 400 and "4 messages match, more than the 3 of one file: narrow" \
        in big.text
    # A page's keyset does not shrink what is counted against the bound: all 4 again.
    assert c.get(f"/history.csv?before={site.ids['Later']}").status == 400
    assert c.get("/history.csv?status=failed").status == 200
