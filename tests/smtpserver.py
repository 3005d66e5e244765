"""A real SMTP server for tests: aiosmtpd in a thread on 127.0.0.1, with trustme TLS.

Use the ``smtp_server`` factory fixture from any test module::

    from tests.smtpserver import smtp_server_fixture  # noqa: F401  (fixture "smtp_server")

    def test_x(smtp_server):
        server = smtp_server(tls="starttls", auth={"relay": "pw"})
        ...  # connect to server.host:server.port, trusting server.client_context()

A subprocess can trust the certificate with ``SSL_CERT_FILE=server.ca_file``. The server
records every accepted message, TCP connection and login, thread-safely.

OAuth2 (``oauth2=`` an :class:`tests.oauth2server.OAuth2Server`, an introspection URL or
a callable ``token -> RFC 7662 answer``): the server offers ``AUTH OAUTHBEARER XOAUTH2``
(PLAIN and LOGIN only when ``auth`` is given too) and checks each bearer token by
introspection; the token must be active and its ``username`` (or ``sub``) must be the
user in the SASL string. Both mechanisms take an initial response or an empty ``334 ``
first. Success: ``235 2.7.0 Authentication successful``. A refused token, as Microsoft
and Google answer XOAUTH2::

    S: 334 eyJzdGF0dXMiOiAiNDAxIiwg...   base64 of {"status": "401", "schemes": "bearer",
                                         "scope": OAUTH2_SCOPE}
    C: (empty line)
    S: 535 5.7.3 Authentication unsuccessful

and OAUTHBEARER (RFC 7628): ``334`` base64 of ``{"status": "invalid_token", "scope": ...,
"openid-configuration": ...}``, the client's ``AQ==`` (^A), then ``535 5.7.8
Authentication credentials invalid``. A malformed SASL string gets ``501 5.5.2``; an
introspection endpoint that fails or times out, ``454 4.7.0 Temporary authentication
failure``. Each attempt is recorded in ``auth_attempts`` (:class:`AuthAttempt`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailsync.demo.controller import FreePortController
from tests.oauth2server import OAuth2Server
from tests.oauth2wire import post_form
from tests.smtpoauth2 import (  # noqa: F401  (re-exported)
    OAUTH2_MECHANISMS,
    OAUTH2_SCOPE,
    OAUTHBEARER_REFUSED,
    XOAUTH2_REFUSED,
    AuthAttempt,
    Introspect,
    OAuth2Sasl,
)

TlsMode = Literal["none", "starttls", "ssl"]
HOST = "127.0.0.1"


class _QuietLoginData(logging.Filter):
    """aiosmtpd itself sets the deprecated Session.login_data on every successful AUTH and
    logs a warning about it; drop just that line so test output shows real problems."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


_AIOSMTPD_LOG = logging.getLogger("mail.log")
if not any(isinstance(f, _QuietLoginData) for f in _AIOSMTPD_LOG.filters):
    _AIOSMTPD_LOG.addFilter(_QuietLoginData())


