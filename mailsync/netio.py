"""The network edge shared by the SMTP, IMAP and POP3 adapters.

TLS contexts, the classification of socket and TLS errors into ConnectError (the same
words for every protocol, as `mailsync test` prints them), the guard that keeps a
password out of error texts, and command deadlines. Each adapter classifies its own
protocol's errors and calls :func:`network_error` / :func:`fallback_error` for the rest.

Deadlines: a socket timeout bounds one read, and starts again at every byte received, so
a server answering one byte a second holds a session for as long as it likes. A
:class:`Deadline` is a wall-clock budget for one command (its reply, and the sending of
its data): before each read (:class:`DeadlineReader`) and each write, the socket's
timeout is set to the time left, and once none is left the command fails with
:class:`DeadlineExceeded`. That costs one ``settimeout`` per read or write, nothing per
line.
"""

from __future__ import annotations

import io
import socket
import ssl
import time
from typing import Any

from mailsync.errors import ConnectError

# The slowest transfer a deadline allows for: data that comes or goes at this rate or
# faster never runs out of time (64 KiB/s: a 10 MB message gets 160 s more than timeout).
MIN_RATE = 64 * 1024

GMAIL_HINT = (
    "Gmail needs a 16-character App Password (Google Account → Security → "
    "App passwords), not the account's normal password"
)


def tls_context(tls_verify: bool) -> ssl.SSLContext:
    """The default context (it honours SSL_CERT_FILE); no checks when tls_verify is off."""
    context = ssl.create_default_context()
    if not tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def network_error(exc: BaseException, where: str, timeout: float, *, connecting: bool,
                  transferring: bool) -> ConnectError | None:
    """The ConnectError of a socket or TLS failure, or None when it is none of those.

    ``where`` names the server (``name (host:port)``); ``connecting``: the failure came
    before the greeting; ``transferring``: a TLS error there means a lost connection.
    """
    if isinstance(exc, socket.gaierror):
        return ConnectError(f"{where}: host name not found ({exc.strerror})", "dns")
    if isinstance(exc, DeadlineExceeded):
        return ConnectError(f"{where}: {exc}", "timeout")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectError(f"{where}: connection refused", "refused")
    if isinstance(exc, TimeoutError):
        what = "connecting" if connecting else "waiting for the server"
        return ConnectError(f"{where}: timed out after {timeout:g}s {what}", "timeout")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectError(
            f"{where}: TLS certificate verification failed: {exc.verify_message} "
            "(fix the certificate or its CA; tls_verify: false turns the check off)", "tls")
    if isinstance(exc, ssl.SSLError):
        kind = "closed" if transferring else "tls"
        return ConnectError(f"{where}: TLS error: {exc.reason or exc}", kind)
    return None


def fallback_error(exc: BaseException, where: str, *, connecting: bool) -> ConnectError:
    """The last resort: any other OS error, before the greeting or during the session."""
    if isinstance(exc, OSError) and connecting:
        return ConnectError(f"{where}: cannot connect: {exc.strerror or exc}", "refused")
    detail = getattr(exc, "strerror", None) or exc
    return ConnectError(f"{where}: connection error: {detail}", "closed")


def scrubbed(error: ConnectError, secret: str | None) -> ConnectError:
    """Guard against a server (or library) that echoes the password back."""
    if not secret or secret not in str(error):
        return error
    return ConnectError(str(error).replace(secret, "***"), error.kind, error.code)


class DeadlineExceeded(TimeoutError):
    """A command's reply (or the sending of its data) did not complete within its budget.

    A TimeoutError, so that code catching timeouts catches it; :func:`network_error`
    words it as ``RCPT: no complete reply within 30s`` (kind ``timeout``).
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
    """

    __slots__ = ("timeout", "rate", "what", "budget", "_at", "_expired")

    def __init__(self, timeout: float, *, rate: float = 0.0) -> None:
        self.timeout = timeout
        self.rate = rate
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
        left = self.remaining()
        if left is not None:
            sock.settimeout(left)
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
        left = deadline.remaining()
        if left is not None:
            self._socket.settimeout(left)
        try:
            n = super().readinto(b)
        except TimeoutError:
            if left is None:
                raise
            raise deadline.exceeded() from None
        if n:
            deadline.received(n)
        return n


def reader(sock: socket.socket, deadline: Deadline) -> io.BufferedReader:
    """What ``sock.makefile("rb")`` returns, with every read kept to ``deadline``."""
    return io.BufferedReader(DeadlineReader(sock, deadline))


def _seconds(value: float) -> str:
    return f"{round(value, 1):g}s"
