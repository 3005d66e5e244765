"""Two daemons (subprocesses, each its own state_dir and spool), one PostgreSQL, one
counting aiosmtpd sink (#16 items 2, 3, 5 as "How it is checked" says):

- failover: 5,000 messages in both spools; one node SIGKILLed mid-burst: every message
  delivered, duplicates at most that node's in-flight sessions, the survivor alone
  sends after the dead node's lease ended;
- partition: one node's database connection cut (a TCP proxy the test stops): it sends
  nothing once its lease ended, the other node takes its messages only then, and after
  the proxy is back nothing is delivered more often than that node had sessions;
- `mailsync status` lists both nodes; `mailsync_cluster_config_drift` says they run
  different configurations.

Each node's EHLO name (``daemon.helo_name``) tells the sink who sent a message.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from email import message_from_bytes
from pathlib import Path

import psycopg

from mailsync.outbound.spool import drop_eml, ensure_dirs
from tests.daemon_helpers import DaemonProcess, free_port, wait_until
from tests.outbound_helpers import run
from tests.postgres import PASSWORD, Postgres
from tests.smtpserver import smtp_server_fixture  # noqa: F401  (fixture "smtp_server")

LEASE = 3  # seconds: daemon.send_lease of the test nodes
SESSIONS = 4  # max_connections of each node: its in-flight sessions


def node_config(root: Path, name: str, sink_port: int, dsn_env: str) -> Path:
    """A node's own directory and config: its state_dir, spool, metrics port, name."""
    home = root / name
    home.mkdir()
    ensure_dirs(home / "spool")
    cfg = home / "config.yaml"
    cfg.write_text(
        f"version: 1\ndaemon:\n  state_dir: ./state\n  spool_dir: ./spool\n"
        f"  metrics_listen: 127.0.0.1:{free_port()}\n  node: {name}\n"
        f"  send_lease: {LEASE}s\n  helo_name: {name}.example.com\n"
        f"  store: {{postgresql: {{dsn: {{env: {dsn_env}}}, pool_size: 4}}}}\n"
        "  retry: {first: 5m, max: 1h, lifetime: 5d}\n"
        "alias_domain: {domain: example.com, bounce: bounce, catchall: catchall}\n"
        "users: [app]\noutgoing_servers:\n"
        f"  - {{name: sink, host: 127.0.0.1, port: {sink_port}, security: none,"
        f" max_connections: {SESSIONS}, timeout: 10s}}\n"
        "accounts:\n  - {name: app, email: app@example.com, server: sink, granted_to: [app]}\n")
    return cfg


def message(i: int) -> bytes:
    return (f"X-Mailsync-User: app\r\nTo: r{i}@example.org\r\nSubject: burst {i}\r\n"
            "Content-Type: text/plain\r\n\r\nhello\r\n").encode()


def subjects(received) -> Counter[str]:
    return Counter(str(message_from_bytes(m.data)["Subject"]) for m in received)


def start(cfg: Path, env: dict[str, str], running: list[DaemonProcess]) -> DaemonProcess:
    """A node's daemon, healthy; in ``running`` (killed by the test's end) at once."""
    daemon = DaemonProcess(cfg, env=env)
    running.append(daemon)
    daemon.wait_healthy(30)
    return daemon


def stop_all(*daemons: DaemonProcess) -> None:
    for d in daemons:
        if d.proc.poll() is None:
            d.kill()


def test_a_node_killed_mid_burst_its_messages_are_sent_by_the_other(tmp_path, pg_dsn,
                                                                   smtp_server):
    sink = smtp_server()
    sink.data_gate = threading.Event()  # DATA held until both spools are queued
    env = {"MAILSYNC_DSN": pg_dsn}
    cfg_a = node_config(tmp_path, "a", sink.port, "MAILSYNC_DSN")
    cfg_b = node_config(tmp_path, "b", sink.port, "MAILSYNC_DSN")
    total = 5000
    for i in range(total):
        drop_eml(cfg_a.parent / "spool" if i % 2 else cfg_b.parent / "spool", message(i))
    running: list[DaemonProcess] = []
    try:
        a = start(cfg_a, env, running)
        start(cfg_b, env, running)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            def queued() -> int:
                return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])

            # Mid-burst: both spools taken (every message in the store), some sent.
            wait_until(lambda: queued() == total, 40, "both spools queued")
            sink.data_gate.set()
            wait_until(lambda: len(sink.messages) >= 500, 20, "500 sent")
            before = {m.helo for m in sink.messages}
            assert before == {"a.example.com", "b.example.com"}  # both were sending
            a.proc.send_signal(signal.SIGKILL)
            a.wait()
            killed_at = time.time()
            assert len(sink.messages) < total, "the burst ended before the kill"
            sink.wait_for(total, timeout=60)
            wait_until(lambda: conn.execute(
                "SELECT count(*) FROM messages WHERE status = 'sent'").fetchone()[0] == total,
                30, "every message recorded as sent")
            events = conn.execute("SELECT count(*) FROM events WHERE detail LIKE"
                                  " '%sending lease of node a ended%'").fetchone()[0]
        got = subjects(sink.messages)
        assert set(got) == {f"burst {i}" for i in range(total)}  # every message delivered
        duplicates = sum(n - 1 for n in got.values())
        assert duplicates <= SESSIONS, got.most_common(8)
        late = [m for m in sink.messages if m.at > killed_at + 0.5]
        assert late and {m.helo for m in late} == {"b.example.com"}  # the survivor alone
        assert events > 0  # a's claims came back when its lease ended
        status = run(["status", "-c", str(cfg_b)])
        assert status.exit_code == 0, status.output
        lines = status.output.splitlines()
        assert "nodes (2):" in lines
        row = {ln.split()[0]: ln.split() for ln in lines if ln.startswith(("a ", "b "))}
        assert row["a"][1] == "gone" and row["b"][1:3] == ["(this)", "live"]
    finally:
        stop_all(*running)


