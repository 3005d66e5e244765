"""The one exception hierarchy of mailsync.

Adapters translate their library's errors into these at the boundary, so callers
never catch ``smtplib``, ``imaplib`` or ``sqlite3`` exceptions directly::

    MailsyncError
    ├── ConfigError            the configuration file cannot be used
    │   └── ConfigInvalid      it was read, but has errors (carries the problems)
    ├── SecretError            a secret reference cannot be resolved
    ├── OAuth2Error            no OAuth2 access token could be had (``reason``: a fixed word)
    │   ├── OAuth2Unavailable  the token endpoint is unreachable, slow or failing: retry later
    │   └── OAuth2Refused      the endpoint refused the client or the grant: the operator acts
    ├── StoreError             the SQLite store cannot be opened or written
    │   ├── StoreUnavailable   a commit failed on the disk (full, I/O): retry later
    │   ├── StoreLost          state_dir/store-id names a store that is missing or replaced
    │   └── StoreDamaged       SQLite finds the file corrupt (or not a database at all)
    ├── ActivityRefused        an activity request the config or its state does not allow
    └── DeliveryError          sending or fetching failed
        ├── TemporaryFailure   retry later (4xx, timeout, lost connection)
        │   └── ConnectError   no usable session: DNS, refused, timeout, TLS, AUTH
        └── PermanentFailure   do not retry (5xx, refused by policy)

:class:`WireGuard` is how the SMTP, IMAP and POP3 adapters cross that boundary: it runs
one step of a conversation, and a library error becomes a ConnectError raised with no
library exception attached (one might hold the password), the password scrubbed from
its text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

if TYPE_CHECKING:
    from mailsync.config.problems import Problem

T = TypeVar("T")


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


class OAuth2Error(MailsyncError):
    """No OAuth2 access token could be had. The message starts with ``OAuth2:`` and never
    holds a token, a secret or a key; ``reason`` is one fixed word (a metrics label:
    ``unreachable``, ``timeout``, ``server_error``, ``bad_response``, ``invalid_grant``,
    ``invalid_client``, ``unauthorized_client``, ``invalid_scope``, ...); ``permanent`` says
    whether retrying can help before the operator changes something.

    The SMTP, IMAP and POP3 layers turn it into ``ConnectError(str(exc), kind="oauth2")``:
    the server is marked down and its messages deferred, as for a refused password.
    """

    permanent = False

    def __init__(self, message: str, reason: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        # the endpoint's error_description, printable and with secrets blanked (for a log)
        self.detail = detail


class OAuth2Unavailable(OAuth2Error):
    """The token endpoint could not be used right now (unreachable, timeout, 5xx, an answer
    that is not a token response): defer and retry with backoff."""


class OAuth2Refused(OAuth2Error):
    """The token endpoint refused the client or the grant (``invalid_grant``,
    ``invalid_client``, ...), or the secrets it needs cannot be read: nothing changes until
    the operator acts (the message says what to do)."""

    permanent = True


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


class StoreOutdated(StoreError):
    """The store is at an older schema version than this mailsync, and this command does
    not migrate it (only ``mailsync run`` does: an older daemon may own the store)."""

    def __init__(self, message: str, version: int, current: int) -> None:
        super().__init__(message)
        self.version = version
        self.current = current


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
    (the server hung up), ``down`` (an outgoing server known to be down: not connected
    to, see mailsync.outbound.pool). Messages are deferred and the next eligible server
    is tried.
    """

    def __init__(self, message: str, kind: str, code: int | None = None) -> None:
        super().__init__(message, code)
        self.kind = kind


def scrubbed(error: ConnectError, secret: str | None) -> ConnectError:
    """Guard against a server (or library) that echoes the password back."""
    if not secret or secret not in str(error):
        return error
    return ConnectError(str(error).replace(secret, "***"), error.kind, error.code)


def _nothing() -> None:
    return None


class WireGuard:
    """Runs the steps of one connection's conversation; a library error ends it.

    ``guard(phase, fn, *args)`` returns ``fn(*args)``. An error of ``wire`` becomes
    ``translate(exc, phase)``, and the connection is closed (``close``) and the
    ConnectError raised with the ``secret`` scrubbed from it. It is raised outside the
    ``except`` block, so that no library exception (which might hold the password, e.g.
    a ``UnicodeEncodeError`` of it) is attached as ``__context__`` or ``__cause__``. Any
    other exception closes the connection and goes on as it is. :meth:`fail` ends the
    conversation with an error of the adapter's own (STARTTLS not offered, ...).
    """

    __slots__ = ("close", "_secret", "_translate", "_wire")

    def __init__(self, wire: tuple[type[BaseException], ...],
                 translate: Callable[[BaseException, str], ConnectError],
                 close: Callable[[], object] = _nothing, secret: str | None = None) -> None:
        self._wire = wire
        self._translate = translate
        self.close = close  # set again once the connection exists
        self._secret = secret

    def __call__(self, phase: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except self._wire as exc:
            error = self._translate(exc, phase)
        except BaseException:
            self.close()
            raise
        self.fail(error)  # outside the except block: nothing is chained

    def fail(self, error: ConnectError) -> NoReturn:
        """Close the connection and raise ``error``, the secret scrubbed from it."""
        self.close()
        raise scrubbed(error, self._secret)
