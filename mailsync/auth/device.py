"""The device authorization grant (RFC 8628) behind ``mailsync auth login NAME``: the
operator signs in on another device, mailsync stores the first refresh token.

The device request is one form POST; the polling goes through authlib's ``fetch_token``
with the device_code grant type. Polling honours ``interval`` and ``slow_down`` (+5 s
each time, RFC 8628 §3.5), goes on while ``authorization_pending`` and through
temporary failures of the endpoint, and stops at ``expired_token``, ``access_denied``
or the device code's own expiry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
from authlib.integrations.base_client import OAuthError

from mailsync.auth.grants import (
    AccessToken,
    GrantContext,
    access_token_of,
    client_session,
    translate,
)
from mailsync.auth.sessions import bounded
from mailsync.auth.settings import OAuth2
from mailsync.auth.store import RefreshTokenFile
from mailsync.errors import OAuth2Refused, OAuth2Unavailable
from mailsync.values import replace

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def _device_request(settings: OAuth2, ctx: GrantContext, url: str) -> dict[str, Any]:
    """Ask the device authorization endpoint for a device code and a user code."""
    data = {"client_id": settings.client_id or "", "scope": settings.scope}
    try:
        with bounded(requests.Session()) as http:
            resp = http.post(url, data=data, timeout=ctx.timeout,
                             headers={"Accept": "application/json"})
        answer = resp.json()
    except (requests.RequestException, ValueError) as exc:
        raise translate(exc, replace(settings, token_url=url), ctx) from None
    if not isinstance(answer, dict):
        answer = {}
    if "error" in answer:
        raise translate(OAuthError(str(answer["error"])), settings, ctx) from None
    for key in ("device_code", "user_code"):
        if not isinstance(answer.get(key), str):
            raise OAuth2Unavailable(f"OAuth2: the device authorization endpoint {url} "
                                    f"answered HTTP {resp.status_code} without a {key}",
                                    "bad_response")
    return answer


def login(
    settings: OAuth2,
    ctx: GrantContext,
    show: Callable[[str, str], None],
    sleep: Callable[[float], None] = time.sleep,
) -> AccessToken:
    """Run the device flow: ``show(verification_url, user_code)`` for the operator, poll
    until they have signed in, store the refresh token in ``state_dir/tokens/<name>.json``
    (0600), and return the first access token."""
    if settings.device_url is None:
        raise OAuth2Refused(f"OAuth2: {ctx.name} has no device authorization endpoint "
                            "(device_url)", "invalid_request")
    if ctx.state_dir is None:
        raise ValueError("mailsync auth login needs the state_dir to store the token in")
    store = RefreshTokenFile(ctx.state_dir, ctx.name)
    answer = _device_request(settings, ctx, settings.device_url)
    url = str(answer.get("verification_uri_complete") or answer.get("verification_uri")
              or answer.get("verification_url") or "")   # Google says verification_url
    show(url, answer["user_code"])
    try:
        interval = max(float(answer.get("interval", 5)), 1.0)
    except (TypeError, ValueError):
        interval = 5.0
    try:
        lifetime = float(answer.get("expires_in", 900))
    except (TypeError, ValueError):
        lifetime = 900.0
    deadline = ctx.clock() + lifetime
    expired = OAuth2Refused(f"OAuth2: the device code expired before the sign-in; run "
                            f"mailsync auth login {ctx.name} again", "expired_token")
    session, secret = client_session(settings, ctx, None)
    with session:
        while True:
            sleep(interval)
            if ctx.clock() > deadline:
                raise expired
            try:
                raw = session.fetch_token(settings.token_url, grant_type=DEVICE_CODE_GRANT,
                                          device_code=answer["device_code"],
                                          timeout=ctx.timeout)
            except Exception as exc:
                error = str(getattr(exc, "error", ""))
                if error == "authorization_pending":
                    continue
                if error == "slow_down":
                    interval += 5
                    continue
                if error == "expired_token":
                    raise expired from None
                if error == "access_denied":
                    raise OAuth2Refused("OAuth2: the sign-in was declined (access_denied)",
                                        "access_denied") from None
                failure = translate(exc, settings, ctx, (secret, answer["device_code"]))
                if isinstance(failure, OAuth2Unavailable):
                    continue   # the endpoint will be back: the code is valid until deadline
                raise failure from None
            break
    token = access_token_of(raw, settings, ctx.clock())
    refresh = raw.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        raise OAuth2Refused("OAuth2: the token endpoint gave no refresh token (Microsoft: "
                            "add offline_access to the scope)", "bad_response")
    with store.locked():
        store.save(refresh, settings.token_url)
    return token
