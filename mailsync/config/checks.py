"""Semantic checks that run after the schema: references, names, risky settings.

Each check takes the model (and the raw data where a key's presence matters) and
yields ``(severity, path, message)``; the loader places them on lines.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from mailsync.config import admin, deliverability, oauth2, tls
from mailsync.config.backends import missing_driver
from mailsync.config.model import Config, OutgoingServer, filter_match
from mailsync.config.presets import IMPLICIT_TLS_PORTS, PROVIDERS
from mailsync.config.problems import Path, Severity
from mailsync.config.secrets import Secret

Finding = tuple[Severity, Path, str]

# The keys of an account's own login (its own SMTP server), in the order errors name them.
LOGIN_KEYS = ("provider", "host", "port", "security", "tls_verify", *tls.KEYS, "helo_name",
              "username", "password", "auth", "max_connections", "timeout")

_PLAINTEXT_PORTS = {"smtp": {25, 587}, "imap": {143}, "pop": {110}}


MIN_SEND_LEASE = 2  # seconds: daemon.send_lease


def _declared(name: str, kind: str, names: Sequence[str]) -> str:
    if not names:
        return f"{name!r} is not a declared {kind} (none are declared)"
    import difflib  # only for a name that is not declared: not on every load

    close = difflib.get_close_matches(name, list(names), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    more = f", ... ({len(names)} in all)" if len(names) > 10 else ""
    shown = ", ".join(sorted(names)[:10]) + more
    return f"{name!r} is not a declared {kind}{hint} (declared: {shown})"


def _duplicates(section: str, names: Iterable[str], what: str,
                scalar: Sequence[bool] = ()) -> Iterator[Finding]:
    """Names given twice; ``scalar[i]`` says entry ``i`` is the name itself, not a mapping."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            path: Path = (section, i) if i < len(scalar) and scalar[i] else (section, i, "name")
            yield ("error", path,
                   f"duplicate {what} name {name!r} (also {section}[{seen[name]}]); "
                   "names must be unique")
        else:
            seen[name] = i


def _security_port(path: Path, protocol: str, security: str | None, port: int | None,
                   explicit: bool) -> Iterator[Finding]:
    if not explicit or security is None or port is None:
        return
    if security == "ssl" and port in _PLAINTEXT_PORTS[protocol]:
        yield ("warning", path + ("port",),
               f"security ssl (implicit TLS) on port {port}, a plain-text/STARTTLS port: "
               "almost surely wrong (use starttls, or the implicit-TLS port)")
    if security == "starttls" and port in IMPLICIT_TLS_PORTS:
        yield ("warning", path + ("port",),
               f"security starttls on port {port}, an implicit-TLS port: "
               "almost surely wrong (use ssl)")


def _secret_warnings(path: Path, secret: Secret | None, provider: str | None) -> Iterator[Finding]:
    if secret is None:
        return
    if secret.kind == "plain":
        yield ("warning", path + ("password",),
               "plain-text password in the config: use {env: NAME}, {file: PATH} "
               "or {credential: NAME}")
        if provider == "gmail" and len(secret.ref.replace(" ", "")) != 16:
            yield ("warning", path + ("password",),
                   "gmail needs a 16-character App Password (Google account → Security → "
                   "App passwords), not the account password")


def _store_checks(config: Config) -> Iterator[Finding]:
    """daemon.store: a plain-text DSN (it may hold a password), and a PostgreSQL store on
    a machine without psycopg (the daemon would refuse to start)."""
    store = config.daemon.store
    if store.kind != "postgresql":
        return
    path: Path = ("daemon", "store", "postgresql", "dsn")
    if store.dsn is not None and store.dsn.kind == "plain":
        yield ("warning", path, "plain-text DSN in the config (it may hold a password): use "
               "{env: NAME}, {file: PATH} or {credential: NAME}")
    missing = missing_driver()
    if missing is not None:
        yield ("warning", ("daemon", "store", "postgresql"), missing)


MIN_MAILBOX_LEASE = 3  # seconds: renewed every third of it, asked for every tenth


