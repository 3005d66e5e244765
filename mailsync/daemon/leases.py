"""The ``mailsync-leases`` thread: the leases this node holds on a shared store.

On a PostgreSQL store (several nodes) :class:`LeaseKeeper` asks for the lease of each
incoming server and the ``singleton`` one (:mod:`mailsync.store.leases`), renews those
it holds and gives them all back when the daemon stops; a poller polls only while its
:class:`MailboxLease` is valid, and stores each batch only if the lease still holds in
that transaction. On SQLite (one node by construction: the state_dir's pid lock) every
lease is held from the start, no row is written and no thread runs: nothing changes.

``held_mailboxes()`` is what the node's heartbeat reports as the mailboxes it holds.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from mailsync.config.model import Config
from mailsync.errors import MailsyncError
from mailsync.store import Store
from mailsync.store import leases as sql
from mailsync.store.leases import SINGLETON, LeaseState, Timing
from mailsync.telemetry.metrics import Metrics

log = logging.getLogger("mailsync.daemon")


class MailboxLease:
    """One incoming server's lease as its poller sees it (the ``lease`` of
    :class:`mailsync.inbound.poller.Poller`)."""

    def __init__(self, keeper: LeaseKeeper, server: str) -> None:
        self.keeper = keeper
        self.server = server
        self.name = sql.mailbox(server)

    def valid(self) -> bool:
        """Whether this node may poll the server now (by its own clock)."""
        return self.keeper.holds(self.name)

    def fence(self, conn: sqlite3.Connection) -> bool:
        """In a batch's transaction: whether the lease still holds in the database."""
        return self.keeper.fence(conn, self.name)

    def wait_held(self, stop: threading.Event, slice_: float = 0.5) -> None:
        """Wait until this node holds the lease or ``stop`` is set."""
        while not stop.is_set() and not self.valid():
            self.keeper.granted.wait(slice_)


class LeaseKeeper:
    """The leases of one daemon (see the module doc); :meth:`tick` is one round."""

    def __init__(self, store: Store, config: Config, metrics: Metrics | None = None, *,
                 holder: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.shared = store.dialect == "postgresql"  # SQLite: one node, every lease held
        self.holder = holder or sql.holder_name()
        self.metrics = metrics
        self.clock = clock
        self.granted = threading.Event()  # pulsed when a lease is taken (wakes pollers)
        self.timing = Timing(config.daemon.mailbox_lease.total_seconds())
        self._leases: dict[str, LeaseState] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mailsync-leases", daemon=True)
        self.reconfigure(config)

    # -- what pollers and the supervisor ask --------------------------------------------
    def holds(self, name: str) -> bool:
        if not self.shared:
            return True
        state = self._leases.get(name)
        return state is not None and state.valid(self.clock())

    def fence(self, conn: sqlite3.Connection, name: str) -> bool:
        if not self.shared:
            return True
        return sql.fence(conn, self.store.dialect, name, self.holder, self.timing.term)

    def lease(self, server: str) -> MailboxLease:
        return MailboxLease(self, server)

    def held_mailboxes(self) -> list[str]:
        """The incoming servers this node holds the lease of (for its heartbeat)."""
        prefix = sql.mailbox("")
        with self._lock:
            names = list(self._leases)
        return sorted(n[len(prefix):] for n in names if n.startswith(prefix) and self.holds(n))

    # -- the leases wanted ---------------------------------------------------------------
    def reconfigure(self, config: Config) -> None:
        """Hold the leases of ``config``'s incoming servers and the singleton one; give
        back those of servers it dropped. A changed mailbox_lease applies from the next
        renewal."""
        self.timing = Timing(config.daemon.mailbox_lease.total_seconds())
        wanted = [SINGLETON, *(sql.mailbox(s.name) for s in config.incoming_servers)]
        with self._lock:
            dropped = [n for n in self._leases if n not in wanted]
            for name in dropped:
                del self._leases[name]
            for name in wanted:
                state = self._leases.setdefault(name, LeaseState(name, self.timing))
                state.timing = self.timing
        for name in dropped:
            self._gauge(name, False)
        if self.shared and dropped:
            self._release(dropped)
        if not self.shared:
            for name in wanted:
                self._gauge(name, True)

    # -- the thread ----------------------------------------------------------------------
    def start(self) -> None:
        if self.shared:
            self.tick()  # the first round before the pollers start: no needless wait
            self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop renewing and give every lease back (the pollers have stopped)."""
        self._stop.set()
        if self.thread.ident is not None:
            self.thread.join(timeout)
        if self.shared:
            with self._lock:
                names = list(self._leases)
                for state in self._leases.values():
                    state.valid_until = 0.0
            self._release(names)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.tick()
            except Exception:  # noqa: BLE001 - never silently; the next round tries again
                log.exception("the lease keeper failed; trying again")
                delay = self.timing.try_every
            self._stop.wait(delay)

    def tick(self) -> float:
        """Ask the database for every lease due (one transaction); the seconds until the
        next one is due. A lease that ran out without renewal is reported lost."""
        now = self.clock()
        with self._lock:
            states = list(self._leases.values())
        due = [s for s in states if s.due(now)]
        for state in states:
            if state.lapsed(now):
                self._lost(state.name, "it could not be renewed in time")
        if due:
            self._ask(due)
        soonest = min((s.next_at for s in states), default=now + self.timing.try_every)
        return max(0.05, min(soonest - self.clock(), self.timing.try_every))

    def _ask(self, due: list[LeaseState]) -> None:
        asked_at = self.clock()
        try:
            with self.store.transaction() as conn:
                answers = [sql.take(conn, self.store.dialect, s.name, self.holder,
                                    s.timing.term) for s in due]
        except (sqlite3.Error, MailsyncError) as exc:
            log.debug("leases: the store could not be asked (%s); trying again", exc)
            now = self.clock()
            for state in due:
                state.failed(now)
            return
        now = self.clock()
        for state, taken in zip(due, answers, strict=True):
            if taken:
                if state.granted(asked_at):
                    self._gauge(state.name, True)
                    log.info("%s: this node (%s) holds the lease now", _what(state.name),
                             self.holder)
                    self.granted.set()
                    self.granted.clear()
            elif state.refused(now):
                self._lost(state.name, "another node holds it")

    def _lost(self, name: str, why: str) -> None:
        self._gauge(name, False)
        log.warning("%s: this node lost the lease (%s): it stops until it holds it again",
                    _what(name), why)

    def _release(self, names: list[str]) -> None:
        try:
            with self.store.transaction() as conn:
                sql.release(conn, names, self.holder)
        except (sqlite3.Error, MailsyncError) as exc:
            log.warning("leases could not be given back (%s): other nodes take them over "
                        "when they end", exc)

    def _gauge(self, name: str, held: bool) -> None:
        prefix = sql.mailbox("")
        if self.metrics is not None and name.startswith(prefix):
            self.metrics.mailbox_lease_held.labels(name[len(prefix):]).set(1 if held else 0)


def _what(name: str) -> str:
    """A lease for people: ``incoming server support``, ``the singleton work``."""
    prefix = sql.mailbox("")
    if name.startswith(prefix):
        return f"incoming server {name[len(prefix):]}"
    return "the singleton work (retention pruning)"
