"""`mailsync history follow`: each event of the send history as it is recorded.

The Follower on both store backends (a real SQLite file and a real PostgreSQL, where a
transaction that commits after a later one must not have its event missed), and the
command as a process: a message sent by `run --once` to a real SMTP server shows up, as
text and as JSON lines, and Ctrl-C ends it quietly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mailsync.config.secrets import Secret
from mailsync.config.tree import StoreBackend
from mailsync.outbound.events import event
from mailsync.outbound.follow import Filter, Follower
from mailsync.outbound.queue import NewMessage, OutboundStore
from mailsync.outbound.spool import drop
from mailsync.store import Store
from tests.conftest import need
from tests.outbound_helpers import run_once, server_yaml, write_config


def _new(source: str, account: str = "sales") -> NewMessage:
    return NewMessage(source, "sha-" + source, "alice", account, f"{account}@example.com",
                      f"<{source}@example.com>", f"subject {source}",
                      b"Subject: x\r\n\r\nbody\r\n", ("ann@example.org",), None)


@pytest.fixture
def store(either_store):
    """Each backend in turn (tests/postgres.py)."""
    return either_store


def test_it_shows_what_is_recorded_after_it_starts_oldest_first_and_filtered(store):
    queue = OutboundStore(store)
    old = queue.ingest([_new("old.json")], 100.0).queued["old.json"]
    follower = Follower(queue, Filter())
    support = Follower(queue, Filter(account="support", status=("queued",)))
    since = Follower(queue, Filter(), since=100.0)
    assert follower.poll() == []  # what was there before it started is not shown
    done = queue.ingest([_new("a.json"), _new("b.json", account="support")], 200.0)
    with store.transaction() as conn:
        event(conn, done.queued["a.json"], 201.0, "sent", "250 ok")
    shown = follower.poll()
    assert [(e["message"], e["status"]) for e in shown] == [
        (done.queued["a.json"], "queued"), (done.queued["b.json"], "queued"),
        (done.queued["a.json"], "sent")]
    assert shown[0]["to"] == "ann@example.org" and shown[0]["account"] == "sales"
    assert shown[2]["at"] == "1970-01-01T00:03:21+00:00" and shown[2]["detail"] == "250 ok"
    assert follower.poll() == []  # each once
    assert [e["message"] for e in support.poll()] == [done.queued["b.json"]]
    assert [e["message"] for e in since.poll()][0] == old  # --since: the earlier ones too


def test_an_event_committed_after_a_later_one_is_shown_late_not_missed(pg_dsn, tmp_path):
    """PostgreSQL gives ids when rows are written: an open transaction's event has an id
    below a later transaction's that commits first."""
    store = Store.open(tmp_path / "state",
                       backend=StoreBackend("postgresql", Secret("plain", pg_dsn)))
    try:
        queue = OutboundStore(store)
        mid = queue.ingest([_new("a.json")], 100.0).queued["a.json"]
        follower = Follower(queue, Filter())
        written, release = threading.Event(), threading.Event()

        def slow() -> None:  # takes its id first, commits last
            with store.transaction() as conn:
                event(conn, mid, 101.0, "deferred", "the slow one")
                written.set()
                release.wait(10)

        writer = threading.Thread(target=slow)
        writer.start()
        assert written.wait(10)
        with store.transaction() as conn:
            event(conn, mid, 102.0, "sent", "the quick one")
        assert [e["detail"] for e in follower.poll()] == ["the quick one"]
        release.set()
        writer.join(10)
        assert [e["detail"] for e in follower.poll()] == ["the slow one"]
        assert follower.poll() == [] and follower.gaps == {}
    finally:
        store.close()


def _follow(cfg: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen([*prefix, sys.executable, "-m", "mailsync", "history", "follow",
                             "-c", str(cfg), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _lines(proc: subprocess.Popen[str], count: int, timeout: float = 20.0) -> list[str]:
    """The first ``count`` lines the process writes (read on a thread: a pipe has no
    timeout of its own)."""
    got: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            got.append(line.rstrip("\n"))
            if len(got) == count:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout), got
    return got


def test_the_command_prints_each_event_as_it_happens_and_stops_on_ctrl_c(
        tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    run_once(cfg)  # the store made, nothing in it
    text, as_json = _follow(cfg), _follow(cfg, "--format", "json", "--status", "sent")
    try:
        time.sleep(1.5)  # both started (and read where the history ends)
        drop(tmp_path / "spool", user="alice", to=["Ann <ann@example.org>"],
             subject="Quote 42", text="Hello")
        run_once(cfg)
        queued, sent = _lines(text, 2)
        assert "message 1  queued" in queued and "[sales alice]" in queued
        assert "message 1  sent" in sent and "ann@example.org  main  250" in sent
        assert sent.endswith("Quote 42")
        (only,) = _lines(as_json, 1)
        doc = json.loads(only)
        assert (doc["message"], doc["status"], doc["server"], doc["code"]) == (
            1, "sent", "main", 250)
    finally:
        for proc in (text, as_json):
            proc.send_signal(signal.SIGINT)
    for proc in (text, as_json):
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and "Traceback" not in err, err


# Root without CAP_DAC_OVERRIDE: file modes then bind it like any user.
CAPS = "-dac_override,-dac_read_search"


def test_a_reader_who_may_only_read_a_stopped_store_sees_what_the_daemon_sends_later(
        tmp_path, smtp_server):
    """A state_dir this user may only read and no daemon running (no -wal or -shm: SQLite
    reads the file as it is, immutable); the daemon then starts and sends. The follower
    must see its events, not the file as it was when it started."""
    need(os.geteuid() == 0 and shutil.which("setpriv") is not None,
         "needs root and setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    run_once(cfg)  # the store made, nothing in it
    state = tmp_path / "state"
    assert not list(state.glob("mailsync.db-*"))  # the daemon stopped: no -wal, no -shm
    (state / "mailsync.db").chmod(0o444)
    state.chmod(0o555)
    follower = _follow(cfg, "--format", "json", prefix=(
        "setpriv", "--bounding-set", CAPS, "--inh-caps", CAPS, "--"))
    try:
        time.sleep(1.5)  # started, and read where the history ends
        assert follower.poll() is None, follower.communicate()[1]
        assert sorted(p.name for p in state.iterdir() if p.name.startswith("mailsync.db")) \
            == ["mailsync.db", "mailsync.db.writer"]  # opening it again made nothing
        drop(tmp_path / "spool", user="alice", to=["ann@example.org"], subject="later",
             text="Hello")
        run_once(cfg)  # the daemon (root, whom the modes do not bind) sends it
        queued, sent = (json.loads(line) for line in _lines(follower, 2))
        assert (queued["status"], sent["status"], sent["subject"]) == (
            "queued", "sent", "later")
        assert srv.messages  # it was sent indeed
    finally:
        follower.send_signal(signal.SIGINT)
        state.chmod(0o750)
    _, err = follower.communicate(timeout=10)
    assert follower.returncode == 0 and "Traceback" not in err, err
