"""Spool entries that are not regular files, and a pickup or sender that makes no progress.

A FIFO, a symlink or a directory in ``spool/new`` is moved to ``rejected/`` as
``not_a_regular_file`` (a symlink as a link, never followed), never opened so that it
blocks; and ``/healthz`` answers 503 while the pickup or a sender is stuck with work
waiting. Real parts: the CLI, the daemon as a subprocess, aiosmtpd, a SQLite store.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsync.outbound import spool as spool_mod
from mailsync.outbound.ingest import Ingester
from mailsync.outbound.spool import drop
from mailsync.telemetry.metrics import Metrics
from tests.daemon_helpers import (
    daemon_config,
    daemons_fixture,  # noqa: F401 - the daemons fixture
    wait_until,
)
from tests.outbound_helpers import history, load, open_store, run_once, server_yaml, write_config

SECRET = b"X-Mailsync-User: alice\nTo: thief@example.org\nSubject: secret\n\nonly root reads\n"
ODD = ("a-fifo.json", "b-link.eml", "c-dir.json")


def _odd_entries(tmp_path: Path, spool: Path) -> Path:
    """A FIFO, a symlink to a file only the daemon should read, and a directory, in new/."""
    new = spool / "new"
    os.mkfifo(new / ODD[0])
    secret = tmp_path / "secret.eml"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    (new / ODD[1]).symlink_to(secret)
    # Made in tmp/ and renamed into new/ whole: a running daemon takes new/'s entries
    # within a millisecond, and may move an empty directory before it has its file.
    (spool / "tmp" / ODD[2]).mkdir()
    (spool / "tmp" / ODD[2] / "inside.eml").write_bytes(b"x")
    os.rename(spool / "tmp" / ODD[2], new / ODD[2])
    return secret


def _check_rejected(spool: Path, secret: Path) -> None:
    rejected = spool / "rejected"
    for name in ODD:
        error = (rejected / f"{name}.error").read_text()
        assert error.startswith("not_a_regular_file: "), error
        assert "not a regular file" in error, error
    assert "FIFO" in (rejected / f"{ODD[0]}.error").read_text()
    assert "symbolic link" in (rejected / f"{ODD[1]}.error").read_text()
    assert "directory" in (rejected / f"{ODD[2]}.error").read_text()
    assert (rejected / ODD[1]).is_symlink()                   # moved as a link
    assert os.readlink(rejected / ODD[1]) == str(secret)
    assert secret.read_bytes() == SECRET and os.stat(secret).st_mode & 0o777 == 0o600
    assert (rejected / ODD[2] / "inside.eml").read_bytes() == b"x"
    assert os.path.exists(rejected / ODD[0]) and not (rejected / ODD[0]).is_file()
    assert list((spool / "new").iterdir()) == []


def test_run_once_rejects_a_fifo_a_symlink_and_a_directory_and_sends_the_file_beside_them(
        tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    spool = tmp_path / "spool"
    secret = _odd_entries(tmp_path, spool)
    drop(spool, user="alice", to=["b@example.org"], subject="normal", text="x")
    out = run_once(cfg).output
    assert "1 queued, 3 rejected" in out, out
    received = srv.wait_for(1)
    assert [m.rcpt_tos for m in received] == [("b@example.org",)]
    _check_rejected(spool, secret)
    rejected = [r for r in history(cfg) if r["status"] == "rejected"]
    assert sorted(r["reason"] for r in rejected) == ["not_a_regular_file"] * 3
    time.sleep(0.2)
    assert len(srv.messages) == 1                              # the secret was not sent


@contextlib.contextmanager
def _unblocking(fifo: Path) -> Iterator[None]:
    """Whatever happens, a reader blocked on ``fifo`` is released at the end (opening the
    write end frees a blocked open for reading)."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_fifo_renamed_over_a_listed_file_between_the_scan_and_the_open_does_not_block(
        tmp_path, smtp_server, monkeypatch):
    """The race of the report, made deterministic: the pickup lists a file, then a FIFO is
    renamed over it before the open. The pass rejects the FIFO and finishes."""
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    spool = tmp_path / "spool"
    victim = drop(spool, user="alice", to=["a@example.org"], subject="listed", text="x")
    drop(spool, user="alice", to=["b@example.org"], subject="after it", text="y")
    fifo = spool / "tmp" / "fifo.json"
    os.mkfifo(fifo)
    real_scan = spool_mod.scan_names

    def scan_then_swap(spool_dir: Path) -> list[str]:
        listed = real_scan(spool_dir)
        os.rename(fifo, victim)  # between the scan and the open
        return listed

    monkeypatch.setattr(spool_mod, "scan_names", scan_then_swap)
    config = load(cfg)
    store, outbound = open_store(cfg)
    outcome: list[object] = []
    try:
        with _unblocking(victim):
            ingester = Ingester(config, outbound, Metrics())
            worker = threading.Thread(target=lambda: outcome.append(ingester.run_once()),
                                      daemon=True)
            worker.start()
            worker.join(10)
            blocked = worker.is_alive()
        worker.join(10)  # released by _unblocking when it was blocked
    finally:
        store.close()
    assert not blocked, "the pass blocked opening the FIFO"
    stats = outcome[0]
    assert (stats.queued, stats.rejected) == (1, 1), stats  # type: ignore[attr-defined]
    error = (spool / "rejected" / f"{victim.name}.error").read_text()
    assert error.startswith("not_a_regular_file: ") and "FIFO" in error, error
    assert list((spool / "new").iterdir()) == []




