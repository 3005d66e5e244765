"""The configuration as a tree of frozen value classes, the types every part reads.

Values here are effective: provider presets and defaults are filled in, durations are
``timedelta``, sizes are bytes, relative paths are resolved against the config file's
directory, and secrets are :class:`Secret` references (never their values). They are
made from validated data by :func:`mailsync.config.model.build`.
"""

from __future__ import annotations

import unicodedata
from datetime import timedelta
from pathlib import Path
from typing import Literal, NamedTuple

from mailsync.auth.settings import OAuth2
from mailsync.config.admin import Admin
from mailsync.config.deliverability import DkimKey, Webhook
from mailsync.config.presets import Security
from mailsync.config.secrets import Secret
from mailsync.values import field, valueclass

IncomingType = Literal["pop", "imap", "local"]
TlsVersion = Literal["TLSv1.2", "TLSv1.3"]


@valueclass
class Retry:
    """Backoff of deferred messages."""

    first: timedelta = timedelta(minutes=5)
    max: timedelta = timedelta(hours=1)
    lifetime: timedelta = timedelta(days=5)


class RateLimit(NamedTuple):
    """At most ``messages`` sends in any window of ``per`` (a sliding window, exact:
    mailsync/outbound/ratelimit.py). A tuple, so that plans show it as ``[30, 1m]``."""

    messages: int
    per: timedelta


@valueclass
class Suppression:
    """The suppression list (mailsync/outbound/suppression.py): how long a hard-bounced
    recipient stays on it."""

    expiry: timedelta = timedelta(days=30)


@valueclass
class Tls:
    """A server's TLS beyond ``tls_verify``: the CAs it trusts besides (or instead of) the
    system's, its client certificate, the oldest version it accepts. Server keys override
    the ``daemon`` defaults, which are already filled in here."""

    ca_file: Path | None = None
    ca_only: bool = False
    client_cert: Secret | None = None
    client_key: Secret | None = None
    min_version: TlsVersion = "TLSv1.2"


@valueclass
class StoreBackend:
    """Where the store lives (``daemon.store``): SQLite in state_dir (the default), or a
    PostgreSQL database shared by several nodes, reached through ``dsn`` (a secret
    reference: a DSN may hold a password)."""

    kind: Literal["sqlite", "postgresql"] = "sqlite"
    dsn: Secret | None = None
    pool_size: int = 4  # PostgreSQL: the most connections one process opens

    def describe(self) -> str:
        """What the store is, for messages; never the DSN itself."""
        return "SQLite in state_dir" if self.kind == "sqlite" else "PostgreSQL"


@valueclass
class Daemon:
    """Settings of the daemon process."""

    state_dir: Path
    spool_dir: Path
    metrics_listen: str = "127.0.0.1:9877"
    admin_listen: str | None = None  # the admin console (config/admin.py); None: off
    log_format: Literal["text", "json"] = "text"
    log_deliveries: bool = False  # a log line per message sent, as a mail log has
    retry: Retry = Retry()
    max_message_size: int = 25 << 20
    history_retention: timedelta = timedelta(days=90)
    auto_reload: bool = True
    helo_name: str | None = None  # None: this machine's FQDN (netio.helo_name)
    tls: Tls = Tls()  # the defaults of the servers' TLS keys (already filled in there)
    store: StoreBackend = StoreBackend()  # daemon.store: SQLite in state_dir by default
    # Several nodes on one PostgreSQL store: how long a node's hold on an incoming server
    # (and on the singleton work) lasts without renewal (mailsync/store/leases.py).
    mailbox_lease: timedelta = timedelta(seconds=30)
    node: str = "mailsync"  # daemon.node: this node's name (default: the host name)
    send_lease: timedelta = timedelta(seconds=30)  # a shared store's sending claims


@valueclass
class AliasDomain:
    """Domain for the catchall Reply-To, VERP bounces and rewritten From addresses."""

    domain: str
    catchall: str | None = None
    bounce: str | None = None
    default_from: str | None = None


@valueclass
class OutgoingServer:
    """An SMTP server (declared, or the implicit one of an account's own login)."""

    name: str
    host: str | None
    port: int
    security: Security
    provider: str | None = None
    tls_verify: bool = True
    tls: Tls = Tls()
    helo_name: str | None = None  # None: this machine's FQDN (netio.helo_name)
    username: str | None = None
    password: Secret | None = None
    auth: OAuth2 | None = None
    from_filter: tuple[str, ...] = ()
    priority: int = 10
    max_connections: int = 4
    timeout: timedelta = timedelta(seconds=30)
    # Sends allowed per window: the declared rate_limits, else the provider's defaults.
    rate_limits: tuple[RateLimit, ...] = ()

    def allows(self, address: str) -> bool:
        """Whether ``from_filter`` lets this server send as ``address`` (empty: any)."""
        return not self.from_filter or filter_match(self.from_filter, address) is not None


