"""How the supervisor sleeps and is woken: a socket pair it waits on in ``select()``.

Other threads write a byte to wake it (:meth:`Wakeup.poke`), and so does CPython's
C-level signal handler (``signal.set_wakeup_fd``). The Python-level handlers only set
plain attributes (:attr:`Wakeup.stop_signalled`, :attr:`Wakeup.hups`): taking a lock in a
signal handler can deadlock the main thread that it interrupted while holding that same
lock.
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
from types import FrameType


class Wakeup:
    """The supervisor's wake-up socket pair and the flags its signal handlers set."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self.stop_signalled = False  # SIGTERM, SIGINT or request_stop()
        self.hups = 0  # SIGHUPs received (the supervisor reloads once per change)

    def install_signals(self) -> None:
        """SIGTERM and SIGINT stop, SIGHUP reloads (main thread only)."""
        def stop(signum: int, frame: FrameType | None) -> None:
            self.stop_signalled = True  # no lock here: see the module's docstring

        def hup(signum: int, frame: FrameType | None) -> None:
            self.hups += 1

        signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    def poke(self) -> None:
        """Wake the supervisor (from any thread)."""
        with contextlib.suppress(BlockingIOError, OSError):
            self._w.send(b"\0")

    def sleep(self, timeout: float) -> None:
        """Wait for a poke, a signal or ``timeout``; then drain the wake-up bytes."""
        with contextlib.suppress(InterruptedError):
            select.select([self._r], [], [], timeout)
        while True:
            try:
                if not self._r.recv(4096):
                    break
            except (BlockingIOError, InterruptedError):
                break

    def close(self) -> None:
        with contextlib.suppress(ValueError):  # not the main thread: nothing was installed
            signal.set_wakeup_fd(-1)
        self._r.close()
        self._w.close()
