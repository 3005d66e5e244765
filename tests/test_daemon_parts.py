"""The daemon's parts in-process: reconfigure and halt of the sender, holding, the control
socket, the store's write probe and how `mailsync reload` finds the daemon."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailsync.cli.fallback import named_state_dir as _state_dir
from mailsync.daemon.control import ControlServer, request
from mailsync.outbound.deliver import Deliverer
from mailsync.outbound.ingest import Ingester
from mailsync.outbound.spool import drop
from mailsync.outbound.verp import load_key
from mailsync.telemetry.metrics import Metrics
from mailsync.values import replace
from tests.outbound_helpers import load, open_store, server_yaml, write_config
from tests.smtpserver import smtp_server_fixture  # noqa: F401


def _queue(cfg, n, *, user="alice", account=None, to="a@example.org"):
    for i in range(n):
        drop(cfg.parent / "spool", user=user, account=account, subject=f"s{i}", text="x",
             to=[to])


def test_reconfigure_keeps_unchanged_pools_and_retires_changed_ones(tmp_path, smtp_server):
    first, second = smtp_server(), smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", first.port))
    config = load(cfg)
    store, outbound = open_store(cfg)
    try:
        metrics = Metrics()
        deliverer = Deliverer(config, outbound, metrics,
                              verp_key=load_key(config.daemon.state_dir))
        _queue(cfg, 2)
        Ingester(config, outbound, metrics).run_once()
        assert deliverer.run_once().sent == 2
        pool = deliverer.pools["main"]
        assert pool.idle_count >= 1

        grants = replace(config, accounts=tuple(
            replace(a, granted_to=(*a.granted_to, "carol")) for a in config.accounts))
        assert deliverer.reconfigure(grants) == []
        assert deliverer.pools["main"] is pool and pool.idle_count >= 1
        assert deliverer.config is grants

        moved = load(write_config(tmp_path, server_yaml("main", second.port)))
        assert deliverer.reconfigure(moved) == ["main"]
        assert pool.open_count == 0  # its idle sessions were closed (QUIT)
        _queue(cfg, 1)
        Ingester(moved, outbound, metrics).run_once()
        assert deliverer.run_once().sent == 1
        assert len(first.messages) == 2 and len(second.messages) == 1
        assert deliverer.connections_opened == first.connections + second.connections
        deliverer.close()
    finally:
        store.close()


def test_halt_stops_a_pass_and_puts_untried_messages_back(tmp_path, smtp_server):
    server = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", server.port, max_connections=1))
    config = load(cfg)
    store, outbound = open_store(cfg)
    try:
        metrics = Metrics()
        _queue(cfg, 300)
        Ingester(config, outbound, metrics).run_once()
        deliverer = Deliverer(config, outbound, metrics,
                              verp_key=load_key(config.daemon.state_dir))
        done = threading.Event()
        result = {}
        worker = threading.Thread(target=lambda: result.setdefault(
            "stats", deliverer.run_once(until=done, idle=1.0)))
        worker.start()
        server.wait_for(20)
        deliverer.halt()
        worker.join(10)
        assert not worker.is_alive()
        counts = outbound.counts()
        assert counts["sending"] == 0
        assert counts["sent"] == result["stats"].sent == len(server.messages)
        assert 20 <= counts["sent"] < 300
        assert counts["queued"] == 300 - counts["sent"]
        assert deliverer.run_once().sent == 0  # halted until resumed
        # Resumed, a new pass (the daemon restarts it) sends the rest.
        deliverer.resume()
        assert deliverer.run_once().sent == 300 - counts["sent"]
        assert len(server.messages) == 300
        deliverer.close()
    finally:
        store.close()


def test_hold_missing_accounts_and_next_due(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", 2525))
    config = load(cfg)
    store, outbound = open_store(cfg)
    try:
        _queue(cfg, 2, user="alice")
        _queue(cfg, 3, user="bob", account="support")
        before = time.time()
        Ingester(config, outbound, Metrics()).run_once()
        due = outbound.next_due()
        assert due is not None and before - 1 <= due <= time.time()
        held = outbound.hold_missing_accounts(["sales"], time.time())
        assert held == {"support": 3}
        assert outbound.counts()["held"] == 3 and outbound.counts()["queued"] == 2
        events = outbound.query("SELECT detail FROM events WHERE status = 'held'")
        assert len(events) == 3
        assert all("mailsync queue release" in e["detail"] for e in events)
        assert outbound.hold_missing_accounts(["sales", "support"], time.time()) == {}
    finally:
        store.close()


def test_store_write_probe(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", 2525))
    store, _ = open_store(cfg)
    try:
        assert store.writable(timeout=1.0) == (True, "ok")
        other = os.open(f"{store.path}.writer", os.O_RDWR)
        try:
            fcntl.flock(other, fcntl.LOCK_EX)  # another writer holds the store
            ok, why = store.writable(timeout=0.2)
            assert not ok and "another writer" in why
        finally:
            os.close(other)
        assert store.writable(timeout=1.0)[0]
    finally:
        store.close()


def test_control_socket_round_trip_and_errors(tmp_path):
    path = tmp_path / "ctl.sock"
    seen = []

    def handle(req):
        seen.append(req)
        return {"ok": True, "echo": req["command"]}

    server = ControlServer(path, handle)
    try:
        assert oct(path.stat().st_mode & 0o777) == "0o660"
        assert request(path, "status") == {"ok": True, "echo": "status"}
        assert seen == [{"command": "status"}]
        import socket

        with socket.socket(socket.AF_UNIX) as raw:
            raw.connect(str(path))
            raw.sendall(b"not json\n")
            assert b"bad request" in raw.recv(4096)
    finally:
        server.close()
    assert not path.exists()
    with pytest.raises(ConnectionError, match="no such socket"):
        request(path, "reload")


# A control server in a process of its own, which then uses up its descriptors (a lowered
# RLIMIT_NOFILE) until told on stdin to give them back.
_FULL_SERVER = """
import logging, os, resource, sys
from pathlib import Path
from mailsync.daemon.control import ControlServer
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
server = ControlServer(Path(sys.argv[1]), lambda req: {"ok": True, "echo": req["command"]})
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
spare = []
while True:
    try:
        spare.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        break
