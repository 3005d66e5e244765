"""SASL XOAUTH2 and OAUTHBEARER (RFC 7628): the client's initial response, and the
server's failure challenge read back into one line for the error message (pure).

The responses are the raw bytes; SMTP ``AUTH`` and IMAP ``AUTHENTICATE`` base64 them
(``smtplib``'s and ``imaplib``'s auth callbacks do it themselves). When a server refuses
the token it sends a challenge (SMTP 334, IMAP ``+``) holding base64 JSON instead of a
final reply; the client answers :data:`XOAUTH2_FAILURE_ACK` or
:data:`OAUTHBEARER_FAILURE_ACK` to get the final failure reply, and
:func:`describe_failure` turns the challenge into ``status 401 (scope ...)``.
"""

from __future__ import annotations

import base64
import binascii
import json
import time

from mailsync.values import valueclass

# What a client sends back on a failure challenge (Google: an empty line; RFC 7628 §3.2.3:
# a single %x01) so that the server ends the exchange with its failure reply.
XOAUTH2_FAILURE_ACK = b""
OAUTHBEARER_FAILURE_ACK = b"\x01"

_MAX_REASON = 200


def _check(what: str, value: str) -> None:
    """A value that holds a separator would forge another field: refuse it."""
    if any(c in value for c in "\x01\r\n\x00"):
        raise ValueError(f"SASL: the {what} holds a control character (^A, CR, LF or NUL)")


def xoauth2(user: str, token: str) -> bytes:
    """The XOAUTH2 initial response: ``user=USER^Aauth=Bearer TOKEN^A^A``."""
    _check("user", user)
    _check("access token", token)
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def _saslname(user: str) -> str:
    """RFC 5801 saslname: ``,`` and ``=`` are written ``=2C`` and ``=3D``."""
    return user.replace("=", "=3D").replace(",", "=2C")


def oauthbearer(user: str, token: str, host: str | None = None,
                port: int | None = None) -> bytes:
    """The OAUTHBEARER initial response (RFC 7628 §3.1): the GS2 header
    ``n,a=USER,`` then ``^Ahost=HOST^Aport=PORT^Aauth=Bearer TOKEN^A^A``."""
    _check("user", user)
    _check("access token", token)
    fields = ""
    if host is not None:
        _check("host", host)
        fields += f"\x01host={host}"
    if port is not None:
        fields += f"\x01port={port}"
    return f"n,a={_saslname(user)},{fields}\x01auth=Bearer {token}\x01\x01".encode()


@valueclass
class SaslFailure:
    """What a server's failure challenge says (fields absent from it are None)."""

    status: str | None
    scope: str | None = None
    schemes: str | None = None
    openid_configuration: str | None = None
    unreadable: str | None = None   # the challenge was not base64 JSON: its printable start

    def describe(self) -> str:
        """One line for an error message: ``status 401 (schemes bearer, scope ...)``."""
        if self.unreadable is not None:
            return f"unreadable failure challenge {self.unreadable!r}"
        details = [f"{k} {v}" for k, v in (("schemes", self.schemes), ("scope", self.scope))
                   if v]
        text = f"status {self.status or 'missing'}"
        if details:
            text += f" ({', '.join(details)})"
        return text


def _printable(text: str, limit: int = _MAX_REASON) -> str:
    """Only printable ASCII, at most ``limit`` characters: a server's words go into logs."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def parse_failure(challenge: bytes | str) -> SaslFailure:
    """Read a failure challenge as the server sent it (base64, as bytes or text; an
    already decoded JSON document is accepted too)."""
    raw = challenge.encode("latin-1", "replace") if isinstance(challenge, str) else challenge
    raw = raw.strip()
    document: object = None
    for decode in (lambda b: base64.b64decode(b, validate=True), lambda b: b):
        try:
            document = json.loads(decode(raw).decode("utf-8"))
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if isinstance(document, dict):
            break
    if not isinstance(document, dict):
        return SaslFailure(None, unreadable=_printable(raw.decode("latin-1"), 60))

    def field(key: str) -> str | None:
        value = document.get(key)
        return None if value is None else _printable(str(value))

    return SaslFailure(field("status"), field("scope"), field("schemes"),
                       field("openid-configuration"))


def describe_failure(challenge: bytes | str) -> str:
    """The one-line reason a failure challenge gives (see :func:`parse_failure`)."""
    return parse_failure(challenge).describe()


@valueclass
class Login:
    """How to log in with a token: the mechanism, its initial response, and the answer to a
    failure challenge."""

    mechanism: str
    initial: bytes
    ack: bytes

    def __repr__(self) -> str:  # the initial response holds the access token
        return f"Login({self.mechanism!r})"


def choose(offered: set[str], user: str, token: str, host: str | None = None,
           port: int | None = None) -> Login | None:
    """OAUTHBEARER (RFC 7628) where the server offers it, else XOAUTH2; None when it
    offers neither. ``offered``: the server's SASL mechanisms, upper case."""
    if "OAUTHBEARER" in offered:
        return Login("OAUTHBEARER", oauthbearer(user, token, host, port),
                     OAUTHBEARER_FAILURE_ACK)
    if "XOAUTH2" in offered:
        return Login("XOAUTH2", xoauth2(user, token), XOAUTH2_FAILURE_ACK)
    return None


class Responder:
    """The client's side of one exchange, for callback-driven SASL (imaplib, smtplib):
    the initial response first, then the failure acknowledgement to each challenge,
    which is kept to explain the failure."""

    def __init__(self, login: Login) -> None:
        self.login = login
        self.sent = False
        self.challenges: list[bytes] = []

    def __call__(self, challenge: bytes | None = None) -> bytes:
        if not self.sent:
            self.sent = True
            return self.login.initial
        self.challenges.append(challenge or b"")
        return self.login.ack

    def reason(self) -> str:
        """``; status 401 (...)`` from the last challenge, or nothing."""
        return f"; {describe_failure(self.challenges[-1])}" if self.challenges else ""


def login_note(mechanism: str | None, expires_at: float) -> str:
    """What `mailsync test` says of an OAuth2 login: ``XOAUTH2, token valid until 14:32``."""
    until = time.strftime("%H:%M", time.localtime(expires_at))
    return f"{mechanism}, token valid until {until}"