def _lease_checks(config: Config) -> Iterator[Finding]:
    """daemon.mailbox_lease: long enough to be renewed in time (mailsync/store/leases.py)."""
    seconds = config.daemon.mailbox_lease.total_seconds()
    if seconds < MIN_MAILBOX_LEASE:
        yield ("error", ("daemon", "mailbox_lease"),
               f"mailbox_lease {seconds:g}s is too short: at least {MIN_MAILBOX_LEASE}s (a "
               "node renews its leases every third of it; 30s by default)")


def _tls_warning(path: Path, tls_verify: bool, security: str | None) -> Iterator[Finding]:
    if not tls_verify and security != "none":
        yield ("warning", path + ("tls_verify",),
               "tls_verify is false: the server's certificate and host name are not checked")


def _login_checks(path: Path, raw: dict[str, Any], protocol: str, host: str | None,
                  provider: str | None) -> Iterator[Finding]:
    if host is None:
        if provider not in (None, "custom") and protocol not in PROVIDERS.get(provider, {}):
            yield ("error", path + ("provider",),
                   f"provider {provider} offers no {protocol.upper()} preset: set host, "
                   "or choose another type")
        else:
            yield ("error", path,
                   f"no host: set host, or a provider preset ({', '.join(PROVIDERS)})")
    if "auth" not in raw and ("username" in raw) != ("password" in raw):
        missing = "password" if "username" in raw else "username"
        yield ("error", path, f"{missing} is missing: username and password go together")


def check(config: Config, data: dict[str, Any],
          removed: Mapping[str, Collection[str]] | None = None) -> list[Finding]:
    """Every semantic problem of a schema-valid config.

    ``removed`` names the entries (by section) the schema refused and that were taken out
    of ``data`` (:mod:`mailsync.config.partial`): they are declared, so a reference to one
    is not reported, and the checks that need every outgoing server are skipped.
    """
    return list(_check(config, data, removed or {}))


