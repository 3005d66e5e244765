"""The admin console's Queue, Inbox, Activities, Servers and Configuration pages over
HTTP: what each shows, the operators' forms (bulk retry and release, mark done, Test
connection) with their audit, the viewers' 403 and the CSRF refusal on each of them,
and no secret in any page (a canary config); a logged-out cookie stays logged out after
the console restarts."""

from __future__ import annotations

import hashlib
import html
import http.client
import re
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest

from mailsync.outbound.queue import OutboundStore
from mailsync.values import replace
from mailsync.web.console import serve
from mailsync.web.status import DaemonStatus, ServerState, no_status
from tests.web_helpers import CANARIES, HASHES, PASSWORDS, Client, Reply, Site, make_site

PAGES = ("/history", "/queue", "/inbox", "/activities", "/servers", "/config")


@pytest.fixture
def site(tmp_path, smtp_server) -> Iterator[Site]:
    yield from make_site(tmp_path, smtp_server, inbox=True)


def _status(site: Site, mid: int) -> str:
    return str(OutboundStore(site.store).query(
        "SELECT status FROM messages WHERE id = ?", (mid,))[0][0])


def _events(site: Site, mid: int) -> list[str]:
    return [str(r[0]) for r in OutboundStore(site.store).query(
        "SELECT detail FROM events WHERE message = ? ORDER BY id", (mid,))]


def test_every_page_is_linked_from_every_page_and_needs_a_login(site):
    c = site.client()
    for path in PAGES:
        assert c.get(path).status == 303
    c.login("victor")
    for path in PAGES:
        r = c.get(path)
        assert r.status == 200, (path, r.text)
        for other in PAGES:
            assert f'href="{other}"' in r.text, (path, other)
        assert re.search(rf'href="{path}" id="nav-{path[1:]}" aria-current="page"', r.text)
        assert "<script" not in r.text
        assert "default-src 'none'" in r.headers["content-security-policy"]


def test_the_queue_shows_what_waits_oldest_first(tmp_path, smtp_server):
    for site in make_site(tmp_path, smtp_server, more=0):
        s = OutboundStore(site.store)
        later, held = site.ids["Later"], site.ids["Partly there"]
        s.query("UPDATE messages SET status = 'held' WHERE id = ?", (held,))
        c = site.client()
        c.login("victor")
        page = c.get("/queue").text
        rows = re.findall(r'<tr id="q-(\d+)">', page)
        assert rows == sorted(rows, key=int) and {int(r) for r in rows} == {later, held}
        assert "chip-deferred" in page and "chip-held" in page and "451 4.3.0" in page
        assert site.ids["Quote Q-1042"] not in {int(r) for r in rows}  # sent: not waiting
        assert 'type="checkbox"' not in page and "bulk-retry" not in page  # a viewer
        only = c.get("/queue?status=held").text
        assert re.findall(r'<tr id="q-(\d+)">', only) == [str(held)]
        bad = c.get("/queue?status=sent")
        assert bad.status == 400 and "status &#39;sent&#39; is not a waiting status" in bad.text


def test_the_queue_pages_by_keyset(tmp_path, smtp_server):
    for site in make_site(tmp_path, smtp_server, more=60):
        s = OutboundStore(site.store)
        s.query("UPDATE messages SET status = 'held' WHERE subject LIKE 'Bulk %'")
        c = site.client()
        c.login("victor")
        first = c.get("/queue")
        ids = [int(i) for i in re.findall(r'<tr id="q-(\d+)">', first.text)]
        assert len(ids) == 50
        after = re.search(r'href="/queue\?after=(\d+)" id="newer"', first.text)
        assert after and int(after.group(1)) == ids[-1]
        second = c.get(f"/queue?after={ids[-1]}")
        more = [int(i) for i in re.findall(r'<tr id="q-(\d+)">', second.text)]
        assert len(more) == 11 and min(more) > max(ids) and 'id="newer"' not in second.text
        assert 'id="oldest"' in second.text


