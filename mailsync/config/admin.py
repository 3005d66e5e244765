"""The admin console's settings (``admin:`` and ``daemon.admin_listen``): model and checks.

The console (``mailsync/web/``, docs/admin.md) is off unless ``daemon.admin_listen`` is
set. Its users log in with a password whose argon2id hash (``mailsync admin
hash-password``) is a secret reference; a viewer reads, an operator also acts on the
queue. Served on loopback unless said otherwise: a non-loopback address needs the
console's own TLS (``tls_cert_file``/``tls_key_file``) or ``allow_remote: true``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Any, Literal

from mailsync.config.problems import Path, Severity
from mailsync.config.secrets import Secret
from mailsync.config.units import parse_duration
from mailsync.values import valueclass

if TYPE_CHECKING:  # the whole configuration, whose tree holds an Admin (config/tree.py)
    from mailsync.config.tree import Config

Role = Literal["viewer", "operator"]
Finding = tuple[Severity, Path, str]

SESSION_LIFETIME = timedelta(hours=8)


@valueclass
class AdminUser:
    """One person who may log in to the console; ``password_hash`` is a reference to
    the argon2id hash (never the password), resolved at each login."""

    name: str
    password_hash: Secret
    role: Role = "viewer"


@valueclass
class Admin:
    """The ``admin`` section: users, how far the console may be reached, sessions."""

    users: tuple[AdminUser, ...] = ()
    allow_remote: bool = False
    tls_cert_file: FsPath | None = None
    tls_key_file: FsPath | None = None
    behind_tls_proxy: bool = False
    session_key: Secret | None = None
    session_lifetime: timedelta = SESSION_LIFETIME

    @property
    def tls(self) -> bool:
        """Whether the console's users reach it over TLS (its own, or a proxy's): its
        cookies are then ``Secure``."""
        return self.tls_cert_file is not None or self.behind_tls_proxy

    def user(self, name: str) -> AdminUser | None:
        return next((u for u in self.users if u.name == name), None)


def build(d: dict[str, Any] | None, path: Callable[[str], FsPath],
          secret: Callable[[Any], Secret | None]) -> Admin | None:
    """The model of a schema-valid ``admin`` section (None when absent); ``path`` and
    ``secret`` resolve relative paths against the config file's directory."""
    if d is None:
        return None
    users = []
    for u in d.get("users", ()):
        hashed = secret(u["password_hash"])
        assert hashed is not None  # required by the schema
        users.append(AdminUser(u["name"], hashed, u.get("role", "viewer")))
    return Admin(
        users=tuple(users),
        allow_remote=d.get("allow_remote", False),
        tls_cert_file=path(d["tls_cert_file"]) if "tls_cert_file" in d else None,
        tls_key_file=path(d["tls_key_file"]) if "tls_key_file" in d else None,
        behind_tls_proxy=d.get("behind_tls_proxy", False),
        session_key=secret(d.get("session_key")),
        session_lifetime=parse_duration(d["session_lifetime"]) if "session_lifetime" in d
        else SESSION_LIFETIME,
    )


def loopback(host: str) -> bool:
    """Whether ``host`` (of a listen address, IPv6 bracketed or not) is this machine only:
    ``localhost``, 127.0.0.0/8 or ::1."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to any address


def check(config: Config, data: dict[str, Any]) -> Iterator[Finding]:
    """The console's problems: no one to log in, a user listed twice, a remote address
    without TLS or consent, TLS keys without each other, the same port as /metrics."""
    listen = config.daemon.admin_listen
    admin = config.admin
    raw = data.get("admin") or {}
    if admin is not None:
        seen: set[str] = set()
        for i, user in enumerate(admin.users):
            if user.name in seen:
                yield ("error", ("admin", "users", i, "name"),
                       f"admin user {user.name!r} is declared twice")
            seen.add(user.name)
        for one, other in (("tls_cert_file", "tls_key_file"), ("tls_key_file", "tls_cert_file")):
            if one in raw and other not in raw:
                yield ("error", ("admin", one),
                       f"{one} needs {other}: the console serves TLS with both or neither")
    if listen is None:
        return
    where: Path = ("daemon", "admin_listen")
    if admin is None or not admin.users:
        yield ("error", where,
               f"admin_listen {listen} is set but admin.users declares no one: nobody could "
               "log in (add admin.users, or remove admin_listen)")
    if listen == config.daemon.metrics_listen:
        yield ("error", where,
               f"admin_listen {listen} is also metrics_listen: the console needs a port "
               "of its own")
    host = listen.rpartition(":")[0]
    if not loopback(host) and (admin is None or (admin.tls_cert_file is None
                                                 and not admin.allow_remote)):
        yield ("error", where,
               f"admin_listen {listen} is not a loopback address: the console would be "
               "reachable from the network without TLS; set admin.tls_cert_file and "
               "admin.tls_key_file, or admin.allow_remote: true (say, behind a TLS proxy "
               "on another machine), or listen on 127.0.0.1")
