"""SMTP PIPELINING (RFC 2920): one write for MAIL, every RCPT and DATA, one for the content.

Against aiosmtpd offering PIPELINING (the per-recipient replies of refused MAIL, some or
all RCPTs refused), and a raw-socket server on 127.0.0.1 that counts what comes in: with
PIPELINING, two writes and two reads per message on the client's socket; without it, every
command waits for the previous reply (lock-step). A 421 in the pipelined replies ends the
transaction as in lock-step: the recipients are deferred with its reply, not lost.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, BinaryIO

import pytest

from mailsync.config.model import OutgoingServer
from mailsync.outbound.smtp import SmtpSession, open_session
from tests import slowpeers
from tests.smtpserver import SmtpServer
from tests.test_smtp import connect

MESSAGE = b"From: app@example.com\r\nSubject: hi\r\n\r\nline one\r\n"
RCPTS = ["a@example.org", "b@example.org", "c@example.org"]


# -- a raw-socket server that records how the commands came ----------------------------

@dataclass
class Raw:
    """What a :func:`raw_server` saw: commands, content, and the client's timing."""

    pipelining: bool
    rcpt_replies: dict[str, bytes] = field(default_factory=dict)
    mail_reply: bytes = b"250 2.1.0 Ok"
    chunks: list[list[bytes]] = field(default_factory=list)  # the commands of each recv
    early: list[bytes] = field(default_factory=list)  # sent before the previous reply
    messages: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def verbs(self) -> list[str]:
        with self.lock:
            return [c.split(b" ")[0].split(b":")[0].decode().upper() for chunk in self.chunks
                    for c in chunk]


def _handler(raw: Raw) -> slowpeers.Handler:
    def handle(conn: socket.socket, _reader: BinaryIO) -> None:
        conn.sendall(b"220 raw ESMTP\r\n")
        buf = b""
        content: bytes | None = None  # after a 354: the content so far
        mail_ok = False
        accepted = 0
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            out: list[bytes] = []
            commands: list[bytes] = []
            close = False
            while not close:
                if content is not None:
                    content += buf
                    buf = b""
                    end = content.find(b"\r\n.\r\n")
                    if end < 0 and not content.startswith(b".\r\n"):
                        break
                    body, _, buf = content.partition(b".\r\n") if end < 0 else (
                        content[:end + 2], b"", content[end + 5:])
                    with raw.lock:
                        raw.messages.append(body)
                    content = None
                    out.append(b"250 2.0.0 Ok: queued")
                    continue
                line, sep, rest = buf.partition(b"\r\n")
                if not sep:
                    break
                buf = rest
                commands.append(line)
                if buf and not raw.pipelining:
                    with raw.lock:
                        raw.early.append(buf)
                verb = line[:4].upper()
                if verb == b"EHLO":
                    extn = b"250-PIPELINING\r\n" if raw.pipelining else b""
                    reply = b"250-raw\r\n" + extn + b"250 8BITMIME"
                elif verb == b"MAIL":
                    reply = raw.mail_reply
                    mail_ok, accepted = reply.startswith(b"2"), 0
                elif verb == b"RCPT":
                    address = line.partition(b"<")[2].partition(b">")[0].decode()
                    reply = raw.rcpt_replies.get(address, b"250 2.1.5 Ok")
                    accepted += mail_ok and reply.startswith(b"2")
                elif verb == b"DATA":
                    if not mail_ok:
                        reply = b"503 5.5.1 Error: need MAIL command"
                    elif not accepted:
                        reply = b"554 5.5.1 Error: no valid recipients"
                    else:
                        reply, content = b"354 End data with <CR><LF>.<CR><LF>", b""
                elif verb == b"QUIT":
                    reply, close = b"221 2.0.0 Bye", True
                else:  # RSET, NOOP
                    reply = b"250 2.0.0 Ok"
                    mail_ok = False
                out.append(reply)
                close = close or reply.startswith(b"421")  # say it, then hang up
            with raw.lock:
                if commands:
                    raw.chunks.append(commands)
            if out:  # the replies to what came in one go, in one write (as smtp-sink)
                conn.sendall(b"".join(r + b"\r\n" for r in out))
            if close:
                return
    return handle


