"""``auth: {oauth2: ...}`` in the configuration: presets, the model value, the checks.

Providers' token endpoints and scopes live in one table here, per grant and protocol, as
the host presets do in presets.py; explicit keys override them. :func:`build` turns a
schema-valid block into :class:`~mailsync.auth.settings.OAuth2`; :func:`check` yields the
semantic problems of a block and of the login around it (``password`` beside it, no
``username``, a grant the provider does not offer, ...).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from typing import Any, cast
from urllib.parse import urlsplit

from mailsync.auth.settings import Grant, OAuth2
from mailsync.config.presets import Protocol
from mailsync.config.problems import Path, Severity
from mailsync.config.secrets import Secret

Finding = tuple[Severity, Path, str]
SecretOf = Callable[[Any], Secret | None]

_MICROSOFT = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
TOKEN_URLS = {"microsoft": _MICROSOFT + "/token", "google": "https://oauth2.googleapis.com/token"}
DEVICE_URLS = {"microsoft": _MICROSOFT + "/devicecode",
               "google": "https://oauth2.googleapis.com/device/code"}
# Microsoft: app-only tokens are for the Exchange Online resource as a whole; a signed-in
# user's token names the protocol's delegated permission (offline_access: a refresh token).
_MS_DELEGATED = {"smtp": "SMTP.Send", "imap": "IMAP.AccessAsUser.All",
                 "pop": "POP.AccessAsUser.All"}
GOOGLE_SCOPE = "https://mail.google.com/"

# Microsoft's announcement of the end of SMTP AUTH with passwords (message center MC786329).
PASSWORD_WARNING = (
    "Microsoft refuses passwords for IMAP and POP3 (since October 2022) and turns SMTP AUTH "
    "with passwords off by default at the end of December 2026 (MC786329): use auth.oauth2 "
    "(docs/oauth2.md)")
MICROSOFT_PRESETS = ("office365", "outlook")


def scope(provider: str, grant: str, protocol: Protocol) -> str | None:
    """The preset scope, or None (``generic`` has none)."""
    if provider == "google":
        return GOOGLE_SCOPE
    if provider == "microsoft":
        if grant == "client_credentials":
            return "https://outlook.office365.com/.default"
        return f"https://outlook.office.com/{_MS_DELEGATED[protocol]} offline_access"
    return None


def grant_of(raw: dict[str, Any]) -> str:
    """The grant a block asks for: explicit, or by the keys it gives."""
    if "grant" in raw:
        return str(raw["grant"])
    if "service_account_key" in raw:
        return "service_account"
    if "refresh_token" in raw or "client_secret" not in raw:
        return "refresh_token"  # without one, `mailsync auth login` obtains it
    return "client_credentials"


def build(raw: dict[str, Any], protocol: Protocol, secret: SecretOf) -> OAuth2:
    """The model value of a schema-valid ``oauth2`` block, presets filled in."""
    provider = raw["provider"]
    grant = grant_of(raw)
    tenant = raw.get("tenant")
    token_url = raw.get("token_url")
    device_url = raw.get("device_url")
    if provider in TOKEN_URLS and (provider == "google" or tenant):
        token_url = token_url or TOKEN_URLS[provider].format(tenant=tenant)
        device_url = device_url or DEVICE_URLS[provider].format(tenant=tenant)
    return OAuth2(
        provider=provider, grant=cast(Grant, grant), token_url=token_url or "",
        scope=raw.get("scope") or scope(provider, grant, protocol) or "",
        client_id=raw.get("client_id"), client_secret=secret(raw.get("client_secret")),
        refresh_token=secret(raw.get("refresh_token")),
        service_account_key=secret(raw.get("service_account_key")),
        subject=raw.get("subject"), tenant=tenant, device_url=device_url)


def check(path: Path, raw_login: dict[str, Any], provider: str | None,
          auth: OAuth2 | None) -> Iterator[Finding]:
    """Problems of a login's ``auth`` (``path`` is the login's path)."""
    if auth is None:
        if provider in MICROSOFT_PRESETS and "password" in raw_login:
            yield ("warning", path + ("password",), f"a password on provider {provider}: "
                   + PASSWORD_WARNING)
        return
    here: Path = path + ("auth", "oauth2")
    raw = raw_login["auth"]["oauth2"]
    if "password" in raw_login:
        yield ("error", path + ("password",),
               "password and auth.oauth2 exclude each other: OAuth2 takes the place of the "
               "password (remove one)")
    if "username" not in raw_login:
        yield ("error", path, "username is missing: with auth.oauth2 it names the mailbox "
                              "the token is for (user= of XOAUTH2)")
    if auth.provider == "microsoft" and not auth.tenant and "token_url" not in raw:
        yield ("error", here, "provider microsoft needs tenant (contoso.onmicrosoft.com or "
                              "its id) for its token endpoint, or token_url")
    if auth.provider == "generic":
        for key in ("token_url", "scope"):
            if key not in raw:
                yield ("error", here, f"provider generic needs {key} (no preset fills it)")
    if auth.grant != "service_account" and not auth.client_id:
        yield ("error", here, f"client_id is missing: the {auth.grant} grant names the "
                              "application registered with the provider")
    if auth.grant == "client_credentials":
        if auth.client_secret is None:
            yield ("error", here, "client_secret is missing: the client_credentials grant "
                                  "authenticates the application with it")
        if auth.provider == "google":
            yield ("error", here, "Google offers no client_credentials grant for mail: use a "
                                  "service account (service_account_key, subject) or a "
                                  "signed-in user (refresh_token / mailsync auth login)")
    if auth.grant == "service_account":
        if auth.service_account_key is None:
            yield ("error", here, "service_account_key is missing: the service_account grant "
                                  "signs its request with the account's JSON key")
        if not auth.subject:
            yield ("error", here, "subject is missing: the user the service account acts as "
                                  "(domain-wide delegation)")
    for key in ("service_account_key", "subject"):
        if key in raw and auth.grant != "service_account":
            yield ("error", here + (key,), f"{key} applies to the service_account grant only "
                                           f"(this block's grant is {auth.grant})")
    for key in ("token_url", "device_url"):
        url = raw.get(key)
        if url and not _safe_url(url):
            yield ("error", here + (key,), f"{key} {url!r} must be https (http only to a "
                                           "loopback address, for tests)")
    for key in ("client_secret", "refresh_token", "service_account_key"):
        value = raw.get(key)
        if isinstance(value, str):
            yield ("warning", here + (key,), f"plain-text {key} in the config: use "
                                             "{env: NAME}, {file: PATH} or {credential: NAME}")


def _safe_url(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return parts.scheme == "http" and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
