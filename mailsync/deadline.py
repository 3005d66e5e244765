"""Command deadlines: a wall-clock budget for a network exchange, not a timeout per read.

A socket timeout bounds one read, and starts again at every byte received, so a server
answering one byte a second holds a session for as long as it likes. A :class:`Deadline`
is a wall-clock budget for one command (its reply, and the sending of its data): before
each read (:class:`DeadlineReader`) and each write, the socket's timeout is set to the
time left, and once none is left the command fails with :class:`DeadlineExceeded`. That
costs one ``settimeout`` per read or write, nothing per line. The SMTP, IMAP and POP3
adapters keep each command to one; :class:`DeadlineSocket` keeps an HTTP library's whole
request to one (the webhooks', the OAuth2 token endpoint's).
"""

from __future__ import annotations

import io
import socket
import time
from typing import Any

# The slowest transfer a deadline allows for: data that comes or goes at this rate or
# faster never runs out of time (64 KiB/s: a 10 MB message gets 160 s more than timeout).
MIN_RATE = 64 * 1024


class DeadlineExceeded(TimeoutError):
    """A command's reply (or the sending of its data) did not complete within its budget.

    A TimeoutError, so that code catching timeouts catches it;
    :func:`mailsync.netio.network_error` words it as ``RCPT: no complete reply within
    30s`` (kind ``timeout``).
    """

    def __init__(self, what: str, budget: float, *, sending: bool = False) -> None:
        done = "could not be sent" if sending else "no complete reply"
        super().__init__(f"{what}: {done} within {_seconds(budget)}")
        self.what = what
        self.budget = budget


class Deadline:
    """The wall-clock budget of the command in progress on one connection.

    ``start`` begins a command's budget (``timeout`` unless given), ``stop`` lifts it
    (for a caller that waits on purpose, e.g. IMAP IDLE), :meth:`remaining` is what is
    left (None when stopped) and raises :class:`DeadlineExceeded` once nothing is.
    ``rate`` (bytes/s, 0: none): each byte received adds ``1/rate`` s, so a long answer
    that keeps coming at that rate (a big FETCH or RETR) is not cut.

    Once a command ran out of time, the connection is out of step (its answer may still
    be coming): every later ``start`` raises the same error, so a QUIT or LOGOUT on the
    way out does not wait a deadline of its own.

    :meth:`bound` gives a socket the time left before a read or write, but only when its
    timeout differs from that by over ``slack`` (1/20 of ``timeout``, at most 0.25 s):
    ``settimeout`` releases the GIL, and calling it before every read and write cost
    the sender threads more than the reads themselves. A command may so overrun its
    deadline by up to ``slack``.
    """

    __slots__ = ("timeout", "rate", "what", "budget", "slack", "_at", "_expired")

    def __init__(self, timeout: float, *, rate: float = 0.0) -> None:
        self.timeout = timeout
        self.rate = rate
        self.slack = min(0.25, timeout / 20)
        self.what = "connect"
        self.budget = timeout
        self._at: float | None = None
        self._expired = False

    def start(self, what: str, budget: float | None = None) -> None:
        """Begin the budget of command ``what`` (named in the error): from now on."""
        if self._expired:
            raise DeadlineExceeded(self.what, self.budget)
        self.what = what
        self.budget = self.timeout if budget is None else budget
        self._at = time.monotonic() + self.budget

    def stop(self) -> None:
        """No deadline until the next ``start``: reads wait as the socket's timeout says."""
        self._at = None

    def remaining(self) -> float | None:
        """Seconds left (> 0), or None when stopped; DeadlineExceeded once none are left."""
        if self._at is None:
            return None
        left = self._at - time.monotonic()
        if left <= 0:
            raise self.exceeded()
        return left

    def bound(self, sock: socket.socket) -> float | None:
        """Keep ``sock``'s next operation within the time left (None: stopped, the
        socket's timeout unchanged); DeadlineExceeded once none is left."""
        left = self.remaining()
        if left is not None:
            current = sock.gettimeout()  # the stored value: no system call
            # Too long would overrun the deadline; too short (left from an earlier
            # command's end) would time out a command that still has time.
            if current is None or abs(current - left) > self.slack:
                sock.settimeout(left)
        return left

    def received(self, size: int) -> None:
        """``size`` bytes came: with a ``rate``, they add their time to the budget."""
        if self.rate and self._at is not None:
            extra = size / self.rate
            self._at += extra
            self.budget += extra

    def exceeded(self, *, sending: bool = False) -> DeadlineExceeded:
        """The error for the command in progress, which ran out of time."""
        self._expired = True
        return DeadlineExceeded(self.what, self.budget, sending=sending)

    def sendall(self, sock: socket.socket, data: bytes) -> None:
        """``sock.sendall(data)`` within the time left (sendall's timeout is a total)."""
        self.bound(sock)
        try:
            sock.sendall(data)
        except TimeoutError:
            raise self.exceeded(sending=True) from None


class DeadlineReader(socket.SocketIO):
    """The raw reader of ``sock.makefile("rb")`` whose reads keep to a :class:`Deadline`.

    Wrapped in an ``io.BufferedReader`` (see :func:`reader`), a ``readline`` is one or
    more ``readinto`` calls here, each given only the time left before the deadline.
    """

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        super().__init__(sock, "rb")
        self._socket = sock
        self._deadline = deadline

    def readinto(self, b: Any) -> int | None:
        deadline = self._deadline
        while True:
            left = deadline.bound(self._socket)
            try:
                n = super().readinto(b)
            except TimeoutError:
                if left is None:
                    raise
                raise deadline.exceeded() from None
            if n is not None:
                break
            # None: a kernel bound (smtpwire.KernelDeadline) ran out; bound() raises once
            # the deadline did.
            if left is None:
                raise TimeoutError("timed out")
        if n:
            deadline.received(n)
        return n


def reader(sock: socket.socket, deadline: Deadline) -> io.BufferedReader:
    """What ``sock.makefile("rb")`` returns, with every read kept to ``deadline``."""
    return io.BufferedReader(DeadlineReader(sock, deadline))


class DeadlineSocket:
    """A connected socket whose sends and whose ``makefile("rb")`` reads keep to one
    :class:`Deadline`; the rest is the socket's. For http.client and urllib3, which send
    with ``sendall`` and read a reply from ``makefile("rb")``: put in place of their
    connection's ``sock`` once it is connected, a whole request (the webhooks', the
    OAuth2 token endpoint's) keeps to the deadline instead of a timeout per read."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self.deadline = deadline  # a kept-alive connection's next request: a new one

    def sendall(self, data: bytes) -> None:
        self.deadline.sendall(self._sock, data)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError(f"DeadlineSocket.makefile: mode {mode!r} (only 'rb')")
        file = reader(self._sock, self.deadline)
        # As socket.makefile counts its files: http.client closes the connection as soon
        # as a reply says it will close, and the socket must stay open until that reply
        # is read (the reader's close gives the count back).
        self._sock._io_refs += 1  # type: ignore[attr-defined]
        return file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _seconds(value: float) -> str:
    return f"{round(value, 1):g}s"
