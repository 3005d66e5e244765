"""Connections started early: a one-shot poll connects while it imports.

A cron ``inbox poll`` or ``run --once`` spends ~15 ms importing imaplib, imapclient and the
IMAP adapter before it connects, then waits for the TCP handshake and the server's
greeting: ~4 ms on a local Dovecot (which forks a login process per connection), a round
trip or two more to a remote one. :func:`connect_early` starts the connection before
those imports, without waiting; the adapter's first connection to that host and port
takes it (:func:`take`) instead of connecting, and by then the greeting is usually
waiting in the socket. What is not taken is closed by :func:`close_all`.

Only a host that resolves to exactly one address is connected early (what
``socket.create_connection`` would try alone). Whatever goes wrong while connecting
early is left to the ordinary connection, which reports it in the usual words: a
resolution failure or a local error means no early connection; a refusal or a timeout
is raised by :func:`take` as ``create_connection`` raises it.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time

# An early connection not taken within this long is not used (closed; the adapter
# connects afresh): a slow step before the login (an OAuth2 token asked of a slow
# endpoint) must not meet a server that gave up waiting for it.
MAX_AGE = 5.0

_lock = threading.Lock()
_waiting: dict[tuple[str, int], list[tuple[socket.socket, float]]] = {}


def _host(host: str) -> str | bytes:
    # An ASCII name as bytes: getaddrinfo encodes a str with the idna codec, whose import
    # is ~0.7 ms of a poll; the address looked up is the same.
    return host.encode("ascii") if host.isascii() else host


def connect_early(host: str, port: int) -> bool:
    """Start connecting to ``host``:``port`` without waiting; whether it was started."""
    try:
        infos = socket.getaddrinfo(_host(host), port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False  # the ordinary connection reports it
    if len(infos) != 1:
        return False  # several addresses: create_connection tries them in turn
    family, kind, proto, _, address = infos[0]
    try:
        sock = socket.socket(family, kind, proto)
    except OSError:
        return False
    sock.setblocking(False)
    if sock.connect_ex(address) not in (0, errno.EINPROGRESS):
        sock.close()
        return False
    with _lock:
        _waiting.setdefault((host, port), []).append((sock, time.monotonic()))
    return True


def take(host: str, port: int, timeout: float | None) -> socket.socket | None:
    """The connection started early to ``host``:``port``, once connected (waiting at most
    ``timeout`` seconds), in blocking mode with ``timeout``; None when none was started
    (or it was started more than :data:`MAX_AGE` seconds ago: then it is closed).

    Raises OSError as ``socket.create_connection`` does: ConnectionRefusedError (or the
    error the connect met), TimeoutError."""
    with _lock:
        socks = _waiting.get((host, port))
        if not socks:
            return None
        sock, started = socks.pop(0)
    if time.monotonic() - started > MAX_AGE:
        sock.close()
        return None
    try:
        waiter = select.poll()
        waiter.register(sock, select.POLLOUT)
        if not waiter.poll(None if timeout is None else max(0, int(timeout * 1000))):
            raise TimeoutError("timed out")
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))  # the errno's own subclass, as connect's
        sock.settimeout(timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def close_all() -> int:
    """Close the connections started early and not taken; how many there were."""
    with _lock:
        socks = [s for waiting in _waiting.values() for s, _ in waiting]
        _waiting.clear()
    for sock in socks:
        sock.close()
    return len(socks)