def test_bulk_retry_and_release_of_a_selection_audited_per_message(tmp_path, smtp_server):
    woken = []
    for site in make_site(tmp_path, smtp_server, more=3):
        site.console.app.wake = lambda: woken.append(1)
        s = OutboundStore(site.store)
        bulk = [site.ids[f"Bulk {i:03d}"] for i in range(3)]
        s.query(f"UPDATE messages SET status = 'held' WHERE id IN ({bulk[0]}, {bulk[1]})")
        s.query(f"UPDATE messages SET status = 'deferred' WHERE id = {bulk[2]}")
        later = site.ids["Later"]
        c = site.client()
        c.login("olga")
        page = c.get("/queue")
        assert 'id="bulk-retry"' in page.text and f'id="sel-{later}"' in page.text
        token = page.csrf()
        r = c.post("/queue", {"csrf": token, "action": "retry", "m": str(later)})
        assert r.status == 303 and r.headers["location"] == "/queue?done=retry&count=1&skipped=0"
        # A selection of three (m three times): two held ones, and a deferred one that
        # release does not apply to.
        r = _post_pairs(c, "/queue", [("csrf", token), ("action", "release"),
                                      *(("m", str(m)) for m in bulk)])
        assert r.status == 303
        assert r.headers["location"] == "/queue?done=release&count=2&skipped=1"
        assert [_status(site, m) for m in (*bulk, later)] == ["queued", "queued", "deferred",
                                                              "queued"]
        assert any("release by olga (admin console)" in e for e in _events(site, bulk[0]))
        assert any("release by olga (admin console)" in e for e in _events(site, bulk[1]))
        assert any("retry by olga (admin console)" in e for e in _events(site, later))
        assert woken == [1, 1]
        shown = c.get(r.headers["location"]).text
        assert "release: 2 messages done, 1 skipped" in shown
        none = c.post("/queue", {"csrf": token, "action": "retry"})
        assert none.status == 400 and "no message selected" in none.text
        wrong = c.post("/queue", {"csrf": token, "action": "delete", "m": str(later)})
        assert wrong.status == 400 and "allowed: retry, release" in wrong.text


def test_the_queue_filters_as_the_history_does_and_keeps_them_across_pages(tmp_path,
                                                                          smtp_server):
    for site in make_site(tmp_path, smtp_server, more=4):
        s = OutboundStore(site.store)
        bulk = [site.ids[f"Bulk {i:03d}"] for i in range(4)]
        s.query(f"UPDATE messages SET status = 'deferred' WHERE id IN ({bulk[0]}, {bulk[1]})")
        s.query(f"UPDATE messages SET account = 'sales', user = 'alice' WHERE id = {bulk[1]}")
        s.query(f"UPDATE messages SET status = 'queued' WHERE id IN ({bulk[2]}, {bulk[3]})")
        c = site.client()
        c.login("victor")
        support = c.get("/queue?account=support&status=deferred").text
        ids = [int(m) for m in re.findall(r'<tr id="q-(\d+)"', support)]
        assert ids == [site.ids["Later"], bulk[0]]  # not the sales one, not the queued ones
        assert len(re.findall(r'<tr id="q-', c.get("/queue").text)) == 5
        assert '<option value="support" selected>' in support
        found = c.get("/queue?q=n2%40example.org").text  # a recipient, as the History's
        assert re.findall(r'<tr id="q-(\d+)"', found) == [str(bulk[2])]
        assert "No waiting message matches." in c.get("/queue?q=nobody%40example.org").text
        assert "Nothing waits." not in c.get("/queue?q=nobody%40example.org").text
        # Since a date to come: nothing; a wrong time says what is wrong.
        assert re.findall(r'<tr id="q-', c.get("/queue?since=2099-01-01").text) == []
        bad = c.get("/queue?since=yesterday")
        assert bad.status == 400 and "since" in bad.text and 'id="error"' in bad.text
        assert 'id="all-retry"' not in support  # a viewer gets no bulk button


