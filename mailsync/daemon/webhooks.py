"""The webhook threads: each configured webhook's outbox posted, at least once, with
retries and exponential backoff, apart from the senders.

One daemon thread per webhook (a slow or dead receiver holds only its own): it takes the
due rows of its outbox oldest first, posts each (mailsync/outbound/webhooks.py), and
deletes those taken, a batch in one transaction (a crash before that posts them again:
at least once; receivers deduplicate by the event id). The first failure pauses the
webhook for ``retry.first``, doubling up to ``retry.max`` while it keeps failing, and
defers that row alone as long: the rows behind it wait in the store, so a webhook that
is down loses nothing, and nothing in the senders waits for it. Once a post works again,
the backlog flows at once. An event not taken within ``retry.lifetime`` (5 days) of its
making is dropped, counted (``mailsync_webhook_events_expired_total``) and logged, once a
minute at most: a receiver gone for good does not grow the store without end, nor get a
week of stale events when it comes back. ``run --once`` posts what is due once, at its
end (:func:`post_once`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from mailsync.config.deliverability import Webhook
from mailsync.config.model import Config
from mailsync.config.units import format_duration
from mailsync.errors import MailsyncError, SecretError, StoreUnavailable
from mailsync.outbound.webhooks import PENDING_SQL, Pending, WebhookError, deliver
from mailsync.store import Store

log = logging.getLogger("mailsync.webhooks")

BATCH = 100
IDLE = 0.25  # how often an idle webhook looks at its outbox (seconds)
EXPIRE_EVERY = 60.0  # how often a webhook drops its events older than retry.lifetime (s)


class _Worker:
    """One webhook's thread and its counts."""

    def __init__(self, hook: Webhook, store: Store, clock: Callable[[], float],
                 counts: dict[str, list[int]]) -> None:
        self.hook = hook
        self.store = store
        self.clock = clock
        self.stop = threading.Event()
        # delivered, failed attempts, expired
        self.counts = counts.setdefault(hook.name, [0, 0, 0])
        self.failures = 0  # in a row
        self.paused_until = 0.0
        self.next_expiry = 0.0
        self.thread = threading.Thread(target=self._run, name=f"mailsync-webhook-{hook.name}",
                                       daemon=True)

    def _due(self, now: float) -> list[Pending]:
        with self.store.lock:
            rows = self.store.conn.execute(PENDING_SQL, (self.hook.name, now, BATCH)).fetchall()
        return [Pending(*r) for r in rows]

    def round(self) -> bool:
        """Post the due rows until one fails; whether any was due."""
        now = self.clock()
        if now >= self.next_expiry:
            self.next_expiry = now + EXPIRE_EVERY
            self._expire(now)
        rows = self._due(now)
        if not rows:
            return False
        done: list[int] = []
        try:
            secret = self.hook.secret.resolve()
        except SecretError as exc:
            self._failed(rows[0], f"its secret: {exc}")
            return True
        try:
            for row in rows:
                if self.stop.is_set():
                    break
                try:
                    deliver(self.hook, secret, row, self.clock())
                except WebhookError as exc:
                    self._failed(row, str(exc))
                    break
                done.append(row.id)
                self.counts[0] += 1
                if self.failures:
                    self._recovered()
        finally:
            if done:
                with self.store.transaction() as conn:
                    conn.executemany("DELETE FROM webhook_outbox WHERE id = ?",
                                     [(i,) for i in done])
        return True

    def _expire(self, now: float) -> None:
        """Drop this webhook's events older than ``retry.lifetime``: never taken."""
        lifetime = self.hook.retry.lifetime.total_seconds()
        where, args = "WHERE webhook = ? AND at < ?", (self.hook.name, now - lifetime)
        with self.store.lock:  # a read first: most minutes there is nothing to drop
            count, error = self.store.conn.execute(
                f"SELECT COUNT(*), MAX(last_error) FROM webhook_outbox {where}",
                args).fetchone()
        if not count:
            return
        with self.store.transaction() as conn:
            dropped = conn.execute(f"DELETE FROM webhook_outbox {where}", args).rowcount
        if not dropped:
            return  # another node of a shared store dropped them meanwhile
        self.counts[2] += dropped
        log.warning("webhook %s: %d event%s older than %s dropped, never taken (%s)",
                    self.hook.name, dropped, "" if dropped == 1 else "s",
                    format_duration(self.hook.retry.lifetime),
                    f"last error: {error}" if error else "never tried")

    def _recovered(self) -> None:
        """Taking events again: the rows deferred while it failed are due now."""
        log.info("webhook %s is taking events again after %d failed attempts",
                 self.hook.name, self.failures)
        self.failures = 0
        now = self.clock()
        with self.store.transaction() as conn:
            conn.execute("UPDATE webhook_outbox SET next_attempt_at = ? WHERE webhook = ?"
                         " AND next_attempt_at > ?", (now, self.hook.name, now))

    def _failed(self, row: Pending, why: str) -> None:
        self.counts[1] += 1
        self.failures += 1
        retry = self.hook.retry
        wait = min(retry.max.total_seconds(),
                   retry.first.total_seconds() * 2 ** min(self.failures - 1, 30))
        now = self.clock()
        self.paused_until = now + wait
        with self.store.transaction() as conn:
            conn.execute("UPDATE webhook_outbox SET attempts = attempts + 1,"
                         " next_attempt_at = ?, last_error = ? WHERE id = ?",
                         (now + wait, why, row.id))
        if self.failures == 1:
            log.warning("webhook %s: event %s not taken: %s; trying again after %gs, "
                        "doubling up to every %gs; its events wait in the store",
                        self.hook.name, row.event_id, why, wait, retry.max.total_seconds())

    def _run(self) -> None:
        while not self.stop.is_set():
            wait = self.paused_until - self.clock()
            if wait > 0:
                self.stop.wait(min(wait, 1.0))
                continue
            try:
                busy = self.round()
            except (StoreUnavailable, MailsyncError) as exc:
                log.warning("webhook %s: %s", self.hook.name, exc)
                busy = False
                self.stop.wait(1.0)
            except Exception:  # noqa: BLE001 - the thread must outlive one bad row
                log.exception("webhook %s: unexpected error", self.hook.name)
                busy = False
                self.stop.wait(1.0)
            if not busy:
                self.stop.wait(IDLE)


