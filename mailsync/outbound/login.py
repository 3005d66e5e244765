"""One SMTP login: a server's password, or an OAuth2 access token from the shared cache.

Used by the deliverer's pools and by ``mailsync test``. A token the server refuses is
dropped from the cache (the next login asks for a new one); a session logged in with a
token is renewed (closed, and a new one opened) a little before the token expires
(mailsync.auth.tokens.renew_at, as for IMAP and POP3).
"""

from __future__ import annotations

from collections.abc import Callable

from mailsync.auth.tokens import TokenCache, renew_at, session_token
from mailsync.config.model import OutgoingServer
from mailsync.errors import ConnectError, SecretError
from mailsync.outbound.smtp import SmtpSession, open_session
from mailsync.outbound.smtpwire import describe

SessionFactory = Callable[[OutgoingServer, str | None], SmtpSession]


def connect(server: OutgoingServer, tokens: TokenCache,
            factory: SessionFactory = open_session) -> SmtpSession:
    """An open, logged-in session to ``server``; ConnectError when impossible (kind
    ``oauth2`` when no access token could be had: the token endpoint's fault, not the
    mail server's)."""
    if server.auth is None:
        password = None
        if server.password is not None:
            try:
                password = server.password.resolve()
            except SecretError as exc:
                raise ConnectError(f"{server.name}: password: {exc}", "auth") from None
        return factory(server, password)
    source = tokens.source(server.name, server.auth)
    token = session_token(source, describe(server))
    try:
        session = factory(server, token.value)
    except ConnectError as exc:
        if exc.kind == "auth":
            source.invalidate(token)  # refused by the server: the next login gets a new one
        raise
    session.expires_at = token.expires_at
    session.renew_at = renew_at(token)
    return session
