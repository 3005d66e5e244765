"""The admin console's pure parts: the login throttle's window, the session cookie's
signature and expiry, the since filter, where a login may send the browser back to."""

from __future__ import annotations

import pytest

from mailsync.web.app import _safe_next
from mailsync.web.pages import parse_since
from mailsync.web.sessions import Sessions
from mailsync.web.throttle import Throttle


def test_the_throttle_refuses_within_the_window_and_lets_go_after_it():
    now = [1000.0]
    t = Throttle(per_user=3, per_address=10, window=60, clock=lambda: now[0])
    for _ in range(3):
        assert t.wait("ann", "10.0.0.1") == 0
        t.failed("ann", "10.0.0.1")
        now[0] += 1
    assert t.wait("ann", "10.0.0.2") == pytest.approx(57.0)  # per user, from any address
    assert t.wait("bob", "10.0.0.1") == 0
    now[0] += 57.0
    assert t.wait("ann", "10.0.0.1") == 0  # the oldest failure left the window
    t.failed("ann", "10.0.0.1")
    t.succeeded("ann")
    assert t.wait("ann", "10.0.0.1") == 0


def test_a_cookie_is_refused_when_forged_expired_or_revoked():
    now = [1000.0]
    s = Sessions(b"k" * 32, 60, clock=lambda: now[0])
    value, session = s.issue("ann", "$argon2id$hash")
    assert s.check(value) == session
    body, mac = value.split(".")
    assert s.check(body + "." + mac[:-1] + ("A" if mac[-1] != "A" else "B")) is None
    assert Sessions(b"x" * 32, 60).check(value) is None  # another key
    assert s.check("garbage") is None and s.check(None) is None
    now[0] += 61
    assert s.check(value) is None
    now[0] -= 61
    s.revoke(session)
    assert s.check(value) is None
    assert s.csrf_ok(session.sid, s.csrf(session.sid))
    assert not s.csrf_ok(session.sid, s.csrf("another")) and not s.csrf_ok(session.sid, None)
    assert s.fingerprint("$argon2id$hash") != s.fingerprint("$argon2id$other")


def test_since_takes_a_duration_or_a_date():
    assert parse_since("2h", 10_000.0) == 10_000.0 - 7200
    assert parse_since("1970-01-01T01:00", 0) == 3600.0
    with pytest.raises(ValueError, match="since 'soon' is neither a duration nor a date"):
        parse_since("soon", 0)


@pytest.mark.parametrize(("value", "expected"), [
    ("/messages/4", "/messages/4"), ("//evil.example/x", "/history"),
    ("https://evil.example", "/history"), ("/\\evil.example", "/history"), (None, "/history"),
])
def test_a_login_sends_back_to_the_console_only(value, expected):
    assert _safe_next(value) == expected


def test_the_configuration_is_shown_with_every_secret_redacted():
    from mailsync.web.settings import redacted, secret_keys

    assert {"password", "password_hash", "session_key", "client_secret", "refresh_token",
            "service_account_key", "dsn", "tls_client_cert", "tls_client_key"} <= secret_keys()
    text = ("version: 1  # CANARY-COMMENT\n"
            "daemon:\n  store: {postgresql: {dsn: 'postgresql://u:CANARY-DSN@db/mail'}}\n"
            "outgoing_servers:\n  - {name: a, host: h, password: {env: RELAY_PW},\n"
            "     tls_client_key: {file: /k.pem}}\n"
            "admin: {session_key: {credential: console-key}}\n")
    shown = redacted(text)
    assert "CANARY" not in shown
    assert "dsn: (redacted)" in shown and "env: RELAY_PW" in shown
    assert "file: /k.pem" in shown and "credential: console-key" in shown
    assert "host: h" in shown
