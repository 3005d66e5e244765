"""Store → SMTP: send what is due through per-server connection pools, in worker threads.

Postfix semantics (docs/design.md §3): each recipient's reply is kept; 4xx, timeouts and lost
connections defer with backoff; 5xx fails; past the retry lifetime a deferral becomes a
failure. A connection failure moves to the next eligible server before deferring. The
sent status is committed right after the server's acceptance, so a crash can resend at
most the messages that were in flight.

A server that is down (see :mod:`mailsync.outbound.pool`) is not connected to per
message: its messages go to the next eligible server or are deferred at once, without
counting an attempt, and a pass probes it on a backoff; once a probe works, the
messages deferred meanwhile come due at once.
"""

from __future__ import annotations

import functools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mailsync.auth.tokens import TokenCache
from mailsync.config.model import Account, Config, OutgoingServer
from mailsync.errors import ConnectError, StoreUnavailable
from mailsync.outbound import login, retry, routing
from mailsync.outbound.pool import ConnectionPool
from mailsync.outbound.queue import OutboundStore, Outgoing
from mailsync.outbound.smtp import SmtpSession, open_session
from mailsync.outbound.types import Delivery, RecipientResult
from mailsync.outbound.verp import VerpKey, verp_sender
from mailsync.telemetry.metrics import Metrics

log = logging.getLogger("mailsync.deliver")

SessionFactory = login.SessionFactory  # (server, password or access token) → a session
CLAIM_BATCH = 200
CHUNK = 16


class _Held:
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


@dataclass
class DeliverStats:
    """What one pass did, by final status of each try."""

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    held: int = 0
    skipped: list[int] = field(default_factory=list)  # claimed, not tried (halted)


def _labels(metric: Any, *values: str) -> Any:
    return metric.labels(*values)


def default_factory(server: OutgoingServer, password: str | None) -> SmtpSession:
    return open_session(server, password)


@dataclass(frozen=True)
class _View:
    """The configuration a message is sent under, swapped as one object on reload."""

    config: Config
    accounts: dict[str, Account]
    servers: dict[str, OutgoingServer]

    @classmethod
    def of(cls, config: Config) -> _View:
        return cls(config, {a.name: a for a in config.accounts}, config.sending_servers())


