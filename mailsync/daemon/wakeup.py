"""How the supervisor and the spool thread sleep and are woken.

The supervisor waits on a socket pair in ``select()``. Other threads write a byte to wake
it (:meth:`Wakeup.poke`), and so does CPython's C-level signal handler
(``signal.set_wakeup_fd``). The Python-level handlers only set plain attributes
(:attr:`Wakeup.stop_signalled`, :attr:`Wakeup.hups`): taking a lock in a signal handler
can deadlock the main thread that it interrupted while holding that same lock.

The spool thread waits on a :class:`Doorbell`: rung by other threads, and by the kernel
when a file arrives in ``spool/new/`` (inotify), with no Python code run per file.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import select
import signal
import socket
from pathlib import Path
from types import FrameType

# <sys/inotify.h>: what a spool file's arrival looks like. Not IN_DELETE: the pickup
# removing the files it took must not wake the thread that runs it.
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_ONLYDIR = 0x01000000
ARRIVALS = _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


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


class Doorbell:
    """The spool thread's wake-up: :class:`threading.Event`'s ``set``/``clear``/``wait``
    on a socket pair that any thread rings (:meth:`set`), and on an inotify descriptor on
    ``spool/new/`` (:meth:`watch`) that the kernel rings when a file is created, written
    or renamed into it.

    Why not a watchdog handler: its observer turns each inotify event into Python
    objects in three threads of the daemon process, for each spool file twice (its
    arrival, and its removal by the pickup), holding the GIL that the senders need: a
    burst of 5,000 files cost the daemon ~0.6 s of CPU there. Here the kernel filters
    (removals are not even queued) and queues the events; :meth:`clear` discards them in
    bulk. A full kernel queue (``IN_Q_OVERFLOW``) still rings: an event lost never loses
    a file, as the pass lists ``new/`` anyway.

    :meth:`set` from any thread; :meth:`wait`, :meth:`clear` and :meth:`is_set` from the
    one thread that waits; :meth:`watch` from any one thread at a time.
    """

    def __init__(self) -> None:
        # A socket pair, not an eventfd: ringing a closed one raises instead of writing
        # to whatever file reused its number.
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._poll = select.poll()
        self._poll.register(self._r, select.POLLIN)
        # Made and registered now, not by watch(): a poll() already waiting would not see
        # a descriptor registered after it began.
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            code = ctypes.get_errno()
            self.close()
            raise OSError(code, f"cannot watch the spool: inotify_init1: {os.strerror(code)}")
        self._inotify = fd
        self._wd = -1
        self._poll.register(fd, select.POLLIN)

    def watch(self, directory: Path) -> None:
        """Ring on every file arriving in ``directory`` from now on (instead of the one
        watched before). OSError naming the directory when it cannot be watched."""
        libc = self._libc
        wd = libc.inotify_add_watch(self._inotify, os.fsencode(directory),
                                    ARRIVALS | _IN_ONLYDIR)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"cannot watch {directory}: {os.strerror(code)}",
                          str(directory))
        if self._wd >= 0 and self._wd != wd:
            libc.inotify_rm_watch(self._inotify, self._wd)  # its IN_IGNORED rings once
        self._wd = wd

    def set(self) -> None:
        """Wake the waiting thread (any thread)."""
        with contextlib.suppress(OSError):  # already rung (the buffer is full), or closed
            self._w.send(b"\0")

    def is_set(self) -> bool:
        return bool(self._poll.poll(0))

    def wait(self, timeout: float | None = None) -> bool:
        """Until rung (since the last :meth:`clear`) or ``timeout`` seconds; whether rung."""
        ms = None if timeout is None else math.ceil(max(0.0, timeout) * 1000)
        return bool(self._poll.poll(ms))

    def clear(self) -> None:
        """Forget the rings so far: what arrives from now on rings again."""
        with contextlib.suppress(OSError):  # nothing more to read (or closed)
            while self._r.recv(4096):
                pass
        if self._inotify >= 0:  # closed: -1
            with contextlib.suppress(OSError):
                while os.read(self._inotify, 65536):
                    pass

    def close(self) -> None:
        """Once the waiting thread is done: :meth:`set` does nothing from then on."""
        self._r.close()
        self._w.close()
        if getattr(self, "_inotify", -1) >= 0:
            with contextlib.suppress(OSError):
                os.close(self._inotify)
            self._inotify = -1
