"""Which source adapter a server's ``type`` makes, and the check `mailsync test` runs.

IMAP (:mod:`mailsync.inbound.imap`), POP3 (:mod:`mailsync.inbound.pop3`) or a local
Maildir (:mod:`mailsync.inbound.maildir`), each a :class:`~mailsync.inbound.source.Source`;
a new protocol's adapter is chosen here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mailsync.auth.tokens import TokenCache
from mailsync.config.model import IncomingServer
from mailsync.inbound import imapclientversion
from mailsync.inbound.maildir import LocalSource
from mailsync.inbound.source import Source

if TYPE_CHECKING:
    import ssl  # annotations only: a Maildir poll imports no TLS


def make_source(server: IncomingServer, *, context: ssl.SSLContext | None = None,
                tokens: TokenCache | None = None) -> Source:
    """The source adapter for ``server.type``; the password is resolved when connecting,
    an OAuth2 access token (``auth.oauth2``) asked of ``tokens`` then."""

    def password() -> str | None:
        return server.password.resolve() if server.password is not None else None

    source = None
    if server.auth is not None and tokens is not None:
        source = tokens.source(server.name, server.auth)
    if server.type in ("imap", "pop"):
        imapclientversion.prepare()  # imapclient without importlib.metadata (~7 ms)
    if server.type == "imap":
        # Only when an IMAP server is polled: a one-shot `inbox poll` or `run --once`
        # without one need not import imapclient (~13 ms of start-up).
        from mailsync.inbound.imap import ImapSource

        return ImapSource(server, password=password, context=context, tokens=source)
    if server.type == "pop":
        # Only when a POP3 server is polled, as for IMAP.
        from mailsync.inbound.pop3 import Pop3Source

        return Pop3Source(server, password=password, context=context, tokens=source)
    return LocalSource(server)


def check_incoming(server: IncomingServer, *, context: ssl.SSLContext | None = None,
                   tokens: TokenCache | None = None) -> str:
    """Connect, log in and check the folder (IMAP) or the Maildir (local); what the login
    was when it says something (``XOAUTH2, token valid until 14:32``), else "".

    Raises ConnectError with the reason, worded as for SMTP (``name (host:port):
    connection refused``), or SecretError when the password cannot be resolved.
    """
    source = make_source(server, context=context, tokens=tokens)
    try:
        source.open()
        return str(getattr(source, "login_note", ""))
    finally:
        source.close()
