"""SMTP sessions over smtplib: connect per security mode, log in, run transactions.

This is the adapter between mailsync and ``smtplib``. Every library error is translated
into :class:`mailsync.errors.ConnectError` with a ``kind`` and a message that names the
server and the reason in plain words (:func:`mailsync.outbound.smtpwire.translate`). A
transaction keeps each recipient's reply, as Postfix does (docs/design.md §3): 2xx sent,
4xx deferred, 5xx failed.

Deadlines (mailsync.deadline.Deadline): every command's reply (the greeting, EHLO, STARTTLS,
AUTH, MAIL, RCPT, DATA, RSET, NOOP, QUIT) must be complete within the server's
``timeout``, however the server spreads its bytes; the message content may take
``timeout`` plus its size at :data:`~mailsync.deadline.MIN_RATE` (64 KiB/s) to be sent and
answered. A command past its deadline raises ConnectError(kind="timeout"), e.g.
``RCPT: no complete reply within 30s``. The bounded smtplib is
:mod:`mailsync.outbound.smtpwire`'s.

Secrets: the password is passed to ``smtplib.login`` and nowhere else. It is not stored
on the session, and translated errors are raised by :class:`mailsync.errors.WireGuard`,
outside the ``except`` block, so that no library exception (which might hold it, e.g. a
``UnicodeEncodeError``) stays attached as ``__context__``.
"""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from mailsync.auth import sasl
from mailsync.config.model import OutgoingServer
from mailsync.deadline import MIN_RATE
from mailsync.errors import ConnectError, WireGuard
from mailsync.netio import connection_note, helo_name, tls_context
from mailsync.outbound.smtpwire import (
    WIRE_ERRORS,
    Bounded,
    BoundedSSL,
    crlf,
    describe,
    reply_text,
    stuffed,
    translate,
)
from mailsync.outbound.types import Delivery, RecipientResult, RecipientStatus

_BAD_ADDRESS = re.compile(r"[\r\n<> ]")


def open_session(
    server: OutgoingServer,
    password: str | None,
    *,
    context: ssl.SSLContext | None = None,
    local_hostname: str | None = None,
) -> SmtpSession:
    """Connect to ``server`` per its ``security``, authenticate if it has a username.

    ``starttls`` never falls back to plain text: a server that does not offer STARTTLS
    raises ConnectError(kind="starttls") before anything else is sent. ``context`` is
    used as given; without it the server's (netio.tls_context: its tls_ca_file, client
    certificate and tls_min_version; no checks when ``server.tls_verify`` is false). The
    EHLO name is ``local_hostname``, else the server's ``helo_name`` (netio.helo_name).
    """
    where = describe(server)
    if not server.host:
        raise ConnectError(f"{where}: no host name is configured", "dns")
    timeout = server.timeout.total_seconds()
    tls = None if server.security == "none" else (
        context or tls_context(server.tls_verify, server.tls))
    local_hostname = local_hostname or helo_name(server.helo_name)
    guard = WireGuard(WIRE_ERRORS, lambda exc, phase: translate(exc, server, phase),
                      secret=password)
    mechanism: str | None = None  # an OAuth2 login's SASL mechanism
    # The host goes to the constructor: smtplib takes the TLS server_hostname from it.
    smtp: Bounded
    if server.security == "ssl":
        smtp = guard("connect", BoundedSSL, server.host, server.port, local_hostname,
                     timeout=timeout, context=tls)
    else:
        smtp = guard("connect", Bounded, server.host, server.port, local_hostname, timeout)
    guard.close = smtp.close
    guard("connect", smtp.ehlo_or_helo_if_needed)
    if server.security == "starttls":
        if not smtp.has_extn("starttls"):
            guard.fail(ConnectError(
                f"{where}: the server does not offer STARTTLS and security is "
                "'starttls'; refusing to continue in plain text", "starttls"))
        guard("starttls", smtp.starttls, context=tls)
        guard("connect", smtp.ehlo_or_helo_if_needed)  # RFC 3207: ask again over TLS
    if server.username:
        if password is None:
            guard.fail(ConnectError(
                f"{where}: username {server.username!r} is set but no password", "auth"))
        if server.auth is not None:
            mechanism, error = guard("auth", _oauth2_login, smtp, server, password)
            if error is not None:
                guard.fail(error)
        else:
            guard("auth", _login, smtp, server.username, password)
    if type(smtp.sock) is socket.socket:  # plain TCP: its deadlines kept by the kernel
        guard("connect", smtp.deadline.in_kernel, smtp.sock)
    session = SmtpSession(smtp, server)
    session.mechanism = mechanism
    used = mechanism or getattr(smtp, "mechanism_used", None)
    session.negotiated = connection_note(server.security, smtp.sock) + (
        f", AUTH {used}" if used and mechanism is None else "" if used else ", no AUTH")
    return session


