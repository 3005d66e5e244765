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
from typing import Any

from mailsync.config.model import Account, Config, OutgoingServer, Retry
from mailsync.errors import StoreUnavailable
from mailsync.outbound import retry
from mailsync.outbound.queue import OutboundStore, Outgoing
from mailsync.outbound.types import Delivery, RecipientResult
from mailsync.telemetry.metrics import Metrics
from mailsync.values import replace

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
        """Record a transaction's outcome (``also``: more to write with it, see
        :meth:`OutboundStore.record_delivery`); returns the message's new status once
        committed."""
        status, fields, done = self._decide(config, message, account, delivery, duration,
                                            tries, also)
        self.durably(lambda: self.store.record_delivery(message.id, **fields))
        done()
        return status

    def record_later(self, config: Config, message: Outgoing, account: Account,
                     delivery: Delivery, duration: float, tries: list[tuple[str, str]],
                     also: Callable[[Any], None] | None = None) -> Pending:
        """:meth:`record` handed to the group commit without waiting for it: the sender
        goes on with its next message's envelope meanwhile, and settles the returned
        :class:`Pending` before that message's content (the crash bound stays at one
        accepted message unrecorded per session)."""
        status, fields, done = self._decide(config, message, account, delivery, duration,
                                            tries, also)
        wait = self.store.submit_delivery(message.id, **fields)
        return Pending(self, message, status, config.daemon.retry, wait,
                       lambda: self.store.record_delivery(message.id, **fields), done)

    def _decide(self, config: Config, message: Outgoing, account: Account,
                delivery: Delivery, duration: float, tries: list[tuple[str, str]],
                also: Callable[[Any], None] | None
                ) -> tuple[str, dict[str, Any], Callable[[], None]]:
        """The outcome's status, record_delivery's arguments (but the message id), and what
        follows the commit (metrics, log line)."""
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
        fields = {"delivery": delivery, "status": status, "now": now,
                  "next_attempt_at": next_at, "error": error, "duration": duration,
                  "tries": tries, "also": also}

        def done() -> None:
            self._series(self.metrics.send_attempts, server, status).inc()
            if status == "sent":
                self._series(self.metrics.messages_sent, account.name, server).inc()
                if config.daemon.log_deliveries:
                    log.info("message %d sent via %s in %.0f ms: %s", message.id, server,
                             duration * 1000, "; ".join(
                                 f"{r.address} {r.code or ''} {r.reply}".strip()
                                 for r in delivery.recipients))
            elif status == "deferred":
                self._series(self.metrics.messages_deferred, server).inc()
                log.info("message %d deferred: %s", message.id, error)
            else:
                self._series(self.metrics.messages_failed,
                             account.name, "expired" if expired else "permanent").inc()
                log.warning("message %d failed: %s", message.id, error)
        return status, fields, done

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



class Pending:
    """An outcome handed to the group commit (:meth:`Outcomes.record_later`), not yet
    known to be committed. :meth:`settle` waits for its commit: a commit the store refused
    is written again as :meth:`Outcomes.durably` does; an error of mailsync's own defers
    the message (logged), as a worker does with one while sending."""

    __slots__ = ("_outcomes", "message", "status", "_retry", "_wait", "_write", "_done",
                 "_settled", "_lost")

    def __init__(self, outcomes: Outcomes, message: Outgoing, status: str, cfg_retry: Retry,
                 wait: Callable[[], None], write: Callable[[], None],
                 done: Callable[[], None]) -> None:
        self._outcomes = outcomes
        self.message = message
        self.status = status
        self._retry = cfg_retry
        self._wait = wait
        self._write = write
        self._done = done
        self._settled: str | None = None
        self._lost: StoreUnavailable | None = None

    def settle(self) -> str:
        """The message's status once its outcome is committed (waited for once; later
        calls return at once). Raises StoreUnavailable, every time, when the store did
        not take it (halted, or out of patience): the message stays `sending`."""
        if self._lost is not None:
            raise self._lost
        if self._settled is not None:
            return self._settled
        try:
            started = time.perf_counter()
            try:
                self._wait()
            except StoreUnavailable:
                self._outcomes.durably(self._write)
            self._outcomes.metrics.outcome_commit_wait.observe(time.perf_counter() - started)
        except StoreUnavailable as exc:
            self._lost = exc
            raise
        except Exception:  # noqa: BLE001 - as a worker's unexpected error while sending
            log.exception("message %d: unexpected error while recording", self.message.id)
            self._settled = self._outcomes.defer_unexpected(self.message, self._retry)
            return self._settled
        self._done()
        self._settled = self.status
        return self.status


def settle(pending: Pending | None, counts: dict[str, int]) -> None:
    """A worker's wait for its handed-over outcome's commit: counted by its status, or
    logged when the store did not take it (the message stays `sending`)."""
    if pending is None:
        return
    try:
        status = pending.settle()
    except StoreUnavailable as exc:
        log.error("message %d: its outcome is not recorded: %s", pending.message.id, exc)
        return
    counts[status] = counts.get(status, 0) + 1
