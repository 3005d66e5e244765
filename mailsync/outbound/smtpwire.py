"""smtplib made safe for mailsync: replies bounded, commands under deadlines, and what
its errors mean.

:class:`Bounded` (and :class:`BoundedSSL`) is ``smtplib.SMTP`` whose replies are
bounded by :data:`MAX_REPLY` and whose commands each have a deadline
(:class:`mailsync.deadline.Deadline`). :func:`translate` turns a socket, TLS or smtplib
error into a :class:`~mailsync.errors.ConnectError` that names the server and the reason
in plain words. The sessions that use both are :mod:`mailsync.outbound.smtp`'s.
"""

from __future__ import annotations

import re
import smtplib
import socket
import struct
import sys
from typing import TYPE_CHECKING, Any

from mailsync.config.model import OutgoingServer
from mailsync.deadline import Deadline, DeadlineExceeded, reader
from mailsync.errors import ConnectError
from mailsync.netio import GMAIL_HINT, fallback_error, network_error

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

# Errors a socket, TLS or SMTP conversation can raise; everything else is a bug.
WIRE_ERRORS = (OSError, UnicodeError)
# A reply (the greeting included) longer than this is refused: smtplib reads continuation
# lines (``220-...``) for as long as the server sends them, into memory.
MAX_REPLY = 64 * 1024
_MAXLINE = 8192  # smtplib's limit of one reply line
# Commands a deadline is named after; any other line (an AUTH continuation, which holds
# credentials) goes on under the name of the command it continues.
_VERBS = frozenset({"EHLO", "HELO", "STARTTLS", "AUTH", "MAIL", "RCPT", "DATA", "RSET",
                    "NOOP", "QUIT", "VRFY", "EXPN", "HELP"})


_EOL = re.compile(rb"\r\n|\n|\r(?!\n)")
_DOT = re.compile(rb"(?m)^\.")  # dot-stuffing (RFC 5321 4.5.2)


def crlf(data: bytes) -> bytes:
    """``data`` with every line ending CRLF. Composed messages already are: three counts
    (C loops) tell so without the regex's copy (~4% of the sender's CPU at 3,000/s)."""
    pairs = data.count(b"\r\n")
    if data.count(b"\n") == pairs and data.count(b"\r") == pairs:
        return data
    return _EOL.sub(b"\r\n", data)


def stuffed(data: bytes) -> bytes:
    """``data`` dot-stuffed: a line starting with ``.`` gets another one in front."""
    if data.startswith(b".") or b"\n." in data:
        return _DOT.sub(b"..", data)
    return data


