"""The OAuth2 grants: one request to the token endpoint for an access token.

Client credentials (Microsoft app-only), refresh token (a signed-in user; a rotated refresh
token is saved before the access token is returned) and Google's service account (JWT
bearer, RFC 7523) go through authlib's requests integration; its errors are translated
here into :class:`~mailsync.errors.OAuth2Error` with the cause dropped (``from None``):
an HTTP error carries the request, whose body holds the secrets.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

# authlib, requests and joserfc are imported where a token is asked for (~0.13 s): every
# process that sends imports this module, and most have no OAuth2 login at all.
from mailsync.auth.settings import OAuth2
from mailsync.auth.store import RefreshTokenFile
from mailsync.config.secrets import Secret
from mailsync.errors import OAuth2Error, OAuth2Refused, OAuth2Unavailable, SecretError
from mailsync.values import field, valueclass

DEFAULT_TIMEOUT = 10.0
# An endpoint that omits expires_in (RFC 6749 only RECOMMENDS it): assume a short life,
# which costs a few more refreshes rather than a refused token.
DEFAULT_LIFETIME = 300.0


@valueclass
class AccessToken:
    """An access token and when it expires (epoch seconds); ``repr`` hides the value."""

    value: str = field(repr=False)
    expires_at: float
    obtained_at: float
    token_type: str = "Bearer"

    def __repr__(self) -> str:
        return f"AccessToken('***', expires_at={self.expires_at:.0f})"

    __str__ = __repr__

    @property
    def lifetime(self) -> float:
        """How long the endpoint granted it for, in seconds."""
        return self.expires_at - self.obtained_at


@valueclass
class GrantContext:
    """What a grant needs besides the settings: the login name (``tokens/<name>.json``,
    and the name in ``run mailsync auth login NAME``), where secrets resolve, the
    ``state_dir`` (refresh-token grants), the timeout of each HTTP request."""

    name: str
    state_dir: Path | None = None
    environ: Mapping[str, str] | None = None
    base_dir: Path | None = None
    timeout: float = DEFAULT_TIMEOUT
    clock: Callable[[], float] = time.time


def resolve(secret: Secret, what: str, ctx: GrantContext) -> str:
    """A secret's value; an unreadable one is a refusal naming the reference."""
    try:
        return secret.resolve(ctx.environ, ctx.base_dir)
    except SecretError as exc:
        raise OAuth2Refused(f"OAuth2: the {what} {secret.describe()}: {exc}", "secret") from None


def _printable(text: str, secrets: Iterable[str], limit: int = 200) -> str:
    """A server's words, fit for a log: secrets blanked, printable ASCII, cut short."""
    for value in secrets:
        if len(value) >= 4:
            text = text.replace(value, "***")
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REASONS = ("invalid_grant", "invalid_client", "unauthorized_client", "invalid_scope",
            "unsupported_grant_type", "invalid_request", "access_denied", "expired_token")
_TEMPORARY = ("temporarily_unavailable", "server_error", "slow_down",
              "authorization_pending")


def refusal(code: str, settings: OAuth2, name: str) -> OAuth2Error:
    """What an OAuth2 error code from the token endpoint means for the operator."""
    url = settings.token_url
    if code in _TEMPORARY:
        return OAuth2Unavailable(f"OAuth2: the token endpoint {url} is unavailable ({code})",
                                 "server_error")
    reason = code if code in _REASONS else "refused"
    sa = settings.grant == "service_account"
    if code == "invalid_grant":
        if settings.grant == "refresh_token":
            text = f"the refresh token was revoked or expired; run mailsync auth login {name}"
        elif sa:
            text = ("the token endpoint refused the service account's assertion "
                    "(invalid_grant): check the key, the subject and the clock")
        else:
            text = "the token endpoint refused the grant (invalid_grant)"
    elif code == "invalid_client":
        text = ("the token endpoint refused the client (invalid_client): check "
                + ("the service account key" if sa else "client_id and client_secret"))
    elif code == "unauthorized_client":
        text = ("the client may not use this grant (unauthorized_client): check "
                + ("its domain-wide delegation for the scope" if sa
                   else "the app registration's permissions"))
    elif code == "invalid_scope":
        text = f"the token endpoint refused the scope {settings.scope!r} (invalid_scope)"
    elif code == "unsupported_grant_type":
        text = f"the token endpoint does not support the {settings.grant} grant"
    else:
        text = f"the token endpoint refused the request ({_printable(code, ())})"
    return OAuth2Refused(f"OAuth2: {text}", reason)


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^)'\"]+)")


