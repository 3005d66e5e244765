"""Routing: which account a spool file sends through, and which servers may carry it.

Pure decisions over the config model (docs/design.md §2, the account; §3, the outgoing
server choice): no I/O, no state. The sender asks :func:`servers_for` for a failover order and
walks it; :func:`from_rewrite` tells the composer when From must become the alias
domain's ``default_from``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mailsync.config.model import Account, Config, OutgoingServer, filter_match
from mailsync.outbound.types import Rejection

_SHOWN = 10  # names listed in a detail before "... (N in all)"


def _names(names: Sequence[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _SHOWN else "")


def granted_accounts(config: Config, user: str) -> tuple[Account, ...]:
    """The accounts granted to ``user``, in config order."""
    return tuple(a for a in config.accounts if user in a.granted_to)


# How a spool file names its account, in the details that ask for one.
NAME_IN_SPOOL = 'the X-Mailsync-Account header (or "account" in a JSON spool file)'


def choose_account(config: Config, user: str, account: str | None, *,
                   name_it: str = NAME_IN_SPOOL) -> Account | Rejection:
    """The account ``user`` sends through, or why the spool file is refused.

    A named account must exist and be granted to the user; with none named, a user granted
    exactly one account uses it, otherwise the choice is ambiguous (or impossible).
    ``name_it`` says, in the detail, how the account is named (`mailsync send`: --account).
    """
    if user not in config.users:
        return Rejection("unknown_user",
                         f"unknown user {user!r} (declared users: {_names(config.users)})")
    granted = granted_accounts(config, user)
    granted_names = [a.name for a in granted]
    if account is not None:
        chosen = next((a for a in granted if a.name == account), None)
        if chosen is not None:
            return chosen
        why = "" if config.account(account) is not None else ": no such account"
        return Rejection("ungranted_account",
                         f"user {user!r} may not use account {account!r}{why} "
                         f"(granted: {_names(granted_names)})")
    if len(granted) == 1:
        return granted[0]
    if not granted:
        return Rejection("no_account",
                         f"user {user!r} is granted no account (granted: none): grant one in "
                         f"accounts[].granted_to, then name it with {name_it}")
    return Rejection("no_account",
                     f"user {user!r} is granted several accounts "
                     f"(granted: {_names(granted_names)}): name one with {name_it}")


def _candidates(config: Config, account: Account) -> tuple[OutgoingServer, ...]:
    """Every server that could send for ``account``, before looking at from_filter."""
    if account.server is not None:
        server = config.outgoing(account.server)
        return () if server is None else (server,)
    if account.own_login is not None:
        return (account.own_login,)
    return config.outgoing_servers


def from_rewrite(config: Config, account: Account) -> str | None:
    """The alias domain's ``default_from`` address when no server may send as the account.

    None when some server that could send for the account allows its address, or when no
    alias domain with ``default_from`` is set (the message then has no server and fails).
    """
    alias = config.alias_domain
    if alias is None or not alias.default_from:
        return None
    if any(s.allows(account.email) for s in _candidates(config, account)):
        return None
    return f"{alias.default_from}@{alias.domain}"


def _rotate(servers: Sequence[OutgoingServer], spread: int) -> list[OutgoingServer]:
    """Order by priority; each run of equal priority rotated by ``spread`` (load sharing)."""
    ordered = sorted(servers, key=lambda s: s.priority)  # stable: config order within a run
    out: list[OutgoingServer] = []
    i = 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j].priority == ordered[i].priority:
            j += 1
        run = ordered[i:j]
        k = spread % len(run)
        out += run[k:] + run[:k]
        i = j
    return out


def servers_for(config: Config, account: Account, from_address: str, *,
                spread: int = 0) -> tuple[OutgoingServer, ...]:
    """The failover order of servers that may send ``from_address`` for ``account``.

    The account's own ``server`` or login alone; otherwise the declared servers whose
    from_filter names the exact address, then its domain, then those with no filter, each
    group by ``priority`` with equal priorities rotated by ``spread`` (e.g. the message id)
    so that consecutive messages start on different servers. A server whose from_filter
    refuses the address is never returned, not even the account's own: empty when none may.
    """
    if account.server is not None or account.own_login is not None:
        return tuple(s for s in _candidates(config, account) if s.allows(from_address))
    exact: list[OutgoingServer] = []
    domain: list[OutgoingServer] = []
    anyone: list[OutgoingServer] = []
    for s in config.outgoing_servers:
        if not s.from_filter:
            anyone.append(s)
            continue
        match = filter_match(s.from_filter, from_address)
        if match == "address":
            exact.append(s)
        elif match == "domain":
            domain.append(s)
    groups: Iterable[list[OutgoingServer]] = (exact, domain, anyone)
    return tuple(s for group in groups for s in _rotate(group, spread))
