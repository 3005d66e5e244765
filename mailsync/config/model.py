"""The configuration model built from validated data: :func:`build` and its per-section
builders (the daemon, each server, account and activity type).

The types it builds, frozen value classes (:mod:`mailsync.values`), are
:mod:`mailsync.config.tree`'s, re-exported here: ``from mailsync.config.model import
Config`` is what the parts import.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailsync.config import admin, deliverability, oauth2
from mailsync.config.presets import Protocol, default_rate_limits, resolve_endpoint
from mailsync.config.secrets import Secret, from_config
from mailsync.config.tree import (
    Account,
    ActivityRule,
    ActivityType,
    AliasDomain,
    Binding,
    Config,
    Daemon,
    Delay,
    IncomingServer,
    IncomingType,
    OutgoingServer,
    RateLimit,
    Retry,
    StoreBackend,
    Suppression,
    Tls,
    TlsVersion,
    UnixUser,
    filter_match,
)
from mailsync.config.units import parse_duration, parse_size

if TYPE_CHECKING:   # the type of a server's auth.oauth2, held by the tree (config/tree.py)
    from mailsync.auth.settings import OAuth2

__all__ = [
    "Account", "ActivityRule", "ActivityType", "AliasDomain", "Binding", "Config", "Daemon",
    "Delay", "IncomingServer", "IncomingType", "OutgoingServer", "RateLimit", "Retry",
    "StoreBackend", "Suppression", "Tls",
    "TlsVersion",
    "UnixUser", "filter_match", "build",
]


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


def _store(value: dict[str, Any] | None, base: Path) -> StoreBackend:
    """``daemon.store``: absent or ``{sqlite: {}}`` is SQLite in state_dir;
    ``{postgresql: {dsn: SECRET, pool_size: N}}`` a PostgreSQL database."""
    pg = (value or {}).get("postgresql")
    if pg is None:
        return StoreBackend()
    return StoreBackend("postgresql", _secret(pg["dsn"], base),
                        pg.get("pool_size", StoreBackend.pool_size))


def default_node() -> str:
    """``daemon.node`` when the file sets none: $MAILSYNC_NODE, else the host name (its
    first label), so that each machine of a cluster is one node under one file."""
    # os.uname's nodename is what socket.gethostname() returns, without importing socket
    # (and selectors) into every `mailsync send` (#19).
    name = os.environ.get("MAILSYNC_NODE") or os.uname().nodename.split(".")[0]
    return name or "mailsync"


def _dur(value: str | None, default: timedelta) -> timedelta:
    return default if value is None else parse_duration(value)


def _rate_limits(value: list[dict[str, Any]] | None,
                 default: tuple[tuple[int, int], ...]) -> tuple[RateLimit, ...]:
    """Declared ``rate_limits`` (``[]``: none), else the provider's defaults."""
    if value is None:
        return tuple(RateLimit(n, timedelta(seconds=s)) for n, s in default)
    return tuple(RateLimit(int(r["messages"]), parse_duration(r["per"])) for r in value)


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
        rate_limits=_rate_limits(d.get("rate_limits"),
                                 default_rate_limits(d.get("provider"), d.get("username"))),
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
        # With an own login, the account's rate_limits are that login's (built above).
        rate_limits=() if own is not None else _rate_limits(d.get("rate_limits"), ()),
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
        admin_listen=dd.get("admin_listen"),
        log_format=dd.get("log_format", "text"),
        log_deliveries=dd.get("log_deliveries", False),
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
        store=_store(dd.get("store"), base_dir),
        mailbox_lease=_dur(dd.get("mailbox_lease"), timedelta(seconds=30)),
        node=dd.get("node") or default_node(),
        send_lease=_dur(dd.get("send_lease"), Daemon.send_lease),
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
        suppression=Suppression(_dur((data.get("suppression") or {}).get("expiry"),
                                     Suppression.expiry)),
        admin=admin.build(data.get("admin"), lambda v: _path(base_dir, v),
                          lambda v: _secret(v, base_dir)),
        dkim=deliverability.build_dkim(data.get("dkim"), lambda v: _secret(v, base_dir)),
        webhooks=deliverability.build_webhooks(data.get("webhooks"),
                                               lambda v: _secret(v, base_dir)),
        version=data.get("version", 1),
        source=source,
    )
