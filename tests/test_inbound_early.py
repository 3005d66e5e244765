"""mailsync.inbound.early: a one-shot poll connects to its IMAP and POP3 servers before it
imports their adapters, and the adapters take those connections (loopback sockets, and a
real Dovecot for the polls)."""

from __future__ import annotations

import socket
import threading

import pytest

from mailsync import values
from mailsync.inbound import early
from mailsync.inbound.onepass import poll_all_once
from tests.dovecot import (  # noqa: F401  (fixtures)
    dovecot_fixture,
    free_port,
    incoming_yaml,
    mailbox_fixture,
    message,
    rig_fixture,
)


@pytest.fixture(autouse=True)
def _nothing_left_over():
    yield
    assert early.close_all() == 0  # each test takes or closes what it started


def _listener(backlog: int = 5) -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    return listener


def test_the_early_connection_is_taken_connected_with_the_greeting_waiting():
    with _listener() as listener:
        port = listener.getsockname()[1]
        assert early.connect_early("127.0.0.1", port)
        peer, _ = listener.accept()
        with peer:
            peer.sendall(b"* OK ready\r\n")
            sock = early.take("127.0.0.1", port, 5.0)
            assert sock is not None
            with sock:
                assert sock.gettimeout() == 5.0  # blocking, with the timeout asked for
                assert sock.recv(100) == b"* OK ready\r\n"
                assert sock.getpeername() == ("127.0.0.1", port)
        assert early.take("127.0.0.1", port, 5.0) is None  # taken once


def test_one_early_connection_per_call_each_taken_once():
    with _listener() as listener:
        port = listener.getsockname()[1]
        assert early.connect_early("127.0.0.1", port) and early.connect_early("127.0.0.1", port)
        first, second = early.take("127.0.0.1", port, 5), early.take("127.0.0.1", port, 5)
        assert first is not None and second is not None and first is not second
        assert {first.getsockname(), second.getsockname()} != {first.getsockname()}
        first.close()
        second.close()
        assert early.take("127.0.0.1", port, 5) is None


def test_what_is_not_taken_is_closed():
    with _listener() as listener:
        port = listener.getsockname()[1]
        assert early.connect_early("127.0.0.1", port)
        peer, _ = listener.accept()
        with peer:
            assert early.close_all() == 1
            peer.settimeout(5)
            assert peer.recv(10) == b""  # the server sees the connection end


def test_a_refused_early_connection_is_raised_as_create_connection_raises_it():
    port = free_port()  # nobody listens
    with pytest.raises(ConnectionRefusedError) as ordinary:
        socket.create_connection(("127.0.0.1", port), timeout=5)
    assert early.connect_early("127.0.0.1", port)
    with pytest.raises(ConnectionRefusedError) as raised:
        early.take("127.0.0.1", port, 5.0)
    assert raised.value.errno == ordinary.value.errno


def test_an_early_connection_that_does_not_complete_times_out():
    # A listener that never accepts, its queue full: the kernel drops further SYNs.
    with _listener(backlog=0) as listener:
        port = listener.getsockname()[1]
        queued = []
        for _ in range(4):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            queued.append(s)
        try:
            assert early.connect_early("127.0.0.1", port)
            with pytest.raises(TimeoutError):
                early.take("127.0.0.1", port, 0.3)
        finally:
            for s in queued:
                s.close()


@pytest.mark.parametrize("kind", ["imap", "pop"])
@pytest.mark.parametrize("security", ["none", "ssl", "starttls"])
def test_a_one_shot_poll_uses_its_early_connections(rig, mailbox, tmp_path, monkeypatch,
                                                    kind, security):
    monkeypatch.setenv("SSL_CERT_FILE", str(mailbox.dovecot.ca_file))
    mailbox.append(message(1))
    r = rig(incoming_yaml(mailbox, "box", tmp_path / "pw", kind=kind, security=security))
    connects = []
    ordinary = socket.create_connection

    def counted(*args, **kwargs):
        connects.append(threading.current_thread().name)
        return ordinary(*args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counted)
    results = poll_all_once(r.config, r.store, r.metrics, verp_key=r.verp_key)
    assert (results["box"].ok, results["box"].fetched) == (True, 1), results["box"].error
    assert connects == []  # the adapter took the early connection (TLS over it for ssl)


def test_a_one_shot_poll_of_a_server_that_is_down_says_so_as_before(rig, mailbox, tmp_path):
    r = rig(incoming_yaml(mailbox, "box", tmp_path / "pw"))
    server = values.replace(r.server("box"), port=free_port())
    config = values.replace(r.config, incoming_servers=(server,))
    before = r.poller("box", server=server).poll_once()  # no early connection
    result = poll_all_once(config, r.store, r.metrics, verp_key=r.verp_key)["box"]
    assert (result.ok, result.kind) == (False, "refused")
    assert result.error == before.error and "refused" in result.error


def test_an_early_connection_left_too_long_is_not_used(monkeypatch):
    with _listener() as listener:
        port = listener.getsockname()[1]
        assert early.connect_early("127.0.0.1", port)
        peer, _ = listener.accept()
        with peer:
            monkeypatch.setattr(early, "MAX_AGE", 0.0)
            assert early.take("127.0.0.1", port, 5.0) is None  # the adapter connects afresh
            peer.settimeout(5)
            assert peer.recv(10) == b""  # and the stale one was closed