class KernelDeadline(Deadline):
    """A :class:`Deadline` that, once :meth:`in_kernel`, bounds a plain TCP socket in the
    kernel (``SO_RCVTIMEO``, ``SO_SNDTIMEO``) and leaves it blocking for Python.

    A socket with a Python timeout polls before every read and write: a second system
    call and a second GIL hand-off per operation. A blocking one makes one call, which
    the kernel ends once the time set runs out; each read or write still keeps to the
    command's deadline within ``slack`` (the time set is renewed only when it differs
    from the time left by more). Not for TLS sockets, whose reads retry on their own.
    """

    __slots__ = ("_kernel",)

    def __init__(self, timeout: float, *, rate: float = 0.0) -> None:
        super().__init__(timeout, rate=rate)
        self._kernel: float | None = None  # the time the kernel bound is set to

    def in_kernel(self, sock: socket.socket) -> None:
        """From now on bound ``sock`` (plain TCP) in the kernel."""
        sock.settimeout(None)
        self._set(sock, self.timeout)

    def _set(self, sock: socket.socket, seconds: float) -> None:
        micros = max(1000, int(seconds * 1_000_000))  # a zero timeval means no limit
        value = struct.pack("ll", micros // 1_000_000, micros % 1_000_000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
        self._kernel = seconds

    def bound(self, sock: socket.socket) -> float | None:
        if self._kernel is None:
            return super().bound(sock)
        left = self.remaining()
        if left is not None and abs(self._kernel - left) > self.slack:
            self._set(sock, left)
        return left

    def sendall(self, sock: socket.socket, data: bytes) -> None:
        if self._kernel is None:
            super().sendall(sock, data)
            return
        view = memoryview(data)
        while view:
            try:
                left = self.bound(sock)
            except DeadlineExceeded:
                raise self.exceeded(sending=True) from None
            try:
                sent = sock.send(view)
            except BlockingIOError:  # the kernel's bound ran out with nothing sent
                if left is None:
                    raise TimeoutError("timed out") from None
                continue  # bound() raises once no time is left
            view = view[sent:]


class ReplyTooLong(OSError):
    """The server's reply grew past MAX_REPLY; the connection is dropped."""


class Bounded(smtplib.SMTP):
    """smtplib.SMTP whose replies are bounded by MAX_REPLY, and its commands by deadlines.

    ``getreply`` is smtplib's own (Python 3.11), with the reply's size counted: one
    addition per line on the hot path. Its socket file reads through
    :func:`mailsync.deadline.reader`, which gives each read the time left to the command in
    progress (``putcmd`` starts each command's deadline, :meth:`expect` one for a reply
    whose command went out pipelined): one ``settimeout`` per read and per write.
    """

    deadline: KernelDeadline

    def connect(self, host: str = "localhost", port: int = 0,
                source_address: Any = None) -> tuple[int, bytes]:
        """Connect and read the greeting, both within ``timeout``."""
        self.deadline = KernelDeadline(self.timeout)
        self.deadline.start("greeting")
        return super().connect(host, port, source_address)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        """smtplib's socket, with TCP_NODELAY: every write is a whole command (or
        pipelined group, or the whole content) that a read follows, so Nagle's wait for
        an ACK could only delay one (the last segment of a content)."""
        sock = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock  # type: ignore[no-any-return]

    def putcmd(self, cmd: str, args: str = "") -> None:
        verb = cmd.partition(" ")[0].upper()
        self.deadline.start(verb if verb in _VERBS else self.deadline.what)
        super().putcmd(cmd, args)

    def expect(self, what: str, budget: float | None = None) -> None:
        """Start the deadline of the next reply (or data): ``timeout`` unless given."""
        self.deadline.start(what, budget)

    def send(self, s: ReadableBuffer | str) -> None:
        """smtplib's send, within the deadline of the command in progress."""
        if not self.sock:
            raise smtplib.SMTPServerDisconnected("please run connect() first")
        data = s.encode(self.command_encoding) if isinstance(s, str) else bytes(s)
        sys.audit("smtplib.send", self, data)
        try:
            self.deadline.sendall(self.sock, data)
        except DeadlineExceeded:
            self.close()
            raise
        except OSError:
            self.close()
            raise smtplib.SMTPServerDisconnected("Server not connected") from None

    def envelope(self, mail_cmd: str, rcpt_cmds: list[str]
                 ) -> tuple[tuple[int, bytes], list[tuple[int, bytes]], tuple[int, bytes] | None]:
        """Send MAIL and the RCPTs; returns the replies to MAIL, to each RCPT sent (none
        after a refused MAIL in lock-step; none after a 421, the server closing the
        channel) and to DATA when it went pipelined (else None: the caller sends it).

        With PIPELINING (RFC 2920): MAIL, every RCPT and DATA in one write, then their
        replies: one round trip instead of two plus one per recipient. Each reply has its
        own deadline, named after its command. Without it, each command waits for the
        previous reply.
        """
        rcpt_replies: list[tuple[int, bytes]] = []
        if self.has_extn("pipelining"):
            self.expect("MAIL")
            self.send("".join(f"{c}\r\n" for c in (mail_cmd, *rcpt_cmds, "DATA")))
            mail_reply = self.getreply()
            if mail_reply[0] == 421:
                return mail_reply, rcpt_replies, None
            for _ in rcpt_cmds:
                self.expect("RCPT")
                rcpt_replies.append(self.getreply())
                if rcpt_replies[-1][0] == 421:
                    return mail_reply, rcpt_replies, None
            self.expect("DATA")
            return mail_reply, rcpt_replies, self.getreply()
        self.putcmd(mail_cmd)
        mail_reply = self.getreply()
        if 200 <= mail_reply[0] < 300:
            for cmd in rcpt_cmds:
                self.putcmd(cmd)
                rcpt_replies.append(self.getreply())
                if rcpt_replies[-1][0] == 421:
                    break
        return mail_reply, rcpt_replies, None

    def getreply(self) -> tuple[int, bytes]:
        resp: list[bytes] = []
        if self.file is None:
            assert self.sock is not None
            self.file = reader(self.sock, self.deadline)
        size = 0
        while True:
            try:
                line = self.file.readline(_MAXLINE + 1)
            except OSError as e:
                self.close()
                raise smtplib.SMTPServerDisconnected(
                    "Connection unexpectedly closed: " + str(e)) from None
            if not line:
                self.close()
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            if len(line) > _MAXLINE:
                self.close()
                raise smtplib.SMTPResponseException(500, "Line too long.")
            size += len(line)
            if size > MAX_REPLY:
                self.close()
                raise ReplyTooLong(f"the server's reply is longer than {MAX_REPLY // 1024} KiB")
            resp.append(line[4:].strip(b" \t\r\n"))
            try:
                errcode = int(line[:3])
            except ValueError:
                errcode = -1
                break
            if line[3:4] != b"-":
                break
        return errcode, b"\n".join(resp)


    def auth(self, mechanism: str, authobject: Any, *, initial_response_ok: bool = True
             ) -> tuple[int, bytes]:
        """smtplib's, remembering the mechanism that logged in (for `mailsync test`)."""
        reply = super().auth(mechanism, authobject, initial_response_ok=initial_response_ok)
        self.mechanism_used = mechanism.upper()
        return reply


class BoundedSSL(Bounded, smtplib.SMTP_SSL):
    """smtplib.SMTP_SSL whose replies are bounded by MAX_REPLY."""


def describe(server: OutgoingServer) -> str:
    """How messages name a server: ``company-smtp (smtp.example.com:587)``."""
    host = server.host or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{server.name} ({host}:{server.port})"


def translate(exc: BaseException, server: OutgoingServer, phase: str) -> ConnectError:
    """Turn a socket/TLS/smtplib error into a ConnectError naming server and reason."""
    where = describe(server)
    if isinstance(exc, smtplib.SMTPServerDisconnected) and isinstance(exc.__context__,
                                                                        TimeoutError):
        exc = exc.__context__  # smtplib reports a timed-out greeting as a hang-up
    too_long = exc if isinstance(exc, ReplyTooLong) else exc.__context__
    if isinstance(too_long, ReplyTooLong):  # (smtplib wraps it in SMTPServerDisconnected)
        return ConnectError(f"{where}: {too_long} (during {_noun(phase)}); the connection "
                            "was dropped", "protocol")
    common = network_error(exc, where, server.timeout.total_seconds(),
                           connecting=phase == "connect", transferring=phase == "transaction",
                           handshaking=phase in ("connect", "starttls"))
    if common is not None:
        return common
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        message = (
            f"{where}: authentication failed for user {server.username!r}: "
            f"{exc.smtp_code} {reply_text(exc.smtp_error)}"
        )
        if server.provider == "gmail":
            message += f". {GMAIL_HINT}"
        return ConnectError(message, "auth", exc.smtp_code)
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return ConnectError(f"{where}: the server does not offer {_noun(phase)}", "auth")
    if isinstance(exc, UnicodeError):
        return ConnectError(
            f"{where}: {_noun(phase)} needs ASCII only, and the value given is not",
            "auth" if phase == "auth" else "protocol",
        )
    if isinstance(exc, smtplib.SMTPServerDisconnected | ConnectionError):
        return ConnectError(f"{where}: the server closed the connection", "closed")
    if isinstance(exc, smtplib.SMTPResponseException):
        kind = {"starttls": "starttls", "auth": "auth"}.get(phase, "protocol")
        return ConnectError(
            f"{where}: unexpected reply during {_noun(phase)}: "
            f"{exc.smtp_code} {reply_text(exc.smtp_error)}",
            kind,
            exc.smtp_code,
        )
    if isinstance(exc, smtplib.SMTPException):
        kind = "auth" if phase == "auth" else "protocol"
        return ConnectError(f"{where}: {_noun(phase)} failed: {exc}", kind)
    return fallback_error(exc, where, connecting=phase == "connect")


def _noun(phase: str) -> str:
    return {
        "connect": "the greeting",
        "starttls": "STARTTLS",
        "auth": "AUTH",
        "transaction": "the transaction",
    }[phase]


def reply_text(reply: bytes | str) -> str:
    """A reply's text as one line: decoded, continuation lines joined with spaces."""
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return " ".join(line.strip() for line in reply.splitlines() if line.strip())
