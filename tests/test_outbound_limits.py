"""Connection limits and dead relays: concurrency feedback, one down line, bounded probes.

Real parts: aiosmtpd (tests/smtpserver.py) answering 421 to sessions beyond one, a
loopback listener that accepts and hangs up (a relay that is down), a SQLite store.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mailsync.config.model import Config
from mailsync.outbound import pool as sender
from mailsync.outbound.deliver import Deliverer
from mailsync.outbound.ingest import Ingester
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.spool import drop
from mailsync.outbound.verp import load_key
from mailsync.telemetry.metrics import Metrics
from tests.outbound_helpers import history, load, open_store, server_yaml, write_config
from tests.smtpserver import (
    SmtpServer,
    smtp_server_fixture,  # noqa: F401  (fixture "smtp_server")
)
from tests.test_smtp import config as pool_config
from tests.test_smtp import connect


def _queue(tmp_path: Path, port: int, count: int) -> Path:
    cfg = write_config(tmp_path, server_yaml("main", port, max_connections=4))
    for i in range(count):
        drop(tmp_path / "spool", user="alice", subject=f"m{i}", text="x",
             to=[f"r{i}@example.org"])
    return cfg


def _ingest(config: Config, outbound: OutboundStore, metrics: Metrics) -> None:
    stats = Ingester(config, outbound, metrics).run_once()
    assert stats.queued > 0


def test_a_relay_allowing_one_session_gets_every_message_over_it(tmp_path, smtp_server):
    srv = smtp_server(max_sessions=1)
    cfg = _queue(tmp_path, srv.port, 100)
    config = load(cfg)
    metrics = Metrics()
    metrics.prime(config)
    store, outbound = open_store(cfg)
    try:
        _ingest(config, outbound, metrics)
        deliverer = Deliverer(config, outbound, metrics,
                              verp_key=load_key(config.daemon.state_dir))
        start = time.monotonic()
        stats = deliverer.run_once()
        elapsed = time.monotonic() - start
        deliverer.close()
    finally:
        store.close()
    assert (stats.sent, stats.deferred, stats.failed) == (100, 0, 0)
    assert elapsed < 2.0, elapsed
    assert len(srv.wait_for(100)) == 100
    rows = history(cfg)
    assert len(rows) == 100
    assert {(r["status"], r["attempts"]) for r in rows} == {("sent", 1)}
    # The relay did refuse the extra sessions, and the pool went down to the one it allows.
    assert srv.refused_sessions >= 1
    value = metrics.registry.get_sample_value
    assert value("mailsync_pool_concurrency", {"server": "main"}) == 1
    assert value("mailsync_server_up", {"server": "main", "direction": "outgoing"}) == 1


def test_concurrency_rises_again_after_the_feedback_period(smtp_server):
    srv = smtp_server(max_sessions=1)
    now = [0.0]
    pool = sender.ConnectionPool(pool_config(srv), lambda: connect(srv), max_connections=3,
                                 feedback_period=10.0, clock=lambda: now[0])
    first = pool.acquire()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(timeout=10)))
    waiter.start()
    deadline = time.monotonic() + 5
    while pool.concurrency != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.concurrency == 1 and srv.refused_sessions == 1
    pool.release(first)  # the waiting thread gets the live session, not an error
    waiter.join(5)
    assert got == [first]
    pool.release(first)
    assert pool.concurrency == 1  # not yet: the period has not passed
    now[0] = 10.0
    assert pool.acquire() is first
    pool.release(first)
    assert pool.concurrency == 2
    pool.close()


class _DeadRelay:
    """A loopback listener that accepts each connection and hangs up at once, counting."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


@contextmanager
def _sending(deliverer: Deliverer) -> Iterator[None]:
    """A pass running as in the daemon (until stopped), in a thread."""
    stop = threading.Event()
    thread = threading.Thread(target=lambda: deliverer.run_once(until=stop, idle=0.05))
    thread.start()
    try:
        yield
    finally:
        stop.set()
        deliverer.wake()
        thread.join(30)
        deliverer.close()


def _wait(condition, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    """The log lines an operator sees (INFO and above) that contain ``text``."""
    return [r for r in caplog.records if r.levelno >= logging.INFO and text in r.getMessage()]


def test_a_dead_relay_is_down_once_probed_on_a_backoff_then_sent_to(tmp_path, caplog,
                                                                     monkeypatch):
    monkeypatch.setattr(sender, "PROBE_FIRST", 0.2, raising=False)
    monkeypatch.setattr(sender, "PROBE_MAX", 0.8, raising=False)
    caplog.set_level(logging.DEBUG, logger="mailsync")
    relay = _DeadRelay()
    cfg = _queue(tmp_path, relay.port, 200)
    config = load(cfg)
    metrics = Metrics()
    metrics.prime(config)
    store, outbound = open_store(cfg)
    revived: SmtpServer | None = None
    try:
        _ingest(config, outbound, metrics)
        deliverer = Deliverer(config, outbound, metrics,
                              verp_key=load_key(config.daemon.state_dir))
        with _sending(deliverer):
            _wait(lambda: outbound.counts().get("deferred", 0) == 200)
            time.sleep(2.0)  # probes at 0.2 s, 0.4 s, 0.8 s, then every 0.8 s
            counts = outbound.counts()
            assert counts.get("deferred") == 200 and not counts.get("failed")
            # max_connections (4) sessions tried at once, then the probes: not 200+.
            assert 1 <= relay.accepted <= 4 + 6, relay.accepted
            down = _lines(caplog, "is down")
            assert len(down) == 1 and down[0].levelno == logging.WARNING
            assert "main (127.0.0.1:" in down[0].getMessage()
            assert "probing" in down[0].getMessage()
            assert [r for r in caplog.records if r.levelno >= logging.WARNING] == down
            value = metrics.registry.get_sample_value
            assert value("mailsync_server_up", {"server": "main", "direction": "outgoing"}) == 0
            # Only messages that really met the dead relay count an attempt.
            attempts = outbound.query("SELECT SUM(attempts) FROM messages")[0][0]
            assert attempts <= 4, attempts
            # Deferred on the retry schedule (5 minutes for a new message), not sooner.
            soonest = outbound.next_due()
            assert soonest is not None and soonest > time.time() + 200

            relay.close()  # the relay comes back up on the same port
            revived = SmtpServer()
            revived.port = relay.port
            revived.start()
            revived.wait_for(200, timeout=15)
            _wait(lambda: outbound.counts().get("sent", 0) == 200)
    finally:
        if revived is not None:
            revived.stop()
        store.close()
    assert len(_lines(caplog, "is down")) == 1
    (up,) = _lines(caplog, "is back up")
    assert up.levelno == logging.INFO
    assert {r["status"] for r in history(cfg)} == {"sent"}
    assert metrics.registry.get_sample_value(
        "mailsync_server_up", {"server": "main", "direction": "outgoing"}) == 1
