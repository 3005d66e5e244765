"""Login throttling: failed logins counted per user name and per client address.

Pure bookkeeping with an injected clock. A user name with :attr:`Throttle.per_user`
failures in the last :attr:`Throttle.window` seconds, or a client address with
:attr:`Throttle.per_address`, is refused without its password being checked (so the
refusal reveals nothing) until the oldest of those failures leaves the window. A
success clears the user's failures, not the address's. Memory is bounded: past
:data:`MAX_KEYS` keys the stalest are dropped.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_KEYS = 10_000


class Throttle:
    """Failed logins by user and by address, and whether the next may be tried."""

    def __init__(self, per_user: int = 5, per_address: int = 20, window: float = 900.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, user: str, address: str) -> float:
        """Seconds before ``user`` may try again from ``address``; 0 when it may now."""
        now = self._clock()
        with self._lock:
            return max(self._wait(f"u:{user}", self.per_user, now),
                       self._wait(f"a:{address}", self.per_address, now))

    def failed(self, user: str, address: str) -> None:
        """Count a failed login of ``user`` from ``address``."""
        now = self._clock()
        with self._lock:
            for key in (f"u:{user}", f"a:{address}"):
                times = self._failures.pop(key, None) or deque()
                times.append(now)
                self._failures[key] = times  # the most recent last
            while len(self._failures) > MAX_KEYS:
                self._failures.popitem(last=False)

    def succeeded(self, user: str) -> None:
        """A login of ``user`` succeeded: its failures are forgotten."""
        with self._lock:
            self._failures.pop(f"u:{user}", None)

    def _wait(self, key: str, limit: int, now: float) -> float:
        times = self._failures.get(key)
        if not times:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < limit:
            return 0.0
        return times[-limit] + self.window - now
