"""The deliverer's connection pools: one :class:`ConnectionPool` per outgoing server,
created on first use, retired on reload when the server's settings change, the probes
of the servers that are down, and the session a worker holds between messages
(:class:`Held`).

A down server (see :mod:`mailsync.outbound.pool`) is probed on a backoff by a thread of
its own while a pass lasts; once a probe works, the messages deferred meanwhile come due.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from mailsync.config.model import OutgoingServer
from mailsync.errors import StoreUnavailable
from mailsync.outbound.pool import ConnectionPool
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.smtp import SmtpSession
from mailsync.telemetry.metrics import Metrics

log = logging.getLogger("mailsync.deliver")


def labels(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``: the deliverer caches it (prometheus_client's costs ~20 µs)."""
    return metric.labels(*values)


class Pools:
    """The pools by server name (:attr:`by_name`), their gauges and their probes.

    ``connect`` opens a session to a server (the deliverer's login); ``series`` is the
    deliverer's cache of labelled metric series; ``wake`` tells a waiting pass that a
    probed server is up again.
    """

    def __init__(self, store: OutboundStore, metrics: Metrics, *,
                 connect: Callable[[OutgoingServer], SmtpSession],
                 series: Callable[..., Any], clock: Callable[[], float],
                 wake: Callable[[], None]) -> None:
        self.store = store
        self.metrics = metrics
        self.by_name: dict[str, ConnectionPool] = {}
        self._connect = connect
        self._series = series
        self._clock = clock
        self._wake = wake
        self._closed_opened = 0  # sessions opened by pools already closed
        self.lock = threading.Lock()

    def get(self, server: OutgoingServer,
            servers: Mapping[str, OutgoingServer]) -> ConnectionPool:
        """The pool of ``server``, created on first use (one per server name), under the
        settings of ``servers`` (those in force) when it is there."""
        # A message routed just before a reload goes through the settings now in force.
        server = servers.get(server.name, server)
        with self.lock:
            pool = self.by_name.get(server.name)
            if pool is None:
                pool = ConnectionPool(server, lambda: self._connect(server),
                                      on_change=self._pool_changed)
                self.by_name[server.name] = pool
                self._series(self.metrics.pool_concurrency, server.name).set(pool.concurrency)
            return pool

    def reconfigure(self, servers: Mapping[str, OutgoingServer],
                    swap: Callable[[], None]) -> list[str]:
        """Retire the pools of servers whose settings changed or that left ``servers``,
        calling ``swap`` (the new configuration put in force) under the same lock; returns
        their names. Their idle sessions close now and lent ones when their message is
        done; the messages deferred while such a server was down come due now."""
        with self.lock:
            retired = [pool for name, pool in self.by_name.items()
                       if servers.get(name) != pool.server]
            for pool in retired:
                del self.by_name[pool.server.name]
                self._closed_opened += pool.opened
            swap()
        waiting = []
        for pool in retired:
            pool.close()
            waiting += pool.take_waiting()
        if waiting:  # deferred while their server was down: try them under the new settings
            try:
                self.store.make_due(waiting, self._clock())
            except StoreUnavailable:
                log.warning("%d messages deferred while their server was down come due at "
                            "their retry time (the store cannot commit)", len(waiting))
        return [pool.server.name for pool in retired]

    def close_idle(self) -> int:
        """Close sessions idle longer than their pool's idle timeout; returns how many."""
        with self.lock:
            pools = list(self.by_name.values())
        return sum(pool.close_idle() for pool in pools)

    def _pool_changed(self, pool: ConnectionPool) -> None:
        """A pool's server went up or down, or its concurrency changed: the gauges follow
        (a retired pool's late news is ignored)."""
        name = pool.server.name
        if self.by_name.get(name) is not pool:
            return
        if pool.up is not None:
            self._series(self.metrics.server_up, name, "outgoing").set(1 if pool.up else 0)
        self._series(self.metrics.pool_concurrency, name).set(pool.concurrency)

    def probe_servers(self, probes: dict[str, threading.Thread]) -> float | None:
        """Start a probe of each down server whose probe is due (one thread per server);
        returns the seconds until the next one is due (None: no server is down)."""
        with self.lock:
            pools = list(self.by_name.values())
        soonest = None
        for pool in pools:
            running = probes.get(pool.server.name)
            if running is not None and running.is_alive():
                continue
            due = pool.probe_in()
            if due is None:
                continue
            if due > 0:
                soonest = due if soonest is None else min(soonest, due)
                continue
            thread = threading.Thread(target=self._probe, args=(pool,), daemon=True,
                                      name=f"mailsync-probe-{pool.server.name}")
            probes[pool.server.name] = thread
            thread.start()
        return soonest

    def _probe(self, pool: ConnectionPool) -> None:
        """Probe one down server; once it is up, its waiting messages come due now."""
        try:
            if not pool.probe():
                return
            waiting = pool.take_waiting()
            if waiting:
                self.store.make_due(waiting, self._clock())
        except Exception:  # noqa: BLE001 - the messages then come due at their retry time
            log.exception("probing outgoing server %s", pool.server.name)
        self._wake()

    def close(self) -> None:
        """Close every pooled session (QUIT)."""
        with self.lock:
            pools, self.by_name = list(self.by_name.values()), {}
            self._closed_opened += sum(p.opened for p in pools)
        for pool in pools:
            pool.close()

    @property
    def opened(self) -> int:
        """SMTP sessions opened so far, by every pool these pools had."""
        with self.lock:
            return self._closed_opened + sum(p.opened for p in self.by_name.values())


class Held:
    """The session a worker keeps between consecutive messages to the same server."""

    def __init__(self) -> None:
        self.pool: ConnectionPool | None = None
        self.session: SmtpSession | None = None

    def take(self, pool: ConnectionPool) -> SmtpSession:
        if self.pool is pool and self.session is not None and not self.session.broken \
                and not self.session.expiring():
            return self.session
        self.release()
        # No timeout on waiting for a free slot: holders never wait for another pool
        # while holding one (release comes first), and every network step of theirs has
        # its own timeout, so a slot always comes free; giving up here would defer a
        # message only because the pool was busy.
        session = pool.acquire(timeout=None)
        self.pool, self.session = pool, session
        return session

    def release(self) -> None:
        if self.pool is not None and self.session is not None:
            self.pool.release(self.session)
        self.pool = self.session = None