@pytest.fixture
def raw_server() -> Iterator[Callable[..., tuple[Raw, OutgoingServer]]]:
    """Factory: ``raw_server(pipelining=..., rcpt_replies=..., mail_reply=...)`` starts a
    raw server; returns its records and the OutgoingServer pointing at it."""
    with contextlib.ExitStack() as stack:
        def start(*, pipelining: bool, **options: Any) -> tuple[Raw, OutgoingServer]:
            raw = Raw(pipelining=pipelining, **options)
            port = stack.enter_context(slowpeers.serve(_handler(raw)))
            return raw, OutgoingServer(name="raw", host="127.0.0.1", port=port,
                                       security="none", timeout=timedelta(seconds=5))
        yield start


def counted(session: SmtpSession) -> dict[str, int]:
    """Count the session's socket writes and reads from now on (its class swapped for a
    subclass of the same layout: no wrapper in between, nothing else changed)."""
    counts = {"writes": 0, "reads": 0}

    class Counting(socket.socket):
        __slots__ = ()

        def send(self, data: object, flags: int = 0) -> int:  # type: ignore[override]
            counts["writes"] += 1
            return super().send(data, flags)  # type: ignore[arg-type]

        def sendall(self, data: object, flags: int = 0) -> None:  # type: ignore[override]
            counts["writes"] += 1
            super().sendall(data, flags)  # type: ignore[arg-type]

        def recv_into(self, buffer: object, nbytes: int = 0,  # type: ignore[override]
                      flags: int = 0) -> int:
            counts["reads"] += 1
            return super().recv_into(buffer, nbytes, flags)  # type: ignore[arg-type]

    sock = session._smtp.sock
    assert sock is not None
    sock.__class__ = Counting
    return counts


# -- writes and reads per message ---------------------------------------------------------

def test_a_pipelined_message_is_two_writes_and_two_reads(raw_server):
    raw, server = raw_server(pipelining=True)
    with open_session(server, None) as session:
        counts = counted(session)
        for _ in range(5):
            delivery = session.send("app@example.com", RCPTS, MESSAGE)
            assert [r.status for r in delivery.recipients] == ["sent"] * 3
        assert counts == {"writes": 10, "reads": 10}
    assert len(raw.messages) == 5 and raw.messages[0] == MESSAGE
    # MAIL, the three RCPTs and DATA came in one segment each time.
    envelopes = [c for c in raw.chunks if c[0].startswith(b"MAIL")]
    assert [len(c) for c in envelopes] == [5] * 5
    assert envelopes[0][-1] == b"DATA"


def test_without_pipelining_each_command_waits_for_its_reply(raw_server):
    raw, server = raw_server(pipelining=False,
                             rcpt_replies={"b@example.org": b"550 5.1.1 No such user"})
    with open_session(server, None) as session:
        counts = counted(session)
        delivery = session.send("app@example.com", RCPTS, MESSAGE)
        assert counts["writes"] == 6  # MAIL, 3 x RCPT, DATA, the content
    assert [r.status for r in delivery.recipients] == ["sent", "failed", "sent"]
    assert raw.early == []  # nothing was sent before the reply it waits for
    assert raw.verbs()[1:7] == ["MAIL", "RCPT", "RCPT", "RCPT", "DATA", "QUIT"]
    assert raw.messages == [MESSAGE]


def test_the_socket_sends_without_nagle_delay(smtp_server, raw_server):
    _, server = raw_server(pipelining=True)
    tls = smtp_server(tls="starttls")
    for session in (open_session(server, None), connect(tls)):
        with session:
            sock = session._smtp.sock
            assert sock is not None
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


# -- refusals while pipelined -------------------------------------------------------------

