"""IMAP IDLE (RFC 2177): wait on a selected folder until the server reports new mail.

IDLE is re-issued every ``renew`` seconds (the RFC asks for less than 29 minutes), each
notification's read bounded as a reply is, and a stop event looked at every second. The
caller (:meth:`mailsync.inbound.imap.ImapSource.wait`) first looks for mail that came
since its last poll, and selects the folder.
"""

from __future__ import annotations

import selectors
import threading
import time
from typing import Any

from mailsync.errors import ConnectError, WireGuard

IDLE_RENEW = 28 * 60.0  # RFC 2177: re-issue IDLE before 29 minutes


def idle(client: Any, call: WireGuard, where: str, timeout: float,
         stop: threading.Event | None, renew: float) -> bool:
    """IDLE until the server reports EXISTS or RECENT (True), ``timeout`` passes or
    ``stop`` is set (False). Each command runs through ``call``, the session's guard: a
    wire error, or a server that hangs up, closes the session and raises ConnectError."""
    deadline = time.monotonic() + timeout
    call("fetch", client.idle)
    renew_at = time.monotonic() + renew
    with selectors.DefaultSelector() as selector:
        selector.register(client.socket(), selectors.EVENT_READ)
        while (remaining := deadline - time.monotonic()) > 0:
            if stop is not None and stop.is_set():
                _done(client, call)
                return False
            if time.monotonic() >= renew_at:
                if _done(client, call):
                    return True
                call("fetch", client.idle)
                renew_at = time.monotonic() + renew
            slice_ = min(remaining, renew_at - time.monotonic(),
                         1.0 if stop is not None else remaining)
            if not selector.select(max(slice_, 0.0)):
                continue
            client.wire.new_reply()  # IDLE lasts: bound each read, not all
            responses = call("fetch", client.idle_check, 0)
            if not responses:  # readable, yet nothing to read: the server hung up
                call.fail(ConnectError(f"{where}: the server closed the connection",
                                       "closed"))
            if any(_is_news(r) for r in responses):
                _done(client, call)
                return True
    return _done(client, call)


def _done(client: Any, call: WireGuard) -> bool:
    """DONE; True when the server reported new mail while finishing IDLE."""
    _, responses = call("fetch", client.idle_done)
    return any(_is_news(r) for r in responses)


def _is_news(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) >= 2 and response[1] in (
        b"EXISTS", b"RECENT")
