"""OAuth2 end to end: mailsync against a real token endpoint, aiosmtpd and Dovecot.

The token endpoint (tests/oauth2server.py) issues opaque tokens; aiosmtpd and Dovecot
check each one at its /introspect, as Exchange Online and Gmail check theirs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mailsync.outbound.spool import drop, ensure_dirs
from tests.dovecot import HOST, message
from tests.dovecot_oauth2 import oauth2_dovecot_fixture, oauth2_mailbox_fixture  # noqa: F401
from tests.oauth2server import CLIENT_CREDENTIALS
from tests.outbound_helpers import history, run, run_once

SECRET = "client-secret-canary-5f1e"


def _auth(authority, *, client: str = "mailsync", extra: str = "") -> str:
    return ("    auth:\n      oauth2:\n        provider: generic\n"
            f"        client_id: {client}\n        client_secret: {{env: OAUTH_SECRET}}\n"
            f"        token_url: {authority.token_url}\n        scope: mail\n{extra}")


def _config(tmp_path: Path, servers: str, incoming: str = "") -> Path:
    text = ("version: 1\ndaemon:\n  state_dir: ./state\n  spool_dir: ./spool\n"
            "alias_domain: {domain: example.com, bounce: bounce}\n"
            "users: [alice]\noutgoing_servers:\n" + servers
            + (f"incoming_servers:\n{incoming}" if incoming else "")
            + "accounts:\n  - {name: sales, email: sales@example.com, server: relay, "
              "granted_to: [alice]}\n")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    ensure_dirs(tmp_path / "spool")
    return path


def _relay(port: int, user: str, authority, connections: int = 4) -> str:
    return (f"  - name: relay\n    host: 127.0.0.1\n    port: {port}\n    security: none\n"
            f"    username: {user}\n    max_connections: {connections}\n"
            + _auth(authority))


def test_run_once_sends_with_a_client_credentials_token(tmp_path, oauth2_server, smtp_server,
                                                        monkeypatch):
    monkeypatch.setenv("OAUTH_SECRET", SECRET)
    authority = oauth2_server()
    authority.add_client("mailsync", SECRET, user="relay@example.com")
    srv = smtp_server(oauth2=authority)
    cfg = _config(tmp_path, _relay(srv.port, "relay@example.com", authority))
    for i in range(3):
        drop(tmp_path / "spool", user="alice", to=[f"r{i}@example.org"], subject=f"s{i}",
             text="x")
    out = run_once(cfg)
    assert "3 sent" in out.output, out.output
    assert [m.auth_mechanism for m in srv.wait_for(3)] == ["OAUTHBEARER"] * 3
    assert {a.user for a in srv.auth_attempts if a.ok} == {"relay@example.com"}
    # One token for every session of the run.
    assert len(authority.token_requests(CLIENT_CREDENTIALS, ok=True)) == 1
    tested = run(["test", "relay", "-c", str(cfg)])
    assert tested.exit_code == 0
    assert tested.output.startswith("relay: OK (plain text, OAUTHBEARER, token valid until ")
    assert SECRET not in out.output + tested.output


def test_a_burst_outlives_its_tokens_without_a_deferral_or_a_herd(tmp_path, oauth2_server,
                                                                   smtp_server, monkeypatch):
    """2,000 messages over 4 pooled sessions while each token lives 2 s; the relay refuses
    MAIL in a session whose token has expired (as a strict server would).

    A session is replaced a quarter of its token's life before the token expires (60 s
    for an hour's token), here 0.5 s: the relay, in this process, judges a MAIL command
    when its thread gets to it, and a busy machine (the suite on every core) has stalled
    it longer than a 1 s token's 0.25 s."""
    monkeypatch.setenv("OAUTH_SECRET", SECRET)
    lifetime = 2.0
    authority = oauth2_server(lifetime=lifetime)
    authority.add_client("mailsync", SECRET, user="relay@example.com")
    srv = smtp_server(oauth2=authority, expired_token_reply="421 4.7.0 token expired")
    cfg = _config(tmp_path, _relay(srv.port, "relay@example.com", authority))
    for i in range(2000):
        drop(tmp_path / "spool", user="alice", to=[f"r{i}@example.org"], subject=f"s{i}",
             text="x" * 2000)
    started = time.monotonic()
    out = run_once(cfg)
    elapsed = time.monotonic() - started
    assert "2000 sent, 0 deferred" in out.output, out.output
    assert len(srv.wait_for(2000)) == 2000
    assert {r["attempts"] for r in history(cfg, "--limit", "5000")} == {1}
    tokens = authority.token_requests(CLIENT_CREDENTIALS, ok=True)
    print(f"burst: {elapsed:.1f}s, {len(tokens)} token requests")
    assert elapsed > lifetime and len(tokens) >= 3      # it did outlive several tokens
    # One request per renewal (at half a token's life), never a herd of them.
    assert len(tokens) <= elapsed / (0.4 * lifetime) + 2, (len(tokens), elapsed)
    gaps = [b.time - a.time for a, b in zip(tokens, tokens[1:], strict=False)]
    assert all(gap > 0.3 * lifetime for gap in gaps), gaps