def _login(smtp: smtplib.SMTP, username: str, password: str) -> None:
    try:
        smtp.login(username, password)
    finally:
        # smtplib keeps the password as an attribute for its AUTH callbacks; the session
        # outlives the login, the password should not.
        vars(smtp).pop("password", None)


def _oauth2_login(smtp: smtplib.SMTP, server: OutgoingServer,
                  token: str) -> tuple[str | None, ConnectError | None]:
    """AUTH OAUTHBEARER (RFC 7628) where offered, else XOAUTH2, with the access token.

    A refused token comes back as a 334 challenge of base64 JSON before the final 535:
    it is answered as the mechanism asks and its status goes into the error.
    """
    where = describe(server)
    offered = set(str(smtp.esmtp_features.get("auth", "")).upper().split())
    assert server.username is not None
    login = sasl.choose(offered, server.username, token, server.host, server.port)
    if login is None:
        return None, ConnectError(
            f"{where}: the server offers no OAuth2 login (AUTH "
            f"{' '.join(sorted(offered)) or 'none'}); XOAUTH2 or OAUTHBEARER is needed for "
            "auth.oauth2", "auth")
    responder = sasl.Responder(login)
    try:
        smtp.auth(login.mechanism, lambda challenge=None: responder(challenge).decode("ascii"))
    except smtplib.SMTPAuthenticationError as exc:
        return login.mechanism, ConnectError(
            f"{where}: OAuth2 ({login.mechanism}): the server refused the access token for "
            f"{server.username!r}: {exc.smtp_code} {reply_text(exc.smtp_error)}"
            f"{responder.reason()}", "auth", exc.smtp_code)
    return login.mechanism, None


