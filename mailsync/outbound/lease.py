"""A node's sending lease, as its own clock sees it: whether it may still send a message.

On a store shared by several nodes (PostgreSQL), a node claims due messages for
``lease`` seconds (``claimed_by``, ``lease_until`` in the database, by the database's
clock) and renews the lease of all its claims every ``lease / 4`` seconds while it lives
(:mod:`mailsync.daemon.node`). Another node takes a claim back once its ``lease_until``
has passed. So that a node cut off from the database never sends a message another node
may already have taken, it checks, before each message's SMTP transaction, that its
lease is still valid by its own monotonic clock, with a margin:

- a renewal that succeeds extends the lease to ``lease`` seconds after the moment the
  renewal was *sent* (the database's ``lease_until`` is later than that, never earlier);
- a message may be sent only while less than ``lease - margin`` seconds have passed
  since then, and only if it was claimed after the lease last became valid: a node whose
  lease lapsed (its claims may have been taken meanwhile) drops what it had claimed
  before, and its next renewal gives them back to the queue first (:meth:`lapsed`).

Pure and clock-driven (a fake clock in the tests); thread-safe: the senders read it, the
heartbeat thread renews it. SQLite (one node) has no lease: the deliverer is given none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class LeaseLost(Exception):
    """A message is not sent: the node's lease lapsed after it was claimed."""


class SendLease:
    """The lease of one node's claims (see the module doc)."""

    def __init__(self, lease: float, *, margin: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if lease <= 0:
            raise ValueError(f"a sending lease must be positive, not {lease!r}")
        self.lease = lease
        self.margin = lease / 4 if margin is None else margin
        self.clock = clock
        self._lock = threading.Lock()
        self._valid_until = float("-inf")  # by self.clock: no lease before the first renewal
        self._valid_since = float("inf")  # when the current unbroken lease began

    @property
    def renew_every(self) -> float:
        """How often the heartbeat renews it: four renewals per lease."""
        return self.lease / 4

    def started(self) -> float:
        """The clock now, for a renewal about to be sent (pass it to :meth:`renewed`)."""
        return self.clock()

    def lapsed(self, at: float | None = None) -> bool:
        """Whether the lease is no longer valid (never was, or not renewed in time): the
        node's earlier claims may belong to another node by now."""
        now = self.clock() if at is None else at
        with self._lock:
            return now >= self._valid_until - self.margin

    def renewed(self, sent_at: float) -> bool:
        """A renewal sent at ``sent_at`` (:meth:`started`) was committed; whether the
        lease holds now. After a lapse the lease begins anew at ``sent_at`` (that renewal
        gave the node's earlier claims back first: claims made before cannot be sent). A
        renewal sent in time but committed after the lease ended renews nothing: the
        earlier claims may have been taken meanwhile; False, and the caller renews again
        at once, giving them back."""
        now = self.clock()
        with self._lock:
            deadline = self._valid_until - self.margin
            if sent_at < deadline <= now:
                return False
            if sent_at >= deadline:  # lapsed before this renewal
                self._valid_since = sent_at
            self._valid_until = max(self._valid_until, sent_at + self.lease)
            return True

    def may_claim(self) -> bool:
        """Whether claiming now is worth it: the lease is valid."""
        return not self.lapsed()

    def may_send(self, claimed_at: float) -> bool:
        """Whether a message claimed at ``claimed_at`` (this clock) may be sent now: the
        lease is valid and has not lapsed since the claim."""
        now = self.clock()
        with self._lock:
            return now < self._valid_until - self.margin and claimed_at >= self._valid_since

    def remaining(self) -> float:
        """Seconds the node may still send for (0 once lapsed), for status and logs."""
        now = self.clock()
        with self._lock:
            return max(0.0, self._valid_until - self.margin - now)


def still_held(lease: SendLease | None, message_id: int, claimed_at: float) -> None:
    """Raise :class:`LeaseLost` when this node may no longer send ``message_id`` (claimed
    at ``claimed_at`` by its clock) because its lease lapsed; nothing without a lease."""
    if lease and not lease.may_send(claimed_at):
        raise LeaseLost(message_id)