def test_a_revoked_refresh_token_says_to_sign_in_again(tmp_path, oauth2_server, smtp_server,
                                                       monkeypatch):
    monkeypatch.setenv("OAUTH_SECRET", SECRET)
    authority = oauth2_server(rotate_refresh_tokens=True)
    authority.add_client("mailsync", SECRET)
    first = authority.refresh_token("relay@example.com", "mailsync", scope="mail")
    (tmp_path / "rt").write_text(first)
    srv = smtp_server(oauth2=authority)
    servers = (f"  - name: relay\n    host: 127.0.0.1\n    port: {srv.port}\n"
               "    security: none\n    username: relay@example.com\n"
               + _auth(authority, extra=f"        refresh_token: {{file: {tmp_path / 'rt'}}}\n"))
    cfg = _config(tmp_path, servers)
    assert run(["test", "relay", "-c", str(cfg)]).exit_code == 0
    saved = json.loads((tmp_path / "state" / "tokens" / "relay.json").read_text())
    assert (tmp_path / "state" / "tokens" / "relay.json").stat().st_mode & 0o777 == 0o600
    assert first not in json.dumps(saved)             # rotated, and the new one kept
    authority.revoke_user("relay@example.com")
    authority.expire_access_tokens()
    tested = run(["test", "relay", "-c", str(cfg)])
    assert tested.exit_code == 1
    assert ("OAuth2: the refresh token was revoked or expired; run mailsync auth login "
            "relay") in tested.output, tested.output
    assert first not in tested.output and SECRET not in tested.output


def test_imap_and_pop3_are_polled_with_an_access_token(tmp_path, oauth2_mailbox, smtp_server,
                                                       monkeypatch):
    monkeypatch.setenv("OAUTH_SECRET", SECRET)
    authority = oauth2_mailbox.authority
    authority.add_client("mailsync", SECRET, user=oauth2_mailbox.user)
    oauth2_mailbox.append(message("Over IMAP"))
    dovecot = oauth2_mailbox.dovecot
    incoming = "".join(
        f"  - name: {name}\n    type: {kind}\n    host: {HOST}\n"
        f"    port: {dovecot.port(listener)}\n    security: none\n"
        f"    username: {oauth2_mailbox.user}\n    timeout: 10s\n" + _auth(authority)
        for name, kind, listener in (("box", "imap", "imap"), ("pop", "pop", "pop3")))
    srv = smtp_server()
    relay = f"  - {{name: relay, host: 127.0.0.1, port: {srv.port}, security: none}}\n"
    cfg = _config(tmp_path, relay, incoming)
    out = run(["inbox", "poll", "-c", str(cfg)])
    assert out.exit_code == 0, out.output
    assert "box: 1 fetched" in out.output and "pop: 1 fetched" in out.output
    listed = run(["inbox", "-c", str(cfg), "--format", "json"])
    assert sorted(m["server"] for m in json.loads(listed.output)) == ["box", "pop"]
    tested = run(["test", "box", "pop", "-c", str(cfg)])
    assert tested.exit_code == 0, tested.output
    lines = tested.output.splitlines()
    assert lines[0].startswith("box (incoming): OK (plain text, OAUTHBEARER, token valid until ")
    assert lines[1].startswith("pop (incoming): OK (plain text, OAUTHBEARER, token valid until ")
    # A refused token is reported with the server's challenge decoded.
    authority.fail_next("invalid_client", count=10)
    authority.expire_access_tokens()
    refused = run(["inbox", "poll", "-c", str(cfg)])
    assert refused.exit_code == 1
    assert "OAuth2: the token endpoint refused the client (invalid_client)" in refused.output
    assert SECRET not in refused.output