def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailsync.yaml"
    path.write_text(text)
    spool_mod.ensure_dirs(tmp_path / "spool")
    return path


def test_the_daemon_rejects_a_fifo_a_symlink_and_a_directory(tmp_path, smtp_server, daemons):
    srv = smtp_server()
    config = _write(tmp_path, daemon_config(tmp_path, server_yaml("main", srv.port)))
    d = daemons(config)
    spool = tmp_path / "spool"
    secret = _odd_entries(tmp_path, spool)
    drop(spool, user="alice", to=["b@example.org"], subject="normal", text="x")
    assert [m.rcpt_tos for m in srv.wait_for(1)] == [("b@example.org",)]
    wait_until(lambda: len(list((spool / "rejected").glob("*.error"))) == 3, 10,
               "three .error files")
    _check_rejected(spool, secret)
    wait_until(lambda: d.metric("mailsync_messages_rejected_total",
                                reason="not_a_regular_file") == 3, 10, "the metric")
    assert d.get("/healthz")[0] == 200
    assert d.stop() == 0


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


STUCK = {"MAILSYNC_TEST_STUCK_AFTER": "1"}


def _pings(sock: socket.socket, seconds: float) -> int:
    """WATCHDOG=1 datagrams received on ``sock`` within ``seconds``."""
    deadline, count = time.monotonic() + seconds, 0
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            count += sock.recv(4096).startswith(b"WATCHDOG=1")
        except TimeoutError:
            break
    return count


def test_a_stopped_pickup_with_files_waiting_fails_healthz_and_the_watchdog(
        tmp_path, smtp_server, daemons):
    """The pickup child SIGSTOP'ed (as good as blocked in an open()) while a file waits:
    /healthz 503 and no systemd watchdog ping (systemd would restart the daemon); both
    come back once it runs again. An idle daemon stays healthy meanwhile."""
    srv = smtp_server()
    config = _write(tmp_path, daemon_config(tmp_path, server_yaml("main", srv.port)))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        d = daemons(config, env={**STUCK, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                                 "WATCHDOG_USEC": "400000"})
        time.sleep(2.5)  # idle for longer than the limit (and less than a rescan): healthy
        assert d.get("/healthz")[0] == 200
        assert _pings(sock, 0.5) >= 1
        [pickup] = _children(d.proc.pid)
        os.kill(pickup, signal.SIGSTOP)
        try:
            drop(tmp_path / "spool", user="alice", to=["b@example.org"], subject="s",
                 text="x")
            wait_until(lambda: d.get("/healthz")[0] == 503, 10, "/healthz 503")
            code, why = d.get("/healthz")
            assert "spool pickup" in why and "1 file waits in" in why, why
            wait_until(lambda: "made no progress: the spool pickup" in d.log, 5, "the log")
            _pings(sock, 0.3)                  # a ping sent before the supervisor noticed
            assert _pings(sock, 1.0) == 0
        finally:
            os.kill(pickup, signal.SIGCONT)
        srv.wait_for(1)
        wait_until(lambda: d.get("/healthz")[0] == 200, 10, "/healthz 200 again")
        assert _pings(sock, 1.0) >= 1
    wait_until(lambda: "progress again: the spool pickup no longer" in d.log, 5, "the log")


def test_a_sender_that_finishes_nothing_while_messages_wait_makes_healthz_fail(
        tmp_path, smtp_server, daemons):
    gate = threading.Event()
    srv = smtp_server(data_gate=gate)        # holds the reply to DATA until opened
    config = _write(tmp_path, daemon_config(
        tmp_path, server_yaml("main", srv.port, max_connections=1)))
    d = daemons(config, env=STUCK)
    try:
        for n in range(3):
            drop(tmp_path / "spool", user="alice", to=[f"r{n}@example.org"], subject="s",
                 text="x")
        wait_until(lambda: "3 messages" in d.get("/healthz")[1], 10, "/healthz 503")
        code, why = d.get("/healthz")
        assert code == 503 and "sender" in why and "3 messages" in why, why
    finally:
        gate.set()
    srv.wait_for(3)
    wait_until(lambda: d.get("/healthz")[0] == 200, 10, "/healthz 200 again")


def test_the_tests_no_progress_limit_is_checked():
    from mailsync.daemon.health import STUCK_AFTER, stuck_after
    from mailsync.errors import MailsyncError

    assert stuck_after({}) == STUCK_AFTER == 30.0
    assert stuck_after({"MAILSYNC_TEST_STUCK_AFTER": "0.5"}) == 0.5
    for bad in ("soon", "0", "-1", "nan"):
        with pytest.raises(MailsyncError, match=r"MAILSYNC_TEST_STUCK_AFTER=.*above 0"):
            stuck_after({"MAILSYNC_TEST_STUCK_AFTER": bad})
