"""Connection pools: up to ``max_connections`` reusable SMTP sessions per outgoing server.

Worker threads share one pool per server. The pool only opens, lends, health-checks and
closes sessions; what is sent through them is the caller's business. Opening and closing
(network I/O) happen outside the lock, so a slow server never blocks other threads'
bookkeeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mailsync.config.model import OutgoingServer
from mailsync.errors import ConnectError
from mailsync.outbound.smtp import SmtpSession, describe


class ConnectionPool:
    """Reusable SMTP sessions to one outgoing server, shared by several threads.

    ``connect`` opens a new session (the seam to the network, injected for tests and
    so the pool never sees a password). ``clock`` measures idle time; waiting for a free
    session uses real time.
    """

    def __init__(
        self,
        server: OutgoingServer,
        connect: Callable[[], SmtpSession],
        *,
        max_connections: int | None = None,
        idle_timeout: float = 60.0,
        health_check_after: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.max_connections = (
            server.max_connections if max_connections is None else max_connections
        )
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {self.max_connections}")
        self.idle_timeout = idle_timeout
        self.health_check_after = health_check_after
        self._connect = connect
        self._clock = clock
        self._cond = threading.Condition()
        self._idle: list[tuple[SmtpSession, float]] = []  # (session, idle since); newest last
        self._in_use: set[SmtpSession] = set()
        self._opening = 0  # slots reserved by threads that are connecting right now
        self._closed = False
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

    def acquire(self, timeout: float | None = None) -> SmtpSession:
        """Lend a session: an idle one (NOOP-checked if idle long), a new one, or wait.

        Raises ConnectError from ``connect``, or ConnectError(kind="timeout") when no
        session is free within ``timeout`` seconds, or kind="closed" once the pool closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        session: SmtpSession | None
        with self._cond:
            while True:
                if self._closed:
                    raise ConnectError(f"{describe(self.server)}: the pool is closed", "closed")
                if self._idle:
                    session, since = self._idle.pop()
                    self._in_use.add(session)
                    stale = self._clock() - since > self.health_check_after
                    break
                if len(self._in_use) + self._opening < self.max_connections:
                    self._opening += 1
                    session, stale = None, False
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ConnectError(
                        f"{describe(self.server)}: no free connection within {timeout:g}s "
                        f"(max_connections={self.max_connections})",
                        "timeout",
                    )
                self._cond.wait(remaining)

        if session is not None:
            if not session.expiring() and (not stale or session.noop()):
                return session
            # Its OAuth2 token is about to expire, or it failed its health check: swap it
            # for a new one, keeping the slot reserved.
            session.close()
            with self._cond:
                self._in_use.discard(session)
                self._opening += 1
        return self._open()

    def release(self, session: SmtpSession) -> None:
        """Take a session back: idle for reuse, or closed if broken or the pool closed."""
        with self._cond:
            if session not in self._in_use:
                raise ValueError(f"{session!r} was not lent by {self!r}")
            self._in_use.discard(session)
            keep = not session.broken and not self._closed
            if keep:
                self._idle.append((session, self._clock()))
            self._cond.notify()
        if not keep:
            session.close()

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
                self._cond.notify()
            raise
        with self._cond:
            self._opening -= 1
            self.opened += 1
            closed = self._closed
            if not closed:
                self._in_use.add(session)
        if closed:
            session.close()
            raise ConnectError(f"{describe(self.server)}: the pool is closed", "closed")
        return session
