"""Connection pools: up to ``max_connections`` reusable SMTP sessions per outgoing server.

Worker threads share one pool per server. The pool opens, lends, health-checks and
closes sessions, and keeps what it learns about the server from opening them; what is
sent through them is the caller's business.

- Concurrency feedback (Postfix's destination concurrency feedback): when opening one
  more session fails while other sessions to the server are alive (a relay allowing N
  sessions per client answers ``421``, refuses or resets the extra ones), the pool's
  concurrency drops to the sessions alive and the caller waits for one of them instead
  of failing. It rises again by one at most every ``feedback_period`` seconds of use,
  up to ``max_connections``.
- Down: when opening fails and no session to the server is alive, the server is down.
  That is logged once; from then on :meth:`acquire` fails at once with
  ``ConnectError(kind="down")``, without connecting, and only :meth:`probe` connects:
  after 1 s, then 2 s, 4 s... up to every ``PROBE_MAX`` seconds (the deliverer calls it
  when :meth:`probe_in` says). The first probe that works brings the server back up
  (logged once) and leaves its session idle for the messages waiting.

Opening and closing (network I/O) happen outside the lock, so a slow server never blocks
other threads' bookkeeping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mailsync.config.model import OutgoingServer
from mailsync.errors import ConnectError
from mailsync.outbound.smtp import SmtpSession
from mailsync.outbound.smtpwire import describe
from mailsync.values import valueclass

log = logging.getLogger("mailsync.deliver")

PROBE_FIRST = 1.0    # seconds from a server going down to the first probe
PROBE_MAX = 60.0     # the probe delay doubles up to this
FEEDBACK_PERIOD = 10.0  # concurrency rises by one at most this often


@valueclass(frozen=False)
class _Down:
    """Why and since when the server is down, and when it is probed next."""

    reason: str
    since: float
    delay: float
    next_probe: float
    probes: int = 0


class ConnectionPool:
    """Reusable SMTP sessions to one outgoing server, shared by several threads.

    ``connect`` opens a new session (the seam to the network, injected for tests and
    so the pool never sees a password). ``clock`` measures idle time, the feedback
    period and the probe delays; waiting for a free session uses real time.
    ``on_change`` is called (outside the lock) when :attr:`up` or :attr:`concurrency`
    changes.
    """

    def __init__(
        self,
        server: OutgoingServer,
        connect: Callable[[], SmtpSession],
        *,
        max_connections: int | None = None,
        idle_timeout: float = 60.0,
        health_check_after: float = 10.0,
        feedback_period: float = FEEDBACK_PERIOD,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[ConnectionPool], None] | None = None,
    ) -> None:
        self.server = server
        self.max_connections = (
            server.max_connections if max_connections is None else max_connections
        )
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {self.max_connections}")
        self.idle_timeout = idle_timeout
        self.health_check_after = health_check_after
        self.feedback_period = feedback_period
        self._connect = connect
        self._clock = clock
        self._on_change = on_change
        self._where = describe(server)
        self._cond = threading.Condition()
        self._idle: list[tuple[SmtpSession, float]] = []  # (session, idle since); newest last
        self._in_use: set[SmtpSession] = set()
        self._opening = 0  # slots reserved by threads that are connecting right now
        self._closed = False
        self._limit = self.max_connections  # the concurrency in force
        self._changed_at = clock()  # when _limit last changed
        self._down: _Down | None = None
        self._probing = False
        self._waiting: set[int] = set()  # messages deferred while down (see wait_for_up)
        self.up: bool | None = None  # None: not connected yet
        self.opened = 0

    def __repr__(self) -> str:
        return (
            f"ConnectionPool(server={self.server.name!r}, open={self.open_count}, "
            f"max={self.max_connections})"
        )

    @property
    def open_count(self) -> int:
        """Sessions currently open, idle or lent out."""
        with self._cond:
            return len(self._idle) + len(self._in_use)

    @property
    def idle_count(self) -> int:
        """Sessions open and waiting to be reused."""
        with self._cond:
            return len(self._idle)

    @property
    def concurrency(self) -> int:
        """Sessions the pool may have open now: ``max_connections``, or fewer after the
        server refused one more (concurrency feedback)."""
        return self._limit

    @property
    def down(self) -> bool:
        """Whether the server is down (acquire fails without connecting)."""
        return self._down is not None

    @property
    def outage(self) -> tuple[str, float] | None:
        """Why the server is down and since when (on the pool's clock); None when it is
        not down. Read-only, for the admin console's Servers page."""
        down = self._down
        return None if down is None else (down.reason, down.since)

    def acquire(self, timeout: float | None = None) -> SmtpSession:
        """Lend a session: an idle one (NOOP-checked if idle long), a new one, or wait.

        A failed connection while other sessions are alive lowers the concurrency and
        waits for one of them. Raises the ConnectError of ``connect`` when none is alive
        (the server is then down), ConnectError(kind="down") while it is down,
        kind="timeout" when no session is free within ``timeout`` seconds, or
        kind="closed" once the pool closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            session, stale = self._lend(timeout, deadline)
            if session is not None:
                if not session.expiring() and (not stale or session.noop()):
                    return session
                # Its OAuth2 token is about to expire, or it failed its health check: swap
                # it for a new one, keeping the slot reserved.
                session.close()
                with self._cond:
                    self._in_use.discard(session)
                    self._opening += 1
            try:
                return self._open()
            except ConnectError as exc:
                if not self._refused(exc):
                    raise

    def _lend(self, timeout: float | None,
              deadline: float | None) -> tuple[SmtpSession | None, bool]:
        """An idle session (and whether it is stale), or None with a slot reserved."""
        with self._cond:
            while True:
                if self._closed:
                    raise ConnectError(f"{self._where}: the pool is closed", "closed")
                if self._idle:
                    session, since = self._idle.pop()
                    self._in_use.add(session)
                    return session, self._clock() - since > self.health_check_after
                if self._down is not None:
                    raise ConnectError(
                        f"{self._where} is down ({self._down.reason}); not tried, waiting "
                        "for it to come back up", "down")
                if len(self._in_use) + self._opening < self._limit:
                    self._opening += 1
                    return None, False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ConnectError(
                        f"{self._where}: no free connection within {timeout:g}s "
                        f"(max_connections={self.max_connections})",
                        "timeout",
                    )
                self._cond.wait(remaining)

    def _refused(self, exc: ConnectError) -> bool:
        """Opening failed: True when other sessions are alive (the concurrency drops to
        them and the caller waits for one), False when the server is down."""
        lowered = went_down = from_max = False
        with self._cond:
            # A connection still being opened may work: decide once it is done.
            while (self._opening and not self._in_use and not self._idle
                   and self._down is None and not self._closed):
                self._cond.wait()
            if self._closed or self._down is not None:
                return False
            alive = len(self._in_use) + len(self._idle)
            if alive:
                lowered = alive < self._limit
                from_max = self._limit == self.max_connections
                if lowered:
                    self._limit = alive
                    self._changed_at = self._clock()
            else:
                now = self._clock()
                self._down = _Down(self._reason(exc), now, PROBE_FIRST, now + PROBE_FIRST)
                self.up, went_down = False, True
                self._cond.notify_all()  # waiters fail at once instead of connecting
        if lowered:
            (log.info if from_max else log.debug)(
                "outgoing server %s refused one more session (%s): sending over %d "
                "(max_connections %d)", self._where, self._reason(exc), alive,
                self.max_connections)
        if went_down:
            log.warning("outgoing server %s is down: %s; probing after %gs, doubling up to "
                        "every %gs; its messages wait meanwhile", self._where,
                        self._reason(exc), PROBE_FIRST, PROBE_MAX)
        if lowered or went_down:
            self._changed()
        return bool(alive)

    def probe_in(self) -> float | None:
        """Seconds until the down server's next probe is due (0 or less: now); None when
        it is not down, a probe is running, or the pool is closed."""
        with self._cond:
            if self._down is None or self._probing or self._closed:
                return None
            return self._down.next_probe - self._clock()

    def probe(self) -> bool:
        """Connect once to the down server: True when it is (back) up, its session left
        idle for the next message; False when it is still down (the next probe waits
        twice as long, up to PROBE_MAX)."""
        with self._cond:
            if self._down is None or self._probing or self._closed:
                return self._down is None and not self._closed
            self._probing = True
            self._opening += 1
        try:
            session = self._connect()
        except BaseException as exc:
            with self._cond:
                self._opening -= 1
                self._probing = False
                down = self._down
                if down is not None:
                    down.probes += 1
                    down.delay = min(down.delay * 2, PROBE_MAX)
                    down.next_probe = self._clock() + down.delay
            if not isinstance(exc, ConnectError):
                raise
            log.debug("outgoing server %s is still down: %s", self._where, self._reason(exc))
            return False
        with self._cond:
            self._opening -= 1
            self._probing = False
            self.opened += 1
            closed = self._closed
            if not closed:
                self._idle.append((session, self._clock()))
        if closed:
            session.close()
            return False
        self._opened()
        return True

    def wait_for_up(self, message: int) -> bool:
        """Remember ``message``, deferred while the server is down, for :meth:`take_waiting`
        once it is up; False when it is not down (any more): nothing to wait for."""
        with self._cond:
            if self._down is None:
                return False
            self._waiting.add(message)
            return True

    def take_waiting(self) -> list[int]:
        """The messages deferred while the server was down, forgotten here."""
        with self._cond:
            waiting, self._waiting = sorted(self._waiting), set()
        return waiting

    def release(self, session: SmtpSession) -> None:
        """Take a session back: idle for reuse, or closed if broken or the pool closed."""
        raised = False
        with self._cond:
            if session not in self._in_use:
                raise ValueError(f"{session!r} was not lent by {self!r}")
            self._in_use.discard(session)
            keep = not session.broken and not self._closed
            if keep:
                now = self._clock()
                self._idle.append((session, now))
                if self._limit < self.max_connections \
                        and now - self._changed_at >= self.feedback_period:
                    # Positive feedback: try one session more than before.
                    self._limit += 1
                    self._changed_at = now
                    raised = True
            if raised:
                self._cond.notify_all()
            else:
                self._cond.notify()
        if not keep:
            session.close()
        if raised:
            log.debug("outgoing server %s: concurrency raised to %d", self._where, self._limit)
            self._changed()

    @contextmanager
    def session(self, timeout: float | None = None) -> Iterator[SmtpSession]:
        """``with pool.session() as s:`` acquire, then release even on error."""
        session = self.acquire(timeout)
        try:
            yield session
        finally:
            self.release(session)

    def close_idle(self, now: float | None = None) -> int:
        """Close sessions idle longer than ``idle_timeout``; returns how many."""
        now = self._clock() if now is None else now
        with self._cond:
            stale = [s for s, since in self._idle if now - since > self.idle_timeout]
            self._idle = [(s, t) for s, t in self._idle if now - t <= self.idle_timeout]
            if stale:
                self._cond.notify(len(stale))
        for session in stale:
            session.close()
        return len(stale)

    def close(self) -> None:
        """Close idle sessions now and lent ones when released; acquire then fails."""
        with self._cond:
            self._closed = True
            idle = [s for s, _ in self._idle]
            self._idle = []
            self._cond.notify_all()
        for session in idle:
            session.close()

    def _open(self) -> SmtpSession:
        """Open a session in a slot already reserved in ``_opening``."""
        try:
            session = self._connect()
        except BaseException:
            with self._cond:
                self._opening -= 1
                self._cond.notify_all()  # a thread waiting in _refused decides now
            raise
        with self._cond:
            self._opening -= 1
            self.opened += 1
            closed = self._closed
            if not closed:
                self._in_use.add(session)
            self._cond.notify_all()
        if closed:
            session.close()
            raise ConnectError(f"{self._where}: the pool is closed", "closed")
        if self.up is not True:
            self._opened()
        return session

    def _opened(self) -> None:
        """A session opened: the server is up (again), at full concurrency after an
        outage."""
        with self._cond:
            down, self._down = self._down, None
            changed = self.up is not True
            self.up = True
            if down is not None:
                self._limit = self.max_connections
                self._changed_at = self._clock()
                self._cond.notify_all()
        if down is not None:
            log.info("outgoing server %s is back up after %.0fs (%d probe%s)", self._where,
                     self._clock() - down.since, down.probes + 1, "" if down.probes == 0
                     else "s")
        if changed:
            self._changed()

    def _reason(self, exc: ConnectError) -> str:
        return str(exc).removeprefix(f"{self._where}: ")

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)
