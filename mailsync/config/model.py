"""The configuration as a tree of frozen dataclasses, built from validated data.

Values here are effective: provider presets and defaults are filled in, durations are
``timedelta``, sizes are bytes, relative paths are resolved against the config file's
directory, and secrets are :class:`Secret` references (never their values).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from mailsync.auth.settings import OAuth2
from mailsync.config import oauth2
from mailsync.config.presets import Protocol, Security, resolve_endpoint
from mailsync.config.secrets import Secret, from_config
from mailsync.config.units import parse_duration, parse_size

IncomingType = Literal["pop", "imap", "local"]
TlsVersion = Literal["TLSv1.2", "TLSv1.3"]


@dataclass(frozen=True)
class Retry:
    """Backoff of deferred messages."""

    first: timedelta = timedelta(minutes=5)
    max: timedelta = timedelta(hours=1)
    lifetime: timedelta = timedelta(days=5)


@dataclass(frozen=True)
class Tls:
    """A server's TLS beyond ``tls_verify``: the CAs it trusts besides (or instead of) the
    system's, its client certificate, the oldest version it accepts. Server keys override
    the ``daemon`` defaults, which are already filled in here."""

    ca_file: Path | None = None
    ca_only: bool = False
    client_cert: Secret | None = None
    client_key: Secret | None = None
    min_version: TlsVersion = "TLSv1.2"


@dataclass(frozen=True)
class Daemon:
    """Settings of the daemon process."""

    state_dir: Path
    spool_dir: Path
    metrics_listen: str = "127.0.0.1:9877"
    log_format: Literal["text", "json"] = "text"
    retry: Retry = Retry()
    max_message_size: int = 25 << 20
    history_retention: timedelta = timedelta(days=90)
    auto_reload: bool = True
    helo_name: str | None = None  # None: this machine's FQDN (netio.helo_name)
    tls: Tls = Tls()  # the defaults of the servers' TLS keys (already filled in there)


@dataclass(frozen=True)
class AliasDomain:
    """Domain for the catchall Reply-To, VERP bounces and rewritten From addresses."""

    domain: str
    catchall: str | None = None
    bounce: str | None = None
    default_from: str | None = None


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class ActivityRule:
    """Schedule an activity of ``type`` for ``user`` for each new message."""

    type: str
    user: str | None = None


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Account:
    """A sending account: an address, a sender name, how it sends, and who may use it."""

    name: str
    email: str
    sender_name: str | None = None
    server: str | None = None
    own_login: OutgoingServer | None = None
    granted_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class Delay:
    """Deadline rule: base (previous deadline or completion date) + count units."""

    count: int = 0
    unit: Literal["days", "weeks", "months"] = "days"
    base: Literal["previous_deadline", "completion_date"] = "previous_deadline"


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Binding:
    """A user bound to the Unix accounts allowed to submit as it (``users[].unix_users``).

    A spool file naming ``user`` is taken only when its owner is one of ``unix_users``
    (by name or uid); a user without a binding accepts any owner.
    """

    user: str
    unix_users: tuple[UnixUser, ...]


@dataclass(frozen=True)
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


def _path(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _secret(value: Any, base: Path) -> Secret | None:
    if value is None:
        return None
    secret = from_config(value)
    if secret.kind == "file":
        # Relative secret files are taken from the config file's directory, like all paths.
        return Secret("file", str(_path(base, secret.ref)))
    return secret


def _auth(d: dict[str, Any], protocol: Protocol, base: Path) -> OAuth2 | None:
    """The login's ``auth.oauth2`` block, presets filled in; None with a password."""
    auth = d.get("auth")
    if not auth:
        return None
    return oauth2.build(auth["oauth2"], protocol, lambda value: _secret(value, base))


def _dur(value: str | None, default: timedelta) -> timedelta:
    return default if value is None else parse_duration(value)


def _tls(d: dict[str, Any], dd: dict[str, Any], base: Path) -> Tls:
    """A server's TLS settings: its own keys, else the daemon's defaults (a server's
    ``tls_ca_file`` replaces the daemon's; ``tls_ca_only`` goes with the file it names)."""
    own_ca = "tls_ca_file" in d
    ca = d["tls_ca_file"] if own_ca else dd.get("tls_ca_file")
    ca_only = d.get("tls_ca_only", dd.get("tls_ca_only", False) if not own_ca else False)
    return Tls(
        ca_file=_path(base, ca) if ca else None,
        ca_only=bool(ca_only),
        client_cert=_secret(d.get("tls_client_cert"), base),
        client_key=_secret(d.get("tls_client_key"), base),
        min_version=d.get("tls_min_version", dd.get("tls_min_version", "TLSv1.2")),
    )


def _outgoing(d: dict[str, Any], name: str, base: Path,
              dd: dict[str, Any] | None = None) -> OutgoingServer:
    host, port, security = resolve_endpoint(
        "smtp", d.get("provider"), d.get("host"), d.get("port"), d.get("security")
    )
    ff = d.get("from_filter")
    return OutgoingServer(
        name=name,
        host=host,
        port=port,
        security=security,
        provider=d.get("provider"),
        tls_verify=d.get("tls_verify", True),
        tls=_tls(d, dd or {}, base),
        helo_name=d.get("helo_name", (dd or {}).get("helo_name")),
        username=d.get("username"),
        password=_secret(d.get("password"), base),
        auth=_auth(d, "smtp", base),
        from_filter=(ff,) if isinstance(ff, str) else tuple(ff or ()),
        priority=d.get("priority", 10),
        max_connections=d.get("max_connections", 4),
        timeout=_dur(d.get("timeout"), timedelta(seconds=30)),
    )


