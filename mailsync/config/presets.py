"""Provider presets: host, port and security for SMTP, IMAP and POP3, in one table.

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