def test_the_daemon_keeps_idle_across_token_lifetimes_and_leaks_no_token(
        tmp_path, oauth2_mailbox, smtp_server):
    """A running daemon: SMTP with client credentials, IMAP IDLE with a rotating refresh
    token, tokens of 2 s. Mail keeps arriving by IDLE across more than three lifetimes;
    the refreshes are counted; no access token, refresh token or client secret reaches
    the log, /metrics, the history or the plan."""
    from tests.daemon_helpers import DaemonProcess, free_port, wait_until

    authority = oauth2_mailbox.authority
    authority.lifetime = 2.0
    authority.rotate_refresh_tokens = True
    authority.add_client("mailsync", SECRET, user="relay@example.com")
    first_refresh = authority.refresh_token(oauth2_mailbox.user, "mailsync", scope="mail")
    (tmp_path / "rt").write_text(first_refresh)
    srv = smtp_server(oauth2=authority)
    dovecot = oauth2_mailbox.dovecot
    incoming = (f"  - name: box\n    type: imap\n    host: {HOST}\n"
                f"    port: {dovecot.port('imap')}\n    security: none\n"
                f"    username: {oauth2_mailbox.user}\n    poll_interval: 60s\n"
                + _auth(authority, extra=f"        refresh_token: {{file: {tmp_path / 'rt'}}}\n"))
    cfg = _config(tmp_path, _relay(srv.port, "relay@example.com", authority), incoming)
    listen = f"  metrics_listen: 127.0.0.1:{free_port()}\n"
    cfg.write_text(cfg.read_text().replace("  spool_dir: ./spool\n",
                                           "  spool_dir: ./spool\n" + listen))
    daemon = DaemonProcess(cfg, env={"OAUTH_SECRET": SECRET})
    try:
        daemon.wait_healthy()
        drop(tmp_path / "spool", user="alice", to=["a@example.org"], subject="hi", text="x")
        srv.wait_for(1)
        started = time.monotonic()
        for i in range(4):                      # 0 s, 2.5 s, 5 s, 7.5 s: past 3 lifetimes
            oauth2_mailbox.append(message(f"Arrival {i}"))
            wait_until(lambda n=i + 1: daemon.metric("mailsync_mailbox_messages_fetched_total",
                                                     server="box") == n, 10,
                       f"arrival {i} fetched")
            time.sleep(max(0.0, started + 2.5 * (i + 1) - time.monotonic()))
        assert (daemon.metric("mailsync_oauth2_token_refreshes_total", server="box",
                              result="success") or 0) >= 3
        assert (daemon.metric("mailsync_oauth2_token_refreshes_total", server="relay",
                              result="success") or 0) >= 1
        assert (daemon.metric("mailsync_oauth2_token_expiry_timestamp_seconds",
                              server="box") or 0) > time.time() - 5
        metrics_text = daemon.get("/metrics")[1]
        shown = "".join(run(args).output for args in (
            ["history", "-c", str(cfg)], ["history", "show", "1", "-c", str(cfg)],
            ["plan", "-c", str(cfg)], ["inbox", "-c", str(cfg)]))
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
    secrets = {SECRET, first_refresh}
    secrets |= {a.token for a in srv.auth_attempts if a.token}
    secrets |= {r.params.get("token", "") for r in authority.requests} - {""}
    secrets |= {r.params.get("refresh_token", "") for r in authority.requests} - {""}
    assert len(secrets) >= 6
    stored = (tmp_path / "state" / "tokens" / "box.json").read_text()
    secrets.discard(json.loads(stored).get("refresh_token", ""))   # the file's own purpose
    for text, where in ((daemon.log, "log"), (metrics_text, "/metrics"), (shown, "CLI")):
        leaked = [s for s in secrets if s in text]
        assert leaked == [], f"{where} shows {len(leaked)} secret(s)"


def _imap_box(mailbox, auth: str) -> str:
    return (f"  - name: box\n    type: imap\n    host: {HOST}\n"
            f"    port: {mailbox.dovecot.port('imap')}\n    security: none\n"
            f"    username: {mailbox.user}\n    timeout: 10s\n" + auth)


def test_a_google_service_account_polls_as_the_user_it_acts_for(tmp_path, oauth2_mailbox,
                                                                smtp_server):
    authority = oauth2_mailbox.authority
    key = tmp_path / "service-account.json"
    key.write_text(json.dumps(authority.service_account_key()))
    oauth2_mailbox.append(message("For the delegated user"))
    auth = ("    auth:\n      oauth2:\n        provider: google\n"
            f"        token_url: {authority.token_url}\n"
            f"        service_account_key: {{file: {key}}}\n"
            f"        subject: {oauth2_mailbox.user}\n")
    srv = smtp_server()
    relay = f"  - {{name: relay, host: 127.0.0.1, port: {srv.port}, security: none}}\n"
    cfg = _config(tmp_path, relay, _imap_box(oauth2_mailbox, auth))
    out = run(["inbox", "poll", "-c", str(cfg)])
    assert out.exit_code == 0 and "box: 1 fetched" in out.output, out.output
    (request,) = authority.token_requests(ok=True)
    assert request.grant_type == "urn:ietf:params:oauth:grant-type:jwt-bearer"