PROXY = """
import select, socket, sys, threading
target, port = int(sys.argv[1]), int(sys.argv[2])
def pump(a):
    try:
        b = socket.create_connection(("127.0.0.1", target), timeout=5)
    except OSError:
        a.close(); return
    for s in (a, b):  # no Nagle: libpq and PostgreSQL wait for each reply
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            for s in select.select([a, b], [], [])[0]:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except OSError:
        pass
    finally:
        a.close(); b.close()
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port)); listener.listen(128)
print("ready", flush=True)
while True:
    threading.Thread(target=pump, args=(listener.accept()[0],), daemon=True).start()
"""


class Proxy:
    """A TCP proxy to PostgreSQL in a process of its own: :meth:`cut` kills it (every
    connection through it drops, none is accepted), :meth:`restore` starts it again on
    the same port."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.restore()

    def restore(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", PROXY, str(self.target),
                                      str(self.port)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"

    def cut(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def close(self) -> None:
        self.cut()


def test_a_partitioned_node_stops_sending_when_its_lease_ends(tmp_path, pg_dsn, postgres: Postgres,
                                                             smtp_server):
    sink = smtp_server()
    running: list[DaemonProcess] = []
    proxy = Proxy(postgres.port)
    try:
        _partition(tmp_path, pg_dsn, postgres, sink, proxy, running)
    finally:
        stop_all(*running)
        proxy.close()


def _partition(tmp_path: Path, pg_dsn: str, postgres: Postgres, sink, proxy: Proxy,
               running: list[DaemonProcess]) -> None:
    cut_dsn = pg_dsn.replace(f":{postgres.port}/", f":{proxy.port}/")
    env = {"MAILSYNC_DSN": pg_dsn, "CUT_DSN": cut_dsn + "?connect_timeout=2"}
    cfg_a = node_config(tmp_path, "a", sink.port, "CUT_DSN")  # a reaches it through the proxy
    cfg_b = node_config(tmp_path, "b", sink.port, "MAILSYNC_DSN")
    total = 1500
    for i in range(total):
        drop_eml(cfg_a.parent / "spool", message(i))
    sink.data_gate = threading.Event()  # DATA held until a has queued its spool
    a = start(cfg_a, env, running)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        wait_until(lambda: conn.execute("SELECT count(*) FROM messages").fetchone()[0]
                   == total, 30, "a queued its spool")
        sink.data_gate.set()
        wait_until(lambda: len(sink.messages) >= 100, 20, "a sending")
        proxy.cut()  # a still holds claims: it was sending
        cut_at = time.time()
        b = start(cfg_b, env, running)
        try:
            sink.wait_for(total, timeout=60)
        except AssertionError:
            rows = conn.execute("SELECT status, claimed_by, count(*), min(next_attempt_at)"
                                " FROM messages GROUP BY 1, 2").fetchall()
            missing = conn.execute(
                "SELECT e.message, e.status, e.detail FROM events e JOIN messages m"
                " ON m.id = e.message WHERE m.status <> 'sent' ORDER BY e.id").fetchall()
            raise AssertionError(f"{rows}\n{missing[-40:]}\n{a.log[-3000:]}\n"
                                 f"{b.log[-3000:]}") from None
        first_taken = conn.execute(
            "SELECT min(at) FROM events WHERE detail LIKE"
            " '%sending lease of node a ended%'").fetchone()[0]
        restored_at = time.time()
        proxy.restore()
        time.sleep(LEASE * 2)  # a reconnects: it must not send what it had claimed
        sent = conn.execute("SELECT count(*) FROM messages WHERE status = 'sent'"
                            ).fetchone()[0]
    assert first_taken is not None and first_taken >= cut_at  # b took a's messages
    from_a = [m.at for m in sink.messages if m.helo == "a.example.com"]
    after_cut = [t for t in from_a if t > cut_at]
    assert all(t < cut_at + LEASE for t in after_cut), (len(after_cut), cut_at)
    assert all(t < first_taken for t in after_cut)  # a stopped before b took over
    assert not [t for t in from_a if t > restored_at]  # nothing stale after reconnecting
    got = subjects(sink.messages)
    assert set(got) == {f"burst {i}" for i in range(total)}
    assert sum(n - 1 for n in got.values()) <= SESSIONS
    assert sent >= total - SESSIONS
    assert PASSWORD not in a.log
    # a and b run different files: b says so once a's heartbeats are back (a reconnects
    # to the database after the cut on its pool's backoff, slower on a busy machine).
    wait_until(lambda: DaemonProcess._parse(b.get("/metrics")[1]).get(
        ("mailsync_cluster_config_drift", ())) == 1, 30, "b reports the config drift")
