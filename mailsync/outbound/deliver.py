"""Store → SMTP: send what is due through per-server connection pools, in worker threads.

Postfix semantics (docs/design.md §3): each recipient's reply is kept; 4xx, timeouts and lost
connections defer with backoff; 5xx fails; past the retry lifetime a deferral becomes a
failure. A connection failure moves to the next eligible server before deferring. The
sent status is committed right after the server's acceptance, so a crash can resend at
most the messages that were in flight.

A server that is down (:mod:`mailsync.outbound.pool`) is not connected to per message:
its messages go to the next eligible server or are deferred at once, without counting
an attempt, and a pass probes it on a backoff (once a probe works, they come due). This
module is the pass, its workers and a message's try; the pools and probes are
:mod:`mailsync.outbound.pools`', the recording of each outcome :mod:`~.outcomes`'.
"""

from __future__ import annotations

import functools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable

from mailsync.auth.tokens import TokenCache
from mailsync.config.model import Account, Config, OutgoingServer
from mailsync.errors import ConnectError, StoreUnavailable
from mailsync.outbound import login, routing
from mailsync.outbound.lease import LeaseLost, still_held
from mailsync.outbound.outcomes import Outcomes, Pending, settle
from mailsync.outbound.pool import ConnectionPool
from mailsync.outbound.pools import Held, Pools, labels
from mailsync.outbound.queue import OutboundStore, Outgoing
from mailsync.outbound.ratelimit import Gate, Route
from mailsync.outbound.smtp import SmtpSession, open_session
from mailsync.outbound.verp import VerpKey, verp_sender
from mailsync.telemetry.metrics import Metrics
from mailsync.values import field, valueclass

log = logging.getLogger("mailsync.deliver")

SessionFactory = login.SessionFactory  # (server, password or access token) → a session
CLAIM_BATCH = 200
CHUNK = 16


@valueclass(frozen=False)
class DeliverStats:
    """What one pass did, by final status of each try."""

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    held: int = 0
    skipped: list[int] = field(default_factory=list)  # claimed, not tried (halted)


def default_factory(server: OutgoingServer, password: str | None) -> SmtpSession:
    return open_session(server, password)


