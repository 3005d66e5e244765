"""The one exception hierarchy of mailsync.

Adapters translate their library's errors into these at the boundary, so callers
never catch ``smtplib``, ``imaplib`` or ``sqlite3`` exceptions directly::

    MailsyncError
    ├── ConfigError            the configuration file cannot be used
    │   └── ConfigInvalid      it was read, but has errors (carries the problems)
    ├── SecretError            a secret reference cannot be resolved
    ├── StoreError             the SQLite store cannot be opened or written
    │   ├── StoreUnavailable   a commit failed on the disk (full, I/O): retry later
    │   ├── StoreLost          state_dir/store-id names a store that is missing or replaced
    │   └── StoreDamaged       SQLite finds the file corrupt (or not a database at all)
    ├── ActivityRefused        an activity request the config or its state does not allow
    └── DeliveryError          sending or fetching failed
        ├── TemporaryFailure   retry later (4xx, timeout, lost connection)
        │   └── ConnectError   no usable session: DNS, refused, timeout, TLS, AUTH
        └── PermanentFailure   do not retry (5xx, refused by policy)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailsync.config.problems import Problem


class MailsyncError(Exception):
    """Base class of every error mailsync raises on purpose."""


class ConfigError(MailsyncError):
    """The configuration file cannot be read or used."""


class ConfigInvalid(ConfigError):
    """The configuration file was read but has errors; ``problems`` lists all of them."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        errors = [p for p in self.problems if p.severity == "error"]
        super().__init__(f"{len(errors)} error(s) in the configuration")


class SecretError(MailsyncError):
    """A secret reference cannot be resolved (unset variable, unreadable file)."""


class StoreError(MailsyncError):
    """The store cannot be opened, migrated or written."""


class StoreUnavailable(StoreError):
    """A commit failed because of the disk (full, I/O error, read-only): nothing of the
    transaction was kept, and the same write can succeed once the disk has room.
    ``kind``: ``full``, ``io``, ``readonly`` or ``corrupt``."""

    def __init__(self, message: str, kind: str = "io") -> None:
        super().__init__(message)
        self.kind = kind


class StoreLost(StoreError):
    """``state_dir/store-id`` records a store whose database is missing, or another
    database is in its place: starting would silently begin an empty history."""


class StoreDamaged(StoreError):
    """SQLite reports the database file corrupt or not a database (see docs/store.md)."""


class ActivityRefused(MailsyncError):
    """A request about activities that the config or the activity's state does not allow
    (unknown or removed type, wrong record model, missing attachment, not open)."""


class DeliveryError(MailsyncError):
    """Sending or fetching a message failed; ``code`` is the server's reply code if any."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TemporaryFailure(DeliveryError):
    """A failure worth retrying later: a 4xx reply, a timeout or a lost connection."""


class PermanentFailure(DeliveryError):
    """A failure not worth retrying: a 5xx reply or a refusal by policy."""


class ConnectError(TemporaryFailure):
    """No usable session could be opened to a server; ``kind`` classifies why.

    kind: ``dns`` (unknown host), ``refused``, ``timeout``, ``tls`` (handshake or
    certificate), ``starttls`` (not offered: never falls back to plain text), ``auth``
    (authentication failed), ``folder`` (the IMAP folder or the Maildir is missing),
    ``protocol`` (unexpected greeting or reply), ``closed``
    (the server hung up). Messages are deferred and the next eligible server is tried.
    """

    def __init__(self, message: str, kind: str, code: int | None = None) -> None:
        super().__init__(message, code)
        self.kind = kind
