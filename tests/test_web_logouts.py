"""The admin console's logouts are kept in the store (migration 15,
mailsync/store/logouts.py), so that every node sharing a store refuses a cookie logged
out through any node's console: on a real SQLite file and a real PostgreSQL database
(the ``store`` fixture of tests/test_store_backends.py), and over HTTP between two
consoles of one store; the file earlier releases kept is moved into the store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from mailsync.outbound.queue import OutboundStore
from mailsync.store import logouts
from mailsync.web.app import Readers
from mailsync.web.console import StoreLogouts, serve
from mailsync.web.sessions import REVOKED_FILE, Sessions
from mailsync.web.status import no_status
from tests.test_store_backends import backend, store  # noqa: F401
from tests.web_helpers import Client, Site, make_site

KEY = b"k" * 32


def test_a_logout_on_one_node_is_refused_by_another(store, backend, tmp_path):  # noqa: F811
    now = [1000.0]
    readers = [Readers(tmp_path / "state", backend) for _ in range(2)]
    try:
        one, two = (Sessions(KEY, 600, clock=lambda: now[0],
                             logouts=StoreLogouts(store, r)) for r in readers)
        value, session = one.issue("ann", "$argon2id$hash")
        other, _ = one.issue("bob", "$argon2id$hash")
        assert two.check(value) == session
        one.revoke(session)
        assert two.check(value) is None and one.check(value) is None
        assert two.check(other) is not None  # another session goes on
        # A restart: a new Sessions knows of the logout from the store alone.
        again = Sessions(KEY, 600, clock=lambda: now[0],
                         logouts=StoreLogouts(store, readers[1]))
        assert again.check(value) is None
        assert logouts.logged_out(store, session.sid, now[0])
        # Once the cookie would have expired, its row is forgotten at the next logout.
        now[0] += 601
        assert not logouts.logged_out(store, session.sid, now[0])
        logouts.record(store, [("later", now[0] + 60)], now[0])
        rows = store.conn.execute("SELECT sid FROM admin_logouts").fetchall()
        assert [r[0] for r in rows] == ["later"]
    finally:
        for r in readers:
            r.close()


@pytest.fixture
def site(tmp_path, smtp_server) -> Iterator[Site]:
    yield from make_site(tmp_path, smtp_server)


def test_two_consoles_of_one_store_share_the_logouts(site):
    second = serve(site.config, lambda: site.config, OutboundStore(site.store), lambda: None,
                   listen="127.0.0.1:0", status=lambda: no_status(site.config_path))
    try:
        c = site.client()
        c.login("olga")
        stolen = dict(c.jar)
        thief = Client(second.listener.host, second.listener.port, dict(stolen))
        assert thief.get("/history").status == 200  # one key: the cookie works on both
        assert c.form_post("/history", "/logout").status == 303
        r = thief.get("/history")  # no restart: the other node reads the store
        assert r.status == 303 and r.headers["location"].startswith("/login")
    finally:
        second.close()


def test_the_file_of_earlier_releases_is_moved_into_the_store(site):
    c = site.client()
    c.login("olga")
    sid_cookie = dict(c.jar)
    value = next(v for k, v in sid_cookie.items() if k.endswith("session"))
    session = site.console.app.sessions.check(value)
    assert session is not None
    site.console.close()
    state_dir = site.config.daemon.state_dir
    old = state_dir / REVOKED_FILE
    old.write_text(f"{session.sid} {int(session.expires)}\ngone 5\ncut-short\n")
    os.chmod(old, 0o600)
    again = serve(site.config, lambda: site.config, OutboundStore(site.store), lambda: None,
                  listen="127.0.0.1:0", status=lambda: no_status(site.config_path))
    try:
        assert not old.exists()
        thief = Client(again.listener.host, again.listener.port, dict(sid_cookie))
        r = thief.get("/history")
        assert r.status == 303 and r.headers["location"].startswith("/login")
        rows = site.store.conn.execute("SELECT sid FROM admin_logouts").fetchall()
        assert [r[0] for r in rows] == [session.sid]  # the expired line is not kept
    finally:
        again.close()