def test_retry_all_matching_acts_on_every_page_not_only_the_one_shown(tmp_path, smtp_server):
    woken = []
    for site in make_site(tmp_path, smtp_server, more=60):
        site.console.app.wake = lambda: woken.append(1)
        s = OutboundStore(site.store)
        bulk = [site.ids[f"Bulk {i:03d}"] for i in range(60)]
        s.query(f"UPDATE messages SET status = 'deferred' WHERE id IN ({','.join(map(str, bulk))})")
        s.query(f"UPDATE messages SET account = 'sales' WHERE id = {bulk[0]}")
        held = bulk[1]
        s.query(f"UPDATE messages SET status = 'held' WHERE id = {held}")
        c = site.client()
        c.login("olga")
        page = c.get("/queue?account=support")
        # 58 deferred bulk ones and "Later"; more than a page (50) shows.
        assert len(re.findall(r'<tr id="q-', page.text)) == 50
        assert "Retry all deferred that match (59)</button>" in page.text
        assert "Release all held that match (1)</button>" in page.text
        newer = re.search(r'href="/queue\?([^"]*)" id="newer"', page.text)
        assert newer and html.unescape(newer.group(1)).startswith("account=support&after=")
        rest = c.get("/queue?" + html.unescape(newer.group(1))).text
        assert len(re.findall(r'<tr id="q-', rest)) == 10  # the page after: the other 10
        form = {"csrf": page.csrf(), "action": "retry", "scope": "matching",
                "account": "support", "status": "", "user": "", "server": "", "since": "",
                "until": "", "q": ""}
        r = c.post("/queue", form)
        assert r.status == 303
        assert r.headers["location"] == ("/queue?done=retry&count=59&skipped=0"
                                         "&scope=matching&account=support")
        assert "retry: 59 messages done (all that matched)." in c.get(r.headers["location"]).text
        assert [_status(site, m) for m in bulk[2:]] == ["queued"] * 58
        assert _status(site, site.ids["Later"]) == "queued"
        assert _status(site, bulk[0]) == "deferred"  # another account: not matched
        assert _status(site, held) == "held"          # retry does not apply to held
        assert any("retry by olga (admin console)" in e for e in _events(site, bulk[59]))
        assert woken == [1]
        # Nothing deferred is left in support: no Retry all button, Release all still.
        after = c.get("/queue?account=support").text
        assert 'id="all-retry"' not in after and 'id="all-release"' in after
        # Retry of a page showing only queued messages: refused, nothing done.
        wrong = c.post("/queue", {**form, "status": "queued"})
        assert wrong.status == 400 and "retry applies to deferred, failed" in wrong.text
        viewer = site.client()
        viewer.login("victor")
        refused = viewer.form_post("/queue", "/queue", {**form, "action": "release"})
        assert refused.status == 403 and _status(site, held) == "held"


