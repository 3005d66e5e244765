"""Delivery webhooks: a real HTTP receiver (http.server on 127.0.0.1) checks each request
with the verification snippet of docs/deliverability.md; it is down for the first part
of a burst sent by the daemon and still receives every event, and sending is not slowed
by it; the outbox rows are written with the status change, and only with webhooks."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mailsync.config.deliverability import Webhook, WebhookRetry
from mailsync.config.secrets import Secret
from mailsync.daemon.webhooks import WebhookCollector, WebhookThreads, _Worker
from mailsync.outbound.spool import drop_eml
from mailsync.outbound.types import Delivery, RecipientResult
from mailsync.outbound.webhooks import WebhookError, post
from mailsync.store import Store
from tests.daemon_helpers import daemon_config, daemons_fixture, free_port, wait_until  # noqa: F401
from tests.outbound_helpers import open_store, run, run_once, server_yaml, write_config

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-webhook-key-for-tests"


def doc_verify():
    """The ``verify`` function of docs/deliverability.md, run as the docs show it."""
    text = (ROOT / "docs" / "deliverability.md").read_text()
    section = text.split("### Verifying a request", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/deliverability.md", "exec"), namespace)  # noqa: S102
    return namespace["verify"]


class Receiver:
    """An HTTP server that stores the events whose signature verifies (2xx) and refuses
    the others (401); ``start()`` may come late: until then the port refuses."""

    def __init__(self, port: int, secret: str = SECRET) -> None:
        self.port = port
        self.verify = doc_verify()
        self.events: list[dict[str, object]] = []
        self.bad: list[bytes] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = outer.verify(secret, self.headers.get("Mailsync-Signature", ""), body)
                with outer.lock:
                    (outer.events.append(json.loads(body)) if ok else outer.bad.append(body))
                self.send_response(204 if ok else 401)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.handler = Handler

    def start(self) -> Receiver:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def ids(self, event: str = "sent") -> set[int]:
        with self.lock:
            return {int(e["message"]) for e in self.events if e["event"] == event}


@pytest.fixture(name="receiver")
def receiver_fixture():
    made: list[Receiver] = []

    def make(port: int) -> Receiver:
        r = Receiver(port)
        made.append(r)
        return r
    yield make
    for r in made:
        r.stop()


def hook_yaml(port: int, extra: str = "") -> str:
    return (f"webhooks:\n  - name: crm\n    url: http://127.0.0.1:{port}/hooks/mail\n"
            f"    secret: {{env: HOOK_SECRET}}\n    timeout: 2s\n"
            f"    retry: {{first: 1s, max: 2s}}\n{extra}")


def burst(spool: Path, n: int, tag: str) -> None:
    for i in range(n):
        drop_eml(spool, (f"X-Mailsync-User: alice\r\nTo: r{i}@example.org\r\n"
                         f"Subject: {tag} {i}\r\n\r\nHello {i}\r\n"
                         ).encode())


@pytest.mark.slow
def test_a_receiver_down_for_part_of_a_burst_gets_every_event_and_delays_no_mail(
        tmp_path, smtp_server, daemons, receiver):
    srv = smtp_server()
    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(daemon_config(tmp_path, server_yaml("main", srv.port, max_connections=4))
                   + hook_yaml(port))
    (tmp_path / "spool").mkdir(exist_ok=True)
    daemon = daemons(cfg, env={"HOOK_SECRET": SECRET})
    rx = receiver(port)

    # The issue's 30 s of a 500-message burst, scaled down: the receiver is down for the
    # first 4 s, the webhook backs off from 1 s to at most 2 s.
    n, down = 500, 4.0
    start = time.monotonic()
    burst(tmp_path / "spool", n, "down")
    srv.wait_for(n, timeout=120)
    sending_down = time.monotonic() - start
    assert rx.events == []
    time.sleep(max(0.0, start + down - time.monotonic()))
    rx.start()
    wait_until(lambda: len(rx.ids()) == n, 60, "every sent event received")
    assert rx.bad == []  # every request's signature verified with the documented snippet

    # The same burst with the receiver up all along: sending took no longer with it down.
    start = time.monotonic()
    burst(tmp_path / "spool", n, "up")
    srv.wait_for(2 * n, timeout=120)
    sending_up = time.monotonic() - start
    wait_until(lambda: len(rx.ids()) == 2 * n, 60, "the second burst's events")
    assert sending_down < 2 * sending_up + 2.0, (sending_down, sending_up)

    events = list(rx.events)
    assert len({e["id"] for e in events}) == len(events)  # each event's own id
    first = next(e for e in events if e["event"] == "sent")
    assert set(first) == {"id", "event", "time", "message", "message_id", "idempotency_key",
                          "account", "user", "status", "recipients", "detail"}
    assert first["account"] == "sales" and first["user"] == "alice"
    assert first["status"] == "sent" and first["message_id"]
    (rcpt,) = first["recipients"]
    assert rcpt["status"] == "sent" and rcpt["code"] == 250 and "OK" in rcpt["reply"]
    assert daemon.metric("mailsync_webhook_deliveries_total", webhook="crm",
                         result="success") >= 2 * n
    assert daemon.metric("mailsync_webhook_deliveries_total", webhook="crm",
                         result="failure") >= 1
    wait_until(lambda: daemon.metric("mailsync_webhook_outbox_events", webhook="crm") == 0,
               10, "an empty outbox")
    assert "webhook crm: event" in daemon.log and "is taking events again" in daemon.log
    assert SECRET not in daemon.log
    assert daemon.stop() == 0


def test_events_are_written_with_the_status_change_and_only_with_webhooks(tmp_path,
                                                                          smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    for i in range(3):
        drop_eml(tmp_path / "spool", f"X-Mailsync-User: alice\r\nTo: a{i}@example.org\r\n"
                 f"Subject: s{i}\r\n\r\nx\r\n".encode())
    run_once(cfg)  # no webhooks: nothing in the outbox
    store, outbound = open_store(cfg)
    try:
        assert outbound.query("SELECT COUNT(*) AS n FROM webhook_outbox")[0]["n"] == 0
        hook = Webhook("crm", "http://127.0.0.1:9/x", Secret("env", "HOOK_SECRET"),
                       events=("sent", "failed"))
        outbound.webhooks = (hook,)
        mid = outbound.query("SELECT id FROM messages ORDER BY id LIMIT 1")[0]["id"]
        outbound.record_delivery(mid, Delivery("main", (RecipientResult(
            "a0@example.org", "failed", 550, "5.1.1 no such user"),)), "failed", time.time(),
            next_attempt_at=None, error="a0@example.org: 550 5.1.1 no such user",
            duration=0.01)
        outbound.record_failure(mid, "deferred", "later", time.time())  # not wanted
        rows = outbound.query("SELECT webhook, event, status, recipients FROM webhook_outbox")
        assert [(r["webhook"], r["event"], r["status"]) for r in rows] == [
            ("crm", "failed", "failed")]
        assert json.loads(rows[0]["recipients"]) == [
            {"address": "a0@example.org", "status": "failed", "code": 550,
             "reply": "5.1.1 no such user"}]
    finally:
        store.close()


def test_run_once_posts_what_is_due_and_keeps_what_is_not_taken(tmp_path, smtp_server,
                                                                receiver, monkeypatch):
    srv = smtp_server()
    port = free_port()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    cfg.write_text(cfg.read_text() + hook_yaml(port))
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    burst(tmp_path / "spool", 3, "once")
    run_once(cfg)  # the receiver is down: the events wait
    store, outbound = open_store(cfg)
    try:
        assert outbound.query("SELECT COUNT(*) AS n FROM webhook_outbox")[0]["n"] == 3
    finally:
        store.close()
    rx = receiver(port).start()
    store, outbound = open_store(cfg)
    try:  # what the first run's failed attempt deferred comes due after the backoff
        outbound.store.conn.execute("UPDATE webhook_outbox SET next_attempt_at = 0")
        outbound.store.conn.commit()
    finally:
        store.close()
    run_once(cfg)
    assert len(rx.ids()) == 3 and rx.bad == []


def test_events_a_receiver_never_takes_are_dropped_after_their_lifetime(
        tmp_path, smtp_server, receiver, monkeypatch, caplog):
    srv = smtp_server()
    port = free_port()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    cfg.write_text(cfg.read_text() + hook_yaml(port).replace(
        "retry: {first: 1s, max: 2s}", "retry: {first: 1s, max: 2s, lifetime: 1h}"))
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    burst(tmp_path / "spool", 3, "old")
    run_once(cfg)  # the receiver is down: the events wait
    store, outbound = open_store(cfg)
    try:  # two of them were made 2 hours ago and are due
        outbound.store.conn.execute(
            "UPDATE webhook_outbox SET at = at - 7200, next_attempt_at = 0 WHERE id IN"
            " (SELECT id FROM webhook_outbox ORDER BY id LIMIT 2)")
        outbound.store.conn.commit()
        (young,) = [r["message"] for r in outbound.query(
            "SELECT message FROM webhook_outbox ORDER BY id DESC LIMIT 1")]
    finally:
        store.close()
    rx = receiver(port).start()
    with caplog.at_level("WARNING", logger="mailsync.webhooks"):
        store, outbound = open_store(cfg)
        try:
            outbound.store.conn.execute("UPDATE webhook_outbox SET next_attempt_at = 0")
            outbound.store.conn.commit()
        finally:
            store.close()
        run_once(cfg)
    assert rx.ids() == {young} and len(rx.events) == 1  # the old two were never posted
    (line,) = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert line.startswith("webhook crm: 2 events older than 1h dropped, never taken "
                           "(last error: ")
    store, outbound = open_store(cfg)
    try:
        assert outbound.query("SELECT COUNT(*) AS n FROM webhook_outbox")[0]["n"] == 0
    finally:
        store.close()


def test_the_expired_events_are_counted_per_webhook(tmp_path):
    store = Store.open(tmp_path / "state")
    try:
        with store.transaction() as conn:
            conn.executemany(
                "INSERT INTO webhook_outbox (webhook, event_id, event, message, at, status,"
                " next_attempt_at) VALUES ('crm', ?, 'sent', 1, ?, 'sent', 9e9)",
                [("e1", 1000.0), ("e2", 1000.0), ("e3", 9000.0)])
        hook = Webhook("crm", "https://crm.example.com/h", Secret("plain", "s"),
                       retry=WebhookRetry(lifetime=timedelta(hours=1)))
        threads = WebhookThreads(store, clock=lambda: 9000.0 + 3600.0 - 1)
        threads.hooks = (hook,)
        worker = _Worker(hook, store, threads.clock, threads.counts)
        assert worker.round() is False  # nothing due; e1 and e2 dropped, e3 young enough
        families = {f.name: f for f in WebhookCollector(lambda: threads,
                                                        clock=threads.clock).collect()}
        assert [s.value for s in families["mailsync_webhook_events_expired"].samples
                if s.name.endswith("_total")] == [2]
        assert [s.value for s in families["mailsync_webhook_outbox_events"].samples] == [1]
    finally:
        store.close()


def test_validate_refuses_plain_http_to_another_host_and_credentials(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", 2525))
    cfg.write_text(cfg.read_text() + "webhooks:\n"
                   "  - {url: 'http://crm.example.com/h', secret: {env: S}}\n"
                   "  - {url: 'https://u:p@crm.example.com/h', secret: {env: S}}\n"
                   "  - {url: 'http://127.0.0.1:8080/h', secret: {env: S}}\n"
                   "  - {name: b, url: 'http://crm.example.com/h', secret: {env: S},"
                   " allow_http: true, retry: {first: 1m, max: 10s}}\n")
    result = run(["validate", "-c", str(cfg), "--format", "json"])
    text = "\n".join(f"{p['severity']}: {p['path']}: {p['message']}"
                     for p in json.loads(result.output))
    assert "error: webhooks[0].url: webhook crm.example.com: plain http to crm.example.com" \
        in text
    assert "error: webhooks[1].name: duplicate webhook name 'crm.example.com'" in text
    assert "error: webhooks[1].url: webhook crm.example.com: the URL holds credentials" in text
    assert "webhooks[2]" not in text and "webhooks[3].url" not in text
    assert "error: webhooks[3].retry.first: retry.first (1m) is longer than retry.max" \
        in text
    assert "u:p@" not in text


def test_a_redirect_is_followed_only_to_the_same_origin(receiver):
    port, other = free_port(), free_port()

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            target = f"http://127.0.0.1:{other}/x" if self.path == "/away" else "/in"
            if self.path == "/in":
                self.send_response(200)
            else:
                self.send_response(307)
                self.send_header("Location", target)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = Webhook("h", f"http://127.0.0.1:{port}/here", Secret("env", "S"))
        assert post(hook, b"{}", {}) == 200
        away = Webhook("h", f"http://127.0.0.1:{port}/away", Secret("env", "S"))
        with pytest.raises(WebhookError, match="a redirect to another host, scheme or port "
                                               "is not followed"):
            post(away, b"{}", {})
    finally:
        server.shutdown()
        server.server_close()


def test_a_receiver_that_drips_its_reply_is_cut_at_the_timeout(tmp_path):
    """A socket timeout bounds one read only: a receiver sending a byte every 0.2 s would
    hold the webhook's thread (and every later event) for as long as it likes. The
    timeout is the whole request's."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not stop.wait(0.2):
                try:
                    conn.sendall(b"a")
                except OSError:
                    return

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        hook = Webhook("h", f"http://127.0.0.1:{port}/", Secret("env", "S"),
                       timeout=timedelta(seconds=1))
        started = time.monotonic()
        with pytest.raises(WebhookError, match=r"127\.0\.0\.1:\d+: POST: no complete reply "
                                               r"within 1s"):
            post(hook, b"{}", {})
        assert time.monotonic() - started < 2.5
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def _read_request(conn) -> bytes:
    """A whole request (headers and Content-Length body) off a raw socket: answering
    and closing before the body came in would reset the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536) or b"\r\n\r\n"
    head, _, body = data.partition(b"\r\n\r\n")
    declared = re.search(rb"(?i)content-length: *(\d+)", head)
    length = int(declared[1]) if declared else 0
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_an_https_receiver_is_verified_and_its_drip_is_cut_too(tmp_path, monkeypatch):
    """Over TLS (a trustme CA the process trusts through SSL_CERT_FILE): a good receiver
    takes the event, one whose certificate another CA signed is refused, and one that
    drips its reply is cut at the timeout, as over plain HTTP."""
    import socket
    import ssl

    import trustme

    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))

    def serve(cert_ca: trustme.CA, drip: bool) -> tuple[int, threading.Event]:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert_ca.issue_cert("127.0.0.1").configure_cert(context)
        listener = socket.create_server(("127.0.0.1", 0))
        stop = threading.Event()

        def run() -> None:
            with listener:
                listener.settimeout(10)
                try:
                    raw, _ = listener.accept()
                    conn = context.wrap_socket(raw, server_side=True)
                except OSError:
                    return
                with conn:
                    try:
                        _read_request(conn)
                        if not drip:
                            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
                            return
                        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                        while not stop.wait(0.2):
                            conn.sendall(b"a")
                    except OSError:
                        pass

        threading.Thread(target=run, daemon=True).start()
        return listener.getsockname()[1], stop

    def hook(port: int) -> Webhook:
        return Webhook("h", f"https://127.0.0.1:{port}/", Secret("env", "S"),
                       timeout=timedelta(seconds=1))

    good, _ = serve(ca, drip=False)
    assert post(hook(good), b"{}", {}) == 204
    stranger, _ = serve(trustme.CA(), drip=False)
    with pytest.raises(WebhookError, match="CERTIFICATE_VERIFY_FAILED"):
        post(hook(stranger), b"{}", {})
    slow, stop = serve(ca, drip=True)
    try:
        started = time.monotonic()
        with pytest.raises(WebhookError, match="POST: no complete reply within 1s"):
            post(hook(slow), b"{}", {})
        assert time.monotonic() - started < 2.5
    finally:
        stop.set()


def test_a_suppressed_recipient_is_a_suppressed_event_and_never_reaches_the_sink(
        tmp_path, smtp_server, receiver, monkeypatch):
    srv = smtp_server()
    port = free_port()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    cfg.write_text(cfg.read_text() + hook_yaml(port, "    events: [sent, suppressed]\n"))
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    rx = receiver(port).start()
    added = run(["suppression", "add", "r0@example.org", "-c", str(cfg)])
    assert added.exit_code == 0, added.output
    burst(tmp_path / "spool", 2, "supp")  # r0 is suppressed, r1 is not
    run_once(cfg)
    wait_until(lambda: len(rx.events) == 2, what="both events")
    by_event = {e["event"]: e for e in rx.events}
    assert set(by_event) == {"sent", "suppressed"} and rx.bad == []
    suppressed = by_event["suppressed"]
    assert [r["address"] for r in suppressed["recipients"]] == ["r0@example.org"]
    assert suppressed["recipients"][0]["status"] == "suppressed"
    assert [tuple(r.rcpt_tos) for r in srv.messages] == [("r1@example.org",)]
