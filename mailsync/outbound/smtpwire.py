"""smtplib made safe for mailsync: replies bounded, commands under deadlines, and what
its errors mean.

:class:`Bounded` (and :class:`BoundedSSL`) is ``smtplib.SMTP`` whose replies are
bounded by :data:`MAX_REPLY` and whose commands each have a deadline
(:class:`mailsync.netio.Deadline`). :func:`translate` turns a socket, TLS or smtplib
error into a :class:`~mailsync.errors.ConnectError` that names the server and the reason
in plain words. The sessions that use both are :mod:`mailsync.outbound.smtp`'s.
"""

from __future__ import annotations

import smtplib
import sys
from typing import TYPE_CHECKING, Any

from mailsync.config.model import OutgoingServer
from mailsync.errors import ConnectError
from mailsync.netio import (
    GMAIL_HINT,
    Deadline,
    DeadlineExceeded,
    fallback_error,
    network_error,
    reader,
)

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


class ReplyTooLong(OSError):
    """The server's reply grew past MAX_REPLY; the connection is dropped."""


class Bounded(smtplib.SMTP):
    """smtplib.SMTP whose replies are bounded by MAX_REPLY, and its commands by deadlines.

    ``getreply`` is smtplib's own (Python 3.11), with the reply's size counted: one
    addition per line on the hot path. Its socket file reads through
    :func:`mailsync.netio.reader`, which gives each read the time left to the command in
    progress (``putcmd`` starts each command's deadline, :meth:`expect` one for a reply
    whose command went out pipelined): one ``settimeout`` per read and per write.
    """

    deadline: Deadline

    def connect(self, host: str = "localhost", port: int = 0,
                source_address: Any = None) -> tuple[int, bytes]:
        """Connect and read the greeting, both within ``timeout``."""
        self.deadline = Deadline(self.timeout)
        self.deadline.start("greeting")
        return super().connect(host, port, source_address)

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
                           connecting=phase == "connect", transferring=phase == "transaction")
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
