"""The admin console's listener: a threaded WSGI server on ``daemon.admin_listen``.

wsgiref's server handles one request at a time; this one is wsgiref's with
``ThreadingMixIn``: each connection in a thread of its own (at most
:data:`MAX_CONNECTIONS` at once; past that a connection gets a 503 and is closed), each
socket operation bounded by :data:`TIMEOUT`, so a slow or idle client holds one thread,
never the listener, ``/metrics`` (another listener) or the senders. With
``admin.tls_cert_file`` the connection's TLS handshake is made in its own thread too.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
from pathlib import Path
from typing import Any
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from mailsync.telemetry.exporter import parse_listen

log = logging.getLogger("mailsync.web")

MAX_CONNECTIONS = 32
TIMEOUT = 10.0
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
         b"Connection: close\r\nRetry-After: 1\r\n\r\nbusy: try again\r\n")


class _Responder(ServerHandler):
    server_software = "mailsync"  # not wsgiref's "WSGIServer/0.2 CPython/3.11.x"


class _Handler(WSGIRequestHandler):
    timeout = TIMEOUT
    server_version = "mailsync"
    sys_version = ""

    def handle(self) -> None:
        """wsgiref's, with the ``Server`` header naming no Python version."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.send_error(414)
            return
        if not self.parse_request():
            return
        handler = _Responder(self.rfile, self.wfile,  # type: ignore[arg-type]
                             self.get_stderr(), self.get_environ(),
                             multithread=True)
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.server.get_app())  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("admin %s %s", self.address_string(), format % args)


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True     # a slow client never holds the daemon's stop
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self.address_family = family
        self.tls = tls
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__((str(address[0]), int(address[1])), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() looks the host's FQDN up (DNS): not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(TIMEOUT)
            if self.tls is not None:
                try:
                    request = self.tls.wrap_socket(request, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    log.debug("admin %s: TLS handshake failed: %s", client_address[0], exc)
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("admin %s: connection error", client_address[0], exc_info=True)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server TLS context of ``admin.tls_cert_file`` and ``tls_key_file`` (TLS 1.2+).
    OSError/ssl.SSLError name the file when it cannot be used."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise OSError(f"admin.tls_cert_file {cert} / tls_key_file {key}: "
                      f"{getattr(exc, 'strerror', None) or exc}") from None
    return context


class Listener:
    """The console served on one address in a thread; :meth:`close` stops it."""

    def __init__(self, listen: str, app: Any, tls: ssl.SSLContext | None = None) -> None:
        """Bind ``listen`` (``HOST:PORT``, port 0 picks one) and serve ``app``; ValueError
        for a malformed address, OSError when it cannot be bound."""
        host, port = parse_listen(listen)
        self.listen = listen
        self._server = _Server(host, port, tls)
        self._server.set_app(app)
        bound = self._server.server_address
        self.host, self.port = str(bound[0]), int(bound[1])
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name=f"mailsync-admin-{self.port}", daemon=True)
        self._thread.start()
        log.info("admin console listening on %s", self.url)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def close(self) -> None:
        """Stop accepting and free the port (requests in flight finish on their own)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
