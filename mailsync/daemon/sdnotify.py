"""A tiny sd_notify(3) client: tells systemd (``Type=notify``) how the daemon is doing.

The protocol is one datagram of ``KEY=VALUE`` lines sent to the Unix socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace). Without that variable
the process is not run by systemd and every method does nothing. Sending never raises:
losing a status line must not stop the daemon; failures are logged instead.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("mailsync.sdnotify")

# A blocked send (systemd not reading) must not stall the supervisor loop for long.
SEND_TIMEOUT = 1.0


class Notifier:
    """sd_notify messages to systemd, read from ``environ`` (``os.environ`` by default).

    ``monotonic_ns`` is the clock of ``MONOTONIC_USEC`` in :meth:`reloading` (systemd
    compares it with its own CLOCK_MONOTONIC, which ``time.monotonic_ns`` reads on Linux).
    """

    def __init__(self, environ: Mapping[str, str] | None = None, *,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns) -> None:
        env = os.environ if environ is None else environ
        self._monotonic_ns = monotonic_ns
        self._address = _address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._lock = threading.Lock()
        self._failing = False

    @property
    def enabled(self) -> bool:
        """True when a notification socket is configured (the process runs under systemd)."""
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete: ``READY=1``, with a ``STATUS=`` line if given."""
        return self.send(_with_status("READY=1", status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload begins: ``RELOADING=1`` and ``MONOTONIC_USEC=`` (required by systemd
        >= 253 to match it with the reload request); send :meth:`ready` when it is done."""
        usec = self._monotonic_ns() // 1000
        return self.send(_with_status(f"RELOADING=1\nMONOTONIC_USEC={usec}", status))

    def stopping(self, status: str | None = None) -> bool:
        """Graceful shutdown begins: ``STOPPING=1``."""
        return self.send(_with_status("STOPPING=1", status))

    def status(self, text: str) -> bool:
        """A one-line status shown by ``systemctl status``: ``STATUS=text``."""
        return self.send(_with_status("", text))

    def watchdog(self) -> bool:
        """The keep-alive ping (``WATCHDOG=1``); due every :meth:`watchdog_interval` seconds."""
        return self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None when no
        watchdog is expected from this process (not enabled, or meant for another PID)."""
        if self._address is None or not self._watchdog_usec:
            return None
        if self._watchdog_pid and self._watchdog_pid != str(os.getpid()):
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.warning("WATCHDOG_USEC=%r is not a number of microseconds; no watchdog pings",
                        self._watchdog_usec)
            return None
        return usec / 2 / 1_000_000 if usec > 0 else None

    def send(self, message: str) -> bool:
        """Send ``message`` (``KEY=VALUE`` lines) as one datagram. True when it was sent;
        False when disabled or on error (logged once until a send succeeds again)."""
        if self._address is None or not message:
            return False
        data = message.encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto(data, self._address)
        except OSError as exc:
            with self._lock:
                first, self._failing = not self._failing, True
            # A dead socket fails at every watchdog ping: warn once, not every 15 s.
            log.log(logging.WARNING if first else logging.DEBUG,
                    "sd_notify to %s failed: %s (message %r)",
                    _show(self._address), exc, message.split("\n", 1)[0])
            return False
        with self._lock:
            self._failing = False
        return True


def _address(value: str) -> bytes | None:
    """The socket address of ``$NOTIFY_SOCKET``: a path, or '@name' for an abstract one."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return os.fsencode(value)
    # systemd >= 254 can also hand out vsock:CID:PORT (for VMs); mailsync does not run there.
    log.warning("NOTIFY_SOCKET=%r is neither a path nor an @abstract name; "
                "not notifying systemd", value)
    return None


def _with_status(message: str, status: str | None) -> str:
    """Append a ``STATUS=`` line; a newline inside it would start a bogus key, so none."""
    if status is None:
        return message
    line = "STATUS=" + " ".join(status.splitlines())
    return f"{message}\n{line}" if message else line


def _show(address: bytes) -> str:
    return "@" + os.fsdecode(address[1:]) if address.startswith(b"\0") else os.fsdecode(address)
