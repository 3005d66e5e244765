"""A requests session whose every request keeps to one deadline, connecting included.

requests' ``timeout`` is urllib3's: a bound on connecting and on each read, started again
at every byte received. A token endpoint (or a proxy before it) that sends its answer a
byte at a time would so hold the thread that refreshes a server's token, and with it
every later refresh, for as long as it liked. :func:`bounded` mounts on a session an
adapter whose connections, once connected, read and send through a
:class:`~mailsync.deadline.DeadlineSocket`: a request gets ``timeout`` in all. A reply that
runs out of time is urllib3's read timeout, which requests raises as ``ReadTimeout``
(headers) or as a ``ConnectionError`` holding a ``ReadTimeoutError`` (the body). An
answer is read up to :data:`MAX_ANSWER` (requests keeps all of one in memory): past it
the connection is dropped (:func:`too_long`).

Imported where a token is asked for, as requests and authlib are (mailsync/auth/grants.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ReadTimeoutError

from mailsync.deadline import Deadline, DeadlineSocket

# The most of an answer read (status line, headers and body): a token response is a few
# KiB, and requests keeps the whole of one in memory.
MAX_ANSWER = 1024 * 1024


class AnswerTooLong(OSError):
    """The endpoint's answer grew past :data:`MAX_ANSWER`; the connection is dropped."""

    def __init__(self) -> None:
        super().__init__(f"answered more than {MAX_ANSWER // (1024 * 1024)} MiB")


class _Budget(Deadline):
    """The request's deadline, which also counts what the answer brought."""

    __slots__ = ("got",)

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        self.got = 0

    def received(self, size: int) -> None:
        self.got += size
        if self.got > MAX_ANSWER:
            raise AnswerTooLong()


def _budget(conn: Any) -> _Budget:
    """A request's deadline: the connection's timeout (requests gives its one
    ``timeout`` to connecting and reading alike), from now on."""
    timeout = conn.timeout if isinstance(conn.timeout, (int, float)) else 30.0
    budget = _Budget(float(timeout))
    budget.start("the token request")
    return budget


def _connect(conn: Any, connect: Callable[[], None]) -> None:
    """Connect ``conn`` under the deadline of its first request (connecting counts)."""
    budget = _budget(conn)
    connect()
    conn.sock = DeadlineSocket(conn.sock, budget)


def _request(conn: Any, request: Callable[[], None]) -> None:
    """Send a request: on a kept-alive connection that served one already (the device
    flow polls through one), under a deadline of its own; the first one (which may
    connect, here or before) under the deadline it connected under."""
    if conn.served and isinstance(getattr(conn, "sock", None), DeadlineSocket):
        conn.sock.deadline = _budget(conn)
    request()
    conn.served = True


class _Connection(HTTPConnection):
    served = False

    def connect(self) -> None:
        _connect(self, super().connect)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _request(self, lambda: super(_Connection, self).request(*args, **kwargs))


class _TLSConnection(HTTPSConnection):
    served = False

    def connect(self) -> None:
        _connect(self, super().connect)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _request(self, lambda: super(_TLSConnection, self).request(*args, **kwargs))


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


_POOLS = {"http": _Pool, "https": _TLSPool}


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        # Through an HTTP(S) proxy (HTTPS_PROXY: a company's way out to Microsoft or
        # Google) the same connections; a SOCKS proxy's own pools are left as they are.
        manager = super().proxy_manager_for(proxy, **kwargs)
        if not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = _POOLS
        return manager


AnySession = TypeVar("AnySession", bound=requests.Session)


def bounded(session: AnySession) -> AnySession:
    """``session``, each of whose requests keeps to its ``timeout`` as a whole."""
    adapter = _Adapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def timed_out(exc: BaseException) -> bool:
    """Whether requests' exception is a timeout, the body's read included (which
    requests raises as a ConnectionError holding urllib3's ReadTimeoutError)."""
    if isinstance(exc, requests.Timeout):
        return True
    return isinstance(exc, requests.ConnectionError) and any(
        isinstance(arg, ReadTimeoutError) for arg in exc.args)


def too_long(exc: BaseException) -> bool:
    """Whether requests' exception comes of an answer past :data:`MAX_ANSWER` (urllib3
    wraps it in a ProtocolError, requests that in a ConnectionError)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if id(item) in seen or not isinstance(item, BaseException):
            continue
        seen.add(id(item))
        if isinstance(item, AnswerTooLong):
            return True
        todo.extend((*item.args, item.__cause__, item.__context__))
    return False