@valueclass
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

    :meth:`reconfigure` swaps the configuration for the next message and retires only the
    pools of servers whose settings changed or that left; :meth:`halt` stops a running
    pass after the messages in flight. ``verp_key`` signs the VERP envelope senders
    (:mod:`mailsync.outbound.verp`), the same across reloads.
    """

    def __init__(self, config: Config, store: OutboundStore, metrics: Metrics, *,
                 verp_key: VerpKey, factory: SessionFactory = default_factory,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 record_patience: float | None = None, tokens: TokenCache | None = None
                 ) -> None:
        self._view = _View.of(config)
        # OAuth2 access tokens, one per identity, shared with the pollers of the process.
        self.tokens = tokens if tokens is not None else TokenCache(
            state_dir=config.daemon.state_dir, observer=metrics.oauth2_observer)
        self.store = store
        self.metrics = metrics
        self.verp_key = verp_key
        self.factory = factory
        self.clock = clock
        self.rng = rng or random.Random()
        self._work_ready = threading.Event()
        self._halt = threading.Event()
        # prometheus_client's labels() costs ~20 µs; a message touches four series.
        self._series = functools.lru_cache(maxsize=4096)(labels)
        self._pools = Pools(store, metrics, series=self._series, clock=clock, wake=self.wake,
                            connect=lambda s: login.connect(s, self.tokens, self.factory))
        self._outcomes = Outcomes(store, metrics, series=self._series, clock=clock, rng=self.rng,
                                  halt=self._halt, record_patience=record_patience)
        # The outcome writers, bound once: a message costs no more calls than before.
        self._record_later = self._outcomes.record_later
        self._connect_failed = self._outcomes.connect_failed
        self._durably = self._outcomes.durably
        self.gate = Gate(config, metrics, store.store.dialect)  # rate limits, suppression
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

        def swap() -> None:
            self._view = view
            self.gate.configure(config)
        return self._pools.reconfigure(view.servers, swap)

    def close_idle(self) -> int:
        """Close sessions idle longer than their pool's idle timeout; returns how many."""
        return self._pools.close_idle()

    # -- pools -------------------------------------------------------------------------
    @property
    def pools(self) -> dict[str, ConnectionPool]:
        """The pool of each server sent to so far, by name (:class:`Pools`)."""
        return self._pools.by_name

    def pool(self, server: OutgoingServer) -> ConnectionPool:
        """The pool of ``server``, created on first use (one per server name)."""
        return self._pools.get(server, self._view.servers)

    def close(self) -> None:
        """Close every pooled session (QUIT)."""
        self._pools.close()

    @property
    def connections_opened(self) -> int:
        """SMTP sessions opened so far, by every pool this deliverer had."""
        return self._pools.opened

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
                batch = self.store.claim_due(now, CLAIM_BATCH, self.gate.admit)
                self.gate.committed()
                # Down servers are probed while the pass lasts (not in its last round).
                probe = None if finished else self._pools.probe_servers(probes)
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
            held = Held()
            # The previous outcome, handed to the group commit: its commit overlaps this
            # message's envelope, and is waited for before this message's content goes.
            previous: Pending | None = None
            try:
                for message in chunk:
                    if self._halt.is_set():
                        skipped.append(message.id)
                        self._progressed()
                        continue
                    result: str | Pending | None
                    try:
                        result = self._try(message, held, previous)
                    except LeaseLost:  # not sent: the lease's next renewal gives it back
                        result = None
                    except StoreUnavailable as exc:  # halted: stays `sending`, sent again
                        log.error("message %d: its outcome is not recorded: %s", message.id, exc)
                        result = None
                    except Exception:  # noqa: BLE001 - one message must not stop the others
                        log.exception("message %d: unexpected error while sending", message.id)
                        result = self._outcomes.defer_unexpected(
                            message, self._view.config.daemon.retry)
                    settle(previous, counts)
                    previous = result if isinstance(result, Pending) else None
                    if isinstance(result, str):
                        counts[result] = counts.get(result, 0) + 1
                    self._progressed()
            finally:
                settle(previous, counts)
                held.release()
        with self._stats_lock:
            for outcome, count in counts.items():
                setattr(stats, outcome, getattr(stats, outcome) + count)
            stats.skipped.extend(skipped)

    # -- one message -------------------------------------------------------------------
    def send(self, message: Outgoing, held: Held | None = None) -> str:
        """Try ``message`` once (with failover); record and return its new status."""
        if held is None:
            held = Held()
            try:
                return self.send(message, held)
            finally:
                held.release()
        result = self._try(message, held, None)
        return result.settle() if isinstance(result, Pending) else result

    def _try(self, message: Outgoing, held: Held, previous: Pending | None) -> str | Pending:
        """:meth:`send`'s try; a transaction's outcome comes back as a :class:`Pending`."""
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
        servers, route = self.gate.servers(message.id, servers)
        mail_from = verp_sender(config, self.verp_key, message.id, message.verp) \
            or message.from_address
        tries: list[tuple[str, str]] = []  # (server, why it could not be used)
        pools = []
        attempted = False
        for server in servers:
            pool = self._pools.get(server, self._view.servers)  # the settings now in force
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
                                  tries, previous, route)
        status = self._connect_failed(config, message, account, servers[-1],
                                      "; ".join(e for _, e in tries), tries[:-1], tries[-1][1],
                                      count_attempt=attempted)
        if status == "deferred" and not all([pool.wait_for_up(message.id) for pool in pools]):
            # A server came back up meanwhile (or its pool was retired by a reload).
            self._durably(lambda: self.store.make_due([message.id], self.clock()))
        return status

    def _transact(self, config: Config, message: Outgoing, account: Account,
                  server: OutgoingServer, session: SmtpSession, mail_from: str,
                  tries: list[tuple[str, str]], previous: Pending | None,
                  route: Route | None = None) -> str | Pending:
        lease = self.store.send_lease  # a shared store: this node's claims lapse unrenewed

        def before_content() -> None:  # the previous outcome's commit may have taken long
            if previous is not None:
                previous.settle()
            still_held(lease, message.id, message.claimed_at)

        still_held(lease, message.id, message.claimed_at)
        start = time.perf_counter()
        try:
            delivery = session.send(mail_from, message.recipients, message.raw,
                                    before_content if previous or lease else None)
        except ConnectError as exc:
            # Lost mid-transaction: the server may or may not have the message. Defer.
            # (The session is broken; the holder's release closes it.)
            self._series(self.metrics.send_attempts, server.name, "deferred").inc()
            return self._connect_failed(config, message, account, server, str(exc), tries)
        duration = time.perf_counter() - start
        self._series(self.metrics.send_duration, server.name).observe(duration)
        also = self.gate.after_send(message.id, route, delivery, self.clock())
        return self._record_later(config, message, account, delivery, duration, tries, also)
