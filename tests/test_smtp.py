"""SMTP sessions and connection pools against a real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import traceback
from datetime import timedelta

import pytest

from mailsync.config.model import OutgoingServer
from mailsync.errors import ConnectError
from mailsync.outbound.pool import ConnectionPool
from mailsync.outbound.smtp import SmtpSession, open_session
from mailsync.values import replace
from tests.smtpserver import SmtpServer

CANARY = "canary-S3cret-pw"
MESSAGE = b"From: app@example.com\nTo: a@example.com\nSubject: hi\n\nline one\n.leading dot\n"


def config(server: SmtpServer, **overrides: object) -> OutgoingServer:
    """The OutgoingServer pointing at a test server (security follows the server's tls)."""
    base = OutgoingServer(
        name="test-smtp",
        host=server.host,
        port=server.port,
        security=server.tls,
        timeout=timedelta(seconds=5),
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def connect(server: SmtpServer, password: str | None = None, **overrides: object) -> SmtpSession:
    context = server.client_context() if server.tls != "none" else None
    return open_session(config(server, **overrides), password, context=context)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_no_secret(error: BaseException) -> None:
    text = "".join(traceback.format_exception(error))
    for shown in (str(error), repr(error), repr(error.args), text):
        assert CANARY not in shown
    assert error.__cause__ is None and error.__context__ is None


# -- security modes ---------------------------------------------------------------------


def test_plaintext_send_normalises_line_ends(smtp_server):
    server = smtp_server()
    with connect(server) as session:
        delivery = session.send("app@example.com", ["a@example.com"], MESSAGE)
    assert delivery.server == "test-smtp"
    assert delivery.sent == ("a@example.com",)
    [received] = server.wait_for(1)
    assert (received.mail_from, received.rcpt_tos, received.tls) == (
        "app@example.com", ("a@example.com",), False
    )
    assert received.data == MESSAGE.replace(b"\n", b"\r\n")  # dot-stuffing undone
    assert "QUIT" in server.commands


def test_starttls_with_verified_certificate(smtp_server):
    server = smtp_server(tls="starttls")
    with connect(server) as session:
        delivery = session.send("app@example.com", ["a@example.com"], MESSAGE)
    assert delivery.sent == ("a@example.com",)
    assert server.wait_for(1)[0].tls is True


def test_default_context_trusts_ssl_cert_file(smtp_server, monkeypatch):
    # How a subprocess (mailsync run) trusts the test CA: SSL_CERT_FILE=server.ca_file.
    server = smtp_server(tls="starttls")
    monkeypatch.setenv("SSL_CERT_FILE", str(server.ca_file))
    with open_session(config(server), None) as session:
        session.send("app@example.com", ["a@example.com"], MESSAGE)
    assert server.wait_for(1)[0].tls is True


def test_implicit_tls(smtp_server):
    server = smtp_server(tls="ssl")
    with connect(server) as session:
        delivery = session.send("app@example.com", ["a@example.com"], MESSAGE)
    assert delivery.sent == ("a@example.com",)
    assert server.wait_for(1)[0].tls is True


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
def test_untrusted_certificate_is_refused(smtp_server, tls):
    server = smtp_server(tls=tls)
    with pytest.raises(ConnectError) as caught:
        open_session(config(server), None)  # default trust store: the test CA is unknown
    assert caught.value.kind == "tls"
    assert "test-smtp (127.0.0.1:" in str(caught.value)
    assert "certificate" in str(caught.value)
    assert server.messages == [] and "MAIL" not in server.commands


@pytest.mark.parametrize("tls", ["starttls", "ssl"])
def test_tls_verify_false_accepts_untrusted_certificate(smtp_server, tls):
    server = smtp_server(tls=tls)
    with open_session(config(server, tls_verify=False), None) as session:
        delivery = session.send("app@example.com", ["a@example.com"], MESSAGE)
    assert delivery.sent == ("a@example.com",)
    assert server.wait_for(1)[0].tls is True


def test_starttls_not_offered_never_falls_back_to_plain_text(smtp_server):
    server = smtp_server(tls="starttls", offer_starttls=False, auth={"relay": CANARY})
    with pytest.raises(ConnectError) as caught:
        connect(server, CANARY, username="relay")
    assert caught.value.kind == "starttls"
    assert "does not offer STARTTLS" in str(caught.value)
    assert server.messages == []
    assert server.commands == [] and server.logins == [] and server.failed_logins == []
    assert_no_secret(caught.value)


# -- authentication ---------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["none", "starttls", "ssl"])
def test_auth_success(smtp_server, tls):
    server = smtp_server(tls=tls, auth={"relay": CANARY})
    with connect(server, CANARY, username="relay") as session:
        session.send("app@example.com", ["a@example.com"], MESSAGE)
        assert CANARY not in repr(session)
        assert CANARY not in repr(vars(session._smtp))  # smtplib would keep it there
    assert server.logins == ["relay"]
    assert server.wait_for(1)[0].auth_user == "relay"


@pytest.mark.parametrize("provider", [None, "gmail"])
def test_auth_failure(smtp_server, provider):
    server = smtp_server(tls="starttls", auth={"relay": "the-right-one"})
    with pytest.raises(ConnectError) as caught:
        connect(server, CANARY, username="relay", provider=provider)
    error = caught.value
    assert (error.kind, error.code) == ("auth", 535)
    assert "test-smtp (127.0.0.1:" in str(error) and "'relay'" in str(error)
    assert ("App Password" in str(error)) == (provider == "gmail")
    assert set(server.failed_logins) == {"relay"} and server.messages == []  # PLAIN, LOGIN
    assert_no_secret(error)


def test_canary_password_never_leaks(smtp_server):
    server = smtp_server(tls="starttls", auth={"relay": "the-right-one"})
    errors = []
    for password in (CANARY, CANARY + "-é"):  # the second one smtplib cannot even encode
        with pytest.raises(ConnectError) as caught:
            connect(server, password, username="relay", provider="gmail")
        errors.append(caught.value)
    assert [e.kind for e in errors] == ["auth", "auth"]
    for error in errors:
        assert_no_secret(error)


def test_unauthenticated_mail_is_refused_by_the_test_server(smtp_server):
    server = smtp_server(auth={"relay": "pw"})
    with connect(server) as session:
        delivery = session.send("app@example.com", ["a@example.com"], MESSAGE)
    assert delivery.failed == ("a@example.com",)
    assert delivery.recipients[0].code == 530


# -- connection errors ------------------------------------------------------------------


def test_refused_port():
    server = OutgoingServer(name="gone", host="127.0.0.1", port=free_port(), security="none")
    with pytest.raises(ConnectError) as caught:
        open_session(server, CANARY)
    assert caught.value.kind == "refused"
    assert str(caught.value) == f"gone (127.0.0.1:{server.port}): connection refused"


def test_no_greeting_times_out():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # accepts into the backlog, never answers
        port = listener.getsockname()[1]
        server = OutgoingServer(
            name="mute", host="127.0.0.1", port=port, security="none",
            timeout=timedelta(seconds=0.3),
        )
        with pytest.raises(ConnectError) as caught:
            open_session(server, None)
    assert caught.value.kind == "timeout"
    assert "greeting: no complete reply within 0.3s" in str(caught.value)


def test_unknown_host(monkeypatch):
    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)  # no real DNS traffic in tests
    server = OutgoingServer(name="typo", host="smtp.example.invalid", port=25, security="none")
    with pytest.raises(ConnectError) as caught:
        open_session(server, None)
    assert caught.value.kind == "dns"
    assert "typo (smtp.example.invalid:25): host name not found" in str(caught.value)


# -- transactions -----------------------------------------------------------------------


def test_each_recipient_keeps_its_own_reply(smtp_server):
    server = smtp_server(recipient_replies={
        "busy@example.com": "450 4.2.0 Mailbox busy",
        "nobody@example.com": "550 5.1.1 No such user",
    })
    rcpts = ["ok@example.com", "busy@example.com", "nobody@example.com"]
    with connect(server) as session:
        delivery = session.send("app@example.com", rcpts, MESSAGE)
        outcome = [(r.address, r.status, r.code, r.reply) for r in delivery.recipients]
        assert outcome == [
            ("ok@example.com", "sent", 250, "2.0.0 OK queued"),
            ("busy@example.com", "deferred", 450, "4.2.0 Mailbox busy"),
            ("nobody@example.com", "failed", 550, "5.1.1 No such user"),
        ]
        assert server.wait_for(1)[0].rcpt_tos == ("ok@example.com",)
        assert "RSET" not in server.commands  # a successful DATA ends the transaction
        session.send("app@example.com", ["ok@example.com"], MESSAGE)
    assert len(server.wait_for(2)) == 2 and server.connections == 1


def test_all_recipients_refused_sends_no_data(smtp_server):
    server = smtp_server(recipient_replies={
        "busy@example.com": "450 4.2.0 Mailbox busy",
        "nobody@example.com": "550 5.1.1 No such user",
    })
    with connect(server) as session:
        delivery = session.send(
            "app@example.com", ["busy@example.com", "nobody@example.com"], MESSAGE
        )
        assert delivery.deferred == ("busy@example.com",)
        assert delivery.failed == ("nobody@example.com",)
        assert "DATA" not in server.commands and server.commands[-1] == "RSET"
        assert not session.broken
        again = session.send("app@example.com", ["ok@example.com"], MESSAGE)
    assert again.sent == ("ok@example.com",)
    assert server.wait_for(1)[0].rcpt_tos == ("ok@example.com",)
    assert server.connections == 1


def test_421_at_rcpt_defers_the_rest_and_breaks_the_session(smtp_server):
    server = smtp_server(recipient_replies={"b@example.com": "421 4.3.2 Shutting down"})
    session = connect(server)
    rcpts = ["a@example.com", "b@example.com", "c@example.com"]
    delivery = session.send("app@example.com", rcpts, MESSAGE)
    assert delivery.deferred == tuple(rcpts)
    assert {r.code for r in delivery.recipients} == {421}
    assert session.broken and "DATA" not in server.commands
    assert server.commands.count("RCPT") == 2


def test_non_ascii_address_uses_smtputf8(smtp_server):
    server = smtp_server()
    with connect(server) as session:
        body = "Subject: é\n\nü\n".encode()
        delivery = session.send("app@example.com", ["jörg@example.com"], body)
    assert delivery.sent == ("jörg@example.com",)
    [received] = server.wait_for(1)
    assert received.rcpt_tos == ("jörg@example.com",)
    assert {"SMTPUTF8", "BODY=8BITMIME"} <= set(received.mail_options)


@pytest.mark.parametrize(("reply", "status"), [
    ("451 4.3.0 Try later", "deferred"), ("554 5.7.1 Rejected", "failed"),
])
def test_mail_from_refusal_applies_to_every_recipient(smtp_server, reply, status):
    server = smtp_server(mail_reply=reply)
    with connect(server) as session:
        delivery = session.send("app@example.com", ["a@example.com", "b@example.com"], MESSAGE)
        assert not session.broken
    code, text = reply.split(" ", 1)
    assert {(r.status, r.code, r.reply) for r in delivery.recipients} == {(status, int(code), text)}
    assert "RCPT" not in server.commands and "RSET" in server.commands


@pytest.mark.parametrize(("reply", "status"), [
    ("451 4.3.0 Try later", "deferred"), ("554 5.6.0 Content refused", "failed"),
])
def test_data_reply_applies_to_accepted_recipients(smtp_server, reply, status):
    server = smtp_server(
        data_reply=reply, recipient_replies={"nobody@example.com": "550 5.1.1 No such user"}
    )
    with connect(server) as session:
        delivery = session.send("app@example.com", ["a@example.com", "nobody@example.com"], MESSAGE)
        assert not session.broken
    first, second = delivery.recipients
    assert (first.status, first.code, first.reply) == (status, int(reply[:3]), reply[4:])
    assert (second.status, second.code) == ("failed", 550)
    assert server.commands[-2:] == ["RSET", "QUIT"]


@pytest.mark.parametrize("tls", ["none", "starttls"])
def test_drop_in_the_middle_of_data_breaks_the_session(smtp_server, tls):
    server = smtp_server(tls=tls, drop_on_data=True)
    session = connect(server)
    with pytest.raises(ConnectError) as caught:
        session.send("app@example.com", ["a@example.com"], MESSAGE * 2000)
    assert caught.value.kind == "closed"
    assert "the server closed the connection" in str(caught.value)
    assert session.broken and server.messages == []
    with pytest.raises(ConnectError):
        session.send("app@example.com", ["a@example.com"], MESSAGE)
    session.close()  # harmless on a broken session


def test_noop_detects_a_dropped_connection(smtp_server):
    server = smtp_server()
    session = connect(server)
    assert session.noop() is True and not session.broken
    server.drop_connections()
    assert session.noop() is False
    assert session.broken
    session.close()


# -- the connection pool ----------------------------------------------------------------


def make_pool(server: SmtpServer, **options: object) -> ConnectionPool:
    cfg = config(server)
    return ConnectionPool(cfg, lambda: connect(server), **options)  # type: ignore[arg-type]


def test_pool_reuses_at_most_max_connections_across_threads(smtp_server):
    server = smtp_server(tls="starttls")
    pool = make_pool(server, max_connections=2)
    errors: list[BaseException] = []

    def worker(first: int) -> None:
        try:
            for n in range(first, 50, 4):
                with pool.session(timeout=10) as session:
                    delivery = session.send("app@example.com", [f"r{n}@example.com"], MESSAGE)
                    assert delivery.sent == (f"r{n}@example.com",)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pool.close()
    assert errors == []
    assert len(server.wait_for(50)) == 50
    assert sorted(server.recipients()) == sorted(f"r{n}@example.com" for n in range(50))
    assert server.connections <= 2 and pool.opened <= 2
    assert pool.open_count == 0


def test_pool_replaces_a_broken_session(smtp_server):
    server = smtp_server(drop_on_data=True)
    pool = make_pool(server, max_connections=1)
    with pytest.raises(ConnectError), pool.session() as session:
        session.send("app@example.com", ["a@example.com"], MESSAGE)
    assert pool.open_count == 0
    server.drop_on_data = False
    with pool.session() as session:
        session.send("app@example.com", ["a@example.com"], MESSAGE)
    assert (pool.opened, server.connections, len(server.messages)) == (2, 2, 1)
    pool.close()


def test_pool_health_checks_long_idle_sessions(smtp_server):
    server = smtp_server()
    now = [0.0]
    pool = make_pool(server, health_check_after=10.0, clock=lambda: now[0])
    first = pool.acquire()
    pool.release(first)
    assert pool.acquire() is first and "NOOP" not in server.commands  # fresh: no check
    pool.release(first)
    now[0] = 30.0
    port = server.port
    server.stop()  # the server restarts while the session sits idle
    server.start()
    assert server.port == port
    second = pool.acquire()
    assert second is not first and first.broken
    assert second.noop() and pool.opened == 2 and pool.open_count == 1
    assert server.connections == 2
    pool.release(second)
    pool.close()


def test_close_idle_closes_only_sessions_idle_too_long(smtp_server):
    server = smtp_server()
    now = [0.0]
    pool = make_pool(server, idle_timeout=60.0, clock=lambda: now[0])
    old, young = pool.acquire(), pool.acquire()
    pool.release(old)
    now[0] = 50.0
    pool.release(young)
    assert pool.close_idle(now=100.0) == 1
    assert old.broken and not young.broken and pool.open_count == 1
    assert pool.close_idle(now=200.0) == 1 and pool.open_count == 0
    assert server.commands.count("QUIT") == 2


def test_pool_connect_error_propagates_and_frees_the_slot(smtp_server):
    server = smtp_server()
    calls = []

    def failing() -> SmtpSession:
        calls.append(1)
        raise ConnectError("test-smtp: connection refused", "refused")

    pool = ConnectionPool(config(server), failing, max_connections=1)
    with pytest.raises(ConnectError) as caught:
        pool.acquire(timeout=1)
    assert caught.value.kind == "refused"
    # No session alive: the server is down, and the next acquire fails without connecting.
    with pytest.raises(ConnectError) as caught:
        pool.acquire(timeout=1)
    assert caught.value.kind == "down" and pool.down
    assert len(calls) == 1
    # A leaked slot would keep the probe from connecting.
    assert pool.probe() is False and len(calls) == 2
    assert pool.open_count == 0 and pool.opened == 0


def test_pool_waits_then_times_out_and_closes_lent_sessions_on_release(smtp_server):
    server = smtp_server()
    pool = make_pool(server, max_connections=1)
    session = pool.acquire()
    with pytest.raises(ConnectError) as caught:
        pool.acquire(timeout=0.1)
    assert caught.value.kind == "timeout"
    pool.close()
    assert not session.broken  # still in use: closed only when given back
    pool.release(session)
    assert session.broken and pool.open_count == 0
    with pytest.raises(ConnectError):
        pool.acquire()


def test_line_endings_and_dot_stuffing_fast_paths_match_the_regular_expressions():
    """The checks that skip the regex copies (a composed message is CRLF already and
    rarely has a line starting with a dot) give what the expressions give, for every
    string of up to 7 of the characters that matter."""
    import itertools

    from mailsync.outbound.smtpwire import _DOT, _EOL, crlf, stuffed

    for size in range(8):
        for chars in itertools.product((b"a", b"\r", b"\n", b"."), repeat=size):
            data = b"".join(chars)
            assert crlf(data) == _EOL.sub(b"\r\n", data), data
            assert stuffed(data) == _DOT.sub(b"..", data), data


def test_a_message_with_bare_line_ends_and_leading_dots_arrives_stuffed_and_crlf(smtp_server):
    server = smtp_server()
    data = b"Subject: dots\n\n.one\r..two\r\nthree\n.\n"
    with open_session(OutgoingServer(name="s", host="127.0.0.1", port=server.port,
                                     security="none"), None) as session:
        delivery = session.send("a@example.com", ["b@example.org"], data)
    assert [r.status for r in delivery.recipients] == ["sent"]
    (received,) = server.wait_for(1)
    assert received.data.replace(b"\r\n", b"\n").endswith(b".one\n..two\nthree\n.\n")