def test_auth_login_signs_a_user_in_by_the_device_flow(tmp_path, oauth2_mailbox, smtp_server):
    import threading

    authority = oauth2_mailbox.authority
    authority.add_client("mailsync-cli")
    oauth2_mailbox.append(message("After the sign-in"))
    auth = ("    auth:\n      oauth2:\n        provider: generic\n        grant: refresh_token\n"
            "        client_id: mailsync-cli\n"
            f"        token_url: {authority.token_url}\n"
            f"        device_url: {authority.device_url}\n        scope: mail\n")
    srv = smtp_server()
    relay = f"  - {{name: relay, host: 127.0.0.1, port: {srv.port}, security: none}}\n"
    cfg = _config(tmp_path, relay, _imap_box(oauth2_mailbox, auth))
    before = run(["inbox", "poll", "-c", str(cfg)])
    assert before.exit_code == 1 and "auth login box" in before.output, before.output

    codes: list[str] = []

    def approve() -> None:
        deadline = time.monotonic() + 10
        while not authority.pending_user_codes() and time.monotonic() < deadline:
            time.sleep(0.02)
        codes.extend(authority.pending_user_codes())
        authority.approve(oauth2_mailbox.user)

    approver = threading.Thread(target=approve)
    approver.start()
    login = run(["auth", "login", "box", "-c", str(cfg)])
    approver.join()
    assert login.exit_code == 0, login.output
    (code,) = codes
    assert "To sign in box, open http://127.0.0.1" in login.output
    assert f"enter the code {code}" in login.output
    assert (tmp_path / "state" / "tokens" / "box.json").stat().st_mode & 0o777 == 0o600
    after = run(["inbox", "poll", "-c", str(cfg)])
    assert after.exit_code == 0 and "box: 1 fetched" in after.output, after.output


def test_a_token_endpoint_that_fails_defers_and_the_next_run_sends(tmp_path, oauth2_server,
                                                                   smtp_server, monkeypatch):
    monkeypatch.setenv("OAUTH_SECRET", SECRET)
    authority = oauth2_server()
    authority.add_client("mailsync", SECRET, user="relay@example.com")
    srv = smtp_server(oauth2=authority)
    cfg = _config(tmp_path, _relay(srv.port, "relay@example.com", authority))
    cfg.write_text(cfg.read_text().replace(
        "  spool_dir: ./spool\n", "  spool_dir: ./spool\n  retry: {first: 1s, max: 1s, "
        "lifetime: 1h}\n"))
    drop(tmp_path / "spool", user="alice", to=["a@example.org"], subject="later", text="x")
    authority.fail_next("server_error", count=1)  # one run asks once: its cache backs off
    out = run_once(cfg)
    assert "0 sent, 1 deferred" in out.output, out.output
    (row,) = history(cfg)
    assert row["status"] == "deferred"
    assert "OAuth2: the token endpoint" in row["error"] and "500" in row["error"]
    assert srv.connections == 0                  # no session opened without a token
    time.sleep(1.1)
    assert "1 sent" in run_once(cfg).output
    assert len(srv.wait_for(1)) == 1


def test_a_token_the_server_refuses_is_reported_with_its_challenge(
        tmp_path, oauth2_mailbox, oauth2_server, smtp_server, monkeypatch):
    """The endpoint issues a token, but for another mailbox than the login names: SMTP
    and IMAP refuse it with a JSON challenge, which the error decodes."""
    monkeypatch.setenv("OAUTH_SECRET", SECRET)
    authority = oauth2_mailbox.authority
    authority.add_client("mailsync", SECRET, user="someone-else")
    srv = smtp_server(oauth2=authority)
    incoming = (f"  - name: box\n    type: imap\n    host: {HOST}\n"
                f"    port: {oauth2_mailbox.dovecot.port('imap')}\n    security: none\n"
                f"    username: {oauth2_mailbox.user}\n    timeout: 10s\n" + _auth(authority))
    cfg = _config(tmp_path, _relay(srv.port, "relay@example.com", authority), incoming)
    tested = run(["test", "-c", str(cfg)])
    assert tested.exit_code == 1
    relay, box = tested.output.splitlines()
    assert relay.startswith("relay: Connection Error: relay (127.0.0.1:")
    assert ("OAuth2 (OAUTHBEARER): the server refused the access token for "
            "'relay@example.com': 535") in relay
    assert "status invalid_token" in relay
    assert box.startswith("box (incoming): Connection Error: box (")
    assert f"the server refused the access token for '{oauth2_mailbox.user}'" in box
    assert "status invalid_token" in box
    assert SECRET not in tested.output