@dataclass(frozen=True)
class Received:
    """One message the server accepted: its envelope, content and how it came.

    ``data`` is the content as received: CRLF line ends, dot-stuffing undone.
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool
    auth_user: str | None
    mail_options: tuple[str, ...] = ()
    auth_mechanism: str | None = None  # PLAIN, LOGIN, XOAUTH2 or OAUTHBEARER
    helo: str | None = None  # the client's EHLO name (which node sent it)
    at: float = 0.0  # time.time() when the message was accepted


class _Handler:
    """aiosmtpd hooks: canned replies per option, recording into the owning SmtpServer."""

    def __init__(self, owner: SmtpServer) -> None:
        self.owner = owner

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        with self.owner._lock:
            self.owner.helo_names.append(hostname)
        session.host_name = hostname  # aiosmtpd leaves this to an EHLO hook
        if self.owner.pipelining:  # aiosmtpd reads commands in turn: pipelined ones too
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        owner = self.owner
        owner._command("MAIL")
        if (owner.auth is not None or owner.oauth2 is not None) and not session.authenticated:
            return "530 5.7.0 Authentication required"
        token = getattr(server, "token", None)
        if owner.expired_token_reply is not None and token is not None:
            loop = asyncio.get_running_loop()
            info = await loop.run_in_executor(None, owner._introspect, token)
            if info.get("active") is not True:
                return owner.expired_token_reply
        if owner.mail_reply is not None:
            return owner.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.owner._command("RCPT")
        reply = self.owner.recipient_replies.get(address)
        if reply is not None and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return reply or "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        owner = self.owner
        if owner.data_reply is not None:
            return owner.data_reply
        while owner.data_gate is not None and not owner.data_gate.is_set():
            await asyncio.sleep(0.01)  # held at the end of DATA until the test opens it
        transport = server.transport
        tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        user = session.auth_data if isinstance(session.auth_data, str) else None
        owner._record(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=envelope.original_content or b"",
                tls=tls,
                auth_user=user,
                mail_options=tuple(envelope.mail_options),
                auth_mechanism=getattr(server, "login_mechanism", None),
                helo=session.host_name,
                at=time.time(),
            )
        )
        return "250 2.0.0 OK queued"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.owner._command("RSET")
        return "250 2.0.0 OK"

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        self.owner._command("NOOP")
        return "250 2.0.0 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.owner._command("QUIT")
        return "221 2.0.0 Bye"


class _SMTP(OAuth2Sasl):
    """aiosmtpd's SMTP (with XOAUTH2 and OAUTHBEARER), which can drop the connection in
    the middle of DATA, or refuse a session beyond the owner's ``max_sessions``."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.owner = handler.owner
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called again after STARTTLS; never when an implicit-TLS handshake fails.
        owner = self.owner
        if self._original_transport is None and owner.max_sessions is not None:
            self.refused = owner.live_connections >= owner.max_sessions
        owner._track(self, True)
        super().connection_made(transport)

    async def _handle_client(self) -> None:
        if not self.refused:
            await super()._handle_client()
            return
        with self.owner._lock:
            self.owner.refused_sessions += 1
        await self.push("421 4.7.0 Too many concurrent SMTP sessions from your host")
        assert self.transport is not None
        self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        self.owner._track(self, False)
        super().connection_lost(error)

    async def smtp_DATA(self, arg: str) -> None:
        self.owner._command("DATA")
        if not self.owner.drop_on_data or not self.envelope or not self.envelope.rcpt_tos:
            await super().smtp_DATA(arg)
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        await self._reader.readuntil(b"\r\n")  # take one line of the message, then hang up
        _abort(self)


class _Controller(FreePortController):
    def __init__(self, owner: SmtpServer, **kwargs: Any) -> None:
        super().__init__(_Handler(owner), hostname=HOST, port=owner.port, **kwargs)
        self.owner = owner

    def factory(self) -> SMTP:
        with self.owner._lock:
            self.owner.connections += 1  # one call per TCP connection
        return _SMTP(self.handler, **self.SMTP_kwargs)


