"""Which backend a configuration's store uses, and what is safe to say about a DSN.

Kept apart from :mod:`mailsync.store.postgres` so that the error texts need neither
psycopg nor a connection: :func:`missing_driver` (:mod:`mailsync.config.backends`) only
looks for the package, :func:`scrub` takes a DSN's password (and the DSN itself) out of
any text before it reaches a log, an exception or the terminal, and :func:`describe`
names a database by host and name only.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from mailsync.config.backends import INSTALL_HINT, missing_driver

__all__ = ["INSTALL_HINT", "describe", "missing_driver", "passwords", "scrub"]

_KEYWORD = re.compile(r"(?P<key>password|passfile|sslpassword)\s*=\s*"
                      r"(?P<value>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URI_PASSWORD = re.compile(r"(?P<head>postgres(?:ql)?://[^:/@\s]*:)(?P<password>[^@\s]*)@",
                           re.IGNORECASE)


def passwords(dsn: str) -> list[str]:
    """The secret values a DSN holds (its password, in either form), longest first."""
    found = [m.group("value").strip("'") for m in _KEYWORD.finditer(dsn)]
    found += [m.group("password") for m in _URI_PASSWORD.finditer(dsn)]
    found += [unquote(value) for value in list(found)]
    return sorted({value for value in found if value}, key=len, reverse=True)


def scrub(text: str, dsn: str | None) -> str:
    """``text`` with the DSN and any password in it replaced by ``***``: psycopg's
    messages may quote the connection string (``invalid dsn: ...``)."""
    if dsn:
        text = text.replace(dsn, "***")
        for secret in passwords(dsn):
            text = text.replace(secret, "***")
    text = _KEYWORD.sub(lambda m: f"{m.group('key')}=***", text)
    return _URI_PASSWORD.sub(lambda m: f"{m.group('head')}***@", text)


def describe(dsn: str) -> str:
    """``postgresql:DBNAME@HOST:PORT`` (what is known of them), never a user or password:
    the name of a PostgreSQL store in messages, as a SQLite store is named by its path."""
    parts: dict[str, str] = {}
    if "://" in dsn:
        try:
            url = urlsplit(dsn)
            parts["host"] = url.hostname or ""
            parts["port"] = str(url.port or "")
            parts["dbname"] = url.path.lstrip("/")
        except ValueError:
            pass
    else:
        for key in ("host", "hostaddr", "port", "dbname"):
            match = re.search(rf"(?:^|\s){key}\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)
            if match:
                parts.setdefault("host" if key == "hostaddr" else key, match.group(1).strip("'"))
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql:{parts.get('dbname') or '(default)'}@{host}{port}"
