"""The admin console as the daemon serves it: `mailsync run` with `daemon.admin_listen`,
beside /metrics and the senders; TLS; `mailsync admin hash-password`; the config's
checks of the `admin` section."""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import time
from pathlib import Path

import pytest
import trustme
from argon2 import PasswordHasher

from mailsync.cli import main
from mailsync.config.load import load_text
from mailsync.outbound.spool import drop, ensure_dirs
from tests.daemon_helpers import daemon_config, daemons_fixture, free_port, wait_until  # noqa: F401
from tests.outbound_helpers import history, server_yaml
from tests.web_helpers import PASSWORDS, Client, _hash, admin_yaml


def _daemon_config(tmp_path, smtp_port: int, admin_port: int, extra_admin: str = "") -> str:
    text = daemon_config(tmp_path, server_yaml("main", smtp_port))
    text = text.replace("  spool_dir: ./spool\n",
                        f"  spool_dir: ./spool\n  admin_listen: 127.0.0.1:{admin_port}\n")
    for name in PASSWORDS:
        (tmp_path / f"{name}.hash").write_text(_hash(name))
    return text + admin_yaml(admin_port, extra_admin)


def test_the_daemon_serves_the_console_and_a_retry_gets_the_message_sent(
        tmp_path, smtp_server, daemons):
    srv = smtp_server(recipient_replies={"later@example.org": "451 4.3.0 Try later"})
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(_daemon_config(tmp_path, srv.port, port))
    d = daemons(cfg)
    ensure_dirs(tmp_path / "spool")
    drop(tmp_path / "spool", user="alice", to=["later@example.org"], subject="Retry me",
         text="x\n")
    row = wait_until(lambda: next((r for r in history(cfg) if r["status"] == "deferred"),
                                  None), 20, "the message deferred")
    mid = row["id"]  # type: ignore[index]
    srv.recipient_replies.clear()  # the relay takes it now
    c = Client("127.0.0.1", port)
    assert c.login("olga").status == 303
    r = c.form_post(f"/messages/{mid}", f"/messages/{mid}/retry")
    assert r.status == 303
    wait_until(lambda: history(cfg)[0]["status"] == "sent", 10, "sent after the retry")
    assert list(srv.wait_for(1)[0].rcpt_tos) == ["later@example.org"]  # woken, not in 5 minutes
    assert "retry by olga (admin console)" in c.get(f"/messages/{mid}").text
    assert d.get("/healthz")[0] == 200
    assert d.stop() == 0


def test_a_slow_client_stalls_neither_the_console_nor_metrics(tmp_path, smtp_server, daemons):
    srv = smtp_server()
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(_daemon_config(tmp_path, srv.port, port))
    d = daemons(cfg)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\n")  # never finished
    try:
        started = time.monotonic()
        assert d.get("/metrics")[0] == 200
        assert Client("127.0.0.1", port).get("/login").status == 200
        assert time.monotonic() - started < 2.0
    finally:
        for s in (*idle, half):
            s.close()
    assert d.stop() == 0


def test_the_console_serves_tls_with_secure_host_cookies(tmp_path, smtp_server, daemons):
    srv = smtp_server()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "admin.pem"))
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(_daemon_config(tmp_path, srv.port, port,
                                  "  tls_cert_file: admin.pem\n  tls_key_file: admin.pem\n"))
    d = daemons(cfg)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    conn.request("GET", "/login")
    r = conn.getresponse()
    r.read()
    assert r.status == 200
    assert r.getheader("Strict-Transport-Security") == "max-age=31536000"
    (nonce,) = [v for k, v in r.getheaders() if k.lower() == "set-cookie"]
    assert "; Secure" in nonce and "HttpOnly" in nonce
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        plain.request("GET", "/login")
        plain.getresponse().read()
    assert d.get("/healthz")[0] == 200
    assert d.stop() == 0