class SmtpServer:
    """A real SMTP server on 127.0.0.1 with a free port; a context manager.

    tls: "none", "starttls" (offered unless ``offer_starttls`` is false) or "ssl"
    (implicit TLS), with a trustme certificate for 127.0.0.1 and localhost.
    auth: username → password (AUTH PLAIN/LOGIN); when set, MAIL before AUTH gets 530.
    recipient_replies: address → reply at RCPT, e.g. "550 5.1.1 No such user".
    mail_reply / data_reply: a reply given at MAIL FROM / at the end of DATA instead of 250
    (a message answered with data_reply is not recorded).
    drop_on_data: hang up after the first line of message data.
    max_sessions: answer ``421`` to the greeting of a connection while this many are
    open already, and hang up (a relay limiting sessions per client); counted in
    ``refused_sessions``.
    data_gate: when set, the reply to DATA waits until this event is set.
    oauth2: offer XOAUTH2 and OAUTHBEARER, checking tokens with this introspection (see
    the module docstring); when set, MAIL before AUTH gets 530. oauth2_scope: the scope
    named in the refusal challenge. expired_token_reply: when set, each MAIL of an OAuth2
    session introspects its token again and gets this reply if it is no longer active
    (expired or revoked since AUTH), e.g. "451 4.7.0 Token expired". Real servers rarely
    check; this catches a client that keeps a session past its token.
    tls_setup: called with the server's TLS context before it listens (TLS versions, a
    client certificate required...). ``helo_names`` records every EHLO name received.
    pipelining: offer PIPELINING (RFC 2920) in the EHLO reply (aiosmtpd does not).

    Records (read them from the test thread): ``messages`` (:class:`Received`),
    ``connections`` (TCP connections accepted), ``logins`` / ``failed_logins`` (user
    names), ``auth_attempts`` (:class:`AuthAttempt`: every AUTH with its mechanism and
    token), ``commands`` (MAIL, RCPT, DATA, RSET, NOOP, QUIT in arrival order).
    """

    def __init__(
        self,
        *,
        tls: TlsMode = "none",
        auth: dict[str, str] | None = None,
        offer_starttls: bool = True,
        recipient_replies: dict[str, str] | None = None,
        mail_reply: str | None = None,
        data_reply: str | None = None,
        drop_on_data: bool = False,
        data_gate: threading.Event | None = None,
        ca: trustme.CA | None = None,
        oauth2: OAuth2Server | str | Introspect | None = None,
        oauth2_scope: str = OAUTH2_SCOPE,
        expired_token_reply: str | None = None,
        max_sessions: int | None = None,
        tls_setup: Callable[[ssl.SSLContext], None] | None = None,
        pipelining: bool = False,
    ) -> None:
        self.pipelining = pipelining
        self.tls = tls
        self.auth = dict(auth) if auth is not None else None
        self.offer_starttls = offer_starttls
        self.recipient_replies = dict(recipient_replies or {})
        self.mail_reply = mail_reply
        self.data_reply = data_reply
        self.drop_on_data = drop_on_data
        self.data_gate = data_gate
        self.ca = ca or trustme.CA()
        self.oauth2 = oauth2
        self.oauth2_scope = oauth2_scope
        self.expired_token_reply = expired_token_reply
        self.max_sessions = max_sessions
        self.refused_sessions = 0
        self.tls_setup = tls_setup  # changes the server's TLS context (versions, client certs)
        self.helo_names: list[str] = []  # the EHLO names clients sent
        self.auth_attempts: list[AuthAttempt] = []
        self.host = HOST
        self.port = 0
        self.messages: list[Received] = []
        self.connections = 0
        self.logins: list[str] = []
        self.commands: list[str] = []  # MAIL, RCPT, DATA, RSET, NOOP, QUIT as they came
        self.failed_logins: list[str] = []
        self._lock = threading.Condition()
        self._live: set[_SMTP] = set()
        self._tmp = Path(tempfile.mkdtemp(prefix="smtpserver-"))
        self.ca_file = self._tmp / "ca.pem"  # PEM of ``ca``, for SSL_CERT_FILE
        self._controller: _Controller | None = None

    def __repr__(self) -> str:
        return f"SmtpServer({self.host}:{self.port}, tls={self.tls!r})"

    def __enter__(self) -> SmtpServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts this server's CA (and verifies the host)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def start(self) -> SmtpServer:
        """Listen on 127.0.0.1: a free port the first time, the same port after stop().

        Restarting keeps the records (messages, connections...) and the certificate.
        """
        self._tmp.mkdir(exist_ok=True)
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        kwargs: dict[str, Any] = {
            "server_hostname": "localhost",  # not socket.getfqdn(): no DNS in tests
            "ready_timeout": 10.0,
            "authenticator": self._authenticate if self.auth is not None else None,
            # AUTH only after STARTTLS in "starttls" mode. aiosmtpd does not count
            # implicit TLS for this check, so "ssl" (and "none") must not require it.
            "auth_require_tls": self.tls == "starttls",
            "auth_exclude_mechanism": ([] if self.oauth2 is not None else
                                       list(OAUTH2_MECHANISMS))
                                      + ([] if self.oauth2 is None or self.auth is not None
                                         else ["PLAIN", "LOGIN"]),
        }
        if self.tls != "none":
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert(HOST, "localhost").configure_cert(context)
            if self.tls_setup is not None:
                self.tls_setup(context)
            if self.tls == "ssl":
                kwargs["ssl_context"] = context
            elif self.offer_starttls:
                kwargs["tls_context"] = context
        with self._lock:
            before = self.connections
        self._controller = _Controller(self, **kwargs)
        self._controller.start()
        self.port = self._controller.port
        with self._lock:
            self.connections = before  # forget aiosmtpd's own readiness probe
        return self

    def stop(self) -> None:
        """Hang up on every client, stop the thread, remove the CA file (idempotent)."""
        controller, self._controller = self._controller, None
        if controller is not None:
            # Close live connections inside the loop first: transports left open when
            # the loop closes would raise ResourceWarning (an error under pytest here).
            future = asyncio.run_coroutine_threadsafe(self._hang_up(), controller.loop)
            future.result(timeout=10)
            controller.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` messages arrived; returns them (fails on timeout)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"{len(self.messages)} of {count} messages within {timeout}s")
            return list(self.messages)

    @property
    def live_connections(self) -> int:
        """TCP connections open right now."""
        with self._lock:
            return len(self._live)

    def drop_connections(self) -> None:
        """Hang up on every connected client (as a server restart would)."""
        assert self._controller is not None, "the server is not running"
        loop = self._controller.loop
        asyncio.run_coroutine_threadsafe(self._hang_up(), loop).result(timeout=10)

    def recipients(self) -> list[str]:
        """Every envelope recipient of every accepted message, in order."""
        with self._lock:
            return [r for m in self.messages for r in m.rcpt_tos]

    # -- called from the server thread ------------------------------------------------

    def _record(self, message: Received) -> None:
        with self._lock:
            self.messages.append(message)
            self._lock.notify_all()

    def _command(self, verb: str) -> None:
        with self._lock:
            self.commands.append(verb)

    def _track(self, protocol: _SMTP, alive: bool) -> None:
        with self._lock:
            if alive:
                self._live.add(protocol)
            else:
                self._live.discard(protocol)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.auth is not None
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = data.login.decode("utf-8", "replace")
        ok = self.auth.get(user) == data.password.decode("utf-8", "replace")
        self._auth_attempt(AuthAttempt(mechanism, user, None, ok))
        if ok and isinstance(server, _SMTP):
            server.login_mechanism = mechanism
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    def _auth_attempt(self, attempt: AuthAttempt) -> None:
        with self._lock:
            (self.logins if attempt.ok else self.failed_logins).append(attempt.user)
            self.auth_attempts.append(attempt)

    def _introspect(self, token: str) -> Mapping[str, Any]:
        """The introspection answer for ``token`` (raises when the endpoint fails)."""
        oauth2 = self.oauth2
        assert oauth2 is not None
        if isinstance(oauth2, str | OAuth2Server):
            url = oauth2 if isinstance(oauth2, str) else oauth2.introspection_url
        else:
            return oauth2(token)
        status, answer = post_form(url, {"token": token}, timeout=5)
        if status != 200:
            raise RuntimeError(f"introspection answered HTTP {status}")
        return answer

    async def _hang_up(self) -> None:
        with self._lock:
            live = list(self._live)
        for protocol in live:
            _abort(protocol)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self._lock:
                if not self._live:
                    break
            await asyncio.sleep(0.01)


def _abort(protocol: _SMTP) -> None:
    """Drop a connection at once. close() would wait for the client's TLS close_notify,
    which a blocked client never sends, and leave the socket open when the loop ends."""
    for transport in (protocol.transport, protocol._original_transport):
        # A TLS transport closed twice has let go of its protocol: nothing is left to drop,
        # and earlier Python 3.11 releases (Debian 12's 3.11.2) raise AttributeError in abort().
        if transport is not None and getattr(transport, "_ssl_protocol", transport) is not None:
            transport.abort()  # type: ignore[attr-defined]


@pytest.fixture(name="smtp_server")
def smtp_server_fixture() -> Iterator[Callable[..., SmtpServer]]:
    """Factory: ``smtp_server(tls=..., auth=..., ...)`` starts a server; all stop at teardown.

    Import it as ``smtp_server_fixture``: importing the name ``smtp_server`` works too,
    but ruff then reports F811 on every test whose parameter is ``smtp_server``.
    """
    servers: list[SmtpServer] = []

    def start(**options: Any) -> SmtpServer:
        server = SmtpServer(**options)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


smtp_server = smtp_server_fixture  # the same fixture under its own name (see above)
