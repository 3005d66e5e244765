"""HTTP exporter and queue collector: real GETs on loopback, a real SQLite store."""

from __future__ import annotations

import hashlib
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mailsync import __version__
from mailsync.daemon.collectors import QueueCollector
from mailsync.outbound.queue import NewMessage, OutboundStore
from mailsync.store import Store
from mailsync.telemetry.exporter import Exporter, parse_listen, start_exporter
from mailsync.telemetry.metrics import Metrics

# No proxy from the environment may get between the test and 127.0.0.1.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before]
    assert leaked == [], f"threads left running: {leaked}"


@pytest.fixture
def outbound(tmp_path: Path) -> Iterator[OutboundStore]:
    store = Store.open(tmp_path / "state")
    try:
        yield OutboundStore(store)
    finally:
        store.close()


def message(n: int) -> NewMessage:
    raw = f"Subject: test {n}\r\n\r\nbody {n}\r\n".encode()
    return NewMessage(source=f"{n}.eml", sha256=hashlib.sha256(raw).hexdigest(), user="alice",
                      account="sales", from_address="sales@example.com",
                      message_id=f"<{n}@example.com>", subject=f"test {n}", raw=raw,
                      recipients=("ann@example.org",))


def get(url: str) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET, error statuses included."""
    try:
        with OPENER.open(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read()


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def healthy() -> tuple[bool, str]:
    return True, "ok"


def test_metrics_has_build_info_and_the_queue_from_the_store(outbound):
    for n, at in ((1, 1000.0), (2, 1100.0), (3, 1200.0), (4, 1300.0)):
        outbound.ingest([message(n)], now=at)
    outbound.transition(1, "held", ("queued",), 1400.0, "account removed")
    outbound.transition(4, "failed", ("queued",), 1400.0, "operator")
    metrics = Metrics()
    metrics.registry.register(QueueCollector(lambda: outbound, clock=lambda: 1500.0))

    with start_exporter("127.0.0.1:0", metrics.registry, healthy) as exporter:
        assert exporter.port > 0
        status, content_type, body = get(f"{exporter.url}/metrics")

    assert status == 200 and content_type == CONTENT_TYPE_LATEST
    got = samples(body)
    assert got[("mailsync_build_info", (("version", __version__),))] == 1.0
    queue = {labels[0][1]: value for (name, labels), value in got.items()
             if name == "mailsync_queue_messages"}
    # What is in the queue now; the failed message 4 is history (counted by the counters).
    assert queue == {"queued": 2.0, "sending": 0.0, "deferred": 0.0, "held": 1.0}
    # Held and failed messages are not pending: the oldest pending one is message 2.
    assert got[("mailsync_queue_oldest_message_age_seconds", ())] == 400.0


def test_an_empty_queue_exports_every_queue_status_at_zero_and_no_final_one(outbound):
    registry = CollectorRegistry()
    registry.register(QueueCollector(lambda: outbound, clock=lambda: 1500.0))
    for status in ("queued", "sending", "deferred", "held"):
        assert registry.get_sample_value("mailsync_queue_messages", {"status": status}) == 0
    for status in ("sent", "failed", "rejected", "bounced"):
        assert registry.get_sample_value("mailsync_queue_messages", {"status": status}) is None
    assert registry.get_sample_value("mailsync_queue_oldest_message_age_seconds") == 0


def test_registering_does_not_read_the_store_but_each_scrape_does(
        outbound: OutboundStore) -> None:
    opened: list[int] = []

    def current() -> OutboundStore:
        opened.append(1)
        return outbound

    registry = CollectorRegistry()
    registry.register(QueueCollector(current, clock=lambda: 2000.0))
    assert opened == []
    outbound.ingest([message(1)], now=1000.0)
    assert registry.get_sample_value("mailsync_queue_oldest_message_age_seconds") == 1000.0
    outbound.ingest([message(2)], now=1900.0)
    assert registry.get_sample_value("mailsync_queue_messages", {"status": "queued"}) == 2
    assert len(opened) == 2


def test_healthz_reports_the_health_callable():
    state: dict[str, tuple[bool, str]] = {"now": (True, "ok")}
    with start_exporter("127.0.0.1:0", CollectorRegistry(), lambda: state["now"]) as exporter:
        assert get(f"{exporter.url}/healthz") == (200, "text/plain; charset=utf-8", b"ok\n")
        state["now"] = (False, "store: database is locked")
        assert get(f"{exporter.url}/healthz") == (503, "text/plain; charset=utf-8",
                                                  b"store: database is locked\n")


def test_a_failing_health_check_or_collector_is_an_error_response_not_a_crash():
    class Broken:
        def collect(self):
            raise RuntimeError("store closed")

    def health() -> tuple[bool, str]:
        raise RuntimeError("supervisor gone")

    registry = CollectorRegistry()
    registry.register(Broken())
    with start_exporter("127.0.0.1:0", registry, health) as exporter:
        status, _, body = get(f"{exporter.url}/healthz")
        assert (status, body) == (503, b"health check failed: supervisor gone\n")
        status, _, body = get(f"{exporter.url}/metrics")
        assert (status, body) == (500, b"collecting metrics failed: store closed\n")
        # The server survived both.
        assert get(f"{exporter.url}/healthz")[0] == 503


def test_other_paths_are_404():
    with start_exporter("127.0.0.1:0", Metrics().registry, healthy) as exporter:
        status, _, body = get(f"{exporter.url}/")
        assert status == 404 and b"/metrics" in body
        assert get(f"{exporter.url}/metricsx")[0] == 404
        assert get(f"{exporter.url}/metrics?other=1")[0] == 200


def test_name_parameters_restrict_a_scrape_to_those_series_and_skip_the_rest(outbound):
    outbound.ingest([message(1)], now=1000.0)
    metrics = Metrics()
    metrics.messages_sent.labels("sales", "relay").inc(3)
    scraped = []
    metrics.registry.register(QueueCollector(lambda: scraped.append(1) or outbound,
                                             clock=lambda: 1500.0))
    with start_exporter("127.0.0.1:0", metrics.registry, healthy) as exporter:
        status, content_type, body = get(
            f"{exporter.url}/metrics?name[]=mailsync_messages_sent_total"
            "&name[]=mailsync_build_info")
        assert status == 200 and content_type == CONTENT_TYPE_LATEST
        got = samples(body)
        assert scraped == []  # the store's collector did not run
        assert {name for name, _ in got} == {"mailsync_messages_sent_total",
                                             "mailsync_build_info"}
        assert got[("mailsync_messages_sent_total",
                    (("account", "sales"), ("server", "relay")))] == 3.0
        assert samples(get(f"{exporter.url}/metrics?name[]=no_such_series")[2]) == {}
        full = samples(get(f"{exporter.url}/metrics")[2])
        assert scraped and len(full) > len(got)


def test_close_frees_the_port_and_stops_the_thread():
    exporter = start_exporter("127.0.0.1:0", CollectorRegistry(), healthy)
    assert isinstance(exporter, Exporter)
    port = exporter.port
    assert get(f"{exporter.url}/healthz")[0] == 200
    assert any(t.name == f"mailsync-exporter-{port}" for t in threading.enumerate())
    exporter.close()
    exporter.close()  # idempotent
    assert not any(t.name == f"mailsync-exporter-{port}" for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass
    # A restarted exporter (a reload) can bind the same port at once.
    with start_exporter(f"127.0.0.1:{port}", CollectorRegistry(), healthy) as again:
        assert again.port == port
        assert get(f"{again.url}/healthz")[0] == 200


def test_a_port_in_use_is_an_oserror():
    with start_exporter("127.0.0.1:0", CollectorRegistry(), healthy) as exporter, \
            pytest.raises(OSError):
        start_exporter(f"127.0.0.1:{exporter.port}", CollectorRegistry(), healthy)


def test_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with start_exporter("[::1]:0", CollectorRegistry(), healthy) as exporter:
        assert exporter.host == "::1"
        assert exporter.url == f"http://[::1]:{exporter.port}"
        assert get(f"{exporter.url}/healthz") == (200, "text/plain; charset=utf-8", b"ok\n")


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:9877", ("127.0.0.1", 9877)),
    ("[::1]:9100", ("::1", 9100)),
    ("localhost:0", ("localhost", 0)),
])
def test_parse_listen(listen, expected):
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9877", "127.0.0.1", ":9877", "::1:9877", "host:99999",
                                    "host:port", "[::1]"])
def test_parse_listen_refuses_malformed_addresses(listen):
    with pytest.raises(ValueError, match="metrics_listen: .* HOST:PORT or \\[IPv6\\]:PORT"):
        parse_listen(listen)

