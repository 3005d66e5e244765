"""What a poller needs of a mailbox lease (several nodes on one store, #16 item 4).

The lease itself is kept by the daemon (:mod:`mailsync.daemon.leases`; its rows and
timing: :mod:`mailsync.store.leases`); a :class:`~mailsync.inbound.poller.Poller` given
one fetches only while it is valid and stores a batch only if it still holds in that
batch's transaction, else raises :class:`LeaseLost`.
"""

from __future__ import annotations

import sqlite3
from typing import Protocol

from mailsync.errors import MailsyncError


class Lease(Protocol):
    """This node's hold on polling one server (mailsync.daemon.leases.MailboxLease)."""

    def valid(self) -> bool:
        """Whether this node may poll the server now (its own clock)."""

    def fence(self, conn: sqlite3.Connection) -> bool:
        """In a batch's transaction: whether the lease still holds in the database."""


class LeaseLost(MailsyncError):
    """The lease of the server was lost while polling: the batch was not stored."""
