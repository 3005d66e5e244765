"""Delivery webhooks: the outbox rows, the JSON body, its signature and the HTTP POST.

An event (sent, deferred, failed, bounced, suppressed) is a row of ``webhook_outbox`` per
webhook that wants it, inserted by :func:`enqueue` in the transaction of the status
change that causes it: a status committed always has its events, and nothing is written
when no webhook is configured. The daemon's webhook threads (mailsync/daemon/webhooks.py)
post them, at least once, and delete each row the receiver took.

Each request is ``POST url`` with the JSON body (:func:`body`) and
``Mailsync-Signature: t=TIMESTAMP,v1=HEX``, HEX being HMAC-SHA256 of the webhook's secret
over ``TIMESTAMP + "." + body`` (:func:`signature`; the timestamp is the attempt's, so a
receiver can refuse old replays). Redirects are followed (307 and 308 only, which keep
the POST) to the same scheme, host and port; https certificates are verified.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from mailsync import __version__
from mailsync.config.deliverability import Webhook
from mailsync.config.units import iso
from mailsync.errors import MailsyncError
from mailsync.values import valueclass

SIGNATURE_HEADER = "Mailsync-Signature"
MAX_REDIRECTS = 3

Recipient = dict[str, Any]  # {"address", "status", "code", "reply"}


class WebhookError(MailsyncError):
    """A delivery that did not reach a 2xx answer (why, never the secret)."""


def enqueue(conn: Any, hooks: Sequence[Webhook], event: str, message: int, now: float, *,
            status: str, recipients: Iterable[Recipient] | None = None,
            detail: str | None = None) -> int:
    """Put ``event`` of ``message`` in the outbox of every webhook of ``hooks`` that wants
    it, in the caller's transaction (``conn``); returns how many rows. ``status`` is the
    message's status after the change; ``recipients`` those the event is about, with
    their replies. The suppression list calls this with ``event="suppressed"``."""
    wanting = [h for h in hooks if h.wants(event)]
    if not wanting:
        return 0
    listed = json.dumps(list(recipients or ()))
    conn.executemany(
        "INSERT INTO webhook_outbox (webhook, event_id, event, message, at, status,"
        " recipients, detail, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(h.name, uuid.uuid4().hex, event, message, now, status, listed, detail, now)
         for h in wanting])
    return len(wanting)


def recipients_of(conn: Any, message: int) -> list[Recipient]:
    """The recipients of ``message`` as they stand in the caller's transaction."""
    rows = conn.execute("SELECT address, status, code, reply FROM recipients WHERE message = ?"
                        " ORDER BY address", (message,)).fetchall()
    return [{"address": a, "status": s, "code": c, "reply": r} for a, s, c, r in rows]


@valueclass
class Pending:
    """An outbox row with what its body names of the message."""

    id: int
    event_id: str
    event: str
    message: int
    at: float
    status: str
    recipients: str | None
    detail: str | None
    attempts: int
    message_id: str | None
    idempotency_key: str | None
    account: str | None
    user: str | None


PENDING_SQL = (
    "SELECT o.id, o.event_id, o.event, o.message, o.at, o.status, o.recipients, o.detail,"
    " o.attempts, m.message_id, m.idempotency_key, m.account, m.user"
    " FROM webhook_outbox o LEFT JOIN messages m ON m.id = o.message"
    " WHERE o.webhook = ? AND o.next_attempt_at <= ? ORDER BY o.next_attempt_at, o.id LIMIT ?")


def body(row: Pending) -> bytes:
    """The JSON body of an event: the same bytes at every attempt."""
    return json.dumps({
        "id": row.event_id, "event": row.event, "time": iso(row.at),
        "message": row.message, "message_id": row.message_id,
        "idempotency_key": row.idempotency_key, "account": row.account, "user": row.user,
        "status": row.status, "recipients": json.loads(row.recipients or "[]"),
        "detail": row.detail,
    }, sort_keys=True, separators=(",", ":")).encode()


def signature(secret: str, timestamp: int, data: bytes) -> str:
    """The ``Mailsync-Signature`` value: ``t=TIMESTAMP,v1=HEX``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + data, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def _origin(parts: urllib.parse.SplitResult) -> tuple[str, str, int]:
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def post(hook: Webhook, data: bytes, headers: dict[str, str]) -> int:
    """POST ``data`` to the webhook; its 2xx status, else :class:`WebhookError`.

    ``hook.timeout`` bounds each request as a whole, connecting included: a socket
    timeout alone bounds one read, so a receiver that drips its reply a byte at a time
    would hold the webhook's thread, and every event behind it, as long as it liked."""
    # Here, not above: the queue imports this module, and most commands post nothing
    # (http.client imports the email package, ssl OpenSSL's bindings).
    import http.client
    import ssl

    # With them: only a post needs its deadline.
    from mailsync.deadline import Deadline, DeadlineExceeded, DeadlineSocket

    url = hook.url
    timeout = hook.timeout.total_seconds()
    origin = _origin(urllib.parse.urlsplit(url))
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        scheme, host, port = _origin(parts)
        deadline = Deadline(timeout)
        deadline.start("POST")
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.connect()
            conn.sock = DeadlineSocket(conn.sock, deadline)
            conn.request("POST", target, body=data, headers={
                "Content-Type": "application/json", "User-Agent": f"mailsync/{__version__}",
                **headers})
            reply = conn.getresponse()
            reply.read(65536)
            location = reply.getheader("Location")
        except DeadlineExceeded as exc:
            raise WebhookError(f"{host}:{port}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise WebhookError(f"{host}:{port}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        if 200 <= reply.status < 300:
            return reply.status
        if reply.status in (307, 308) and location:
            url = urllib.parse.urljoin(url, location)
            if _origin(urllib.parse.urlsplit(url)) != origin:
                raise WebhookError(f"{host}:{port}: HTTP {reply.status}: a redirect to "
                                   "another host, scheme or port is not followed")
            continue
        raise WebhookError(f"{host}:{port}: HTTP {reply.status} {reply.reason}")
    raise WebhookError(f"{origin[1]}:{origin[2]}: more than {MAX_REDIRECTS} redirects")


def deliver(hook: Webhook, secret: str, row: Pending, now: float) -> None:
    """Post one event, signed; :class:`WebhookError` when it was not taken."""
    data = body(row)
    post(hook, data, {SIGNATURE_HEADER: signature(secret, int(now), data),
                      "Mailsync-Event-Id": row.event_id})
