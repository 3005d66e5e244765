"""How the IMAP and POP3 adapters word their library's errors (one wording for all).

:data:`WIRE_ERRORS` are the errors a socket, TLS, IMAP or POP3 conversation can raise;
:func:`translate` turns one into a :class:`mailsync.errors.ConnectError` naming the
server and the reason, worded as for SMTP (``support (imap.example.com:993): connection
refused``). Apart from :mod:`mailsync.inbound.source` so that a Maildir poll, which needs
none of it, imports neither imaplib, poplib nor :mod:`ssl`.
"""

from __future__ import annotations

import imaplib
import poplib
import re

from mailsync.config.model import IncomingServer
from mailsync.deadline import DeadlineExceeded
from mailsync.errors import ConnectError
from mailsync.inbound.source import describe
from mailsync.netio import GMAIL_HINT, fallback_error, network_error

_BYTES_REPR = re.compile(r"""\bb(['"])(.*?)\1""")
_TIMING = re.compile(r"\s*\([0-9.]+(?: \+ [0-9.]+)* secs\)")

# Errors a socket, TLS, IMAP or POP3 conversation can raise; everything else is a bug.
# RecursionError: imapclient reads an answer's parenthesised lists by recursion, so a
# server nesting them thousands deep would raise it out of the poller's thread (which
# stopped, leaving the daemon unhealthy): it is the server's malformed answer.
WIRE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, EOFError, UnicodeError, imaplib.IMAP4.error, poplib.error_proto, RecursionError)


def translate(exc: BaseException, server: IncomingServer, phase: str) -> ConnectError:
    """Turn a socket/TLS/imaplib/poplib error into a ConnectError naming server and reason.

    phase: ``connect``, ``starttls``, ``auth``, ``folder`` or ``fetch``.
    """
    where = describe(server)
    if isinstance(exc.__context__, DeadlineExceeded):
        exc = exc.__context__  # imaplib words a write past its deadline as a socket error
    common = network_error(exc, where, server.timeout.total_seconds(),
                           connecting=phase == "connect", transferring=phase == "fetch",
                           handshaking=phase in ("connect", "starttls"))
    if common is not None:
        return common
    if isinstance(exc, imaplib.IMAP4.abort | EOFError | ConnectionError):
        return ConnectError(f"{where}: the server closed the connection", "closed")
    if isinstance(exc, RecursionError):
        return ConnectError(f"{where}: unexpected reply during {_noun(phase)}: its lists "
                            "nest too deep to be read", "protocol")
    if isinstance(exc, UnicodeError):
        return ConnectError(f"{where}: {_noun(phase)} needs ASCII only, and the value "
                            "given is not", "auth" if phase == "auth" else "protocol")
    if isinstance(exc, imaplib.IMAP4.error | poplib.error_proto):
        reply = server_text(exc)
        if phase == "auth":
            message = (f"{where}: authentication failed for user {server.username!r}: "
                       f"{reply}")
            if server.provider == "gmail":
                message += f". {GMAIL_HINT}"
            return ConnectError(message, "auth")
        kind = {"starttls": "starttls", "folder": "folder"}.get(phase, "protocol")
        return ConnectError(f"{where}: unexpected reply during {_noun(phase)}: {reply}", kind)
    return fallback_error(exc, where, connecting=phase == "connect")


def server_text(exc: BaseException) -> str:
    """The server's words in an imaplib/poplib error, as one line of text.

    Library wrappers are unwrapped (``b'...'`` reprs of replies) and Dovecot's command
    timings, e.g. ``(0.001 + 0.000 secs).``, dropped.
    """
    text = " ".join(a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)
                    for a in exc.args) or type(exc).__name__
    text = _BYTES_REPR.sub(r"\2", text)
    text = _TIMING.sub("", text)
    return " ".join(text.split())


def _noun(phase: str) -> str:
    return {"connect": "the greeting", "starttls": "STARTTLS", "auth": "login",
            "folder": "folder selection", "fetch": "fetching"}.get(phase, phase)
