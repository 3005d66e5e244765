"""XOAUTH2 and OAUTHBEARER for the aiosmtpd test server (tests/smtpserver.py).

:class:`OAuth2Sasl` is aiosmtpd's SMTP with ``auth_XOAUTH2`` and ``auth_OAUTHBEARER``
methods (aiosmtpd offers every ``auth_*`` method as a mechanism); the owning SmtpServer
introspects the token and records each attempt. The wire is described in
tests/smtpserver.py.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult

HOST = "127.0.0.1"
OAUTH2_MECHANISMS = ("XOAUTH2", "OAUTHBEARER")
OAUTH2_SCOPE = "https://mail.google.com/"  # the "scope" of the 401 challenge
XOAUTH2_REFUSED = "535 5.7.3 Authentication unsuccessful"
OAUTHBEARER_REFUSED = "535 5.7.8 Authentication credentials invalid"
# token -> its RFC 7662 introspection answer
Introspect = Callable[[str], Mapping[str, Any]]


@dataclass(frozen=True)
class AuthAttempt:
    """One AUTH: the mechanism, the user named, the bearer token (None for PLAIN/LOGIN),
    whether it succeeded, and the JSON error the server sent in its 334 when it refused a
    token (None otherwise)."""

    mechanism: str
    user: str
    token: str | None
    ok: bool
    challenge: Mapping[str, str] | None = None


class OAuth2Sasl(SMTP):
    """aiosmtpd's SMTP with the two bearer-token SASL mechanisms."""

    owner: Any  # the SmtpServer: _introspect(), _auth_attempt(), oauth2_scope
    login_mechanism: str | None = None  # (an "auth_" name would be offered as a mechanism)
    token: str | None = None  # the OAuth2 token of the session's AUTH

    async def auth_XOAUTH2(self, _: SMTP, args: list[str]) -> AuthResult:
        return await self._oauth2("XOAUTH2", args)

    async def auth_OAUTHBEARER(self, _: SMTP, args: list[str]) -> AuthResult:
        return await self._oauth2("OAUTHBEARER", args)

    async def _oauth2(self, mechanism: str, args: list[str]) -> AuthResult:
        handled = AuthResult(success=False, handled=True)
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if blob is MISSING:
                return handled  # "*" (aiosmtpd answered 501) or bad base64
        else:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await self.push("501 5.5.2 Can't decode base64")
                return handled
        assert isinstance(blob, bytes)
        parsed = _parse_sasl(mechanism, blob)
        if parsed is None:
            await self.push(f"501 5.5.2 Malformed {mechanism} initial response")
            return handled
        user, token = parsed
        owner = self.owner
        try:
            info = await asyncio.get_running_loop().run_in_executor(None, owner._introspect,
                                                                    token)
        except Exception:
            await self.push("454 4.7.0 Temporary authentication failure")
            return handled
        if info.get("active") is True and user in (info.get("username"), info.get("sub")):
            owner._auth_attempt(AuthAttempt(mechanism, user, token, True))
            self.login_mechanism, self.token = mechanism, token
            return AuthResult(success=True, auth_data=user)
        if mechanism == "XOAUTH2":
            error = {"status": "401", "schemes": "bearer", "scope": owner.oauth2_scope}
            refused = XOAUTH2_REFUSED
        else:
            error = {"status": "invalid_token", "scope": owner.oauth2_scope,
                     "openid-configuration": f"http://{HOST}/.well-known/openid-configuration"}
            refused = OAUTHBEARER_REFUSED
        owner._auth_attempt(AuthAttempt(mechanism, user, token, False, error))
        if await self.challenge_auth(json.dumps(error)) is MISSING:
            return handled
        return AuthResult(success=False, handled=False, message=refused)


def _parse_sasl(mechanism: str, blob: bytes) -> tuple[str, str] | None:
    """(user, token) from an XOAUTH2 or OAUTHBEARER initial response, None if malformed."""
    text = blob.decode("utf-8", "replace")
    fields = text.split("\x01")
    user: str | None = None
    if mechanism == "OAUTHBEARER":
        gs2, _, rest = text.partition("\x01")
        parts = gs2.split(",")
        if len(parts) < 3 or parts[0] not in ("n", "y") or not parts[1].startswith("a="):
            return None
        user = parts[1][2:].replace("=2C", ",").replace("=3D", "=")
        fields = rest.split("\x01")
    auth: str | None = None
    for item in fields:
        key, _, value = item.partition("=")
        if key == "user" and mechanism == "XOAUTH2":
            user = value
        elif key == "auth":
            auth = value
    if not user or auth is None or not auth.lower().startswith("bearer ") or \
            not text.endswith("\x01\x01"):
        return None
    return user, auth[7:]
