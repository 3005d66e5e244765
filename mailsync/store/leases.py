"""Leases: work that one node of a shared store does at a time (#16 item 4).

Several daemons on one PostgreSQL store must not poll one incoming server together, nor
all prune the history. Each such piece of work has a named lease, a row of ``leases``
(:data:`MIGRATION`): ``mailbox/NAME`` for each incoming server, ``singleton`` for the
retention pruning. A node takes a free or expired lease, renews it while it lives, and
gives it back when it stops; another node takes it over once it expired.

A row, not a PostgreSQL session advisory lock: a row works on both backends with the
same SQL, and survives a connection that breaks and comes back (the pool's connections
are replaced freely); an advisory lock dies with its connection, which would drop the
lease on every network blip and tie a lease to one pooled connection.

Times in the rows are the *database's* clock (``lease_until``, epoch seconds), so that
nodes whose clocks differ still agree on when a lease ends; each node bounds its own use
of a lease by its *local* monotonic clock, started before the statement that granted it
(:class:`LeaseState`), so that it stops before the row expires even when it can no
longer reach the database. The timing (:class:`Timing`), for ``daemon.mailbox_lease`` L:

- a grant lasts ``0.9 L`` in the database;
- the holder renews every ``L / 3``, and retries a failed renewal every ``L / 10``;
- the holder stops using the lease ``L / 6`` before the grant ends by its own clock
  (``0.73 L`` after its last renewal was sent), whether or not it could renew;
- another node tries to take a lease it lacks every ``L / 10``: a dead holder's lease is
  taken over within ``0.9 L + L / 10 = L`` of its last renewal, so of its death.

Writes that the lease protects check it in their own transaction (:func:`fence`): the
check locks the row, so no other node can take the lease before that commit, and a
holder whose lease expired in the database commits nothing.

This module is the SQL and the pure decisions; :mod:`mailsync.daemon.leases` keeps the
leases of a running daemon.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from typing import TYPE_CHECKING

from mailsync.values import valueclass

if TYPE_CHECKING:  # the store package imports this module's MIGRATION (migrations.py)
    from mailsync.store import Store

SINGLETON = "singleton"  # the lease of the retention pruning (a server name cannot be it)


def holder_name() -> str:
    """This process as a lease holder: ``host:pid`` (a restarted daemon is a new holder:
    after a crash it waits, like any node, for its old leases to end)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def mailbox(server: str) -> str:
    """The name of the lease on polling incoming server ``server``."""
    return f"mailbox/{server}"


# Migration 11 (store/migrations.py): one row per lease ever taken and not given back.
# ``holder`` names the node process (node:pid), ``lease_until`` and ``taken_at`` are the
# database's epoch seconds (see the module doc).
MIGRATION = """
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    lease_until REAL NOT NULL,
    taken_at REAL NOT NULL
) WITHOUT ROWID;
"""

# The database's clock in epoch seconds, in each dialect (the same instant for a whole
# statement in SQLite; the statement's own time in PostgreSQL, not the transaction's).
_NOW = {"sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
        "postgresql": "(EXTRACT(EPOCH FROM clock_timestamp())::float8)"}


@valueclass
class Timing:
    """The timing of a lease of ``seconds`` (``daemon.mailbox_lease``): see the module doc."""

    seconds: float

    @property
    def term(self) -> float:
        """How long a grant lasts in the database."""
        return self.seconds * 0.9

    @property
    def renew_every(self) -> float:
        return self.seconds / 3

    @property
    def try_every(self) -> float:
        """How often a lease not held is asked for, or a failed renewal tried again."""
        return self.seconds / 10

    @property
    def margin(self) -> float:
        """How long before the grant ends (by the local clock) the holder stops."""
        return self.seconds / 6


class LeaseState:
    """What this node knows of one lease, by its local monotonic clock (pure: every
    time is passed in). ``valid_until``: the end of this node's use of the lease."""

    def __init__(self, name: str, timing: Timing) -> None:
        self.name = name
        self.timing = timing
        self.valid_until = 0.0
        self.next_at = 0.0  # when to ask the database again (take or renew)

    def valid(self, now: float) -> bool:
        """Whether this node may do the lease's work at ``now``."""
        return now < self.valid_until

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def granted(self, asked_at: float) -> bool:
        """The database granted (or renewed) the lease by a statement sent at
        ``asked_at``; True when this node did not hold it just before."""
        was = self.valid(asked_at)
        self.valid_until = asked_at + self.timing.term - self.timing.margin
        self.next_at = asked_at + self.timing.renew_every
        return not was

    def refused(self, now: float) -> bool:
        """Another node holds the lease; True when this node believed it held it."""
        was = self.valid(now)
        self.valid_until = 0.0
        self.next_at = now + self.timing.try_every
        return was

    def failed(self, now: float) -> None:
        """The database could not be asked: whatever was granted lasts until its own end
        (:attr:`valid_until` unchanged), and the next try comes soon."""
        self.next_at = now + self.timing.try_every

    def lapsed(self, now: float) -> bool:
        """Whether the lease ran out by the local clock without a renewal (once per
        lapse: :attr:`valid_until` is then reset)."""
        if self.valid_until and not self.valid(now):
            self.valid_until = 0.0
            return True
        return False


def take(conn: sqlite3.Connection, dialect: str, name: str, holder: str,
         term: float) -> bool:
    """Take or renew lease ``name`` for ``holder`` for ``term`` seconds (inside a
    transaction); False when another holder's grant has not ended."""
    now = _NOW[dialect]
    cur = conn.execute(
        "INSERT INTO leases (name, holder, lease_until, taken_at)"
        f" VALUES (?, ?, {now} + ?, {now})"
        " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
        " lease_until = excluded.lease_until,"
        " taken_at = CASE WHEN leases.holder = excluded.holder THEN leases.taken_at"
        " ELSE excluded.taken_at END"
        f" WHERE leases.holder = excluded.holder OR leases.lease_until <= {now}",
        (name, holder, term))
    return cur.rowcount > 0


def fence(conn: sqlite3.Connection, dialect: str, name: str, holder: str,
          term: float) -> bool:
    """In the transaction of a write the lease protects: whether ``holder`` still holds
    ``name`` in the database (its grant renewed for ``term`` s when so). The row stays
    locked until that transaction ends: nobody takes the lease before it commits."""
    now = _NOW[dialect]
    cur = conn.execute(
        f"UPDATE leases SET lease_until = {now} + ? WHERE name = ? AND holder = ?"
        f" AND lease_until > {now}", (term, name, holder))
    return cur.rowcount > 0


def release(conn: sqlite3.Connection, names: list[str], holder: str) -> None:
    """Give back ``holder``'s leases among ``names`` (another node takes them at once)."""
    conn.executemany("DELETE FROM leases WHERE name = ? AND holder = ?",
                     [(name, holder) for name in names])


@valueclass
class Held:
    """A lease as the database records it; ``remaining``: seconds left by its clock."""

    name: str
    holder: str
    remaining: float


def holders(store: Store) -> list[Held]:
    """Every lease recorded, by name (expired ones with ``remaining`` <= 0)."""
    now = _NOW[store.dialect]
    with store.lock:
        return [Held(r[0], r[1], float(r[2])) for r in store.conn.execute(
            f"SELECT name, holder, lease_until - {now} FROM leases ORDER BY name")]
