"""A requests session whose every request keeps to one deadline, connecting included.

requests' ``timeout`` is urllib3's: a bound on connecting and on each read, started again
at every byte received. A token endpoint (or a proxy before it) that sends its answer a
byte at a time would so hold the thread that refreshes a server's token, and with it
every later refresh, for as long as it liked. :func:`bounded` mounts on a session an
adapter whose connections, once connected, read and send through a
:class:`~mailsync.deadline.DeadlineSocket`: a request gets ``timeout`` in all. A reply that
runs out of time is urllib3's read timeout, which requests raises as ``ReadTimeout``
(headers) or as a ``ConnectionError`` holding a ``ReadTimeoutError`` (the body).

Imported where a token is asked for, as requests and authlib are (mailsync/auth/grants.py).
"""

from __future__ import annotations

from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ReadTimeoutError

from mailsync.deadline import Deadline, DeadlineSocket


def _start(conn: Any) -> Deadline:
    """The deadline of a connection's request: its connect timeout (requests gives the
    one ``timeout`` to both), from before it connects."""
    timeout = conn.timeout if isinstance(conn.timeout, (int, float)) else 30.0
    deadline = Deadline(float(timeout))
    deadline.start("the token request")
    return deadline


class _Connection(HTTPConnection):
    def connect(self) -> None:
        deadline = _start(self)
        super().connect()
        self.sock = DeadlineSocket(self.sock, deadline)


class _TLSConnection(HTTPSConnection):
    def connect(self) -> None:
        deadline = _start(self)
        super().connect()
        self.sock = DeadlineSocket(self.sock, deadline)


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}


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
