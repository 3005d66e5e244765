"""A full disk: the daemon says so, loses nothing, and recovers by itself.

A real 20 MiB ext4 filesystem (a loop-mounted image, so this needs root) holds the state
and the spool; `dd` fills it while mail flows through a real daemon to aiosmtpd.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsync.outbound.spool import drop
from tests.conftest import need
from tests.daemon_helpers import DaemonProcess, free_port, wait_until
from tests.outbound_helpers import DEFAULT_ACCOUNTS, server_yaml

pytestmark = pytest.mark.slow


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 20 MiB journaled ext4 filesystem, mounted; no blocks reserved for root."""
    need(os.geteuid() == 0, "mounting a loop filesystem needs root")
    need(shutil.which("mkfs.ext4") is not None, "mkfs.ext4 (e2fsprogs) is not installed")
    img, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", "20M", str(img)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(img)], check=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)],
                             capture_output=True, text=True)
    need(mounted.returncode == 0, f"cannot loop-mount: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    """Write zeros until the filesystem refuses (big blocks first, then the crumbs)."""
    for bs in ("1M", "4k"):
        subprocess.run(["dd", "if=/dev/zero", f"of={path}.{bs}", f"bs={bs}", "status=none"],
                       capture_output=True, check=False)


def _config(tmp_path: Path, fs: Path, smtp_port: int) -> Path:
    text = (f"version: 1\ndaemon:\n  state_dir: {fs}/state\n  spool_dir: {fs}/spool\n"
            f"  metrics_listen: 127.0.0.1:{free_port()}\n  max_message_size: 1MiB\n"
            f"  retry: {{first: 1s, max: 2s, lifetime: 5d}}\n"
            f"alias_domain: {{domain: example.com, bounce: bounce}}\n"
            f"users: [alice, bob, carol]\noutgoing_servers:\n"
            f"{server_yaml('main', smtp_port)}accounts:\n{DEFAULT_ACCOUNTS}")
    cfg = tmp_path / "config.yaml"   # the config and the log stay off the small filesystem
    cfg.write_text(text)
    return cfg


def _staged(spool: Path, n: int, start: int) -> list[Path]:
    """n spool files written in tmp/ now, to be renamed into new/ later."""
    out = []
    for i in range(start, start + n):
        doc = {"user": "alice", "to": [f"r{i}@example.org"], "subject": f"m{i}",
               "text": "x" * 40_000}
        path = spool / "tmp" / f"staged-{i}.json"
        path.write_text(json.dumps(doc))
        out.append(path)
    return out


def _wal_size(fs: Path) -> int:
    with contextlib.suppress(FileNotFoundError):
        return (fs / "state" / "mailsync.db-wal").stat().st_size
    return 0


def test_disk_full_is_unhealthy_loses_nothing_and_recovers(tmp_path, small_fs, smtp_server):
    gate = threading.Event()
    gate.set()
    srv = smtp_server(data_gate=gate)
    daemon = DaemonProcess(_config(tmp_path, small_fs, srv.port))
    try:
        daemon.wait_healthy()
        spool = small_fs / "spool"
        for i in range(20):
            drop(spool, user="alice", to=[f"warm{i}@example.org"], subject=f"w{i}",
                 text="y" * 40_000)
        srv.wait_for(20)
        staged = _staged(spool, 30, 0)
        # A quiet daemon truncates its WAL: nothing of it is left to reuse on a full disk.
        wait_until(lambda: _wal_size(small_fs) == 0, 10, "the WAL truncated after the burst")

        # Mail in flight when the disk fills: the server has it, the store cannot say so.
        gate.clear()
        for i in range(4):
            drop(spool, user="alice", to=[f"flight{i}@example.org"], subject=f"f{i}", text="z")
        wait_until(lambda: srv.commands.count("DATA") >= 21, 10, "a message in DATA")
        wait_until(lambda: _wal_size(small_fs) == 0, 10, "the WAL truncated while in DATA")
        _fill(small_fs / "fill")
        gate.set()
        for path in staged:                     # accepted while the disk is full
            os.rename(path, spool / "new" / path.name)

        filled = time.monotonic()
        wait_until(lambda: daemon.get("/healthz")[0] == 503, 5, "/healthz 503 on a full disk")
        assert time.monotonic() - filled <= 5
        code, why = daemon.get("/healthz")
        assert code == 503 and "cannot commit" in why, why
        assert (daemon.metric("mailsync_store_errors_total", kind="full") or 0) >= 1
        assert daemon.metric("mailsync_store_commit_failing") == 1
        time.sleep(1.0)
        # Refused, not rejected or lost: every accepted file is still waiting in new/.
        assert sorted(p.name for p in (spool / "new").iterdir()) == \
            sorted(p.name for p in staged)
        assert not list((spool / "rejected").iterdir())

        for leftover in small_fs.glob("fill.*"):
            leftover.unlink()
        freed = time.monotonic()
        srv.wait_for(54, timeout=10)
        wait_until(lambda: daemon.get("/healthz")[0] == 200, 10, "/healthz 200 again")
        wait_until(lambda: not list((spool / "new").iterdir()), 10, "new/ empty")
        assert time.monotonic() - freed <= 10
        # Each message exactly once at the server: the in-flight outcomes were kept.
        subjects = [m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for m in srv.messages]
        assert len(subjects) == len(set(subjects)) == 54
        assert daemon.stop() == 0
    finally:
        gate.set()
        if daemon.proc.poll() is None:
            daemon.kill()
    for leftover in small_fs.glob("fill.*"):
        leftover.unlink()

    # A restart on the same store works, and finds every message sent.
    again = DaemonProcess(daemon.config)
    try:
        again.wait_healthy()
        status = subprocess.run(
            [sys.executable, "-m", "mailsync", "status", "-c", str(daemon.config)],
            capture_output=True, text=True, timeout=30)
        assert "0 waiting, 0 held, 54 sent, 0 failed" in status.stdout, status
        assert again.metric("mailsync_queue_messages", status="sending") == 0
    finally:
        assert again.stop() == 0
    assert "Traceback" not in daemon.log, daemon.log[-3000:]
