"""A try's outcome recorded: the message's new status (sent, deferred with its next
attempt, failed once the retry lifetime is over), its metrics and log line, written to
the store durably (a store that cannot commit for a while is waited for).

Postfix semantics (docs/design.md §3): each recipient's reply is kept; 4xx, timeouts and
lost connections defer with backoff; 5xx fails; past the retry lifetime a deferral
becomes a failure.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from mailsync.config.model import Account, Config, OutgoingServer, Retry
from mailsync.errors import StoreUnavailable
from mailsync.outbound import retry
from mailsync.outbound.queue import OutboundStore, Outgoing
from mailsync.outbound.types import Delivery, RecipientResult
from mailsync.telemetry.metrics import Metrics

log = logging.getLogger("mailsync.deliver")


class Outcomes:
    """Records the deliverer's outcomes. ``halt`` is the deliverer's halt event (a halt
    gives up waiting for the store); ``record_patience`` how long an outcome waits for a
    store that cannot commit (None: until halted)."""

    def __init__(self, store: OutboundStore, metrics: Metrics, *,
                 series: Callable[..., Any], clock: Callable[[], float],
                 rng: random.Random, halt: threading.Event,
                 record_patience: float | None) -> None:
        self.store = store
        self.metrics = metrics
        self._series = series
        self.clock = clock
        self.rng = rng
        self._halt = halt
        self.record_patience = record_patience

    def record(self, config: Config, message: Outgoing, account: Account,
                delivery: Delivery, duration: float, tries: list[tuple[str, str]],
                also: Callable[[Any], None] | None = None) -> str:
        """Record one SMTP transaction's outcome (``also``: more to write with it, see
        :meth:`OutboundStore.record_delivery`); returns the message's new status."""
        now = self.clock()
        cfg_retry = config.daemon.retry
        server = delivery.server
        next_at = None
        expired = False
        if delivery.deferred:
            if retry.expired(message.created_at, now, cfg_retry):
                expired = True
                delivery = replace(delivery, recipients=tuple(
                    RecipientResult(r.address, "failed", r.code,
                                    f"retry lifetime expired; last reply: {r.reply}")
                    if r.status == "deferred" else r for r in delivery.recipients))
            else:
                next_at = retry.next_attempt(message.created_at, now, cfg_retry, self.rng)
        if delivery.deferred:
            status = "deferred"
        elif delivery.sent:
            status = "sent"
        else:
            status = "failed"
        problems = [f"{r.address}: {r.code or ''} {r.reply}".strip()
                    for r in delivery.recipients if r.status != "sent"]
        error = "; ".join(problems) or None
        recorded = delivery
        self.durably(lambda: self.store.record_delivery(
            message.id, recorded, status, now, next_attempt_at=next_at, error=error,
            duration=duration, tries=tries, also=also))
        self._series(self.metrics.send_attempts, server, status).inc()
        if status == "sent":
            self._series(self.metrics.messages_sent, account.name, server).inc()
        elif status == "deferred":
            self._series(self.metrics.messages_deferred, server).inc()
            log.info("message %d deferred: %s", message.id, error)
        else:
            self._series(self.metrics.messages_failed,
                account.name, "expired" if expired else "permanent").inc()
            log.warning("message %d failed: %s", message.id, error)
        return status

    def connect_failed(self, config: Config, message: Outgoing, account: Account,
                        server: OutgoingServer, error: str,
                        tries: Sequence[tuple[str, str]] = (),
                        detail: str | None = None, *, count_attempt: bool = True) -> str:
        """No recipient reached: deferred, or failed once the retry lifetime is over.
        ``error`` is the message's last error (every server's), ``detail`` what the
        attempt on ``server`` met, ``tries`` the servers failed over from before it.
        Without ``count_attempt`` (every server was known down, none was connected to)
        the try is an event, not an attempt."""
        now = self.clock()
        cfg_retry = config.daemon.retry
        if retry.expired(message.created_at, now, cfg_retry):
            why = f"retry lifetime expired; last error: {error}"
            self.durably(lambda: self.store.record_failure(
                message.id, "failed", why, now, server=server.name, tries=tries,
                detail=f"retry lifetime expired; last error: {detail}" if detail else None,
                count_attempt=count_attempt))
            self._series(self.metrics.messages_failed, account.name, "expired").inc()
            return "failed"
        next_at = retry.next_attempt(message.created_at, now, cfg_retry, self.rng)
        self.durably(lambda: self.store.record_failure(
            message.id, "deferred", error, now, server=server.name, next_attempt_at=next_at,
            tries=tries, detail=detail, count_attempt=count_attempt))
        self._series(self.metrics.messages_deferred, server.name).inc()
        return "deferred"

    def defer_unexpected(self, message: Outgoing, cfg_retry: Retry) -> str:
        """An error of mailsync's own while sending: deferred to its next attempt."""
        now = self.clock()
        next_at = retry.next_attempt(message.created_at, now, cfg_retry, self.rng)
        self.durably(lambda: self.store.record_failure(
            message.id, "deferred", "internal error (see the log)", now,
            next_attempt_at=next_at))
        return "deferred"

    def durably(self, write: Callable[[], None]) -> None:
        """Run a write of a message's outcome until the store takes it.

        The server has answered: that answer must not be lost because the disk is full
        for a while. The worker waits (the store records nothing else meanwhile either)
        and tries again, up to every 2 s; a halt (or ``record_patience``) gives up,
        leaving the message `sending`.
        """
        delay = 0.05
        deadline = None if self.record_patience is None else \
            time.monotonic() + self.record_patience
        while True:
            try:
                write()
                return
            except StoreUnavailable:
                if self._halt.is_set() or (deadline is not None
                                           and time.monotonic() >= deadline):
                    raise
                self._halt.wait(delay)
                delay = min(delay * 2, 2.0)
