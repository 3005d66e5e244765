"""TLS trust per server: a private CA (tls_ca_file, tls_ca_only), client certificates,
tls_min_version, helo_name, and what `mailsync test` says was negotiated.

Real servers only: aiosmtpd with trustme certificates, and Dovecot for IMAP and POP3. No
test trusts a CA through SSL_CERT_FILE: the point is that the config alone does it.
"""

from __future__ import annotations

import re
import socket
import ssl
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme

from mailsync.config.load import load_text
from mailsync.inbound.poller import check_incoming
from mailsync.netio import network_error
from mailsync.outbound.spool import drop
from tests.dovecot import (  # noqa: F401  (fixtures)
    dovecot_fixture,
    incoming_yaml,
    mailbox_fixture,
    rig_fixture,
)
from tests.outbound_helpers import history, run, run_once, server_yaml, write_config
from tests.smtpserver import smtp_server_fixture  # noqa: F401  (fixture "smtp_server")

PASSWORD = "tls-test-pw"
_UNTIL = re.compile(r"certificate valid until (\d{4}-\d{2}-\d{2})")


@pytest.fixture(autouse=True)
def _no_process_wide_trust(monkeypatch):
    """Trust comes from the config alone, never from the environment."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("RELAY_PW", PASSWORD)


def _relay(smtp_server, **options):
    return smtp_server(tls=options.pop("tls", "starttls"), auth={"relay": PASSWORD}, **options)


def _login(extra: str = "") -> str:
    return "    username: relay\n    password: {env: RELAY_PW}\n" + extra


def _test(cfg: Path, name: str = "main") -> tuple[int, str]:
    result = run(["test", name, "-c", str(cfg)])
    return result.exit_code, result.output.strip()


def _valid_until(text: str) -> datetime:
    found = _UNTIL.search(text)
    assert found, text
    return datetime.fromisoformat(found.group(1)).replace(tzinfo=UTC)


# --- a private CA -----------------------------------------------------------------------
def test_a_private_ca_in_tls_ca_file_is_trusted_with_tls_verify(tmp_path, smtp_server):
    relay = _relay(smtp_server)
    cfg = write_config(tmp_path, server_yaml(
        "main", relay.port, security="starttls",
        extra=_login(f"    tls_verify: true\n    tls_ca_file: {relay.ca_file}\n")))
    code, out = _test(cfg)
    assert code == 0, out
    assert re.fullmatch(r"main: OK \(STARTTLS, TLSv1\.3, certificate valid until "
                        r"\d{4}-\d{2}-\d{2}, AUTH PLAIN\)", out), out
    assert _valid_until(out) > datetime.now(UTC)
    # And mail goes out over it.
    drop(tmp_path / "spool", user="alice", to=["x@example.org"], subject="hi", text="text")
    run_once(cfg)
    assert [m["status"] for m in history(cfg)] == ["sent"]
    assert relay.messages[0].tls


def test_without_tls_ca_file_the_error_names_it_first_and_tls_verify_false_last(
        tmp_path, smtp_server):
    relay = _relay(smtp_server)
    cfg = write_config(tmp_path, server_yaml("main", relay.port, security="starttls",
                                             extra=_login()))
    code, out = _test(cfg)
    assert code == 1
    assert "TLS certificate verification failed" in out
    assert 0 <= out.index("tls_ca_file") < out.index("tls_verify: false"), out


def test_the_daemon_default_ca_file_serves_every_server_and_tls_ca_only_excludes_others(
        tmp_path, smtp_server):
    relay = _relay(smtp_server)
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    cfg = write_config(tmp_path, server_yaml("main", relay.port, security="starttls",
                                             extra=_login()))
    text = cfg.read_text().replace("daemon:\n", f"daemon:\n  tls_ca_file: {relay.ca_file}\n")
    cfg.write_text(text)
    assert _test(cfg)[0] == 0
    # The server's own file replaces the daemon's; with tls_ca_only the system's CAs (and
    # the daemon's file) are out, so a bundle without the relay's CA fails.
    own = text.replace("    timeout: 5s\n",
                       f"    timeout: 5s\n    tls_ca_file: {other}\n    tls_ca_only: true\n")
    cfg.write_text(own)
    code, out = _test(cfg)
    assert code == 1 and "verification failed" in out


@pytest.mark.parametrize("kind", ["imap", "pop"])
def test_imap_and_pop3_trust_a_private_ca_through_tls_ca_file(rig, mailbox, tmp_path, kind):
    ca = mailbox.dovecot.ca_file
    trusted = rig(incoming_yaml(mailbox, "support", tmp_path / "pw", kind=kind,
                                security="ssl",
                                extra=f"    tls_verify: true\n    tls_ca_file: {ca}\n"))
    note = check_incoming(trusted.server("support"))
    assert note.startswith("implicit TLS, TLSv1.3, certificate valid until "), note
    assert note.endswith(", LOGIN" if kind == "imap" else ", USER/PASS")
    untrusted = rig(incoming_yaml(mailbox, "support", tmp_path / "pw2", kind=kind,
                                  security="ssl"))
    with pytest.raises(Exception, match="tls_ca_file") as info:
        check_incoming(untrusted.server("support"))
    assert "verification failed" in str(info.value)


# --- client certificates ----------------------------------------------------------------
def test_a_relay_that_authenticates_clients_by_certificate(tmp_path, smtp_server, monkeypatch):
    clients = trustme.CA()
    client = clients.issue_cert("mailsync-client.example.com")

    def require_client_cert(context: ssl.SSLContext) -> None:
        context.verify_mode = ssl.CERT_REQUIRED
        clients.configure_trust(context)

    relay = smtp_server(tls="ssl", tls_setup=require_client_cert)  # no AUTH at all
    cert = tmp_path / "client.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    monkeypatch.setenv("CLIENT_KEY", client.private_key_pem.bytes().decode())
    base = server_yaml("main", relay.port, security="ssl",
                       extra=f"    tls_ca_file: {relay.ca_file}\n")
    cfg = write_config(tmp_path, base)
    code, out = _test(cfg)
    assert code == 1, out  # refused without a certificate
    cfg = write_config(tmp_path, base + f"    tls_client_cert: {{file: {cert}}}\n"
                                        "    tls_client_key: {env: CLIENT_KEY}\n")
    code, out = _test(cfg)
    assert code == 0, out
    assert out.startswith("main: OK (implicit TLS, TLSv1.3, certificate valid until ")
    assert "BEGIN" not in out  # no PEM in any output


def test_a_client_key_that_does_not_fit_is_a_clear_error(tmp_path, smtp_server, monkeypatch):
    relay = smtp_server(tls="ssl")
    cert = tmp_path / "client.pem"
    cert.write_bytes(trustme.CA().issue_cert("a.example.com").cert_chain_pems[0].bytes())
    monkeypatch.setenv("CLIENT_KEY", trustme.CA().issue_cert("b.example.com")
                       .private_key_pem.bytes().decode())
    cfg = write_config(tmp_path, server_yaml(
        "main", relay.port, security="ssl",
        extra=f"    tls_ca_file: {relay.ca_file}\n    tls_client_cert: {{file: {cert}}}\n"
              "    tls_client_key: {env: CLIENT_KEY}\n"))
    code, out = _test(cfg)
    assert code == 1
    assert "tls_client_cert/tls_client_key" in out and "PRIVATE KEY" not in out


# --- TLS versions -----------------------------------------------------------------------
def _max_version(version: ssl.TLSVersion):
    def setup(context: ssl.SSLContext) -> None:
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point here
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            context.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS 1.1 otherwise
    return setup


def test_a_tls_1_1_only_server_is_refused_with_the_reason(tmp_path, smtp_server):
    # STARTTLS: aiosmtpd's own readiness probe would fail an implicit-TLS 1.1 handshake.
    relay = smtp_server(tls="starttls", tls_setup=_max_version(ssl.TLSVersion.TLSv1_1))
    cfg = write_config(tmp_path, server_yaml("main", relay.port, security="starttls",
                                             extra=f"    tls_ca_file: {relay.ca_file}\n"))
    code, out = _test(cfg)
    assert code == 1
    assert "only TLS versions older than tls_min_version" in out, out


def _ssl_error(cls: type[ssl.SSLError], errno: int, text: str, reason: str | None
               ) -> ssl.SSLError:
    """An SSLError as the _ssl module raises it (it sets library and reason itself)."""
    exc = cls(errno, text)
    exc.library = "SSL" if reason else None  # type: ignore[misc]
    exc.reason = reason  # type: ignore[misc]
    return exc


@pytest.mark.parametrize("exc", [
    # Python 3.11.7 (this suite's dev venv): an EOF in the handshake as OpenSSL 3 says it.
    _ssl_error(ssl.SSLEOFError, 8, "[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in "
               "violation of protocol (_ssl.c:1006)", "UNEXPECTED_EOF_WHILE_READING"),
    # Debian 12's Python 3.11.2 raises the same EOF as SSLZeroReturnError, with no reason.
    _ssl_error(ssl.SSLZeroReturnError, 6,
               "TLS/SSL connection has been closed (EOF) (_ssl.c:992)", None),
], ids=["SSLEOFError", "SSLZeroReturnError"])
def test_a_server_closing_during_the_handshake_is_worded_alike_on_every_python(exc):
    # The TLS-version tests below meet one of the two for real, on the Python they run on.
    where = "main (127.0.0.1:25)"
    error = network_error(exc, where, 30, connecting=False, transferring=False,
                          handshaking=True)
    assert error is not None and error.kind == "tls"
    assert str(error) == ("main (127.0.0.1:25): TLS error: the server closed the connection "
                          "during the TLS handshake: it may offer only TLS versions older "
                          "than tls_min_version (default TLSv1.2), or want a client "
                          "certificate (tls_client_cert)")
    # Once TLS is up (logging in, sending), the same EOF is a hang-up, not a TLS matter.
    for transferring in (False, True):
        lost = network_error(exc, where, 30, connecting=False, transferring=transferring,
                             handshaking=False)
        assert lost is not None and lost.kind == "closed"
        assert str(lost) == "main (127.0.0.1:25): the server closed the connection"


def test_tls_min_version_tls_1_3_refuses_a_tls_1_2_server(tmp_path, smtp_server):
    relay = smtp_server(tls="starttls", tls_setup=_max_version(ssl.TLSVersion.TLSv1_2))
    base = server_yaml("main", relay.port, security="starttls",
                       extra=f"    tls_ca_file: {relay.ca_file}\n")
    cfg = write_config(tmp_path, base)
    code, out = _test(cfg)
    assert code == 0 and "STARTTLS, TLSv1.2, " in out, out
    cfg = write_config(tmp_path, base + "    tls_min_version: TLSv1.3\n")
    code, out = _test(cfg)
    assert code == 1 and "older than tls_min_version" in out, out


# --- EHLO name, wrong security ----------------------------------------------------------
def test_helo_name_from_the_server_or_the_daemon(tmp_path, smtp_server):
    relay = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", relay.port,
                                             extra="    helo_name: mx1.example.com\n"))
    assert _test(cfg)[0] == 0
    cfg.write_text(cfg.read_text().replace("    helo_name: mx1.example.com\n", "")
                   .replace("daemon:\n", "daemon:\n  helo_name: mailsync.example.net\n"))
    assert _test(cfg)[0] == 0
    assert relay.helo_names == ["mx1.example.com", "mailsync.example.net"]


def test_security_ssl_on_a_plain_text_port_says_so(tmp_path, smtp_server):
    relay = smtp_server()  # plain SMTP: it greets in clear text
    cfg = write_config(tmp_path, server_yaml("main", relay.port, security="ssl"))
    code, out = _test(cfg)
    assert code == 1
    assert "answered in plain text, not TLS" in out and "WRONG_VERSION_NUMBER" not in out


# --- validate ---------------------------------------------------------------------------
def _findings(tmp_path: Path, server_extra: str, daemon_extra: str = "") -> list[str]:
    text = (f"version: 1\ndaemon:\n  state_dir: ./s\n  spool_dir: ./p\n{daemon_extra}"
            "users: [a]\noutgoing_servers:\n"
            f"  - name: m\n    host: smtp.example.com\n    security: starttls\n{server_extra}"
            "accounts:\n  - {name: x, email: x@example.com, server: m, granted_to: [a]}\n")
    loaded = load_text(text, str(tmp_path / "c.yaml"), tmp_path)
    return [f"{p.severity}: {p.message}" for p in loaded.problems
            if "unix_users" not in p.message]  # (a warning of every file without them)


def test_validate_checks_the_tls_keys(tmp_path):
    pem = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(pem))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    assert _findings(tmp_path, f"    tls_ca_file: {pem}\n") == []
    # Absent here (CI), like a secret file: not reported; the connection says so.
    assert _findings(tmp_path, "    tls_ca_file: ./nowhere.pem\n") == []
    junk = _findings(tmp_path, "    tls_ca_file: ./junk.pem\n")
    assert junk and junk[0].startswith("error: ") and "holds no PEM certificate" in junk[0]
    assert any("needs tls_client_cert" in f
               for f in _findings(tmp_path, "    tls_client_key: {env: K}\n"))
    assert any("tls_ca_only: true needs tls_ca_file" in f
               for f in _findings(tmp_path, "    tls_ca_only: true\n"))
    none = load_text(
        "version: 1\ndaemon: {state_dir: ./s, spool_dir: ./p}\nusers: [a]\n"
        "outgoing_servers:\n  - {name: m, host: h.example.com, security: none, "
        f"tls_ca_file: {pem}}}\n", str(tmp_path / "c.yaml"), tmp_path)
    assert any("applies to TLS, and security is none" in p.message for p in none.problems)
    for bad in ("    tls_min_version: TLSv1.1\n", "    helo_name: localhost\n"):
        problems = _findings(tmp_path, bad)
        assert problems and problems[0].startswith("error: "), (bad, problems)


def test_the_fqdn_default_falls_back_to_an_address_literal(monkeypatch):
    from mailsync import netio

    netio._machine_fqdn.cache_clear()
    monkeypatch.setattr(socket, "getfqdn", lambda: "vm")
    assert netio.helo_name(None) is None  # smtplib then sends [127.0.0.1]
    netio._machine_fqdn.cache_clear()
    monkeypatch.setattr(socket, "getfqdn", lambda: "vm.example.com")
    assert netio.helo_name(None) == "vm.example.com"
    assert netio.helo_name("mx.example.org") == "mx.example.org"
    netio._machine_fqdn.cache_clear()
