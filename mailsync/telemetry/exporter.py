"""The daemon's HTTP endpoint: Prometheus ``/metrics`` and a ``/healthz`` probe.

:func:`start_exporter` serves an injected registry from a ``ThreadingHTTPServer`` in a
daemon thread; the registry is read at each scrape, so collectors such as the daemon's
(``daemon/collectors.py``) report the store as it is then. ``listen`` is the config's
``daemon.metrics_listen``: ``host:port``, ``[v6addr]:port``; port 0 picks a free one.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("mailsync.exporter")

Health = Callable[[], tuple[bool, str]]

# A client that connects and sends nothing must not hold close() (which joins the request
# threads) for longer than this.
REQUEST_TIMEOUT = 5.0


def parse_listen(listen: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6addr]:port`` into (host, port); ValueError if malformed."""
    allowed = "allowed: HOST:PORT or [IPv6]:PORT, port 0-65535"
    host, sep, port_text = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"metrics_listen: {listen!r} has an IPv6 address without brackets "
                         f"({allowed})")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"metrics_listen: {listen!r} is not a valid address ({allowed})")
    return host, int(port_text)


class _Server(ThreadingHTTPServer):
    """The HTTP server, bound to the first address ``host`` resolves to."""

    # Request threads are joined by server_close() (bounded by REQUEST_TIMEOUT), so
    # close() leaves no thread behind.
    daemon_threads = False
    block_on_close = True

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 health: Health) -> None:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self.address_family = family
        self.registry = registry
        self.health = health
        # An IPv6 address keeps its flow info and scope id (link-local addresses need it).
        bind: tuple[str, int] | tuple[str, int, int, int] = (str(address[0]), int(address[1]))
        if family == socket.AF_INET6 and len(address) == 4:
            bind = (str(address[0]), int(address[1]), int(address[2]), int(address[3]))
        super().__init__(bind, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() resolves the host's FQDN (a DNS query, possibly slow);
        # the name is not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _Handler(BaseHTTPRequestHandler):
    """GET /metrics, GET /healthz; 404 for anything else."""

    server: _Server
    timeout = REQUEST_TIMEOUT
    server_version = "mailsync"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path == "/metrics":
            self._metrics(parse_qs(url.query).get("name[]", []))
        elif path == "/healthz":
            self._healthz()
        else:
            self._reply(404, f"not found: {path} (try /metrics or /healthz)")

    def _metrics(self, names: list[str]) -> None:
        """The registry's samples; with ``?name[]=...`` (as prometheus_client's own
        handler), only those series: a script watching one counter asks for it alone
        instead of having every collector run (a full scrape costs ~1 ms of the daemon's
        CPU; a filtered one skips the store's collectors)."""
        registry: Any = self.server.registry
        if names:
            registry = registry.restricted_registry(names)
        try:
            body = generate_latest(registry)
        except Exception as exc:  # noqa: BLE001 - a broken collector is a 500, not a crash
            log.exception("/metrics: a collector failed")
            self._reply(500, f"collecting metrics failed: {exc}")
            return
        self._send(200, CONTENT_TYPE_LATEST, body)

    def _healthz(self) -> None:
        try:
            ok, reason = self.server.health()
        except Exception as exc:  # noqa: BLE001 - reported as unhealthy
            log.exception("/healthz: the health check failed")
            ok, reason = False, f"health check failed: {exc}"
        if ok:
            self._reply(200, "ok")
        else:
            self._reply(503, reason or "unhealthy")

    def _reply(self, code: int, text: str) -> None:
        self._send(code, "text/plain; charset=utf-8", f"{text}\n".encode())

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # Scrapes every 15 s would flood the journal at the default stderr logging.
        log.debug("%s %s", self.address_string(), format % args)


class Exporter:
    """A running exporter: ``host`` and ``port`` are the bound address; :meth:`close`
    stops serving, frees the port and joins its threads."""

    def __init__(self, server: _Server) -> None:
        """Start serving ``server`` in a daemon thread (use :func:`start_exporter`)."""
        self._server = server
        host, port = server.server_address[:2]
        self.host: str = str(host)
        self.port: int = int(port)
        self._thread = threading.Thread(target=server.serve_forever,
                                        kwargs={"poll_interval": 0.1},
                                        name=f"mailsync-exporter-{self.port}", daemon=True)
        self._closed = False
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9877`` or ``http://[::1]:9877``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and release the socket (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def start_exporter(listen: str, registry: CollectorRegistry, health: Health) -> Exporter:
    """Serve ``/metrics`` from ``registry`` and ``/healthz`` from ``health()`` (``(True, _)``
    is 200 "ok", ``(False, reason)`` is 503 with the reason) on ``listen``.

    Raises ValueError for a malformed ``listen`` and OSError when it cannot be bound
    (address in use, unknown host).
    """
    host, port = parse_listen(listen)
    server = _Server(host, port, registry, health)
    exporter = Exporter(server)
    log.info("metrics exporter listening on %s", exporter.url)
    return exporter