def translate(exc: Exception, settings: OAuth2, ctx: GrantContext,
              secrets: Iterable[str] = ()) -> OAuth2Error:
    """authlib's and requests' exception as an OAuth2Error that holds no secret."""
    import requests
    from authlib.integrations.base_client import OAuthError

    # With them: sessions imports requests and urllib3.
    from mailsync.auth.sessions import MAX_ANSWER, timed_out, too_long

    url = settings.token_url
    if isinstance(exc, OAuthError):
        error = refusal(str(exc.error), settings, ctx.name)
        if exc.description:
            error.detail = _printable(str(exc.description), secrets)
        return error
    if timed_out(exc):
        return OAuth2Unavailable(
            f"OAuth2: the token endpoint {url} did not answer within {ctx.timeout:g} s",
            "timeout")
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status >= 500 or status == 429:
            return OAuth2Unavailable(f"OAuth2: the token endpoint {url} answered HTTP {status}",
                                     "server_error")
        return OAuth2Refused(f"OAuth2: the token endpoint {url} answered HTTP {status} "
                             "without an OAuth2 error: check token_url", "bad_response")
    if too_long(exc):
        return OAuth2Unavailable(f"OAuth2: the token endpoint {url} answered more than "
                                 f"{MAX_ANSWER // 2**20} MiB: no token response",
                                 "bad_response")
    if isinstance(exc, requests.RequestException):
        found = _ERRNO.search(str(exc))
        why = found.group(1).strip() if found else "connection failed"
        return OAuth2Unavailable(f"OAuth2: the token endpoint {url} is unreachable ({why})",
                                 "unreachable")
    if isinstance(exc, ValueError):
        return OAuth2Unavailable(f"OAuth2: the token endpoint {url} answered without a JSON "
                                 "token response", "bad_response")
    # Not an error of the exchange (a bug below): named by type only, its text may hold
    # the request.
    return OAuth2Unavailable(f"OAuth2: the token request to {url} failed "
                             f"({type(exc).__name__})", "bad_response")


def access_token_of(raw: Mapping[str, Any], settings: OAuth2, now: float) -> AccessToken:
    """The access token of a token response, with its expiry."""
    value = raw.get("access_token")
    if not isinstance(value, str) or not value:
        raise OAuth2Unavailable(f"OAuth2: the token endpoint {settings.token_url} answered "
                                "without an access_token", "bad_response")
    try:
        lifetime = float(raw["expires_in"])
    except (KeyError, TypeError, ValueError):
        lifetime = DEFAULT_LIFETIME
    return AccessToken(value, now + max(lifetime, 0.0), now,
                       str(raw.get("token_type") or "Bearer"))


def auth_method(settings: OAuth2, has_secret: bool) -> str:
    """How the client authenticates to the token endpoint: Microsoft and Google document
    the secret in the form body; RFC 6749 makes HTTP Basic the one every server has."""
    if not has_secret:
        return "none"
    return "client_secret_post" if settings.provider in ("microsoft", "google") \
        else "client_secret_basic"


def client_session(settings: OAuth2, ctx: GrantContext, scope: str | None) -> tuple[Any, str]:
    """An authlib session for this client, and the client secret ("" when none)."""
    from authlib.integrations.requests_client import OAuth2Session

    # With them: sessions imports requests and urllib3.
    from mailsync.auth.sessions import bounded

    secret = (resolve(settings.client_secret, "client_secret", ctx)
              if settings.client_secret else "")
    session = OAuth2Session(
        client_id=settings.client_id, client_secret=secret or None,
        token_endpoint_auth_method=auth_method(settings, bool(secret)), scope=scope)
    return bounded(session), secret