class Deliverer:
    """Sends due messages; owns one :class:`ConnectionPool` per outgoing server.

    :meth:`reconfigure` swaps the configuration for the next message and retires only
    the pools of servers whose settings changed or that left; :meth:`halt` stops a
    running pass after the messages in flight. ``verp_key`` signs the VERP envelope
    senders (see :mod:`mailsync.outbound.verp`); it stays the same across reloads.
    """

    def __init__(self, config: Config, store: OutboundStore, metrics: Metrics, *,
                 verp_key: VerpKey,
                 factory: SessionFactory = default_factory,
                 clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None,
                 record_patience: float | None = None,
                 tokens: TokenCache | None = None) -> None:
        self._view = _View.of(config)
        # OAuth2 access tokens, one per identity, shared with the pollers of the process.
        self.tokens = tokens if tokens is not None else TokenCache(
            state_dir=config.daemon.state_dir, observer=metrics.oauth2_observer)
        # How long an outcome waits for a store that cannot commit (None: until halted).
        self.record_patience = record_patience
        self.store = store
        self.metrics = metrics
        self.verp_key = verp_key
        self.factory = factory
        self.clock = clock
        self.rng = rng or random.Random()
        self.pools: dict[str, ConnectionPool] = {}
        self._closed_opened = 0  # sessions opened by pools already closed
        self._work_ready = threading.Event()
        self._halt = threading.Event()
        # prometheus_client's labels() costs ~20 µs; a message touches four series.
        self._series = functools.lru_cache(maxsize=4096)(_labels)
        self._pools_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._unclaim_later: list[int] = []  # claimed, not tried, not yet put back
        # Progress, for the daemon's health: messages this pass handed to its workers,
        # those finished (or put back), and when one last finished or none was in hand.
        self._claimed = 0
        self._finished = 0
        self.progress_at = time.monotonic()

    @property
    def config(self) -> Config:
        """The configuration the next message is sent under."""
        return self._view.config

    def reconfigure(self, config: Config) -> list[str]:
        """Send the next messages under ``config``; returns the servers whose pools were
        retired (settings changed, or gone). Their idle sessions close now and lent ones
        when their message is done; unchanged servers keep their open sessions."""
        view = _View.of(config)
        servers = view.servers
        with self._pools_lock:
            retired = [pool for name, pool in self.pools.items()
                       if servers.get(name) != pool.server]
            for pool in retired:
                del self.pools[pool.server.name]
                self._closed_opened += pool.opened
            self._view = view
        waiting = []
        for pool in retired:
            pool.close()
            waiting += pool.take_waiting()
        if waiting:  # deferred while their server was down: try them under the new settings
            try:
                self.store.make_due(waiting, self.clock())
            except StoreUnavailable:
                log.warning("%d messages deferred while their server was down come due at "
                            "their retry time (the store cannot commit)", len(waiting))
        return [pool.server.name for pool in retired]

    def close_idle(self) -> int:
        """Close sessions idle longer than their pool's idle timeout; returns how many."""
        with self._pools_lock:
            pools = list(self.pools.values())
        return sum(pool.close_idle() for pool in pools)

    # -- pools -------------------------------------------------------------------------
    def pool(self, server: OutgoingServer) -> ConnectionPool:
        """The pool of ``server``, created on first use (one per server name)."""
        # A message routed just before a reload goes through the settings now in force.
        server = self._view.servers.get(server.name, server)
        with self._pools_lock:
            pool = self.pools.get(server.name)
            if pool is None:
                pool = ConnectionPool(server, lambda: self._connect(server),
                                      on_change=self._pool_changed)
                self.pools[server.name] = pool
                self._series(self.metrics.pool_concurrency, server.name).set(pool.concurrency)
            return pool

    def _pool_changed(self, pool: ConnectionPool) -> None:
        """A pool's server went up or down, or its concurrency changed: the gauges follow
        (a retired pool's late news is ignored)."""
        name = pool.server.name
        if self.pools.get(name) is not pool:
            return
        if pool.up is not None:
            self._series(self.metrics.server_up, name, "outgoing").set(1 if pool.up else 0)
        self._series(self.metrics.pool_concurrency, name).set(pool.concurrency)

    def _probe_servers(self, probes: dict[str, threading.Thread]) -> float | None:
        """Start a probe of each down server whose probe is due (one thread per server);
        returns the seconds until the next one is due (None: no server is down)."""
        with self._pools_lock:
            pools = list(self.pools.values())
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
                self.store.make_due(waiting, self.clock())
        except Exception:  # noqa: BLE001 - the messages then come due at their retry time
            log.exception("probing outgoing server %s", pool.server.name)
        self.wake()

    def _connect(self, server: OutgoingServer) -> SmtpSession:
        return login.connect(server, self.tokens, self.factory)

    def close(self) -> None:
        """Close every pooled session (QUIT)."""
        with self._pools_lock:
            pools, self.pools = list(self.pools.values()), {}
            self._closed_opened += sum(p.opened for p in pools)
        for pool in pools:
            pool.close()

    @property
    def connections_opened(self) -> int:
        """SMTP sessions opened so far, by every pool this deliverer had."""
        with self._pools_lock:
            return self._closed_opened + sum(p.opened for p in self.pools.values())

    # -- one pass ----------------------------------------------------------------------
    def wake(self) -> None:
        """New messages were queued: a waiting :meth:`run_once` claims them at once."""
        self._work_ready.set()

    def halt(self) -> None:
        """Make a running pass stop claiming and return once the messages being sent are
        recorded; the messages it had claimed but not begun go back to the queue."""
        self._halt.set()
        self._work_ready.set()

    def resume(self) -> None:
        """Let passes run again after :meth:`halt`."""
        self._halt.clear()

    def in_hand(self) -> tuple[int, float]:
        """Messages claimed by the running pass and not finished yet, and the seconds since
        one last finished (or since none was in hand): a sender stuck with work waiting
        shows as a count above 0 with a growing age."""
        with self._stats_lock:
            waiting = self._claimed - self._finished
        return waiting, time.monotonic() - self.progress_at

    def _progressed(self) -> None:
        """A worker finished a message (sent, deferred, failed, held or put back)."""
        with self._stats_lock:
            self._finished += 1
        self.progress_at = time.monotonic()

    def run_once(self, workers: int | None = None, *,
                 until: threading.Event | None = None, idle: float = 0.05) -> DeliverStats:
        """Send everything due now, with up to ``workers`` threads; returns the outcomes.

        With ``until``, keep claiming newly queued messages (see :meth:`wake`) until that
        event is set and nothing is due: `run --once` sends while it is still ingesting,
        and the daemon runs one pass for as long as it lives (:meth:`halt` ends it). While
        nothing is due, the queue is looked at again after ``idle`` seconds at most, or
        when the next deferred message is due, or at :meth:`wake`. After :meth:`halt`,
        passes return at once until :meth:`resume`.
        """
        stats = DeliverStats()
        n = workers or self.default_workers()
        work: queue.Queue[list[Outgoing] | None] = queue.Queue(maxsize=n * 2)
        threads = [threading.Thread(target=self._worker, args=(work, stats),
                                    name=f"mailsync-send-{i}", daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        skipped: list[int] = []
        probes: dict[str, threading.Thread] = {}
        with self._stats_lock:
            self._claimed = self._finished = 0
        try:
            while not self._halt.is_set():
                self._work_ready.clear()
                if self._claimed == self._finished:   # nothing in hand: not stuck
                    self.progress_at = time.monotonic()
                # Read before claiming: once the producer is done, an empty claim is final.
                finished = until is None or until.is_set()
                now = self.clock()
                if self._unclaim_later:
                    self.store.unclaim(self._unclaim_later, now)
                    self._unclaim_later = []
                batch = self.store.claim_due(now, CLAIM_BATCH)
                # Down servers are probed while the pass lasts (not in its last round).
                probe = None if finished else self._probe_servers(probes)
                if batch:
                    with self._stats_lock:
                        self._claimed += len(batch)
                # Chunks, not single messages: fewer hand-offs between threads, and a
                # worker keeps its SMTP session across the messages of a chunk.
                size = max(1, min(CHUNK, len(batch) // n))
                for start in range(0, len(batch), size):
                    work.put(batch[start:start + size])
                if batch:
                    continue
                if finished:
                    break
                wait = idle if probe is None else min(idle, probe)
                if idle > 0.05:
                    due = self.store.next_due()
                    if due is not None:
                        wait = min(wait, max(0.0, due - now))
                self._work_ready.wait(wait)
        finally:
            for _ in threads:
                work.put(None)
            for t in threads:
                t.join()
            while True:  # chunks no worker took (halted)
                try:
                    chunk = work.get_nowait()
                except queue.Empty:
                    break
                if chunk is not None:
                    skipped.extend(m.id for m in chunk)
            skipped.extend(stats.skipped)
            with self._stats_lock:
                self._claimed = self._finished = 0
            self.progress_at = time.monotonic()
            if skipped:
                try:
                    self.store.unclaim(skipped, self.clock())
                except StoreUnavailable:
                    self._unclaim_later.extend(skipped)  # by the next pass (or the restart)
                    raise
        return stats

    def default_workers(self) -> int:
        """Worker threads for the configuration in force: one per possible session."""
        total = sum(s.max_connections for s in self._view.servers.values())
        return max(1, min(total, 32))

    def _worker(self, work: queue.Queue[list[Outgoing] | None], stats: DeliverStats) -> None:
        counts: dict[str, int] = {}
        skipped: list[int] = []
        while True:
            chunk = work.get()
            if chunk is None:
                break
            held = _Held()
            try:
                for message in chunk:
                    if self._halt.is_set():
                        skipped.append(message.id)
                        self._progressed()
                        continue
                    try:
                        outcome = self.send(message, held)
                    except StoreUnavailable as exc:
                        # Halted while the store could not record the outcome: the message
                        # stays `sending`, queued again (and sent again) at the next start.
                        log.error("message %d: its outcome is not recorded: %s", message.id,
                                  exc)
                        self._progressed()
                        continue
                    except Exception:  # noqa: BLE001 - one message must not stop the others
                        log.exception("message %d: unexpected error while sending", message.id)
                        outcome = self._defer_unexpected(message)
                    self._progressed()
                    counts[outcome] = counts.get(outcome, 0) + 1
            finally:
                held.release()
        with self._stats_lock:
            for outcome, count in counts.items():
                setattr(stats, outcome, getattr(stats, outcome) + count)
            stats.skipped.extend(skipped)

    # -- one message -------------------------------------------------------------------
    def send(self, message: Outgoing, held: _Held | None = None) -> str:
        """Try ``message`` once (with failover); record and return its new status."""
        if held is None:
            held = _Held()
            try:
                return self.send(message, held)
            finally:
                held.release()
        view = self._view  # one configuration for the whole try, even across a reload
        config = view.config
        now = self.clock()
        account = view.accounts.get(message.account)
        if account is None:
            detail = f"account {message.account!r} is no longer in the configuration"
            self._durably(lambda: self.store.record_failure(message.id, "held", detail, now,
                                                            count_attempt=False))
            return "held"
        servers = routing.servers_for(config, account, message.from_address, spread=message.id)
        if not servers:
            # A configuration gap (a server removed, a from_filter narrowed), not the
            # message's fault: held, never dropped, until a server may send it again.
            detail = (f"no outgoing server may send as {message.from_address}; held until "
                      f"one may (`mailsync queue release {message.id}`)")
            self._durably(lambda: self.store.record_failure(message.id, "held", detail, now,
                                                            count_attempt=False))
            log.warning("message %d held: %s", message.id, detail)
            return "held"
        mail_from = verp_sender(config, self.verp_key, message.id, message.verp) \
            or message.from_address
        tries: list[tuple[str, str]] = []  # (server, why it could not be used)
        pools = []
        attempted = False
        for server in servers:
            pool = self.pool(server)
            try:
                session = held.take(pool)
            except ConnectError as exc:
                # Not logged per message: the pool logs the server going down, once.
                tries.append((server.name, str(exc)))
                pools.append(pool)
                if exc.kind != "down":  # "down": refused without connecting
                    attempted = True
                    self._series(self.metrics.send_attempts, server.name, "connect_error").inc()
                log.debug("message %d: %s", message.id, exc)
                continue
            return self._transact(config, message, account, server, session, mail_from,
                                  tries)
        status = self._connect_failed(config, message, account, servers[-1],
                                      "; ".join(e for _, e in tries), tries[:-1], tries[-1][1],
                                      count_attempt=attempted)
        if status == "deferred" and not all([pool.wait_for_up(message.id) for pool in pools]):
            # A server came back up meanwhile (or its pool was retired by a reload).
            self._durably(lambda: self.store.make_due([message.id], self.clock()))
        return status

    def _transact(self, config: Config, message: Outgoing, account: Account,
                  server: OutgoingServer, session: SmtpSession, mail_from: str,
                  tries: list[tuple[str, str]]) -> str:
        start = time.perf_counter()
        try:
            delivery = session.send(mail_from, message.recipients, message.raw)
        except ConnectError as exc:
            # Lost mid-transaction: the server may or may not have the message. Defer.
            # (The session is broken; the holder's release closes it.)
            self._series(self.metrics.send_attempts, server.name, "deferred").inc()
            return self._connect_failed(config, message, account, server, str(exc), tries)
        duration = time.perf_counter() - start
        self._series(self.metrics.send_duration, server.name).observe(duration)
        return self._record(config, message, account, delivery, duration, tries)

    def _record(self, config: Config, message: Outgoing, account: Account,
                delivery: Delivery, duration: float, tries: list[tuple[str, str]]) -> str:
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
        self._durably(lambda: self.store.record_delivery(
            message.id, recorded, status, now, next_attempt_at=next_at, error=error,
            duration=duration, tries=tries))
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

    def _connect_failed(self, config: Config, message: Outgoing, account: Account,
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
            self._durably(lambda: self.store.record_failure(
                message.id, "failed", why, now, server=server.name, tries=tries,
                detail=f"retry lifetime expired; last error: {detail}" if detail else None,
                count_attempt=count_attempt))
            self._series(self.metrics.messages_failed, account.name, "expired").inc()
            return "failed"
        next_at = retry.next_attempt(message.created_at, now, cfg_retry, self.rng)
        self._durably(lambda: self.store.record_failure(
            message.id, "deferred", error, now, server=server.name, next_attempt_at=next_at,
            tries=tries, detail=detail, count_attempt=count_attempt))
        self._series(self.metrics.messages_deferred, server.name).inc()
        return "deferred"

    def _defer_unexpected(self, message: Outgoing) -> str:
        now = self.clock()
        next_at = retry.next_attempt(message.created_at, now, self.config.daemon.retry, self.rng)
        self._durably(lambda: self.store.record_failure(
            message.id, "deferred", "internal error (see the log)", now,
            next_attempt_at=next_at))
        return "deferred"

    def _durably(self, write: Callable[[], None]) -> None:
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
