"""The deliverability gauges, read from the store at each scrape:
``mailsync_rate_limit_waiting{server|account}`` (messages deferred by a rate limit, by
the limiter they wait for: ``{server="main"}`` or ``{account="sales"}``, the other label
empty, which PromQL reads as absent) and
``mailsync_suppression_list_size`` (addresses suppressed now).

Read from the store, not counted in memory, so that they hold after a restart and across
the nodes sharing a PostgreSQL store; every limiter the configuration declares has its
series, 0 included.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric

from mailsync.config.model import Config
from mailsync.outbound import ratelimit, suppression
from mailsync.store import Store


class DeliverabilityCollector:
    """The gauges above; ``store`` and ``config`` are callables (a reload is followed)."""

    def __init__(self, store: Callable[[], Store], config: Callable[[], Config],
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._config = config
        self._clock = clock

    def describe(self) -> Iterable[Metric]:
        """The families without samples, so registering does not read the store."""
        return self._families(None, None)

    def collect(self) -> Iterable[Metric]:
        store = self._store()
        waiting: dict[str, int] = {}
        for key in limiter_keys(self._config()):
            waiting[key] = 0
        with store.lock:
            rows = store.conn.execute(
                "SELECT waiting_for, COUNT(*) FROM messages WHERE status = 'deferred'"
                " AND waiting_for IS NOT NULL GROUP BY waiting_for").fetchall()
            size = suppression.size(store.conn, self._clock())
        waiting.update({str(k): int(n) for k, n in rows})
        return self._families(waiting, size)

    @staticmethod
    def _families(waiting: dict[str, int] | None, size: int | None) -> list[Metric]:
        gauge = GaugeMetricFamily(
            "mailsync_rate_limit_waiting",
            "Messages deferred by a rate limit now, by the limiter they wait for: a server's "
            "(server label) or an account's (account label).", labels=["server", "account"])
        listed = GaugeMetricFamily("mailsync_suppression_list_size",
                                   "Addresses on the suppression list now (not expired).")
        if waiting is not None and size is not None:
            for key, count in sorted(waiting.items()):
                kind, _, name = key.partition(":")
                gauge.add_metric([name, ""] if kind == "server" else ["", name], count)
            listed.add_metric([], size)
        return [gauge, listed]


def limiter_keys(config: Config) -> list[str]:
    """The key of every limiter ``config`` declares."""
    keys = [lim.key for lim in map(ratelimit.server_limiter, config.sending_servers().values())
            if lim is not None]
    keys += [lim.key for lim in map(ratelimit.account_limiter, config.accounts)
             if lim is not None]
    return keys