def _client_credentials(settings: OAuth2, ctx: GrantContext) -> AccessToken:
    session, secret = client_session(settings, ctx, settings.scope)
    with session:
        try:
            raw = session.fetch_token(settings.token_url, grant_type="client_credentials",
                                      timeout=ctx.timeout)
        except Exception as exc:
            raise translate(exc, settings, ctx, (secret,)) from None
    return access_token_of(raw, settings, ctx.clock())


# Rotated refresh tokens that could not be saved (disk full): kept for the next attempt,
# which saves them again before it uses anything.
_unsaved: dict[Path, str] = {}
_unsaved_lock = threading.Lock()


def _refresh(settings: OAuth2, ctx: GrantContext) -> AccessToken:
    if ctx.state_dir is None:
        raise ValueError("a refresh-token grant needs the state_dir to keep rotations in")
    store = RefreshTokenFile(ctx.state_dir, ctx.name)
    with store.locked():
        with _unsaved_lock:
            current = _unsaved.get(store.path)
        current = current or store.read()
        if current is None:
            if settings.refresh_token is None:
                raise OAuth2Refused(f"OAuth2: no refresh token yet; run mailsync auth login "
                                    f"{ctx.name}", "invalid_grant")
            current = resolve(settings.refresh_token, "refresh_token", ctx)
        session, secret = client_session(settings, ctx, settings.scope)
        with session:
            try:
                raw = session.refresh_token(settings.token_url, refresh_token=current,
                                            timeout=ctx.timeout)
            except Exception as exc:
                raise translate(exc, settings, ctx, (secret, current)) from None
        token = access_token_of(raw, settings, ctx.clock())
        rotated = raw.get("refresh_token")
        if isinstance(rotated, str) and rotated and rotated != current:
            # Saved (durably) before the access token leaves this function: killed from
            # here on, the process leaves the new refresh token on disk. The one window no
            # client can close is between the endpoint's rotation and the answer's arrival
            # (a lost answer loses the new token); endpoints that rotate keep the previous
            # token valid for a while for that reason (Microsoft does).
            try:
                store.save(rotated, settings.token_url)
            except OSError as exc:
                with _unsaved_lock:
                    _unsaved[store.path] = rotated
                raise OAuth2Unavailable(
                    f"OAuth2: the rotated refresh token cannot be saved in {store.path} "
                    f"({exc.strerror}); kept in memory until it can", "state") from None
            with _unsaved_lock:
                _unsaved.pop(store.path, None)
    return token


def _service_account(settings: OAuth2, ctx: GrantContext) -> AccessToken:
    from authlib.integrations.requests_client import AssertionSession
    from joserfc.jwk import RSAKey

    # With them: sessions imports requests and urllib3.
    from mailsync.auth.sessions import bounded

    if settings.service_account_key is None:
        raise ValueError("a service_account grant needs service_account_key")
    text = resolve(settings.service_account_key, "service_account_key", ctx)
    what = f"OAuth2: the service account key {settings.service_account_key.describe()}"
    try:
        key = json.loads(text)
        private_key, issuer = key["private_key"], key["client_email"]
        rsa_key = RSAKey.import_key(private_key)   # as an object: authlib 2 wants no PEM
    except Exception:  # whatever it is, its text may quote the key
        raise OAuth2Refused(f"{what} is not a Google JSON key with an RSA private_key and "
                            "a client_email", "key") from None
    session = bounded(AssertionSession(
        token_endpoint=settings.token_url, issuer=issuer, subject=settings.subject,
        audience=settings.token_url, scope=settings.scope, key=rsa_key,
        header={"alg": "RS256"}, default_timeout=ctx.timeout))
    with session:
        try:
            raw = session.refresh_token()  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise translate(exc, settings, ctx, (private_key,)) from None
    return access_token_of(raw, settings, ctx.clock())


def fetch(settings: OAuth2, ctx: GrantContext) -> AccessToken:
    """One access token from the token endpoint by the settings' grant (no cache: see
    :class:`mailsync.auth.tokens.TokenCache`). Raises OAuth2Unavailable (retry later) or
    OAuth2Refused (the operator must act)."""
    if settings.grant == "client_credentials":
        return _client_credentials(settings, ctx)
    if settings.grant == "refresh_token":
        return _refresh(settings, ctx)
    return _service_account(settings, ctx)
