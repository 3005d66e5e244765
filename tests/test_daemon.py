"""End to end: `mailsync run` as a subprocess against real SMTP and IMAP servers.

Start → drop → delivered; edits of the config file (valid, invalid, identical, an account
removed with mail waiting) → the right reload outcome through /metrics, `mailsync reload`
and the history; sd_notify over a real datagram socket; SIGTERM → exit 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mailsync.outbound.spool import drop, ensure_dirs
from tests.daemon_helpers import (
    DaemonProcess,
    daemon_config,
    daemons_fixture,  # noqa: F401 - the daemons fixture
    free_port,
    wait_until,
)
from tests.dovecot import dovecot_fixture, incoming_yaml, mailbox_fixture, message  # noqa: F401
from tests.outbound_helpers import history, run, run_once, server_yaml
from tests.smtpserver import smtp_server_fixture  # noqa: F401

RUN_TIMEOUT = 30

# docs/design.md §6, every series (counters end in _total, histograms in _bucket/_sum/_count).
DESIGN_SERIES = {
    "mailsync_messages_sent_total", "mailsync_messages_failed_total",
    "mailsync_messages_deferred_total", "mailsync_messages_rejected_total",
    "mailsync_messages_bounced_total", "mailsync_send_attempts_total",
    "mailsync_send_duration_seconds_bucket", "mailsync_queue_messages",
    "mailsync_queue_oldest_message_age_seconds", "mailsync_server_up",
    "mailsync_mailbox_polls_total", "mailsync_mailbox_messages_fetched_total",
    "mailsync_mailbox_last_poll_success_timestamp_seconds",
    "mailsync_config_last_reload_successful",
    "mailsync_config_last_reload_success_timestamp_seconds", "mailsync_config_reloads_total",
    "mailsync_config_hash", "mailsync_activities_open", "mailsync_activities_overdue",
    "mailsync_build_info",
}




def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    # As editors do: write a new file, then rename it over the old one.
    tmp = tmp_path / ".config.yaml.swp"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _drop(tmp_path: Path, n: int, *, user: str = "alice", account: str | None = None,
          to: str = "rcpt@example.org", tag: str = "m") -> None:
    for i in range(n):
        drop(tmp_path / "spool", user=user, account=account, to=[to],
             subject=f"{tag} {i}", text=f"body {i}\n")


def _statuses(config: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in history(config, "--limit", "10000"):
        out[row["status"]] = out.get(row["status"], 0) + 1
    return out


def _processes_naming(text: str) -> list[int]:
    """PIDs whose command line contains ``text`` (from /proc; no procps needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


def _reload(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailsync", "reload", "-c", str(config)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


def test_start_send_reload_and_stop(tmp_path, smtp_server, daemons):
    server = smtp_server()
    text = daemon_config(tmp_path, server_yaml("main", server.port))
    config = _write(tmp_path, text)
    d = daemons(config)
    assert d.metric("mailsync_config_last_reload_successful") == 1
    assert d.metric("mailsync_server_up", server="main", direction="outgoing") == 0

    _drop(tmp_path, 5)
    server.wait_for(5)
    wait_until(lambda: _statuses(config) == {"sent": 5}, what="5 messages sent")
    assert d.metric("mailsync_messages_sent_total", account="sales", server="main") == 5
    # The queue gauge counts what is in the queue now; sent mail is the counter's.
    assert d.metric("mailsync_queue_messages", status="sent") is None
    assert d.metric("mailsync_queue_messages", status="queued") == 0
    connections = server.connections
    assert 1 <= connections <= 2  # max_connections: sessions are reused

    # A reload that only changes grants keeps the live SMTP sessions: no new connection.
    config = _write(tmp_path, text.replace("granted_to: [bob]", "granted_to: [bob, carol]"))
    wait_until(lambda: d.metric("mailsync_config_reloads_total", result="success") == 1,
               what="the grants change applied")
    _drop(tmp_path, 3, user="carol", account="support", tag="carol")
    server.wait_for(8)
    wait_until(lambda: _statuses(config) == {"sent": 8})
    # Every session opened is still open, none said QUIT: the pool may have grown to its
    # max_connections (the 3 files may be sent side by side), never been replaced.
    assert connections <= server.connections <= 2
    assert server.live_connections == server.connections
    assert "QUIT" not in server.commands
    assert "granted_to: +carol" in d.log
    # The applied file was recorded: `mailsync plan` compares with it and sees nothing.
    assert run(["plan", "-c", str(config), "--detailed-exitcode"]).exit_code == 0

    # An invalid file is refused: the last good config stays and keeps sending.
    good = config.read_text()
    _write(tmp_path, good.replace("users: [alice, bob, carol]", "users: [alice, bob]"))
    wait_until(lambda: d.metric("mailsync_config_last_reload_successful") == 0,
               what="the invalid file refused")
    assert d.metric("mailsync_config_reloads_total", result="failure") == 1
    refused = _reload(config)
    assert refused.returncode == 1
    assert "refused" in refused.stderr
    assert "config.yaml:" in refused.stderr and "carol" in refused.stderr
    _drop(tmp_path, 1, user="carol", account="support", tag="still")
    server.wait_for(9)  # carol's grant is still in force
    assert d.get("/healthz")[0] == 200

    # Back to the file in force: an identical file is a no-op that succeeds.
    _write(tmp_path, good)
    wait_until(lambda: d.metric("mailsync_config_last_reload_successful") == 1)
    same = _reload(config)
    assert same.returncode == 0, same.stderr
    assert same.stdout.startswith("unchanged:")
    # The refused and the identical reload replaced no session either (the pool may have
    # grown to max_connections while messages went side by side, as above).
    assert connections <= server.connections <= 2
    assert server.live_connections == server.connections and "QUIT" not in server.commands

    status = subprocess.run([sys.executable, "-m", "mailsync", "status", "-c", str(config)],
                            capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith(f"running (pid {d.proc.pid}): 1 outgoing, 0 incoming")
    assert "9 sent" in status.stdout

    assert d.stop() == 0
    assert "mailsync stopped" in d.log
    assert server.live_connections == 0  # sessions closed with QUIT
    status = subprocess.run([sys.executable, "-m", "mailsync", "status", "-c", str(config)],
                            capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert status.returncode == 1 and "not running" in status.stderr


def test_a_dropped_message_is_sent_at_once_not_at_the_next_rescan(tmp_path, smtp_server,
                                                                  daemons):
    server = smtp_server()
    config = _write(tmp_path, daemon_config(tmp_path, server_yaml("main", server.port)))
    d = daemons(config)
    text = d.get("/metrics")[1]
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    missing = {name for name in DESIGN_SERIES
               if not {name, name.removesuffix("_total"), name.removesuffix("_bucket")}
               & families}
    assert missing == set()
    _drop(tmp_path, 1, tag="warm-up")
    server.wait_for(1)
    time.sleep(0.3)
    started = time.monotonic()
    _drop(tmp_path, 1, tag="fast")
    server.wait_for(2, timeout=5)
    # The periodic rescan runs every 5 s; inotify makes it far sooner (bench/latency.py
    # measures it: tens of milliseconds).
    assert time.monotonic() - started < 2.0
    assert d.stop() == 0


def test_removed_account_holds_its_waiting_mail_and_release_sends_it(tmp_path, smtp_server,
                                                                     daemons):
    server = smtp_server(recipient_replies={"later@example.org": "451 4.3.0 try later"})
    text = daemon_config(tmp_path, server_yaml("main", server.port))
    config = _write(tmp_path, text)
    d = daemons(config)
    _drop(tmp_path, 2, user="bob", account="support", to="later@example.org", tag="deferred")
    wait_until(lambda: _statuses(config) == {"deferred": 2}, what="2 deferred")

    without = text.replace("  - name: support\n    email: support@example.com\n"
                           "    server: main\n    granted_to: [bob]\n", "")
    assert without != text
    _write(tmp_path, without)
    wait_until(lambda: _statuses(config) == {"held": 2}, what="held after the removal")
    assert "account support left the configuration: 2 waiting messages held" in d.log
    rows = history(config, "--status", "held")
    detail = json.loads(run(["history", "show", str(rows[0]["id"]), "-c", str(config),
                             "--format", "json"]).output)
    assert any("left the configuration" in (e.get("detail") or "")
               for e in detail["events"])

    # Back in the config, and released: sent again (the server now accepts it).
    server.recipient_replies.clear()
    _write(tmp_path, text)
    wait_until(lambda: d.metric("mailsync_config_reloads_total", result="success") == 2)
    assert _statuses(config) == {"held": 2}  # held stays held until an operator says
    for row in rows:
        assert run(["queue", "release", str(row["id"]), "-c", str(config)]).exit_code == 0
    wait_until(lambda: _statuses(config) == {"sent": 2}, what="sent after release")
    assert d.stop() == 0


def test_a_changed_server_is_replaced_and_an_unchanged_one_kept(tmp_path, smtp_server,
                                                                daemons):
    old, new, other = smtp_server(), smtp_server(), smtp_server()
    servers = server_yaml("main", old.port) + server_yaml("other", other.port)
    accounts = ("  - name: sales\n    email: sales@example.com\n    server: main\n"
                "    granted_to: [alice]\n"
                "  - name: support\n    email: support@example.com\n    server: other\n"
                "    granted_to: [bob]\n")
    text = daemon_config(tmp_path, servers, accounts=accounts)
    config = _write(tmp_path, text)
    d = daemons(config)
    _drop(tmp_path, 2)
    _drop(tmp_path, 2, user="bob", tag="other")
    old.wait_for(2)
    other.wait_for(2)
    other_connections = other.connections

    _write(tmp_path, text.replace(f"port: {old.port}", f"port: {new.port}"))
    wait_until(lambda: d.metric("mailsync_config_reloads_total", result="success") == 1)
    wait_until(lambda: old.live_connections == 0, what="the old server's sessions closed")
    _drop(tmp_path, 2, tag="after")
    _drop(tmp_path, 1, user="bob", tag="other after")
    new.wait_for(2)
    other.wait_for(3)
    assert len(old.messages) == 2
    assert other.connections == other_connections
    assert d.stop() == 0


def test_invalid_file_at_start_exits_1_with_its_errors(tmp_path):
    config = _write(tmp_path, daemon_config(tmp_path, server_yaml("main", 2525))
                    .replace("version: 1", "version: 7"))
    proc = subprocess.run([sys.executable, "-m", "mailsync", "run", "-c", str(config)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 1
    assert "config.yaml:1:10" in proc.stdout + proc.stderr


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path, smtp_server, daemons):
    server = smtp_server()
    config = _write(tmp_path, daemon_config(tmp_path, server_yaml("main", server.port)))
    d = daemons(config)
    (tmp_path / "second").mkdir()
    second = _write(tmp_path / "second",
                    config.read_text().replace("./state", str(tmp_path / "state"))
                    .replace("./spool", str(tmp_path / "spool"))
                    .replace(d.url.rsplit(":", 1)[1], str(free_port())))
    proc = subprocess.run([sys.executable, "-m", "mailsync", "run", "-c", str(second)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 1
    assert "another mailsync daemon uses this state_dir" in proc.stderr
    assert f"pid {d.proc.pid}" in proc.stderr
    assert d.get("/healthz")[0] == 200
    assert d.stop() == 0


def test_reload_without_a_daemon_says_so(tmp_path):
    config = _write(tmp_path, daemon_config(tmp_path, server_yaml("main", 2525)))
    proc = _reload(config)
    assert proc.returncode == 1
    assert "cannot reach the daemon" in proc.stderr
    assert "mailsync.sock" in proc.stderr


def test_sd_notify_ready_reloading_watchdog_stopping(tmp_path, smtp_server, daemons):
    server = smtp_server()
    text = daemon_config(tmp_path, server_yaml("main", server.port))
    config = _write(tmp_path, text)
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(10)
        d = DaemonProcess(config, env={"NOTIFY_SOCKET": str(sock_path),
                                       "WATCHDOG_USEC": "400000"})
        # WATCHDOG_PID unset: meant for the main process, which is the daemon itself.

        def receive_until(prefix: str) -> list[str]:
            seen = []
            while True:
                datagram = sock.recv(4096).decode()
                seen.append(datagram)
                if datagram.startswith(prefix):
                    return seen

        first = receive_until("READY=1")
        assert "STATUS=1 outgoing, 0 incoming servers" in first[-1]
        pings = receive_until("WATCHDOG=1") + receive_until("WATCHDOG=1")
        assert pings.count("WATCHDOG=1") >= 2
        d.proc.send_signal(signal.SIGHUP)
        seen = receive_until("RELOADING=1")
        assert "MONOTONIC_USEC=" in seen[-1]
        assert receive_until("READY=1")[-1].startswith("READY=1")
        d.proc.send_signal(signal.SIGTERM)
        assert receive_until("STOPPING=1")[-1].startswith("STOPPING=1")
        assert d.wait() == 0
    assert "config reload (SIGHUP): unchanged" in d.log


def test_mailboxes_are_polled_and_a_new_message_arrives_by_idle(tmp_path, smtp_server,
                                                               daemons, mailbox):
    server = smtp_server()
    mailbox.append(message(1))
    incoming = incoming_yaml(mailbox, "support-in", tmp_path / "imap.secret",
                             extra="    poll_interval: 10m\n")
    config = _write(tmp_path, daemon_config(tmp_path, server_yaml("main", server.port),
                                            incoming=incoming))
    d = daemons(config)

    def fetched() -> list[dict]:
        out = run(["inbox", "-c", str(config), "--format", "json"])
        assert out.exit_code == 0, out.output
        return json.loads(out.output)

    wait_until(lambda: len(fetched()) == 1, what="the first poll")
    # poll_interval is 10 minutes: only IDLE can bring the next one this soon.
    mailbox.append(message(2, subject="by idle"))
    wait_until(lambda: len(fetched()) == 2, timeout=10, what="IDLE delivery")
    assert {m["subject"] for m in fetched()} == {"message 1", "by idle"}
    assert d.metric("mailsync_mailbox_messages_fetched_total", server="support-in") == 2
    assert d.metric("mailsync_server_up", server="support-in", direction="incoming") == 1
    assert d.stop() == 0


def test_sigterm_during_a_backlog_finishes_in_flight_and_loses_nothing(tmp_path, smtp_server):
    server = smtp_server()
    config = _write(tmp_path, daemon_config(tmp_path, server_yaml("main", server.port,
                                                                  max_connections=4)))
    total = 1500  # a backlog at start: taken by the pickup child process
    ensure_dirs(tmp_path / "spool")
    _drop(tmp_path, total, tag="backlog")
    d = DaemonProcess(config)
    try:
        wait_until(lambda: len(server.messages) >= 50, timeout=20, what="sending began")
        d.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert d.wait() == 0
        assert time.monotonic() - started < 10
    finally:
        if d.proc.poll() is None:
            d.kill()
    statuses = _statuses(config)
    assert set(statuses) <= {"sent", "queued"}, statuses  # nothing left `sending`
    assert 50 <= statuses.get("sent", 0) < total  # stopped half-way, as meant
    received = [m.data for m in server.messages]
    # Every transaction the server completed was recorded as sent, once.
    assert statuses.get("sent", 0) == len(received) == len(set(received))
    # A file the stopped pickup had committed but not yet removed is still in new/: it is
    # queued already (and its claim makes the next start remove it, not queue it again).
    queued_from = {row["source"] for row in history(config, "--limit", "10000")}
    waiting = [p for p in (tmp_path / "spool" / "new").iterdir() if p.name not in queued_from]
    left = statuses.get("queued", 0) + len(waiting)
    assert statuses.get("sent", 0) + left == total

    # The next start sends the rest, and only the rest.
    d = DaemonProcess(config)
    try:
        server.wait_for(total, timeout=60)
        wait_until(lambda: _statuses(config) == {"sent": total}, timeout=20)
        assert d.stop() == 0
    finally:
        if d.proc.poll() is None:
            d.kill()
    assert len(server.messages) == total


def test_the_daemon_leaks_no_secret(tmp_path, smtp_server, daemons):
    canary, other = "c4nary-Daemon-S3cret", "0ther-Daemon-S3cret"
    server = smtp_server(auth={"relay": canary})
    login = "    username: relay\n    password: {env: RELAY_PW}\n"
    text = daemon_config(tmp_path, server_yaml("main", server.port, extra=login))
    config = _write(tmp_path, text)
    d = daemons(config, env={"RELAY_PW": canary, "OTHER_PW": other})
    _drop(tmp_path, 2)
    server.wait_for(2)
    # A wrong password: the failure is logged and recorded, the secret is not.
    # Plain text in the file: applied with a warning that must not quote it.
    _write(tmp_path, text.replace("{env: RELAY_PW}", other))
    wait_until(lambda: d.metric("mailsync_config_reloads_total", result="success") == 1)
    _drop(tmp_path, 1, tag="wrong")
    wait_until(lambda: _statuses(config).get("deferred") == 1, what="deferred on auth")
    reload_out = _reload(config)
    plan_out = run(["plan", "-c", str(config)]).output
    everything = [d.log, d.get("/metrics")[1], reload_out.stdout, reload_out.stderr, plan_out,
                  json.dumps(history(config, "--limit", "100"))]
    assert "authentication" in d.log  # the failure was logged: the checks below are real
    assert "password: (changed)" in d.log
    assert "plain-text password in the config" in d.log
    assert [t for t in everything if canary in t or other in t] == []
    assert d.stop() == 0


def test_metrics_listen_and_spool_dir_change_live(tmp_path, smtp_server, daemons):
    server = smtp_server()
    text = daemon_config(tmp_path, server_yaml("main", server.port))
    config = _write(tmp_path, text)
    d = daemons(config)
    old_port = d.url.rsplit(":", 1)[1]
    new_port = str(free_port())
    _write(tmp_path, text.replace(f"127.0.0.1:{old_port}", f"127.0.0.1:{new_port}")
           .replace("spool_dir: ./spool", "spool_dir: ./outbox"))
    old_url, d.url = d.url, f"http://127.0.0.1:{new_port}"
    wait_until(lambda: d.get("/healthz")[0] == 200, what="the new metrics address")
    wait_until(lambda: d.metric("mailsync_config_reloads_total", result="success") == 1)
    d.url = old_url
    wait_until(lambda: d.get("/healthz")[0] == 0, what="nothing on the old address")
    d.url = f"http://127.0.0.1:{new_port}"
    drop(tmp_path / "outbox", user="alice", to=["x@example.org"], subject="new spool",
         text="x")
    assert server.wait_for(1)[0].data.count(b"Subject: new spool") == 1
    assert d.stop() == 0


def test_metrics_listen_moves_on_the_same_port_and_a_busy_one_is_refused(tmp_path, smtp_server,
                                                                        daemons):
    server = smtp_server()
    text = daemon_config(tmp_path, server_yaml("main", server.port))
    config = _write(tmp_path, text)
    d = daemons(config)
    port = d.url.rsplit(":", 1)[1]
    # Same port, another spelling of the address: cannot bind beside the old socket.
    _write(tmp_path, text.replace(f"127.0.0.1:{port}", f"localhost:{port}"))
    wait_until(lambda: d.metric("mailsync_config_reloads_total", result="success") == 1)
    assert d.get("/healthz")[0] == 200
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        _write(tmp_path, text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{taken}"))
        wait_until(lambda: d.metric("mailsync_config_reloads_total", result="failure") == 1)
        assert d.metric("mailsync_config_last_reload_successful") == 0
        assert "Address already in use" in d.log
    assert d.get("/healthz")[0] == 200  # still served where it was
    assert d.stop() == 0


def test_sigterm_while_the_backlog_is_being_taken_stops_the_pickup_child(tmp_path):
    # No server at all: the backlog is only being taken when SIGTERM comes.
    config = _write(tmp_path, daemon_config(tmp_path, server_yaml("main", free_port())))
    ensure_dirs(tmp_path / "spool")
    _drop(tmp_path, 3000, tag="backlog")
    d = DaemonProcess(config)
    try:
        d.wait_healthy()
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait(timeout=15) == 0
    finally:
        if d.proc.poll() is None:
            d.kill()
    # The forked child has the daemon's command line: none may outlive it.
    time.sleep(0.2)
    assert _processes_naming(str(config)) == []
    assert "Traceback" not in d.log and "ERROR" not in d.log
    # Whatever was not taken is still in the spool, and what was is queued. The child is
    # stopped mid-pass: files of its last committed batch may still be in new/ (queued
    # and not yet removed); the next pass knows them (spool_claims) and queues them once.
    left = len(list((tmp_path / "spool" / "new").iterdir()))
    statuses = _statuses(config)
    assert set(statuses) <= {"queued", "deferred"}
    assert 3000 <= sum(statuses.values()) + left <= 3000 + 1000  # at most one batch in both
    run_once(config)  # takes the rest (the relay is down: all deferred)
    assert list((tmp_path / "spool" / "new").iterdir()) == []
    subjects = [row["subject"] for row in history(config, "--limit", "10000")]
    assert sorted(subjects) == sorted(f"backlog {i}" for i in range(3000))  # none lost, none twice


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ...: comm may hold spaces, so split after the ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_the_spool_is_taken_by_a_pickup_child_and_in_process_if_it_dies(tmp_path, smtp_server,
                                                                         daemons):
    server = smtp_server()
    config = _write(tmp_path, daemon_config(tmp_path, server_yaml("main", server.port)))
    d = daemons(config)
    [child] = _children(d.proc.pid)  # the long-lived pickup process
    _drop(tmp_path, 3, tag="by the child")
    server.wait_for(3)
    os.kill(child, signal.SIGKILL)
    _drop(tmp_path, 2, tag="after its death")
    server.wait_for(5)
    wait_until(lambda: _statuses(config) == {"sent": 5})
    assert "the pickup process is gone" in d.log
    assert "the spool is taken in the daemon process from now on" in d.log
    assert d.get("/healthz")[0] == 200
    assert d.stop() == 0


def test_a_storm_of_signals_neither_deadlocks_nor_kills_the_daemon(tmp_path, smtp_server,
                                                                   daemons):
    server = smtp_server()
    config = _write(tmp_path, daemon_config(tmp_path, server_yaml("main", server.port)))
    d = daemons(config)
    for _ in range(300):
        d.proc.send_signal(signal.SIGHUP)
    # SIGHUPs that come together are one reload; each is answered by the supervisor.
    wait_until(lambda: (d.metric("mailsync_config_reloads_total", result="success") or 0) >= 1)
    assert d.get("/healthz")[0] == 200
    _drop(tmp_path, 1)
    server.wait_for(1)
    for _ in range(5):
        d.proc.send_signal(signal.SIGTERM)
    assert d.wait(timeout=15) == 0
    assert "Traceback" not in d.log


def test_a_symlinked_config_swapped_beside_it_is_reloaded(tmp_path, smtp_server, daemons):
    # As Kubernetes mounts a ConfigMap: config.yaml -> ..data/config.yaml, and an update
    # renames a new ..data symlink over the old one; config.yaml itself never changes.
    server = smtp_server()
    text = daemon_config(tmp_path, server_yaml("main", server.port))
    for version, body in (("v1", text), ("v2", text.replace("granted_to: [bob]",
                                                            "granted_to: [bob, carol]"))):
        (tmp_path / version).mkdir()
        (tmp_path / version / "config.yaml").write_text(
            body.replace("./state", str(tmp_path / "state"))
            .replace("./spool", str(tmp_path / "spool")))
    (tmp_path / "..data").symlink_to("v1")
    config = tmp_path / "config.yaml"
    config.symlink_to("..data/config.yaml")
    d = daemons(config)
    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    wait_until(lambda: d.metric("mailsync_config_reloads_total", result="success") == 1,
               timeout=3, what="the swap seen at once, not at the 5 s periodic check")
    assert "granted_to: +carol" in d.log
    assert d.stop() == 0


def test_an_idempotency_duplicate_shows_in_the_daemons_metrics_and_history(
        tmp_path, smtp_server, daemons):
    server = smtp_server()
    config = _write(tmp_path, daemon_config(tmp_path, server_yaml("main", server.port)))
    d = daemons(config)
    assert d.metric("mailsync_spool_duplicates_total") == 0
    for _ in range(2):
        drop(tmp_path / "spool", user="alice", to=["a@example.org"], subject="invoice",
             text="x", idempotency_key="invoice-9")
        wait_until(lambda: not list((tmp_path / "spool" / "new").iterdir()), 10)
    wait_until(lambda: d.metric("mailsync_spool_duplicates_total") == 1, 10,
               "the pickup child's duplicate counted by the daemon")
    assert len(server.wait_for(1)) == 1
    (row,) = history(config)
    shown = run(["history", "show", str(row["id"]), "-c", str(config), "--format", "json"])
    assert [e["status"] for e in json.loads(shown.output)["events"]].count("duplicate") == 1
    assert d.stop() == 0