def _check(config: Config, data: dict[str, Any],
           removed: Mapping[str, Collection[str]]) -> Iterator[Finding]:
    users = list(config.users)
    user_set = set(users) | set(removed.get("users", ()))
    types = [t.name for t in config.activity_types]
    servers = {s.name: s for s in config.outgoing_servers}
    known_servers = set(servers) | set(removed.get("outgoing_servers", ()))
    known_types = set(removed.get("activity_types", ()))
    all_servers = "outgoing_servers" not in removed  # from_filter coverage needs them all

    def no_type(name: str) -> bool:
        return config.activity_type(name) is None and name not in known_types

    yield from _duplicates("users", users, "user",
                           [isinstance(u, str) for u in data.get("users", ())])
    yield from _user_checks(config, data)
    yield from _duplicates("outgoing_servers", (s.name for s in config.outgoing_servers),
                           "outgoing server")
    yield from _duplicates("incoming_servers", (s.name for s in config.incoming_servers),
                           "incoming server")
    yield from _duplicates("accounts", (a.name for a in config.accounts), "account")
    # Display names: the same text in two Unicode normalizations is the same name.
    yield from _duplicates("activity_types", (unicodedata.normalize("NFC", t.name)
                                              for t in config.activity_types), "activity type")

    yield from tls.daemon(data.get("daemon") or {}, config.daemon.tls)
    yield from _store_checks(config)
    yield from admin.check(config, data)
    yield from deliverability.check(config, data)
    yield from _lease_checks(config)
    if config.daemon.send_lease.total_seconds() < MIN_SEND_LEASE:
        yield ("error", ("daemon", "send_lease"),
               f"send_lease is {int(config.daemon.send_lease.total_seconds())}s; it must be "
               f"at least {MIN_SEND_LEASE}s (renewed every quarter of it)")
    retry = config.daemon.retry
    if retry.first > retry.max:
        yield ("error", ("daemon", "retry", "first"), "retry.first is longer than retry.max")
    if retry.max > retry.lifetime:
        yield ("error", ("daemon", "retry", "max"), "retry.max is longer than retry.lifetime")

    for i, s in enumerate(config.outgoing_servers):
        raw = data["outgoing_servers"][i]
        path: Path = ("outgoing_servers", i)
        yield from _login_checks(path, raw, "smtp", s.host, s.provider)
        yield from _security_port(path, "smtp", s.security, s.port,
                                  "port" in raw and "security" in raw)
        yield from _secret_warnings(path, s.password, s.provider)
        yield from oauth2.check(path, raw, s.provider, s.auth)
        yield from _tls_warning(path, s.tls_verify, s.security)
        yield from tls.server(path, raw, s.tls, s.security)

    for i, inc in enumerate(config.incoming_servers):
        raw = data["incoming_servers"][i]
        path = ("incoming_servers", i)
        if inc.type == "local":
            for key in ("host", "port", "security", "provider", "username", "password",
                        "auth", "folder", "tls_verify", *tls.KEYS):
                if key in raw:
                    yield ("error", path + (key,),
                           f"{key} does not apply to a local Maildir (type: local takes path)")
        else:
            yield from _login_checks(path, raw, inc.type, inc.host, inc.provider)
            if "path" in raw:
                yield ("error", path + ("path",),
                       f"path applies to type local only (this server is {inc.type})")
            if inc.type == "pop" and "folder" in raw:
                yield ("error", path + ("folder",),
                       "folder applies to IMAP only (POP3 has one mailbox)")
            yield from _security_port(path, inc.type, inc.security, inc.port,
                                      "port" in raw and "security" in raw)
            yield from _secret_warnings(path, inc.password, inc.provider)
            yield from oauth2.check(path, raw, inc.provider, inc.auth)
            yield from _tls_warning(path, inc.tls_verify, inc.security)
            yield from tls.server(path, raw, inc.tls, inc.security)
        if inc.activity is not None:
            if no_type(inc.activity.type):
                yield ("error", path + ("activity", "type"),
                       _declared(inc.activity.type, "activity type", types))
            if inc.activity.user is not None and inc.activity.user not in user_set:
                yield ("error", path + ("activity", "user"),
                       _declared(inc.activity.user, "user", users))
            if inc.activity.user is None:
                t = config.activity_type(inc.activity.type)
                if t is not None and t.default_user is None:
                    yield ("error", path + ("activity",),
                           f"no user: set activity.user, or default_user on type {t.name!r}")

    for i, acc in enumerate(config.accounts):
        raw = data["accounts"][i]
        path = ("accounts", i)
        login_keys = [k for k in LOGIN_KEYS if k in raw]
        if acc.server is not None and login_keys:
            yield ("error", path + (login_keys[0],),
                   f"{login_keys[0]} conflicts with server: an account sends through a declared "
                   "server or through its own login, not both")
        elif acc.server is None and acc.own_login is None and login_keys:
            yield ("error", path + (login_keys[0],),
                   f"{login_keys[0]} applies to the account's own login: set provider or "
                   "host (with username and password), or remove it")
        elif acc.server is None and acc.own_login is None and all_servers:
            if not config.outgoing_servers:
                yield ("error", path,
                       "no way to send: set server or its own login (provider or host, "
                       "username, password); no outgoing server is declared to choose from")
            elif not any(s.allows(acc.email) for s in config.outgoing_servers):
                yield from _refused_from(path, acc.email, None, config)
        if acc.server is not None and acc.server not in known_servers:
            yield ("error", path + ("server",),
                   _declared(acc.server, "outgoing server", list(servers)))
        if acc.own_login is not None and acc.server is None:
            yield from _login_checks(path, raw, "smtp", acc.own_login.host, acc.own_login.provider)
            yield from _security_port(path, "smtp", acc.own_login.security, acc.own_login.port,
                                      "port" in raw and "security" in raw)
            yield from _secret_warnings(path, acc.own_login.password, acc.own_login.provider)
            yield from oauth2.check(path, raw, acc.own_login.provider, acc.own_login.auth)
            yield from _tls_warning(path, acc.own_login.tls_verify, acc.own_login.security)
            yield from tls.server(path, raw, acc.own_login.tls, acc.own_login.security)
        if acc.server is None and acc.own_login is None and all_servers:
            yield from _mixed_filters(path, acc.name, acc.email, config.outgoing_servers)
        for j, user in enumerate(acc.granted_to):
            if user not in user_set:
                yield ("error", path + ("granted_to", j), _declared(user, "user", users))
        server = servers.get(acc.server) if acc.server else None
        if server is not None and not server.allows(acc.email):
            yield from _refused_from(path, acc.email, server, config)

    if config.alias_domain is not None and config.outgoing_servers and all_servers:
        domain = config.alias_domain.domain
        probe = f"{config.alias_domain.default_from or 'x'}@{domain}"
        if not any(s.allows(probe) for s in config.outgoing_servers):
            yield ("warning", ("alias_domain", "domain"),
                   f"no outgoing server's from_filter allows {domain}: rewritten From "
                   "addresses and bounces through this domain cannot be sent")

    for i, t in enumerate(config.activity_types):
        path = ("activity_types", i)
        if t.default_user is not None and t.default_user not in user_set:
            yield ("error", path + ("default_user",), _declared(t.default_user, "user", users))
        if t.default_next is not None and no_type(t.default_next):
            yield ("error", path + ("default_next",),
                   _declared(t.default_next, "activity type", types))
        for j, nxt in enumerate(t.recommended_next):
            if no_type(nxt):
                yield ("error", path + ("recommended_next", j),
                       _declared(nxt, "activity type", types))
        if t.chaining == "trigger" and t.default_next is None:
            yield ("error", path + ("chaining",),
                   "chaining: trigger needs default_next "
                   "(the type scheduled when this one is done)")