def test_a_console_that_cannot_bind_refuses_the_start(tmp_path, smtp_server):
    srv = smtp_server()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "config.yaml"
        cfg.write_text(_daemon_config(tmp_path, srv.port, port))
        import subprocess
        import sys

        done = subprocess.run([sys.executable, "-m", "mailsync", "run", "-c", str(cfg)],
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "cannot start" in done.stderr and "Address already in use" in done.stderr


# --- mailsync admin hash-password ---------------------------------------------------------

def test_hash_password_reads_stdin_and_prints_an_argon2id_hash(runner):
    r = runner.invoke(main, ["admin", "hash-password"], input="a-long-enough-pass\n")
    assert r.exit_code == 0, r.output
    hashed = r.output.strip()
    assert hashed.startswith("$argon2id$")
    assert PasswordHasher().verify(hashed, "a-long-enough-pass")
    assert "a-long-enough-pass" not in r.output


def test_hash_password_writes_a_0640_file_and_refuses_short_or_argv_passwords(
        runner, tmp_path):
    out = tmp_path / "carol.argon2"
    r = runner.invoke(main, ["admin", "hash-password", "-o", str(out)],
                      input="another-long-pass\n")
    assert r.exit_code == 0, r.output
    assert out.stat().st_mode & 0o777 == 0o640
    assert PasswordHasher().verify(out.read_text().strip(), "another-long-pass")
    short = runner.invoke(main, ["admin", "hash-password"], input="short\n")
    assert short.exit_code == 1
    assert "the password is 5 characters long; at least 12 are needed" in short.output
    argv = runner.invoke(main, ["admin", "hash-password", "--password", "x" * 20])
    assert argv.exit_code == 2  # no such option: a password is never an argument


# --- the configuration's checks -----------------------------------------------------------

BASE = ("version: 1\ndaemon: {state_dir: ./s, spool_dir: ./p, admin_listen: %s}\n"
        "admin:\n  users:\n    - {name: olga, password_hash: {file: olga.hash}, "
        "role: operator}\n%s")


def _errors(text: str) -> list[str]:
    loaded = load_text(text, "c.yaml", Path("/nonexistent"))
    return [p.render() for p in loaded.problems if p.severity == "error"]


def test_a_loopback_console_is_valid():
    assert _errors(BASE % ("127.0.0.1:9878", "")) == []
    assert _errors(BASE % ("'[::1]:9878'", "")) == []
    assert _errors(BASE % ("localhost:9878", "")) == []


@pytest.mark.parametrize(("listen", "extra", "expected"), [
    ("0.0.0.0:9878", "", "admin_listen 0.0.0.0:9878 is not a loopback address: the console "
     "would be reachable from the network without TLS; set admin.tls_cert_file"),
    ("admin.example.com:443", "", "admin.example.com:443 is not a loopback address"),
    ("127.0.0.1:9877", "", "admin_listen 127.0.0.1:9877 is also metrics_listen"),
    ("127.0.0.1:9878", "  tls_cert_file: a.pem\n", "tls_cert_file needs tls_key_file"),
])
def test_console_problems_are_errors_that_say_why(listen, extra, expected):
    errors = _errors(BASE % (listen, extra))
    assert any(expected in e for e in errors), errors


def test_a_remote_console_needs_tls_or_an_explicit_opt_in():
    assert _errors(BASE % ("0.0.0.0:9878", "  allow_remote: true\n")) == []
    assert _errors(BASE % ("0.0.0.0:9878", "  tls_cert_file: a.pem\n  tls_key_file: a.key\n")
                   ) == []


def test_a_console_without_users_or_a_user_twice_is_an_error():
    no_users = ("version: 1\ndaemon: {state_dir: ./s, spool_dir: ./p, "
                "admin_listen: 127.0.0.1:9878}\n")
    assert any("admin.users declares no one: nobody could log in" in e
               for e in _errors(no_users))
    twice = BASE % ("127.0.0.1:9878", "    - {name: olga, password_hash: {env: H}}\n")
    assert any("admin user 'olga' is declared twice" in e for e in _errors(twice))
    bad_role = BASE % ("127.0.0.1:9878", "    - {name: x, password_hash: {env: H}, role: boss}\n")
    assert any("boss" in e and "operator" in e for e in _errors(bad_role))


def test_the_daemon_hands_its_servers_and_reloads_to_the_console(tmp_path, smtp_server, daemons):
    srv = smtp_server()
    port = free_port()
    for sub in ("new", "cur", "tmp"):
        (tmp_path / "maildir" / sub).mkdir(parents=True)
    cfg = tmp_path / "config.yaml"
    text = _daemon_config(tmp_path, srv.port, port).replace(
        "accounts:\n", "incoming_servers:\n  - name: drop\n    type: local\n"
        "    path: ./maildir\n    poll_interval: 1s\naccounts:\n", 1)
    cfg.write_text(text)
    d = daemons(cfg)
    ensure_dirs(tmp_path / "spool")
    drop(tmp_path / "spool", user="alice", to=["ok@example.org"], subject="Hi", text="x\n")
    wait_until(lambda: history(cfg) and history(cfg)[0]["status"] == "sent", 20, "sent")
    c = Client("127.0.0.1", port)
    assert c.login("olga").status == 303

    def servers() -> str:
        return c.get("/servers").text

    page = str(wait_until(lambda: 'id="in-drop"' in (p := servers()) and "chip-up" in
                          p.split('id="in-drop"')[1] and p, 10, "the poll shown"))
    assert re.search(r'<tr id="out-main">.*?chip-up">up</span>', page, re.S)
    assert re.search(r'<tr id="in-drop">.*?chip-up">up</span>.*?drop: 0 fetched', page, re.S)
    tested = c.form_post("/servers", "/servers/test", {"server": "main", "side": "outgoing"})
    assert "main: OK" in tested.text
    assert "No reload since the daemon started" in c.get("/config").text
    cfg.write_text(text.replace("poll_interval: 1s", "poll_interval: [1s]"))
    page = str(wait_until(lambda: "reload-result\">refused" in (p := c.get("/config").text)
                          and p, 15, "the refused reload shown"))
    assert "poll_interval" in page and "The file does not load" in page
    assert d.stop() == 0
