"""Who may submit as a user: the Unix owner of a spool file against the user's ``unix_users``.

The user a spool file names is the writer's own claim; a user bound to Unix accounts
(``users: [{name: crm-app, unix_users: [crm]}]``) is taken only from files those accounts
own. The owner comes from ``fstat`` of the descriptor the file was read through, so a
file swapped after the check cannot pass for another. Root and the daemon's own user
may submit as anyone: they can write the store directly anyway (and the daemon's tests,
demo and operators' ``mailsync send`` run as them).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable, Iterable

from mailsync.config.model import Config, UnixUser
from mailsync.outbound.types import Rejection


def unix_name(uid: int) -> str | None:
    """The user name of ``uid`` in the password database; None when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def trusted_uids() -> frozenset[int]:
    """Owners whose files may name any user: root and the process's effective user."""
    return frozenset((0, os.geteuid()))


def _shown(unix_user: UnixUser) -> str:
    return f"uid {unix_user}" if isinstance(unix_user, int) else unix_user


class Submitters:
    """The bindings of one config, and the owners' names looked up once per pass.

    Make one per ingestion pass: the name cache then follows changes to the password
    database from one pass to the next.
    """

    def __init__(self, config: Config, *, trusted: Iterable[int] | None = None,
                 lookup: Callable[[int], str | None] = unix_name) -> None:
        self._bound = {b.user: b.unix_users for b in config.bindings}
        self._trusted = trusted_uids() if trusted is None else frozenset(trusted)
        self._lookup = lookup
        self._names: dict[int, str | None] = {}

    @property
    def bound(self) -> bool:
        """Whether any user is bound (otherwise owners need not even be known)."""
        return bool(self._bound)

    def _name(self, uid: int) -> str | None:
        if uid not in self._names:
            self._names[uid] = self._lookup(uid)
        return self._names[uid]

    def check(self, user: str, uid: int) -> Rejection | None:
        """Why a file owned by ``uid`` may not submit as ``user``; None when it may."""
        allowed = self._bound.get(user)
        if not allowed or uid in self._trusted or uid in allowed:
            return None
        name = self._name(uid)
        if name is not None and name in allowed:
            return None
        who = f"Unix user {name!r}" if name is not None else f"uid {uid}"
        return Rejection("impersonation",
                         f"file owned by {who} may not submit as {user!r} "
                         f"(allowed: {', '.join(_shown(u) for u in allowed)})")
