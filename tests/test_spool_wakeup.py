"""How the daemon's spool thread is woken: the Doorbell (a socket pair any thread rings,
and an inotify watch on ``spool/new/`` the kernel rings), and what that costs the daemon
process per spool file (nothing: the kernel queues the events, no Python runs per file).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from mailsync.daemon.wakeup import Doorbell
from mailsync.outbound.spool import drop_eml, ensure_dirs
from tests.daemon_helpers import (
    daemon_config,
    daemons_fixture,  # noqa: F401 - the daemons fixture
    wait_until,
)
from tests.outbound_helpers import server_yaml
from tests.smtpserver import smtp_server_fixture  # noqa: F401


@pytest.fixture(name="bell")
def bell_fixture():
    bell = Doorbell()
    yield bell
    bell.close()


def _rings_within(bell: Doorbell, seconds: float) -> bool:
    return bell.wait(seconds)


def test_a_file_renamed_or_written_into_the_directory_rings_and_a_removal_does_not(
        tmp_path, bell):
    new, tmp = tmp_path / "new", tmp_path / "tmp"
    new.mkdir()
    tmp.mkdir()
    bell.watch(new)
    assert not bell.is_set()
    (tmp / "a.eml").write_bytes(b"x")
    os.rename(tmp / "a.eml", new / "a.eml")  # how writers spool (tmp/, then rename)
    assert _rings_within(bell, 1.0)
    bell.clear()
    assert not bell.is_set()
    (new / "b.eml").write_bytes(b"y")  # written in place: created, then closed
    assert _rings_within(bell, 1.0)
    bell.clear()
    # The pickup removing (or rejecting) what it took does not wake it again.
    (new / "a.eml").unlink()
    os.rename(new / "b.eml", tmp / "b.eml")
    assert not bell.wait(0.2)


def test_a_thread_already_waiting_is_woken_by_a_watch_made_afterwards(tmp_path, bell):
    # The spool thread starts waiting before the daemon watches new/ (and again after a
    # reload moves the spool): the first arrival must not wait for the 5 s rescan.
    woke: list[float] = []
    waiter = threading.Thread(target=lambda: woke.append(bell.wait(10.0) and time.monotonic()))
    waiter.start()
    time.sleep(0.1)
    bell.watch(tmp_path)
    dropped = time.monotonic()
    (tmp_path / "a.eml").write_bytes(b"x")
    waiter.join(10.0)
    assert woke and woke[0] and woke[0] - dropped < 1.0


def test_set_rings_from_another_thread_and_clear_forgets_every_ring(tmp_path, bell):
    bell.watch(tmp_path)
    threading.Thread(target=bell.set).start()
    assert _rings_within(bell, 1.0)
    for i in range(3000):  # more events than one read takes, and rings of both kinds
        (tmp_path / f"{i}.eml").write_bytes(b"")
        bell.set()
    bell.clear()
    assert not bell.is_set() and not bell.wait(0.05)


def test_watch_moves_to_the_new_directory(tmp_path, bell):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    bell.watch(old)
    bell.watch(new)
    bell.clear()  # the old watch's removal rings once
    (old / "a.eml").write_bytes(b"x")
    assert not bell.wait(0.2)
    (new / "a.eml").write_bytes(b"x")
    assert _rings_within(bell, 1.0)


def test_a_directory_that_cannot_be_watched_is_named(tmp_path, bell):
    with pytest.raises(FileNotFoundError, match=r"cannot watch .*missing"):
        bell.watch(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=r"cannot watch .*file"):
        bell.watch(tmp_path / "file")


def test_after_close_a_ring_is_harmless(tmp_path):
    bell = Doorbell()
    bell.watch(tmp_path)
    bell.close()
    bell.set()  # a poller's commit may still ring it during the shutdown
    bell.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid``'s own threads (not of its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


N = 1000


def test_the_daemon_process_spends_no_cpu_per_arriving_spool_file(tmp_path, smtp_server,
                                                                   daemons):
    # carol may send through no account: the pickup child rejects every file, so the
    # daemon process itself has nothing to do per file but to be woken. Watching new/
    # through watchdog cost it ~0.1 ms of CPU (and of the senders' GIL) per file.
    server = smtp_server()
    etc = tmp_path / "etc"  # the config's directory is watched: the log goes elsewhere
    etc.mkdir()
    config = etc / "config.yaml"
    config.write_text(daemon_config(etc, server_yaml("main", server.port)))
    d = daemons(config, log_path=tmp_path / "daemon.log")
    spool = etc / "spool"
    ensure_dirs(spool)
    eml = b"X-Mailsync-User: carol\r\nTo: x@example.org\r\nSubject: s\r\n\r\nbody\r\n"
    time.sleep(0.5)  # the start's own work done
    before = _cpu_seconds(d.proc.pid)
    started = time.monotonic()
    for _ in range(N):
        drop_eml(spool, eml)
    rejected = spool / "rejected"
    wait_until(lambda: sum(1 for p in rejected.iterdir() if p.suffix == ".eml") == N,
               timeout=60, what=f"{N} files rejected")
    time.sleep(0.7)  # events still being handled (watchdog held moves out for 0.5 s)
    spent = _cpu_seconds(d.proc.pid) - before
    # What is left: the supervisor's ticks and the spool thread's passes, not per file.
    ticks = time.monotonic() - started
    assert spent < 0.03 + 0.02 * ticks, f"{spent * 1000:.0f} ms for {N} files"
    assert not list((spool / "new").iterdir())
    assert d.stop() == 0