def _mixed_filters(path: Path, account: str, email: str,
                   servers: Sequence[OutgoingServer]) -> Iterator[Finding]:
    """An account's eligible servers at one priority, some with a from_filter and some
    without: the unfiltered ones send as it too (after the filtered ones fail), which a
    from_filter written for this address suggests was not meant."""
    eligible = [s for s in servers if s.allows(email)]
    for priority in sorted({s.priority for s in eligible}):
        at = [s for s in eligible if s.priority == priority]
        filtered = [s.name for s in at if s.from_filter]
        unfiltered = [s.name for s in at if not s.from_filter]
        if filtered and unfiltered:
            them = ", ".join(unfiltered)
            yield ("warning", path,
                   f"account {account!r} ({email}): its outgoing servers at priority "
                   f"{priority} mix from_filter ({', '.join(filtered)}) and none ({them}): "
                   f"{them} {'sends' if len(unfiltered) == 1 else 'send'} as {email} too, "
                   f"whenever {', '.join(filtered)} cannot; give {them} a from_filter or "
                   "another priority, or set the account's server")


def _user_checks(config: Config, data: dict[str, Any]) -> Iterator[Finding]:
    """Unix users listed twice, and the warning that without any ``unix_users`` a user
    name in a spool file is only the writer's word (checked syntactically only: the
    accounts need not exist on the machine that validates, such as CI)."""
    for i, raw in enumerate(data.get("users", ())):
        if not isinstance(raw, dict):
            continue
        seen: set[str | int] = set()
        for j, unix_user in enumerate(raw.get("unix_users", ())):
            if unix_user in seen:
                yield ("error", ("users", i, "unix_users", j),
                       f"Unix user {unix_user!r} is listed twice for user {raw['name']!r}")
            seen.add(unix_user)
    if config.users and not config.bindings and any(a.granted_to for a in config.accounts):
        yield ("warning", ("users",),
               "no user names its unix_users: grants only guard against mistakes, since any "
               "process that can write to the spool can submit as any user; bind each user "
               "to the Unix accounts that may submit as it, e.g. "
               "{name: crm-app, unix_users: [crm]}")


def _refused_from(path: Path, email: str, server: OutgoingServer | None,
                  config: Config) -> Iterator[Finding]:
    if server is not None:
        who = f"server {server.name!r} may not send as {email} (from_filter: " \
              f"{', '.join(server.from_filter)})"
    else:
        who = f"no outgoing server's from_filter allows {email}"
    alias = config.alias_domain
    if alias is not None and alias.default_from:
        yield ("warning", path + ("email",),
               f"{who}: From will be rewritten to {alias.default_from}@{alias.domain} "
               f"with {email} in Reply-To")
    else:
        yield ("warning", path + ("email",),
               f"{who} and no alias_domain.default_from is set: its messages will fail")


__all__ = ["check", "filter_match"]
