"""check_incoming (what `mailsync test` says for incoming servers) and the password canary."""

from __future__ import annotations

import logging
import socket
import traceback
from datetime import timedelta

import pytest

from mailsync import values
from mailsync.cli import main
from mailsync.config.secrets import Secret
from mailsync.errors import ConnectError
from mailsync.inbound.poller import check_incoming
from tests.dovecot import (  # noqa: F401  (fixtures)
    CANARY,
    HOST,
    dovecot_fixture,
    free_port,
    incoming_yaml,
    mailbox_fixture,
    message,
    plain_dovecot_fixture,
    rig_fixture,
)


def _server(rig, mailbox, tmp_path, kind="imap", **kwargs):
    r = rig(incoming_yaml(mailbox, "support", tmp_path / "pw", kind=kind, **kwargs))
    return r.server("support")


def _error(server) -> ConnectError:
    with pytest.raises(ConnectError) as info:
        check_incoming(server)
    return info.value


@pytest.mark.parametrize("kind", ["imap", "pop"])
def test_check_passes_with_a_good_login(rig, mailbox, tmp_path, kind):
    server = _server(rig, mailbox, tmp_path, kind=kind)
    # What was negotiated: no TLS on this test port, and the password login's command.
    assert check_incoming(server) == ("plain text, LOGIN" if kind == "imap"
                                      else "plain text, USER/PASS")
    assert mailbox.dovecot.logged(f"Login: user=<{mailbox.user}>"), "Dovecot logged no login"


def test_check_passes_for_a_local_maildir(rig, tmp_path):
    for sub in ("new", "cur", "tmp"):
        (tmp_path / "drop" / sub).mkdir(parents=True)
    r = rig("  - name: drop\n    type: local\n    path: ./drop\n")
    assert check_incoming(r.server("drop")) == ""


@pytest.mark.parametrize("kind", ["imap", "pop"])
def test_check_connection_refused(rig, mailbox, tmp_path, kind):
    server = values.replace(_server(rig, mailbox, tmp_path, kind=kind), port=free_port())
    error = _error(server)
    assert error.kind == "refused"
    assert str(error) == f"support ({HOST}:{server.port}): connection refused"


@pytest.mark.parametrize(("kind", "reply"), [
    ("imap", "[AUTHENTICATIONFAILED] Authentication failed."),
    ("pop", "-ERR [AUTH] Authentication failed."),
])
def test_check_authentication_failed(rig, mailbox, tmp_path, kind, reply):
    server = values.replace(_server(rig, mailbox, tmp_path, kind=kind),
                                 password=Secret("plain", "not-the-password"))
    error = _error(server)
    assert error.kind == "auth"
    assert str(error) == (f"support ({HOST}:{server.port}): authentication failed for user "
                          f"'{mailbox.user}': {reply}")


@pytest.mark.parametrize("kind", ["imap", "pop"])
def test_check_tls_certificate_not_trusted(rig, mailbox, tmp_path, monkeypatch, kind):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    server = _server(rig, mailbox, tmp_path, kind=kind, security="ssl")
    error = _error(server)
    assert error.kind == "tls"
    assert str(error).startswith(f"support ({HOST}:{server.port}): TLS certificate "
                                 "verification failed: ")
    # tls_verify: false accepts it (the config check warns about that elsewhere).
    note = check_incoming(values.replace(server, tls_verify=False))
    assert note.startswith("implicit TLS, TLSv1.") and \
        "certificate not checked (tls_verify: false)" in note


@pytest.mark.parametrize("kind", ["imap", "pop"])
def test_check_never_falls_back_to_plain_text_when_starttls_is_missing(rig, plain_dovecot,
                                                                       tmp_path, kind):
    plain = plain_dovecot
    mailbox = plain.add_user()
    server = _server(rig, mailbox, tmp_path, kind=kind, security="starttls")
    error = _error(server)
    assert error.kind == "starttls"
    assert "refusing to continue in plain text" in str(error)
    assert "Login: user=" not in plain.log()


def test_check_folder_missing(rig, mailbox, tmp_path):
    server = _server(rig, mailbox, tmp_path, folder="Nope")
    error = _error(server)
    assert error.kind == "folder"
    assert str(error) == (f"support ({HOST}:{server.port}): cannot open folder 'Nope': "
                          "Mailbox doesn't exist: Nope.")


def test_check_timeout_when_the_server_never_greets(rig, mailbox, tmp_path):
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen()
        server = values.replace(_server(rig, mailbox, tmp_path),
                                     port=silent.getsockname()[1],
                                     timeout=timedelta(seconds=0.3))
        error = _error(server)
    assert error.kind == "timeout"
    assert "greeting: no complete reply within 0.3s" in str(error)


def test_the_password_never_shows_in_logs_errors_or_output(rig, dovecot, tmp_path, caplog,
                                                           runner):
    canary = dovecot.canary()
    canary.append(message(1))
    r = rig(incoming_yaml(canary, "imapbox", tmp_path / "pw")
            + incoming_yaml(canary, "popbox", tmp_path / "pw", kind="pop"))
    caplog.set_level(logging.DEBUG)  # imapclient logs the whole conversation at DEBUG
    results = [r.poller(name).poll_once() for name in ("imapbox", "popbox")]
    assert all(res.ok and res.fetched == 1 for res in results), results
    cli = runner.invoke(main, ["inbox", "poll", "-c", str(r.path)], catch_exceptions=False)
    assert cli.exit_code == 0, cli.output
    mailsync_log = logging.getLogger("mailsync")  # logs.setup stopped its propagation
    mailsync_log.addHandler(caplog.handler)

    wrong = [values.replace(r.server(n), password=Secret("plain", CANARY + "x"))
             for n in ("imapbox", "popbox")]
    failures = []
    for server in wrong:
        with pytest.raises(ConnectError) as info:
            check_incoming(server)
        failures.append("".join(traceback.format_exception(info.value)) + repr(info.value))
        failures.append(r.poller(server.name, server=server).poll_once().error or "")

    mailsync_log.removeHandler(caplog.handler)
    assert "LOGIN" in caplog.text  # the conversation was logged, and redacted
    assert "poll failed: imapbox" in caplog.text
    for text in (caplog.text, cli.output, *failures):
        assert "Canary-5e1f" not in text
