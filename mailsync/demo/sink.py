"""The demo's SMTP sink: a server on 127.0.0.1 (aiosmtpd, no TLS, no AUTH) that delivers
what it accepts into Maildirs, as a mail server would:

- mail for the *local domain* (the demo's alias domain: replies to ``catchall@``,
  bounces to ``bounce+<id>.<sig>@``) goes to the ``local`` Maildir, which the demo config
  declares as a ``type: local`` incoming server;
- mail for any other domain goes to the ``delivered`` Maildir ("the outside world");
- a recipient the sink calls undeliverable (local part ``nobody``, or a ``.invalid``
  domain) is answered 250 like the others, and then bounced the way Postfix does it: a
  delivery status notification (:mod:`mailsync.demo.dsn`) sent to the envelope sender,
  mailsync's signed VERP address ``bounce+<id>.<sig>@<domain>``, and so lands in the
  ``local`` Maildir, where the daemon finds it and marks the message ``bounced``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailsync.demo.controller import FreePortController
from mailsync.demo.dsn import build_dsn, lf
from mailsync.values import valueclass

HOST = "127.0.0.1"
SINK_HOSTNAME = "sink.demo.invalid"

Kind = Literal["delivered", "local", "bounce"]


def is_undeliverable(address: str) -> bool:
    """The demo's unknown users: local part ``nobody``, or a ``.invalid`` domain."""
    local, _, domain = address.rpartition("@")
    return local.lower() == "nobody" or domain.lower().rstrip(".").endswith(".invalid")



# -- Maildir ----------------------------------------------------------------------------

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def ensure_maildir(path: Path) -> Path:
    """Create ``tmp/``, ``new/`` and ``cur/`` under ``path``; returns ``path``."""
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def maildir_deliver(maildir: Path, data: bytes) -> Path:
    """Write ``data`` into ``maildir`` as Maildir writers do: a unique name in ``tmp/``,
    then a rename into ``new/``. Returns the file's path in ``new/``."""
    with _counter_lock:
        n = next(_counter)
    now = time.time()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072") or "localhost"
    name = f"{int(now)}.M{int(now % 1 * 1_000_000)}P{os.getpid()}Q{n}.{host}"
    tmp, new = maildir / "tmp" / name, maildir / "new" / name
    with open(tmp, "xb") as f:
        f.write(data)
    os.rename(tmp, new)
    return new


# -- the SMTP sink ----------------------------------------------------------------------

@valueclass
class Delivery:
    """One file the sink wrote: ``kind`` is delivered, local or bounce (a DSN)."""

    kind: Kind
    path: Path
    mail_from: str
    recipient: str


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        queue_id = self.sink.deliver(envelope.mail_from or "", list(envelope.rcpt_tos),
                                     envelope.original_content or b"")
        return f"250 2.0.0 Ok: queued as {queue_id}"


class _SMTP(SMTP):
    """aiosmtpd's SMTP, tracking its connections so that stop() can hang up on them."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink = handler.sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        with self.sink._lock:
            self.sink._live.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        with self.sink._lock:
            self.sink._live.discard(self)
        super().connection_lost(error)


class _Controller(FreePortController):
    def __init__(self, sink: Sink) -> None:
        super().__init__(_Handler(sink), hostname=HOST, port=0, ready_timeout=10.0,
                         server_hostname=SINK_HOSTNAME, enable_SMTPUTF8=True)

    def factory(self) -> SMTP:
        return _SMTP(self.handler, **self.SMTP_kwargs)


class Sink:
    """An SMTP server on 127.0.0.1 with a free port that delivers into Maildirs (see the
    module docstring); a context manager. ``deliveries`` lists every file written."""

    def __init__(self, delivered: Path, local: Path, *, local_domain: str,
                 undeliverable: Callable[[str], bool] = is_undeliverable) -> None:
        self.delivered = delivered
        self.local = local
        self.local_domain = local_domain.lower().rstrip(".")
        self.undeliverable = undeliverable
        self.host = HOST
        self.port = 0
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._live: set[_SMTP] = set()
        self._queue_ids = itertools.count(1)
        self._controller: _Controller | None = None

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Sink:
        """Create the Maildirs and listen on 127.0.0.1 (a free port: see ``port``)."""
        ensure_maildir(self.delivered)
        ensure_maildir(self.local)
        controller = _Controller(self)
        controller.start()
        self._controller = controller
        self.port = int(controller.port)
        return self

    def stop(self) -> None:
        """Hang up on connected clients and stop listening (idempotent)."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._hang_up(), controller.loop)
        future.result(timeout=10)
        controller.stop()

    def files(self, kind: Kind | None = None) -> list[Delivery]:
        """The deliveries so far (of one kind), in order."""
        with self._lock:
            return [d for d in self.deliveries if kind is None or d.kind == kind]

    def maildir_for(self, address: str) -> tuple[Kind, Path]:
        domain = address.rpartition("@")[2].lower().rstrip(".")
        return ("local", self.local) if domain == self.local_domain else (
            "delivered", self.delivered)

    def deliver(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> str:
        """Deliver one accepted message (called in the server's thread); returns the queue
        id given in the 250 reply. Undeliverable recipients get a DSN to ``mail_from``."""
        mail_from = mail_from.strip().removeprefix("<").removesuffix(">").strip()  # <> is null
        queue_id = f"DEMO{next(self._queue_ids):06X}"
        arrival = datetime.now(UTC)
        body = lf(data)
        written: list[Delivery] = []
        failed: list[str] = []
        for rcpt in rcpt_tos:
            if self.undeliverable(rcpt):
                failed.append(rcpt)
                continue
            kind, maildir = self.maildir_for(rcpt)
            trace = (f"Return-Path: <{mail_from}>\nDelivered-To: {rcpt}\n"
                     f"Received: from localhost by {SINK_HOSTNAME} (mailsync demo sink)"
                     f" with SMTP id {queue_id}\n\tfor <{rcpt}>; {format_datetime(arrival)}\n")
            path = maildir_deliver(maildir, trace.encode("utf-8") + body)
            written.append(Delivery(kind, path, mail_from, rcpt))
        if failed and mail_from:  # no bounce of a bounce (null sender <>)
            dsn = build_dsn(sender=mail_from, failed=failed, original=data,
                            reporting_mta=SINK_HOSTNAME, queue_id=queue_id, arrival=arrival)
            _, maildir = self.maildir_for(mail_from)
            path = maildir_deliver(maildir, dsn)
            written.append(Delivery("bounce", path, "", mail_from))
        with self._lock:
            self.deliveries.extend(written)
        return queue_id

    async def _hang_up(self) -> None:
        with self._lock:
            live = list(self._live)
        for protocol in live:
            if protocol.transport is not None:
                protocol.transport.abort()  # type: ignore[attr-defined]
        for _ in range(100):
            with self._lock:
                if not self._live:
                    return
            await asyncio.sleep(0.01)