def filter_match(entries: tuple[str, ...], address: str) -> Literal["address", "domain"] | None:
    """How a from_filter matches an address: the exact address, its domain, or not at all."""
    address = address.lower()
    domain = address.rpartition("@")[2]
    entries_l = [e.lower() for e in entries]
    if address in entries_l:
        return "address"
    if domain in entries_l:
        return "domain"
    return None


@valueclass
class ActivityRule:
    """Schedule an activity of ``type`` for ``user`` for each new message."""

    type: str
    user: str | None = None


@valueclass
class IncomingServer:
    """A mailbox polled for new messages."""

    name: str
    type: IncomingType
    host: str | None = None
    port: int | None = None
    security: Security | None = None
    provider: str | None = None
    tls_verify: bool = True
    tls: Tls = Tls()
    username: str | None = None
    password: Secret | None = None
    auth: OAuth2 | None = None
    folder: str | None = None
    path: Path | None = None
    poll_interval: timedelta = timedelta(seconds=60)
    keep_on_server: bool = True
    timeout: timedelta = timedelta(seconds=30)
    activity: ActivityRule | None = None
    deliver_to: Path | None = None
    max_message_size: int = 25 << 20  # larger messages are skipped, never fetched


@valueclass
class Account:
    """A sending account: an address, a sender name, how it sends, and who may use it."""

    name: str
    email: str
    sender_name: str | None = None
    server: str | None = None
    own_login: OutgoingServer | None = None
    granted_to: tuple[str, ...] = ()
    # The account's own rate_limits (whatever server sends it); with an own login they
    # are that login's (own_login.rate_limits) and this is empty.
    rate_limits: tuple[RateLimit, ...] = ()


@valueclass
class Delay:
    """Deadline rule: base (previous deadline or completion date) + count units."""

    count: int = 0
    unit: Literal["days", "weeks", "months"] = "days"
    base: Literal["previous_deadline", "completion_date"] = "previous_deadline"


@valueclass
class ActivityType:
    """A kind of activity (reply, call, meeting...)."""

    name: str
    action: Literal["none", "email", "phonecall", "meeting", "upload_document"] = "none"
    default_user: str | None = None
    model: str | None = None
    default_summary: str | None = None
    icon: str | None = None
    decoration: Literal["none", "warning", "danger"] = "none"
    delay: Delay = Delay()
    chaining: Literal["trigger", "suggest"] = "suggest"
    default_next: str | None = None
    recommended_next: tuple[str, ...] = ()
    default_description: str | None = None


UnixUser = str | int  # a Unix user name, or a numeric uid


@valueclass
class Binding:
    """A user bound to the Unix accounts allowed to submit as it (``users[].unix_users``).

    A spool file naming ``user`` is taken only when its owner is one of ``unix_users``
    (by name or uid); a user without a binding accepts any owner.
    """

    user: str
    unix_users: tuple[UnixUser, ...]


@valueclass
class Config:
    """A whole configuration file."""

    daemon: Daemon
    alias_domain: AliasDomain | None = None
    users: tuple[str, ...] = ()
    bindings: tuple[Binding, ...] = ()  # the users that name their unix_users
    outgoing_servers: tuple[OutgoingServer, ...] = ()
    incoming_servers: tuple[IncomingServer, ...] = ()
    accounts: tuple[Account, ...] = ()
    activity_types: tuple[ActivityType, ...] = ()
    admin: Admin | None = None  # the admin console's users and access (config/admin.py)
    suppression: Suppression = Suppression()
    dkim: tuple[DkimKey, ...] = ()       # signing keys by From domain (deliverability.py)
    webhooks: tuple[Webhook, ...] = ()   # delivery event endpoints (deliverability.py)
    version: int = 1
    source: str = field(default="", compare=False)

    def sending_servers(self) -> dict[str, OutgoingServer]:
        """Every server a message may go through, by name: the declared outgoing servers
        and the accounts' own logins (named ``account:NAME``)."""
        servers = {s.name: s for s in self.outgoing_servers}
        for account in self.accounts:
            if account.own_login is not None:
                servers[account.own_login.name] = account.own_login
        return servers

    def unix_users(self, user: str) -> tuple[UnixUser, ...]:
        """The Unix accounts allowed to submit as ``user``; empty: any may."""
        return next((b.unix_users for b in self.bindings if b.user == user), ())

    def outgoing(self, name: str) -> OutgoingServer | None:
        return next((s for s in self.outgoing_servers if s.name == name), None)

    def account(self, name: str) -> Account | None:
        return next((a for a in self.accounts if a.name == name), None)

    def activity_type(self, name: str) -> ActivityType | None:
        """The declared type of this display name; spelt as declared, or the same text in
        another Unicode normalization (``Gọi`` typed with a combining dot below)."""
        found = next((t for t in self.activity_types if t.name == name), None)
        if found is None:
            key = unicodedata.normalize("NFC", name)
            found = next((t for t in self.activity_types
                          if unicodedata.normalize("NFC", t.name) == key), None)
        return found