def test_pipelined_per_recipient_replies_are_kept(smtp_server):
    server: SmtpServer = smtp_server(pipelining=True, recipient_replies={
        "b@example.org": "550 5.1.1 No such user", "c@example.org": "450 4.2.1 Try later"})
    with connect(server) as session:
        assert session._smtp.has_extn("pipelining")
        delivery = session.send("app@example.com", RCPTS, MESSAGE)
    assert [(r.status, r.code) for r in delivery.recipients] == [
        ("sent", 250), ("failed", 550), ("deferred", 450)]
    assert delivery.recipients[1].reply == "5.1.1 No such user"
    assert [m.rcpt_tos for m in server.messages] == [("a@example.org",)]


def test_pipelined_all_recipients_refused_resets_and_the_session_goes_on(smtp_server):
    server: SmtpServer = smtp_server(pipelining=True, recipient_replies={
        r: "550 5.1.1 No such user" for r in RCPTS[:2]})
    with connect(server) as session:
        refused = session.send("app@example.com", RCPTS[:2], MESSAGE)
        assert [(r.status, r.code) for r in refused.recipients] == [("failed", 550)] * 2
        assert not session.broken
        after = session.send("app@example.com", ["c@example.org"], MESSAGE)
    assert [(r.status, r.code) for r in after.recipients] == [("sent", 250)]
    # DATA's refusal was read (no message), then RSET, then the next transaction.
    assert server.commands[:6] == ["MAIL", "RCPT", "RCPT", "DATA", "RSET", "MAIL"]
    assert [m.rcpt_tos for m in server.messages] == [("c@example.org",)]


@pytest.mark.parametrize(("reply", "status"), [("550 5.7.1 Not allowed", "failed"),
                                               ("451 4.3.0 Try again later", "deferred")])
def test_pipelined_mail_refusal_discards_the_other_replies(smtp_server, reply, status):
    server: SmtpServer = smtp_server(pipelining=True, mail_reply=reply)
    with connect(server) as session:
        refused = session.send("app@example.com", RCPTS, MESSAGE)
        server.mail_reply = None
        # The RCPT and DATA replies of the refused MAIL were all read: the next
        # transaction's replies are its own.
        after = session.send("app@example.com", RCPTS[:1], MESSAGE)
    assert {(r.status, r.code, r.reply) for r in refused.recipients} == {
        (status, int(reply[:3]), reply[4:])}
    assert [(r.status, r.code) for r in after.recipients] == [("sent", 250)]
    assert [m.rcpt_tos for m in server.messages] == [("a@example.org",)]


def test_pipelined_421_at_rcpt_defers_every_recipient_with_its_reply(raw_server):
    raw, server = raw_server(pipelining=True, rcpt_replies={
        "b@example.org": b"421 4.3.2 Service shutting down"})
    session = open_session(server, None)
    delivery = session.send("app@example.com", RCPTS, MESSAGE)
    assert [(r.status, r.code) for r in delivery.recipients] == [("deferred", 421)] * 3
    assert {r.reply for r in delivery.recipients} == {"4.3.2 Service shutting down"}
    assert session.broken
    session.close()
    assert raw.messages == []


def test_pipelined_421_at_mail_defers_every_recipient_with_its_reply(raw_server):
    _, server = raw_server(pipelining=True, mail_reply=b"421 4.7.0 Too busy, bye")
    session = open_session(server, None)
    delivery = session.send("app@example.com", RCPTS, MESSAGE)
    assert [(r.status, r.code, r.reply) for r in delivery.recipients] == [
        ("deferred", 421, "4.7.0 Too busy, bye")] * 3
    assert session.broken
    session.close()


def test_a_failing_before_content_hook_sends_no_content_and_breaks_the_session(smtp_server):
    server: SmtpServer = smtp_server(pipelining=True)

    def refuse() -> None:
        raise RuntimeError("the previous outcome could not be recorded")

    with connect(server) as session:
        with pytest.raises(RuntimeError, match="previous outcome"):
            session.send("app@example.com", RCPTS[:1], MESSAGE, refuse)
        assert session.broken
    assert server.commands[:3] == ["MAIL", "RCPT", "DATA"]
    time.sleep(0.2)  # the server had its chance to take a message: it has none
    assert server.messages == []
