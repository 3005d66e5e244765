"""Opening an IMAP session: connect per ``security``, STARTTLS, log in.

A password login (``LOGIN``) or an OAuth2 one (XOAUTH2 / OAUTHBEARER, with the access
token the source got). ``starttls`` never falls back to plain text: a server that does not
offer STARTTLS is refused before anything else is sent. Every library error becomes a
ConnectError through :class:`mailsync.errors.WireGuard`, with nothing chained and the
password scrubbed; the connection is shut down first.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from typing import Any, NamedTuple

from mailsync.auth import sasl
from mailsync.auth.grants import AccessToken
from mailsync.auth.tokens import TokenSource
from mailsync.config.model import IncomingServer
from mailsync.errors import ConnectError, WireGuard
from mailsync.inbound import oauth2
from mailsync.inbound.imapwire import Client
from mailsync.inbound.wireerrors import WIRE_ERRORS, translate
from mailsync.netio import connection_note, tls_context


class Session(NamedTuple):
    """A logged-in client, whether it offers UIDPLUS, and what the login negotiated."""

    client: Any
    uidplus: bool
    note: str  # for `mailsync test`: "STARTTLS, TLSv1.3, ..., LOGIN"


def connect(server: IncomingServer, where: str, *, password: str | None,
            token: AccessToken | None, tokens: TokenSource | None,
            context: ssl.SSLContext | None, batch_bytes: int) -> Session:
    """Connect to ``server`` and log in with ``token`` (OAuth2) or else ``password``.

    ``context`` is used as given; without it the server's (netio.tls_context). A token
    the server refuses is invalidated in ``tokens``: the next connection gets a new one.
    """
    timeout = server.timeout.total_seconds()
    tls = None if server.security == "none" else (
        context or tls_context(server.tls_verify, server.tls))
    guard = WireGuard(WIRE_ERRORS, lambda exc, phase: translate(exc, server, phase),
                      secret=password)
    cap = server.max_message_size
    client: Any = guard("connect", Client, server.host, server.port,
                        ssl=server.security == "ssl", ssl_context=tls, timeout=timeout,
                        limits=(cap, batch_bytes + cap))
    guard.close = functools.partial(shutdown, client)
    if server.security == "starttls":
        if not guard("starttls", client.has_capability, "STARTTLS"):
            guard.fail(ConnectError(
                f"{where}: the server does not offer STARTTLS and security is "
                "'starttls'; refusing to continue in plain text", "starttls"))
        guard("starttls", client.starttls, tls)
    if not server.username or password is None:
        guard.fail(ConnectError(f"{where}: a username and a password are needed to log in",
                                "auth"))
    username = server.username

    def log_in() -> Session | ConnectError:
        if token is not None:
            mechanism, error = oauth2.imap_login(client, server, token, where)
            if error is not None:
                if tokens is not None:
                    tokens.invalidate(token)  # the next connection gets a new one
                return error
            note = sasl.login_note(mechanism, token.expires_at)
        else:
            client.login(username, password)
            note = "LOGIN"
        uidplus = bool(client.has_capability("UIDPLUS"))
        return Session(client, uidplus,
                       connection_note(server.security, client.socket()) + ", " + note)

    session = guard("auth", log_in)
    if isinstance(session, ConnectError):
        guard.fail(session)
    return session


def shutdown(client: Any) -> None:
    """Close the socket without LOGOUT (best effort)."""
    if client is None:
        return
    with contextlib.suppress(OSError, ValueError):
        client.shutdown()