print("full", flush=True)
sys.stdin.readline()
for fd in spare:
    os.close(fd)
print("freed", flush=True)
sys.stdin.readline()
server.close()
"""


def test_the_control_socket_answers_again_once_descriptors_are_free(tmp_path):
    path = tmp_path / "ctl.sock"
    with subprocess.Popen([sys.executable, "-c", _FULL_SERVER, str(path)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdin and proc.stdout and proc.stderr
        try:
            _ask_a_full_server(proc, path)
        finally:
            proc.kill()


def _ask_a_full_server(proc: subprocess.Popen[str], path: Path) -> None:
    assert proc.stdin and proc.stdout and proc.stderr
    assert proc.stdout.readline() == "full\n"
    replies: list[dict[str, object] | BaseException] = []

    def ask() -> None:
        try:
            replies.append(request(path, "status", timeout=20))
        except BaseException as exc:  # noqa: BLE001 - looked at below
            replies.append(exc)

    asking = threading.Thread(target=ask)
    asking.start()
    # The server cannot accept it: no descriptor to be had. It says so, and lives on.
    warning = proc.stderr.readline()
    assert "mailsync-control: cannot accept a connection" in warning
    assert "Too many open files" in warning
    assert replies == []
    proc.stdin.write("free\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "freed\n"
    asking.join(20)
    assert replies == [{"ok": True, "echo": "status"}]
    assert request(path, "reload", timeout=5) == {"ok": True, "echo": "reload"}
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    assert proc.wait(10) == 0


def test_reload_finds_the_state_dir_even_in_a_broken_file(tmp_path):
    cfg = write_config(tmp_path, server_yaml("main", 2525))
    assert _state_dir(cfg) == tmp_path / "state"
    text = cfg.read_text()
    cfg.write_text(text.replace("users: [alice, bob, carol]", "users: [alice, bob"))
    assert _state_dir(cfg) == tmp_path / "state"  # YAML syntax error: found on its line
    cfg.write_text("daemon: [\n")
    assert _state_dir(cfg) is None


def test_no_server_may_send_holds_the_message_until_released(tmp_path, smtp_server):
    server = smtp_server()
    accounts = ("  - name: sales\n    email: sales@example.com\n"
                "    granted_to: [alice]\n")  # no server: routed by from_filter
    narrow = server_yaml("main", server.port, extra="    from_filter: example.org\n")
    cfg = write_config(tmp_path, narrow, accounts=accounts)
    config = load(cfg)
    store, outbound = open_store(cfg)
    try:
        metrics = Metrics()
        metrics.prime(config)
        _queue(cfg, 1)
        Ingester(config, outbound, metrics).run_once()
        deliverer = Deliverer(config, outbound, metrics,
                              verp_key=load_key(config.daemon.state_dir))
        assert deliverer.run_once().held == 1
        assert outbound.counts()["held"] == 1 and server.messages == []
        [event] = outbound.query("SELECT detail FROM events WHERE status = 'held'")
        assert "no outgoing server may send as sales@example.com" in event["detail"]
        assert "mailsync queue release 1" in event["detail"]
        assert metrics.registry.get_sample_value(
            "mailsync_messages_failed_total", {"account": "sales", "reason": "permanent"}) == 0

        wide = load(write_config(tmp_path, server_yaml("main", server.port,
                                                       extra="    from_filter: example.com\n"),
                                 accounts=accounts))
        deliverer.reconfigure(wide)
        outbound.transition(1, "queued", ("held",), time.time(), "released by an operator")
        assert deliverer.run_once().sent == 1
        assert len(server.messages) == 1
        deliverer.close()
    finally:
        store.close()