class WebhookThreads:
    """The threads of the webhooks in force; :meth:`reconfigure` starts, stops and
    restarts only the ones whose settings changed."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.counts: dict[str, list[int]] = {}
        self._workers: dict[str, _Worker] = {}
        self.hooks: tuple[Webhook, ...] = ()

    def start(self, config: Config) -> None:
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        wanted = {h.name: h for h in config.webhooks}
        for name, worker in list(self._workers.items()):
            if wanted.get(name) != worker.hook:
                worker.stop.set()
                del self._workers[name]
        for name, hook in wanted.items():
            if name not in self._workers:
                worker = _Worker(hook, self.store, self.clock, self.counts)
                self._workers[name] = worker
                worker.thread.start()
        self.hooks = config.webhooks

    def stop(self, timeout: float = 5.0) -> None:
        for worker in self._workers.values():
            worker.stop.set()
        for worker in self._workers.values():
            worker.thread.join(timeout)
        self._workers.clear()


def post_once(config: Config, store: Store) -> None:
    """`run --once`: post each webhook's due events once, until its first failure; what
    is left waits in the outbox for the next run or the daemon."""
    for hook in config.webhooks:
        worker = _Worker(hook, store, time.time, {})
        try:
            while worker.round() and not worker.failures:
                pass
        except MailsyncError as exc:
            log.warning("webhook %s: %s", hook.name, exc)


class WebhookCollector:
    """``mailsync_webhook_deliveries_total`` (by webhook and result: ``success``, an event
    taken; ``failure``, a post not taken, retried), ``mailsync_webhook_events_expired_total``
    (events dropped past ``retry.lifetime``), ``mailsync_webhook_outbox_events`` and
    ``mailsync_webhook_outbox_oldest_age_seconds``, each by webhook; the outbox read from
    the store at scrape time."""

    def __init__(self, threads: Callable[[], WebhookThreads | None],
                 clock: Callable[[], float] = time.time) -> None:
        self._threads = threads
        self._clock = clock

    def describe(self) -> Iterable[Any]:
        return self._families(None)

    def collect(self) -> Iterable[Any]:
        return self._families(self._threads())

    def _families(self, threads: WebhookThreads | None) -> list[Any]:
        # prometheus_client only here: the collector runs in the daemon, which serves it.
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        deliveries = CounterMetricFamily(
            "mailsync_webhook_deliveries", "Posts to a webhook, by result: success (a 2xx "
            "answer: the event was taken), failure (not taken; the event is posted again).",
            labels=["webhook", "result"])
        expired = CounterMetricFamily(
            "mailsync_webhook_events_expired", "Events dropped unposted: not taken within "
            "the webhook's retry.lifetime of their making.", labels=["webhook"])
        depth = GaugeMetricFamily("mailsync_webhook_outbox_events",
                                  "Events waiting to be posted to a webhook.",
                                  labels=["webhook"])
        oldest = GaugeMetricFamily("mailsync_webhook_outbox_oldest_age_seconds",
                                   "Age of the oldest event waiting for a webhook (0: none).",
                                   labels=["webhook"])
        if threads is not None and threads.hooks:
            with threads.store.lock:
                rows = {r[0]: (r[1], r[2]) for r in threads.store.conn.execute(
                    "SELECT webhook, COUNT(*), MIN(at) FROM webhook_outbox GROUP BY webhook")}
            now = self._clock()
            for hook in threads.hooks:
                n, at = rows.get(hook.name, (0, None))
                sent, fails, dropped = threads.counts.get(hook.name, [0, 0, 0])
                deliveries.add_metric([hook.name, "success"], sent)
                deliveries.add_metric([hook.name, "failure"], fails)
                expired.add_metric([hook.name], dropped)
                depth.add_metric([hook.name], n)
                oldest.add_metric([hook.name], 0.0 if at is None else max(0.0, now - at))
        return [deliveries, expired, depth, oldest]
