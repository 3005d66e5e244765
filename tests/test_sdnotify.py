"""sd_notify client: exact datagrams on a real Unix socket, as systemd would receive them."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsync.daemon.sdnotify import Notifier


class Listener:
    """A bound datagram socket standing in for systemd's notification socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self) -> bytes:
        return self.sock.recv(4096)

    def pending(self) -> bytes | None:
        self.sock.settimeout(0)
        try:
            return self.sock.recv(4096)
        except BlockingIOError:
            return None
        finally:
            self.sock.settimeout(5)


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with sock:
        yield Listener(sock, str(path))


def test_each_method_sends_its_exact_datagram(listener):
    notifier = Notifier(monotonic_ns=lambda: 1_234_567_891_000)
    assert notifier.enabled
    assert notifier.ready("3 servers, 2 accounts")
    assert listener.receive() == b"READY=1\nSTATUS=3 servers, 2 accounts"
    assert notifier.ready()
    assert listener.receive() == b"READY=1"
    assert notifier.reloading()
    assert listener.receive() == b"RELOADING=1\nMONOTONIC_USEC=1234567891"
    assert notifier.stopping("finishing 2 sends")
    assert listener.receive() == b"STOPPING=1\nSTATUS=finishing 2 sends"
    assert notifier.status("queue: 4 queued")
    assert listener.receive() == b"STATUS=queue: 4 queued"
    assert notifier.watchdog()
    assert listener.receive() == b"WATCHDOG=1"
    assert listener.pending() is None


def test_reloading_uses_the_monotonic_clock_in_microseconds(listener):
    before = time.monotonic_ns() // 1000
    assert Notifier().reloading()
    after = time.monotonic_ns() // 1000
    first, second = listener.receive().split(b"\n")
    assert first == b"RELOADING=1"
    key, value = second.split(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_a_status_cannot_inject_another_key(listener):
    assert Notifier().status("line one\nREADY=1")
    assert listener.receive() == b"STATUS=line one READY=1"


def test_abstract_namespace_socket(monkeypatch):
    name = f"mailsync-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
        assert Notifier().ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_no_socket_means_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.ready("up")
    assert not notifier.watchdog()
    assert notifier.watchdog_interval() is None


def test_send_errors_are_logged_once_never_raised(tmp_path, caplog):
    gone = tmp_path / "gone"
    notifier = Notifier({"NOTIFY_SOCKET": str(gone)})
    with caplog.at_level(logging.DEBUG, logger="mailsync.sdnotify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(gone) in warnings[0].getMessage() and "READY=1" in warnings[0].getMessage()
    assert any(r.levelno == logging.DEBUG and "WATCHDOG=1" in r.getMessage()
               for r in caplog.records)

    # Once the socket is there again, sends succeed and a later failure warns again.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(gone))
        assert notifier.watchdog() is True
        assert sock.recv(4096) == b"WATCHDOG=1"
    gone.unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mailsync.sdnotify"):
        assert notifier.stopping() is False
    assert ["STOPPING=1" in r.getMessage() for r in caplog.records] == [True]


def test_unsupported_socket_address_disables(caplog):
    with caplog.at_level(logging.WARNING, logger="mailsync.sdnotify"):
        notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled and not notifier.ready()
    assert "vsock:2:1234" in caplog.text


@pytest.mark.parametrize(("env", "expected"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{pid}"}, 15.0),
    ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"}, None),     # meant for another process
    ({}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid(env, expected):
    environ = {k: v.format(pid=os.getpid()) for k, v in env.items()}
    environ["NOTIFY_SOCKET"] = "/run/systemd/notify"
    assert Notifier(environ).watchdog_interval() == expected