class SmtpSession:
    """One open, authenticated SMTP connection; used by one thread at a time.

    ``send`` runs one transaction and leaves the session ready for the next one;
    ``broken`` says the connection is unusable and must be closed, not reused.
    """

    def __init__(self, smtp: Bounded, server: OutgoingServer) -> None:
        self._smtp = smtp
        self._server = server
        self._where = describe(server)
        self.server_name = server.name
        self.broken = False
        self.opened_at = time.monotonic()
        self.last_used = self.opened_at
        self.mechanism: str | None = None  # an OAuth2 login's: XOAUTH2 or OAUTHBEARER
        # What was negotiated, for `mailsync test`: "STARTTLS, TLSv1.3, certificate valid
        # until 2027-03-01, AUTH PLAIN" (an OAuth2 login's mechanism is told apart).
        self.negotiated = ""
        # When the access token it logged in with expires, and when to stop using the
        # session because of it (time.time()); None: a password login.
        self.expires_at: float | None = None
        self.renew_at: float | None = None
        # A wire error of a transaction or RSET: translated, the session marked broken.
        self._guard = WireGuard(WIRE_ERRORS,
                                lambda exc, phase: translate(exc, server, phase),
                                close=self._break)

    def expiring(self, now: float | None = None) -> bool:
        """Whether its OAuth2 token is about to expire: such a session is closed and a new
        one opened (with a fresh token), never used past its token's life."""
        if self.renew_at is None:
            return False
        return (time.time() if now is None else now) >= self.renew_at

    def __repr__(self) -> str:
        return f"SmtpSession(server={self.server_name!r}, broken={self.broken})"

    def __enter__(self) -> SmtpSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def send(self, mail_from: str, recipients: Sequence[str], data: bytes,
             before_content: Callable[[], object] | None = None) -> Delivery:
        """Send ``data`` to ``recipients`` in one transaction; every recipient's reply kept.

        ``before_content`` is called once DATA is accepted, right before the content is
        sent (the deliverer waits there for its previous message's outcome to commit); if
        it raises, the session is broken without sending the content and the error goes on.

        Replies never raise: 4xx defers and 5xx fails, per recipient. A lost connection
        or a timeout raises ConnectError(kind="closed"/"timeout") and marks the session
        broken: whether the server kept the message is then unknown (at-least-once).
        """
        if not recipients:
            raise ValueError("send() needs at least one recipient")
        if self.broken:
            raise ConnectError(f"{self._where}: the session is closed or broken", "closed")
        self.last_used = time.monotonic()
        # self._guard's wall written out: this runs once per message, and the guard's
        # call would be one more per message on the sending path.
        try:
            results = self._transaction(mail_from, list(recipients), data, before_content)
        except WIRE_ERRORS as exc:
            error = translate(exc, self._server, "transaction")
        else:
            self.last_used = time.monotonic()
            return Delivery(self.server_name, tuple(results))
        self._guard.fail(error)  # outside the except block: nothing is chained

    def noop(self) -> bool:
        """Health check: True if the server answers NOOP with 250; else mark broken."""
        if self.broken:
            return False
        try:
            code, _ = self._smtp.noop()
        except WIRE_ERRORS:
            code = -1
        if code != 250:
            self._break()
            return False
        self.last_used = time.monotonic()
        return True

    def reset(self) -> None:
        """Abort any transaction (RSET). Raises ConnectError and marks broken on failure."""
        if self.broken:
            raise ConnectError(f"{self._where}: the session is closed or broken", "closed")
        code, reply = self._guard("transaction", self._smtp.rset)
        if code != 250:
            self._guard.fail(ConnectError(
                f"{self._where}: RSET refused: {code} {reply_text(reply)}", "protocol", code))
        self.last_used = time.monotonic()

    def close(self) -> None:
        """Say QUIT and close the socket; errors are ignored (the session is done)."""
        if self.broken and self._smtp.sock is None:
            return
        self.broken = True
        try:
            self._smtp.quit()
        except WIRE_ERRORS:
            pass
        finally:
            self._smtp.close()

    # -- internals ------------------------------------------------------------------

    def _transaction(self, mail_from: str, recipients: list[str], data: bytes,
                     before_content: Callable[[], object] | None) -> list[RecipientResult]:
        smtp = self._smtp
        data = crlf(data)
        options: list[str] = []
        if not _ascii(mail_from, *recipients):
            if not smtp.has_extn("smtputf8"):
                why = "SMTPUTF8 is required, but was not offered by the server"
                return [RecipientResult(r, "failed", None, why) for r in recipients]
            options.append("SMTPUTF8")
        if not data.isascii() and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if smtp.has_extn("size"):
            options.append(f"SIZE={len(data)}")  # lets the server refuse oversize early

        if any(_BAD_ADDRESS.search(a) for a in (mail_from, *recipients)):
            why = "address contains characters SMTP cannot carry (CR, LF, <, > or space)"
            return [RecipientResult(r, "failed", None, why) for r in recipients]
        # Commands are written directly: smtplib's mail()/rcpt() re-parse every address
        # with email.utils (a third of the sender's CPU time at 1,500 messages/s).
        smtp.command_encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        mail_cmd = f"MAIL FROM:<{mail_from}>" + "".join(f" {o}" for o in options)
        rcpt_cmds = [f"RCPT TO:<{r}>" for r in recipients]
        mail_reply, rcpt_replies, data_reply = smtp.envelope(mail_cmd, rcpt_cmds)
        return self._outcome(recipients, data, mail_reply, rcpt_replies, data_reply,
                             before_content)

    def _outcome(self, recipients: list[str], data: bytes, mail_reply: tuple[int, bytes],
                 rcpt_replies: list[tuple[int, bytes]],
                 data_reply: tuple[int, bytes] | None,
                 before_content: Callable[[], object] | None) -> list[RecipientResult]:
        """Per-recipient results from the replies; sends the content if anyone accepted."""
        smtp = self._smtp
        code, reply = mail_reply
        if not _ok(code):
            self._end_pipelined(data_reply)
            self._after(code)
            return [RecipientResult(r, _status(code), code, reply_text(reply)) for r in recipients]

        results: dict[int, RecipientResult] = {}
        accepted: list[int] = []
        for index, rcpt in enumerate(recipients):
            if index >= len(rcpt_replies):  # a 421 ended the conversation: defer the rest
                results[index] = RecipientResult(rcpt, "deferred", code, reply_text(reply))
                continue
            code, reply = rcpt_replies[index]
            if _ok(code):
                accepted.append(index)
                continue
            results[index] = RecipientResult(rcpt, _status(code), code, reply_text(reply),
                                             "RCPT")
            if code == 421:  # the server is closing the channel: defer the rest, no DATA
                for i in [*accepted, *range(index + 1, len(recipients))]:
                    results[i] = RecipientResult(recipients[i], "deferred", code, reply_text(reply))
                accepted = []
                break
        if not accepted:
            self._end_pipelined(data_reply)
            self._after(code)
            return [results[i] for i in range(len(recipients))]

        if data_reply is None:
            smtp.putcmd("DATA")
            data_reply = smtp.getreply()
        code, reply = data_reply
        if code == 354:
            if before_content is not None:
                try:
                    before_content()
                except BaseException:
                    self._break()  # no content: the server drops the transaction
                    raise
            body = stuffed(data)
            if not body.endswith(b"\r\n"):
                body += b"\r\n"
            # Sent and answered within timeout plus the content's time at MIN_RATE.
            smtp.expect("message content", smtp.timeout + len(body) / MIN_RATE)
            smtp.send(body + b".\r\n")
            code, reply = smtp.getreply()
        status: RecipientStatus = "sent" if _ok(code) else _status(code)
        for index in accepted:
            results[index] = RecipientResult(recipients[index], status, code, reply_text(reply))
        if status != "sent":
            self._after(code)
        return [results[i] for i in range(len(recipients))]

    def _end_pipelined(self, data_reply: tuple[int, bytes] | None) -> None:
        """A pipelined DATA the server accepted although nobody can receive: send nothing."""
        if data_reply is not None and data_reply[0] == 354:
            self._smtp.expect("message content")
            self._smtp.send(b".\r\n")  # an empty message, refused or discarded below
            self._smtp.getreply()

    def _after(self, code: int) -> None:
        """End a failed transaction with RSET so the session can be reused.

        A failing RSET or a 421 (the server is closing) marks the session broken instead
        of raising: the transaction's outcome is already known.
        """
        if code == 421:
            self._break()
            return
        try:
            rset_code, _ = self._smtp.rset()
        except WIRE_ERRORS:
            rset_code = -1
        if rset_code != 250:
            self._break()

    def _break(self) -> None:
        self.broken = True
        self._smtp.close()


def _ok(code: int) -> bool:
    return 200 <= code < 300


def _status(code: int) -> RecipientStatus:
    """Postfix semantics: 5xx fails for good; anything else that is not 2xx defers."""
    return "failed" if 500 <= code < 600 else "deferred"


def _ascii(*values: str) -> bool:
    return all(v.isascii() for v in values)
