"""The collectors the daemon registers: the queue and the store's commit health, read at
each scrape (the registry is served by :mod:`mailsync.telemetry.exporter`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mailsync.activities.store import ActivityCollector
from mailsync.config.model import Config
from mailsync.daemon.deliverability import DeliverabilityCollector
from mailsync.daemon.webhooks import WebhookCollector, WebhookThreads
from mailsync.outbound.queue import IN_QUEUE, OutboundStore
from mailsync.store import Store
from mailsync.store.health import KINDS, CommitHealth


class QueueCollector:
    """Prometheus collector of ``mailsync_queue_messages{status}`` and
    ``mailsync_queue_oldest_message_age_seconds``, read from the store at scrape time.

    ``outbound`` returns the daemon's current OutboundStore (a callable, so a reload that
    reopens the store is followed). The gauge counts what is in the queue now, every
    status of ``IN_QUEUE`` (queued, sending, deferred, held), 0 included: final statuses
    belong to the counters (``mailsync_messages_sent_total``...), and counting the whole
    history at every scrape would grow with it. The age is 0 when nothing is pending.
    """

    def __init__(self, outbound: Callable[[], OutboundStore],
                 clock: Callable[[], float] = time.time) -> None:
        self._outbound = outbound
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        """The families without samples, so registering does not read the store."""
        return self._families(None, 0.0)

    def collect(self) -> Iterable[Metric]:
        """Current counts by status and the age of the oldest pending message."""
        store = self._outbound()
        counts = store.queue_counts()
        oldest = store.oldest_pending()
        age = 0.0 if oldest is None else max(0.0, self._clock() - oldest)
        return self._families(counts, age)

    @staticmethod
    def _families(counts: dict[str, int] | None, age: float) -> list[Metric]:
        messages = GaugeMetricFamily("mailsync_queue_messages",
                                     "Messages in the queue now (not yet final), by status.",
                                     labels=["status"])
        oldest = GaugeMetricFamily("mailsync_queue_oldest_message_age_seconds",
                                   "Age of the oldest queued, deferred or sending message "
                                   "(0 when none).")
        if counts is not None:
            for status in IN_QUEUE:
                messages.add_metric([status], counts.get(status, 0))
            oldest.add_metric([], age)
        return [messages, oldest]


class StoreCollector:
    """``mailsync_store_errors_total{kind}``: commits the disk refused (``full``, ``io``,
    ``readonly``, ``corrupt``), counted by the store's :class:`CommitHealth`; and
    ``mailsync_store_commit_failing``, 1 while the store cannot commit."""

    def __init__(self, health: Callable[[], CommitHealth]) -> None:
        self._health = health

    def describe(self) -> Iterable[Metric]:
        return self._families(None)

    def collect(self) -> Iterable[Metric]:
        return self._families(self._health())

    @staticmethod
    def _families(health: CommitHealth | None) -> list[Metric]:
        errors = CounterMetricFamily("mailsync_store_errors",
                                     "Store commits that failed on the disk, by kind.",
                                     labels=["kind"])
        failing = GaugeMetricFamily("mailsync_store_commit_failing",
                                    "1 while the store cannot commit (disk full, I/O error).")
        if health is not None:
            for kind in (*KINDS, *sorted(set(health.errors) - set(KINDS))):
                errors.add_metric([kind], health.errors.get(kind, 0))
            failing.add_metric([], 1 if health.failing else 0)
        return [errors, failing]


def register_all(registry: CollectorRegistry, *, outbound: Callable[[], OutboundStore],
                 store: Callable[[], Store], config: Callable[[], Config],
                 webhooks: Callable[[], WebhookThreads | None]) -> None:
    """The daemon's collectors, read from the store at each scrape: the queue, the store's
    health, the activities, the rate limits and suppression list, the webhooks."""
    for collector in (QueueCollector(outbound), StoreCollector(lambda: store().health),
                      ActivityCollector(store, config), DeliverabilityCollector(store, config),
                      WebhookCollector(webhooks)):
        registry.register(collector)