def _incoming(d: dict[str, Any], base: Path, max_size: int,
              dd: dict[str, Any] | None = None) -> IncomingServer:
    """One incoming server; ``max_size``: daemon.max_message_size, its default cap;
    ``dd``: the daemon's section (its TLS defaults)."""
    kind: IncomingType = d["type"]
    host = port = security = None
    if kind != "local":
        host, port, security = resolve_endpoint(
            kind, d.get("provider"), d.get("host"), d.get("port"), d.get("security")
        )
    act = d.get("activity")
    deliver = d.get("deliver_to")
    return IncomingServer(
        name=d["name"],
        type=kind,
        host=host,
        port=port,
        security=security,
        provider=d.get("provider"),
        tls_verify=d.get("tls_verify", True),
        tls=_tls(d, dd or {}, base),
        username=d.get("username"),
        password=_secret(d.get("password"), base),
        auth=_auth(d, kind, base) if kind != "local" else None,
        folder=d.get("folder", "INBOX") if kind == "imap" else d.get("folder"),
        path=_path(base, d["path"]) if "path" in d else None,
        poll_interval=_dur(d.get("poll_interval"), timedelta(seconds=60)),
        keep_on_server=d.get("keep_on_server", True),
        timeout=_dur(d.get("timeout"), timedelta(seconds=30)),
        activity=ActivityRule(act["type"], act.get("user")) if act else None,
        deliver_to=_path(base, deliver["maildir"]) if deliver else None,
        max_message_size=parse_size(d["max_message_size"]) if "max_message_size" in d
        else max_size,
    )


def _account(d: dict[str, Any], base: Path, dd: dict[str, Any] | None = None) -> Account:
    own = None
    if any(k in d for k in ("provider", "host", "username", "password", "auth")):
        own = _outgoing(d, f"account:{d['name']}", base, dd)
    return Account(
        name=d["name"],
        email=d["email"],
        sender_name=d.get("sender_name"),
        server=d.get("server"),
        own_login=own,
        granted_to=tuple(d.get("granted_to", ())),
    )


def _activity_type(d: dict[str, Any]) -> ActivityType:
    delay = d.get("delay") or {}
    return ActivityType(
        name=d["name"],
        action=d.get("action", "none"),
        default_user=d.get("default_user"),
        model=d.get("model"),
        default_summary=d.get("default_summary"),
        icon=d.get("icon"),
        decoration=d.get("decoration", "none"),
        delay=Delay(delay.get("count", 0), delay.get("unit", "days"),
                    delay.get("from", "previous_deadline")),
        chaining=d.get("chaining", "suggest"),
        default_next=d.get("default_next"),
        recommended_next=tuple(d.get("recommended_next", ())),
        default_description=d.get("default_description"),
    )


def build(data: dict[str, Any], base_dir: Path, source: str = "") -> Config:
    """The model of schema-valid ``data``; relative paths are taken from ``base_dir``."""
    dd = data.get("daemon") or {}
    retry = dd.get("retry") or {}
    daemon = Daemon(
        state_dir=_path(base_dir, dd.get("state_dir", "./var/state")),
        spool_dir=_path(base_dir, dd.get("spool_dir", "./var/spool")),
        metrics_listen=dd.get("metrics_listen", "127.0.0.1:9877"),
        log_format=dd.get("log_format", "text"),
        retry=Retry(
            _dur(retry.get("first"), Retry.first),
            _dur(retry.get("max"), Retry.max),
            _dur(retry.get("lifetime"), Retry.lifetime),
        ),
        max_message_size=parse_size(dd["max_message_size"]) if "max_message_size" in dd
        else 25 << 20,
        history_retention=_dur(dd.get("history_retention"), timedelta(days=90)),
        auto_reload=dd.get("auto_reload", True),
        helo_name=dd.get("helo_name"),
        tls=_tls({}, dd, base_dir),
    )
    ad = data.get("alias_domain")
    alias = AliasDomain(ad["domain"], ad.get("catchall"), ad.get("bounce"),
                        ad.get("default_from")) if ad else None
    return Config(
        daemon=daemon,
        alias_domain=alias,
        users=tuple(u if isinstance(u, str) else u["name"] for u in data.get("users", ())),
        bindings=tuple(Binding(u["name"], tuple(u["unix_users"]))
                       for u in data.get("users", ()) if isinstance(u, dict) and "unix_users" in u),
        outgoing_servers=tuple(_outgoing(d, d["name"], base_dir, dd)
                               for d in data.get("outgoing_servers", ())),
        incoming_servers=tuple(_incoming(d, base_dir, daemon.max_message_size, dd)
                               for d in data.get("incoming_servers", ())),
        accounts=tuple(_account(d, base_dir, dd) for d in data.get("accounts", ())),
        activity_types=tuple(_activity_type(d) for d in data.get("activity_types", ())),
        version=data.get("version", 1),
        source=source,
    )
