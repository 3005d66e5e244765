"""Provider presets: host, port and security for SMTP, IMAP and POP3, in one table, and
the sending limits of the providers that publish them (:func:`default_rate_limits`).

Explicit keys in the config override a preset. Port defaults follow ``security``.
"""

from __future__ import annotations

from typing import Literal

Protocol = Literal["smtp", "imap", "pop"]
Security = Literal["none", "starttls", "ssl"]
Endpoint = tuple[str, int, Security]

PROVIDERS: dict[str, dict[Protocol, Endpoint]] = {
    "gmail": {
        "smtp": ("smtp.gmail.com", 587, "starttls"),
        "imap": ("imap.gmail.com", 993, "ssl"),
        "pop": ("pop.gmail.com", 995, "ssl"),
    },
    "outlook": {
        "smtp": ("smtp-mail.outlook.com", 587, "starttls"),
        "imap": ("outlook.office365.com", 993, "ssl"),
        "pop": ("outlook.office365.com", 995, "ssl"),
    },
    "office365": {
        "smtp": ("smtp.office365.com", 587, "starttls"),
        "imap": ("outlook.office365.com", 993, "ssl"),
        "pop": ("outlook.office365.com", 995, "ssl"),
    },
    "yahoo": {
        "smtp": ("smtp.mail.yahoo.com", 465, "ssl"),
        "imap": ("imap.mail.yahoo.com", 993, "ssl"),
        "pop": ("pop.mail.yahoo.com", 995, "ssl"),
    },
    "zoho": {
        "smtp": ("smtp.zoho.com", 465, "ssl"),
        "imap": ("imap.zoho.com", 993, "ssl"),
        "pop": ("pop.zoho.com", 995, "ssl"),
    },
    "icloud": {
        "smtp": ("smtp.mail.me.com", 587, "starttls"),
        "imap": ("imap.mail.me.com", 993, "ssl"),
        # iCloud Mail offers no POP3.
    },
}

DEFAULT_PORTS: dict[Protocol, dict[Security, int]] = {
    "smtp": {"none": 25, "starttls": 587, "ssl": 465},
    "imap": {"none": 143, "starttls": 143, "ssl": 993},
    "pop": {"none": 110, "starttls": 110, "ssl": 995},
}

IMPLICIT_TLS_PORTS = {465, 993, 995}

# The providers' published sending limits, as (messages, window in seconds): a server
# (or an account's own login) with this provider gets them unless it declares
# rate_limits (``[]``: none). Gmail's depend on the kind of account: a consumer address
# (@gmail.com) may send 500 a day, a Google Workspace one 2,000.
DAY, MINUTE = 86_400, 60
GMAIL_CONSUMER = ((500, DAY),)
GMAIL_WORKSPACE = ((2000, DAY),)
GMAIL_CONSUMER_DOMAINS = ("gmail.com", "googlemail.com")
RATE_LIMITS: dict[str, tuple[tuple[int, int], ...]] = {
    "office365": ((30, MINUTE), (10_000, DAY)),
}


def default_rate_limits(provider: str | None, username: str | None) -> tuple[tuple[int, int], ...]:
    """The provider's sending limits for the login ``username``, as (messages, seconds);
    empty for a provider that publishes none (or no provider). Gmail: the consumer limit
    unless the login is an address of another domain (a Google Workspace account)."""
    if provider == "gmail":
        domain = (username or "").rpartition("@")[2].lower()
        return GMAIL_CONSUMER if not domain or domain in GMAIL_CONSUMER_DOMAINS \
            else GMAIL_WORKSPACE
    return RATE_LIMITS.get(provider or "", ())


def preset(provider: str | None, protocol: Protocol) -> Endpoint | None:
    """The preset endpoint, or None for ``custom``/no provider/a protocol it lacks."""
    if provider is None or provider == "custom":
        return None
    return PROVIDERS.get(provider, {}).get(protocol)


def resolve_endpoint(
    protocol: Protocol,
    provider: str | None,
    host: str | None,
    port: int | None,
    security: Security | None,
) -> tuple[str | None, int, Security]:
    """Fill host, port and security: explicit keys, then the preset, then defaults.

    Without an explicit or preset security, a port of 465/993/995 means implicit TLS and
    anything else STARTTLS: plain text is never chosen unless asked for.
    """
    p = preset(provider, protocol)
    if p is not None:
        host = host if host is not None else p[0]
        if security is None and port is None:
            port, security = p[1], p[2]
    if security is None:
        security = "ssl" if port in IMPLICIT_TLS_PORTS else "starttls"
    if port is None:
        port = DEFAULT_PORTS[protocol][security]
    return host, port, security
