"""SMTP commands are bounded by deadlines, not by per-read timeouts.

A server that answers one byte every 0.2 s never trips a 1 s socket timeout, yet must
not hold a message (and a pool slot) for the seconds its answer takes: each command's
reply must be complete within ``timeout``, and the message content within ``timeout``
plus its size at 64 KiB/s (so a big message to a slow-reading server still goes).
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from mailsync import values
from mailsync.config.model import OutgoingServer
from mailsync.errors import ConnectError
from mailsync.outbound.smtp import open_session
from mailsync.outbound.spool import drop
from tests import slowpeers
from tests.outbound_helpers import history, run_once, server_yaml, write_config

MESSAGE = b"From: app@example.com\r\nTo: a@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def _server(port: int, timeout: float = 1.0) -> OutgoingServer:
    return OutgoingServer(name="slow", host=slowpeers.HOST, port=port, security="none",
                          timeout=timedelta(seconds=timeout))


def _send(port: int) -> None:
    with open_session(_server(port), None) as session:
        session.send("app@example.com", ["a@example.org"], MESSAGE)


@pytest.mark.parametrize(("step", "pipelining", "command"), [
    ("greeting", False, "greeting"),
    ("ehlo", False, "EHLO"),
    ("mail", False, "MAIL"),
    ("rcpt", False, "RCPT"),
    ("rcpt", True, "RCPT"),
    ("data", False, "DATA"),
    ("end", True, "message content"),
])
def test_a_dripped_reply_times_out_at_the_commands_deadline(step, pipelining, command):
    with slowpeers.serve(slowpeers.smtp(step, pipelining=pipelining)) as port:
        started = time.monotonic()
        with pytest.raises(ConnectError) as caught:
            _send(port)
        took = time.monotonic() - started
    assert caught.value.kind == "timeout"
    assert str(caught.value) == (f"slow (127.0.0.1:{port}): {command}: no complete reply "
                                 "within 1s")
    assert 0.9 < took < 2.5, f"the attempt took {took:.1f}s"


def test_a_dripped_login_answer_times_out_as_auth_and_shows_no_credentials():
    password = "canary-S3cret-pw"
    with slowpeers.serve(slowpeers.smtp("auth")) as port:
        server = values.replace(_server(port), username="relay@example.com")
        with pytest.raises(ConnectError) as caught:
            open_session(server, password)
    assert str(caught.value) == f"slow (127.0.0.1:{port}): AUTH: no complete reply within 1s"
    assert password not in repr(caught.value.args)


def test_a_big_message_to_a_slow_reading_server_goes_within_its_scaled_deadline(
        smtp_server):
    server = smtp_server()
    body = b"x" * 998 + b"\r\n"
    data = MESSAGE + body * 600  # 600 KB: ~3 s through the proxy, 1 + ~9 s allowed
    with slowpeers.throttle(server.port, rate=200_000) as port:
        started = time.monotonic()
        with open_session(_server(port), None) as session:
            delivery = session.send("app@example.com", ["a@example.org"], data)
        took = time.monotonic() - started
    assert [r.status for r in delivery.recipients] == ["sent"], delivery
    (received,) = server.wait_for(1)
    assert len(received.data) >= len(data)
    assert took > 2.0  # it was slow: longer than the 1 s timeout, well within its deadline


def test_a_dripping_server_defers_its_mail_and_frees_its_slot_while_other_mail_flows(
        tmp_path: Path, smtp_server):
    healthy = smtp_server()
    with slowpeers.serve(slowpeers.smtp("rcpt")) as port:
        servers = (server_yaml("main", healthy.port)
                   + server_yaml("slow", port, max_connections=1).replace("timeout: 5s",
                                                                          "timeout: 1s"))
        accounts = ("  - name: sales\n    email: sales@example.com\n    server: slow\n"
                    "    granted_to: [alice]\n"
                    "  - name: support\n    email: support@example.com\n    server: main\n"
                    "    granted_to: [alice]\n")
        cfg = write_config(tmp_path, servers, accounts=accounts)
        for i in range(2):
            drop(tmp_path / "spool", user="alice", account="sales", to=["a@example.org"],
                 subject=f"slow {i}", text="x")
        for i in range(5):
            drop(tmp_path / "spool", user="alice", account="support", to=["b@example.org"],
                 subject=f"main {i}", text="x")
        started = time.monotonic()
        out = run_once(cfg)
        took = time.monotonic() - started
    assert "5 sent" in out.output and "2 deferred" in out.output, out.output
    rows = history(cfg)
    slow = [r for r in rows if r["account"] == "sales"]
    assert {r["status"] for r in slow} == {"deferred"}
    assert all("RCPT: no complete reply within 1s" in r["error"] for r in slow), slow
    assert {r["status"] for r in rows if r["account"] == "support"} == {"sent"}
    assert len(healthy.wait_for(5)) == 5
    # One slot on the slow server: the second message is tried once the first one's
    # attempt gave up (one deadline each), not after a whole dripped reply (~6 s each).
    assert took < 4.5, f"run --once took {took:.1f}s"


def _silent_at(step: str) -> slowpeers.Handler:
    """An SMTP server (PIPELINING) that stops answering at ``step`` (``mail``: the
    pipelined MAIL, RCPT and DATA go unanswered)."""

    def handle(conn, reader):
        conn.sendall(b"220 silent ESMTP\r\n")
        while line := reader.readline(4096):
            verb = line[:4].upper()
            if verb == b"EHLO":
                conn.sendall(b"250-silent\r\n250 PIPELINING\r\n")
            elif verb == b"MAIL" and step == "mail":
                time.sleep(30)
                return
            else:
                conn.sendall(b"250 ok\r\n")

    return handle


def test_a_plain_text_session_keeps_its_deadlines_in_the_kernel(smtp_server):
    """A plain TCP session's socket is blocking for Python (one system call per read or
    write, no poll before each) while the kernel bounds each read and write by the time
    left (SO_RCVTIMEO, SO_SNDTIMEO); the session still sends."""
    import socket
    import struct

    server = smtp_server()
    with open_session(_server(server.port, timeout=7.0), None) as session:
        sock = session._smtp.sock
        assert sock.gettimeout() is None
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            seconds, micros = struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, option,
                                                                  16))
            assert 6.5 <= seconds + micros / 1e6 <= 7.0
        delivery = session.send("app@example.com", ["a@example.org"], MESSAGE)
    assert [r.status for r in delivery.recipients] == ["sent"]
    assert len(server.wait_for(1)) == 1


def test_a_silent_server_times_out_at_the_deadline_in_the_kernel_bound_mode():
    with slowpeers.serve(_silent_at("mail")) as port, \
            open_session(_server(port), None) as session:
        started = time.monotonic()
        with pytest.raises(ConnectError) as caught:
            session.send("app@example.com", ["a@example.org"], MESSAGE)
        took = time.monotonic() - started
    assert caught.value.kind == "timeout"
    assert str(caught.value) == f"slow (127.0.0.1:{port}): MAIL: no complete reply within 1s"
    assert 0.9 < took < 2.5, f"the attempt took {took:.1f}s"


def test_a_peer_that_stops_reading_times_out_the_send_in_the_kernel_bound_mode():
    """Bounded in the kernel, a write that cannot go on (the peer reads nothing, the
    buffers are full) ends at the deadline: a total for the whole data, not per send."""
    import socket

    from mailsync.deadline import DeadlineExceeded
    from mailsync.outbound.smtpwire import KernelDeadline

    ours, theirs = socket.socketpair()
    with ours, theirs:
        deadline = KernelDeadline(0.5)
        deadline.in_kernel(ours)
        deadline.start("message content")
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as caught:
            deadline.sendall(ours, b"x" * (64 << 20))
        took = time.monotonic() - started
    assert str(caught.value) == "message content: could not be sent within 0.5s"
    assert 0.45 < took < 1.5, f"the send took {took:.1f}s"
