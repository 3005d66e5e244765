"""IMAP AUTHENTICATE and POP3 AUTH with an OAuth2 access token (XOAUTH2 / OAUTHBEARER).

The sources ask the shared cache for a token when they connect
(mailsync.auth.tokens.session_token), log in with :func:`imap_login` or
:func:`pop3_login`, and reconnect once ``renew_at`` has passed (a long IMAP IDLE
included): a session never outlives its token. A refused token is dropped from the
cache, so the next connection gets a new one.
"""

from __future__ import annotations

import base64
import binascii
import poplib
from typing import Any

from mailsync.auth import sasl
from mailsync.auth.grants import AccessToken
from mailsync.auth.tokens import TokenSource, session_token
from mailsync.config.model import IncomingServer
from mailsync.errors import ConnectError
from mailsync.inbound.wireerrors import server_text


def access_token(source: TokenSource | None, where: str) -> AccessToken:
    """A token for a new session from the shared cache (see session_token)."""
    if source is None:
        raise ConnectError(f"{where}: auth.oauth2 needs a token cache (internal error)",
                           "oauth2")
    return session_token(source, where)


def _not_offered(where: str, offered: str) -> ConnectError:
    return ConnectError(f"{where}: the server offers no OAuth2 login ({offered}); XOAUTH2 "
                        "or OAUTHBEARER is needed for auth.oauth2", "auth")


def _refused(server: IncomingServer, where: str, mechanism: str, reply: str,
             responder: sasl.Responder) -> ConnectError:
    return ConnectError(f"{where}: OAuth2 ({mechanism}): the server refused the access "
                        f"token for {server.username!r}: {reply}{responder.reason()}", "auth")


def imap_login(client: Any, server: IncomingServer, token: AccessToken,
               where: str) -> tuple[str, ConnectError | None]:
    """AUTHENTICATE on an imapclient.IMAPClient: the mechanism, and None when logged in,
    else why not."""
    import imapclient.exceptions  # type: ignore[import-untyped]

    offered = {c.decode("ascii", "replace").upper()[5:] for c in client.capabilities()
               if c.upper().startswith(b"AUTH=")}
    assert server.username is not None
    login = sasl.choose(offered, server.username, token.value, server.host, server.port)
    if login is None:
        return "", _not_offered(where, "AUTH=" + (" AUTH=".join(sorted(offered)) or "none"))
    responder = sasl.Responder(login)
    try:
        client.sasl_login(login.mechanism, responder)
    except imapclient.exceptions.LoginError as exc:
        return login.mechanism, _refused(server, where, login.mechanism, server_text(exc),
                                         responder)
    return login.mechanism, None


def pop3_login(pop: poplib.POP3, server: IncomingServer, token: AccessToken,
               capabilities: dict[str, list[str]],
               where: str) -> tuple[str, ConnectError | None]:
    """AUTH (RFC 5034, with an initial response) on a poplib.POP3: the mechanism, and None
    when logged in, else why not."""
    offered = {m.upper() for m in capabilities.get("SASL", [])}
    assert server.username is not None
    login = sasl.choose(offered, server.username, token.value, server.host, server.port)
    if login is None:
        return "", _not_offered(where, "SASL " + (" ".join(sorted(offered)) or "none"))
    responder = sasl.Responder(login)
    initial = base64.b64encode(responder()).decode("ascii")
    try:
        command: Any = pop._shortcmd  # type: ignore[attr-defined]  # poplib's own
        reply = command(f"AUTH {login.mechanism} {initial}")
        while reply.startswith(b"+ ") or reply == b"+":   # a failure challenge
            try:
                challenge = base64.b64decode(reply[2:], validate=True)
            except binascii.Error:
                challenge = reply[2:]
            ack = base64.b64encode(responder(challenge)).decode("ascii")
            reply = command(ack)
    except poplib.error_proto as exc:
        return login.mechanism, _refused(server, where, login.mechanism, server_text(exc),
                                         responder)
    if not reply.startswith(b"+OK"):
        return login.mechanism, _refused(server, where, login.mechanism,
                                         reply.decode("utf-8", "replace"), responder)
    return login.mechanism, None