def _post_pairs(c: Client, path: str, pairs: list[tuple[str, str]]) -> Reply:
    """A POST whose form repeats a field (Client.post takes a dict)."""
    conn = http.client.HTTPConnection(c.host, c.port, timeout=10)
    conn.request("POST", path, urlencode(pairs),
                 {"Cookie": "; ".join(f"{k}={v}" for k, v in c.jar.items()),
                  "Content-Type": "application/x-www-form-urlencoded"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, [], data)


def test_the_inbox_per_server_with_the_bounce_linked_to_what_it_bounced(site):
    c = site.client()
    c.login("victor")
    page = c.get("/inbox").text
    bounced = site.ids["Bounced later"]
    assert "A question about Q-1042" in page and "failure notice" in page
    assert re.search(rf'<a href="/messages/{bounced}" id="bounce-\d+">#{bounced}</a> Bounced'
                     r' later <span class="chip chip-bounced">bounced</span>', page)
    assert 'id="tab-drop"' in page
    tab = c.get("/inbox?server=drop").text
    assert tab.count('<tr id="f-') == 2
    only = c.get("/inbox?bounces=1").text
    assert only.count('<tr id="f-') == 1 and "failure notice" in only
    bad = c.get("/inbox?server=nope")
    assert bad.status == 400 and "allowed: drop" in bad.text


def test_the_inbox_searches_and_keeps_its_filters_across_tabs(site):
    c = site.client()
    c.login("victor")
    found = c.get("/inbox?q=q-1042")  # a part of the subject, any case
    assert found.status == 200 and found.text.count('<tr id="f-') == 1
    assert "A question about Q-1042" in found.text and 'value="q-1042"' in found.text
    assert c.get("/inbox?q=ANN@example.org").text.count('<tr id="f-') == 1  # From
    assert c.get("/inbox?q=<q1@example.org>").text.count('<tr id="f-') == 1  # Message-ID
    assert c.get("/inbox?q=q1@example.org").text.count('<tr id="f-') == 1   # without <>
    none = c.get("/inbox?q=100%25").text  # % is a character, not a wildcard
    assert "No fetched message matches." in none and '<tr id="f-' not in none
    # A tab and the bounces toggle keep the search; Clear keeps the tab alone.
    tab = c.get("/inbox?server=drop&q=q-1042").text
    assert 'href="/inbox?q=q-1042"' in tab  # All servers, with the search
    assert 'href="/inbox?server=drop&amp;q=q-1042&amp;bounces=1"' in tab
    assert 'href="/inbox?server=drop" id="clear"' in tab
    # The time window: all of it was fetched in the last minutes.
    assert c.get("/inbox?since=1h").text.count('<tr id="f-') == 2
    assert c.get("/inbox?since=2h&until=1h").text.count('<tr id="f-') == 0
    bad = c.get("/inbox?since=1h&until=2h")
    assert bad.status == 400 and "until '2h' is not after since '1h'" in html.unescape(bad.text)
    worse = c.get("/inbox?since=yesterday-ish")
    assert worse.status == 400 and "since " in worse.text


def test_activities_by_user_and_type_with_icon_colour_and_relative_deadline(site):
    c = site.client()
    c.login("victor")
    page = c.get("/activities").text
    reply = site.activities["reply"]
    row = re.search(rf'<tr id="a-{reply}" class="deco-warning overdue">(.*?)</tr>', page, re.S)
    assert row and "\u21a9" in row.group(1) and 'title="fa-reply"' in row.group(1)
    assert "2 days overdue" in row.group(1)
    call = re.search(rf'<tr id="a-{site.activities["call"]}" class="deco-none">(.*?)</tr>',
                     page, re.S)
    assert call and "in 3 days" in call.group(1) and "\u260e" in call.group(1)
    meeting = re.search(rf'<tr id="a-{site.activities["meeting"]}" class="deco-danger overdue">'
                        r'(.*?)</tr>', page, re.S)
    assert meeting and "1 day overdue" in meeting.group(1)
    assert "tomorrow" in page  # the contract
    counts = re.search(r'<table id="counts">(.*?)</table>', page, re.S).group(1)
    assert re.search(r">alice<.*?>Reply<.*?>1<.*?>1<", counts, re.S)
    assert "Mark done" not in page  # a viewer
    mine = c.get("/activities?user=bob").text
    assert f'id="a-{reply}"' not in mine and f'id="a-{site.activities["call"]}"' in mine
    late = c.get("/activities?overdue=1").text
    assert f'id="a-{site.activities["call"]}"' not in late and f'id="a-{reply}"' in late


def test_mark_done_shows_the_trigger_and_the_suggestion(site):
    c = site.client()
    c.login("olga")
    reply = site.activities["reply"]
    r = c.form_post("/activities", "/activities/done", {"id": str(reply), "feedback": "sent"})
    assert r.status == 200 and f"Activity {reply} done: Reply" in r.text
    triggered = re.search(r'<p id="triggered">Triggered: activity (\d+), Call for alice', r.text)
    assert triggered, r.text
    row = site.store.conn.execute("SELECT state, feedback FROM activities WHERE id = ?",
                                  (reply,)).fetchone()
    assert tuple(row) == ("done", "sent")
    call = site.activities["call"]
    r = c.form_post("/activities", "/activities/done", {"id": str(call)})
    assert "Recommended next: Meeting or Contract" in r.text or \
        "Recommended next: Meeting, Contract" in r.text, r.text
    again = c.form_post("/activities", "/activities/done", {"id": str(call)})
    assert again.status == 409 and f"activity {call} is done" in again.text
    upload = c.form_post("/activities", "/activities/done",
                         {"id": str(site.activities["contract"])})
    assert upload.status == 409 and "--attach FILE" in upload.text


def test_servers_show_the_daemon_state_and_the_last_send(tmp_path, smtp_server):
    now = time.time()
    status = DaemonStatus(outgoing={"main": ServerState(up=False, since=now - 60,
                                                        error="connection refused")},
                          incoming={"drop": ServerState(up=True, last_at=now,
                                                        note="drop: 1 fetched")},
                          daemon=True)
    for site in make_site(tmp_path, smtp_server, inbox=True, status=lambda: status):
        c = site.client()
        c.login("victor")
        page = c.get("/servers").text
        out = re.search(r'<tr id="out-main">(.*?)</tr>', page, re.S).group(1)
        assert "chip-down" in out and "connection refused" in out and "since" in out
        assert re.search(r'<td class="time">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>', out)
        inc = re.search(r'<tr id="in-drop">(.*?)</tr>', page, re.S).group(1)
        assert "chip-up" in inc and "drop: 1 fetched" in inc and "local" in inc
        assert "Test connection" not in page  # a viewer


def test_test_connection_ok_error_and_a_silent_server_within_the_limit(tmp_path, smtp_server):
    for site in make_site(tmp_path, smtp_server, inbox=True, canary=True):
        c = site.client()
        c.login("olga")
        r = c.form_post("/servers", "/servers/test", {"server": "main", "side": "outgoing"})
        assert r.status == 200
        assert re.search(r'<p class="done" id="tested" role="status">main: OK', r.text), r.text
        r = c.form_post("/servers", "/servers/test", {"server": "canary", "side": "outgoing"})
        assert re.search(r'<p class="error" id="tested" role="status">canary: Connection '
                         r'Error: .*refused', r.text), r.text
        r = c.form_post("/servers", "/servers/test", {"server": "drop", "side": "incoming"})
        assert "drop (incoming): OK" in r.text
        r = c.form_post("/servers", "/servers/test", {"server": "nope", "side": "outgoing"})
        assert r.status == 404 and "declared: main" in r.text
        silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
        try:
            port = silent.getsockname()[1]
            servers = [replace(s, port=port) if s.name == "canary" else s
                       for s in site.config.outgoing_servers]
            slow = replace(site.config, outgoing_servers=tuple(servers))
            site.console.app.config = lambda slow=slow: slow  # type: ignore[misc]
            site.console.app.test_limit = 1.0
            started = time.monotonic()
            r = c.form_post("/servers", "/servers/test", {"server": "canary",
                                                          "side": "outgoing"})
            assert time.monotonic() - started < 4.0
            assert "canary: Connection Error: no answer within 1 s" in r.text
        finally:
            silent.close()


@pytest.mark.parametrize("path,form", [
    ("/queue", {"action": "retry", "m": "1"}),
    ("/activities/done", {"id": "1"}),
    ("/servers/test", {"server": "main", "side": "outgoing"}),
])
def test_each_operator_form_refuses_a_viewer_and_a_missing_csrf_token(site, path, form):
    viewer = site.client()
    viewer.login("victor")
    r = viewer.form_post("/history", path, form)
    assert r.status == 403 and "needs the operator role" in r.text
    operator = site.client()
    operator.login("olga")
    r = operator.post(path, form)
    assert r.status == 403 and "CSRF token is missing or wrong" in r.text
    r = operator.post(path, {**form, "csrf": "forged"})
    assert r.status == 403
    assert _status(site, site.ids["Later"]) == "deferred"
    assert site.store.conn.execute("SELECT COUNT(*) FROM activities WHERE state = 'done'"
                                   ).fetchone()[0] == 0


def test_the_configuration_page_redacts_secrets_and_shows_the_plan(tmp_path, smtp_server):
    for site in make_site(tmp_path, smtp_server, inbox=True, canary=True):
        c = site.client()
        c.login("victor")
        page = c.get("/config")
        assert page.status == 200
        text = re.search(r'<pre class="text" id="config-text">(.*?)</pre>', page.text,
                         re.S).group(1)
        assert "password_hash:\n" in text and "file: olga.hash" in text  # a reference
        assert "password: (redacted)" in text and "client_secret: (redacted)" in text
        assert "session_key: (redacted)" in text and "refresh_token: (redacted)" in text
        sha = hashlib.sha256(site.config_path.read_text().encode()).hexdigest()
        assert f"<code>{sha}</code>" in page.text
        assert "No changes." in page.text
        site.config_path.write_text(site.config_path.read_text().replace(
            "poll_interval: 10s", "poll_interval: 30s"))
        assert re.search(r"~ incoming_servers\.drop.*poll_interval: 10s -&gt; 30s",
                         c.get("/config").text, re.S), c.get("/config").text
        site.config_path.write_text(site.config_path.read_text().replace(
            f"password: {CANARIES['password']}", "password: [1, 2]"))
        broken = c.get("/config").text
        assert "The file does not load" in broken


def test_the_last_reload_is_shown(tmp_path, smtp_server):
    last = {"result": "refused", "at": time.time(), "source": "SIGHUP",
            "summary": "1 error(s) in config.yaml", "errors": ["config.yaml:3:5: error: x"],
            "error_count": 4}
    for site in make_site(tmp_path, smtp_server,
                          status=lambda: DaemonStatus(reload=last, daemon=True)):
        c = site.client()
        c.login("victor")
        page = c.get("/config").text
        assert re.search(r'id="reload-result">refused</span> 1 error\(s\) in config.yaml', page)
        assert "config.yaml:3:5: error: x" in page and "and 3 more" in page


def test_no_secret_in_any_page(tmp_path, smtp_server):
    for site in make_site(tmp_path, smtp_server, inbox=True, canary=True):
        olga = site.client()
        olga.login("olga")
        bodies = [olga.get(p) for p in PAGES]
        bodies.append(olga.form_post("/servers", "/servers/test",
                                     {"server": "canary", "side": "outgoing"}))
        bodies.append(olga.form_post("/servers", "/servers/test",
                                     {"server": "canary-oauth", "side": "outgoing"}))
        bodies.append(olga.form_post("/activities", "/activities/done",
                                     {"id": str(site.activities["reply"])}))
        bodies.append(olga.get(f"/messages/{site.ids['Quote Q-1042']}"))
        secrets = [*CANARIES.values(), *PASSWORDS.values(), *HASHES.values()]
        for hashed in HASHES.values():
            secrets.append(hashed.rsplit("$", 1)[-1])  # the hash's own part
        for r in bodies:
            for secret in secrets:
                assert secret not in r.text, secret
                assert secret not in str(r.headers), secret


def test_a_logged_out_cookie_stays_logged_out_after_a_restart(site):
    c = site.client()
    c.login("olga")
    stolen = dict(c.jar)
    kept = site.client()
    kept.login("victor")
    assert c.form_post("/history", "/logout").status == 303
    site.console.close()
    again = serve(site.config, lambda: site.config, OutboundStore(site.store), lambda: None,
                  listen="127.0.0.1:0", status=lambda: no_status(site.config_path))
    try:
        thief = Client(again.listener.host, again.listener.port, dict(stolen))
        r = thief.get("/history")
        assert r.status == 303 and r.headers["location"].startswith("/login")
        other = Client(again.listener.host, again.listener.port, dict(kept.jar))
        assert other.get("/history").status == 200  # a session not logged out goes on
    finally:
        again.close()
    # Kept in the store (mailsync/store/logouts.py), no longer in a file of state_dir.
    assert not (site.config.daemon.state_dir / "admin-revoked-sessions").exists()
    assert site.store.conn.execute("SELECT COUNT(*) FROM admin_logouts").fetchone()[0] == 1
