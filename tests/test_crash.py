"""Crash safety: SIGKILL `mailsync run --once` at a random moment, run it again.

Every spooled message must reach the SMTP server at least once, none may be lost, and
the duplicates are bounded by the messages in flight on the SMTP connections at the
kill (at most max_connections), because the sent status is committed right after each
acceptance and ingestion is exactly-once.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time
from email import message_from_bytes

import pytest

from mailsync.outbound.spool import drop_eml, ensure_dirs
from tests.outbound_helpers import history, server_yaml, write_config

N = 2000
MAX_CONNECTIONS = 4


def _spool(spool, n):
    ensure_dirs(spool)
    for i in range(n):
        drop_eml(spool, (f"X-Mailsync-User: alice\r\nTo: r{i}@example.org\r\n"
                         f"Message-ID: <crash-{i}@test>\r\nSubject: crash {i}\r\n\r\n"
                         f"body {i}\r\n").encode())


def _run(cfg, pipe=True):
    out = subprocess.PIPE if pipe else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "mailsync", "run", "--once", "-c", str(cfg)],
                            stdout=out, stderr=out)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["while_ingesting", "while_sending"])
def test_sigkill_at_a_random_moment_loses_nothing_and_bounds_duplicates(
        tmp_path, smtp_server, moment):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port, max_connections=MAX_CONNECTIONS))
    _spool(tmp_path / "spool", N)

    proc = _run(cfg, pipe=False)
    if moment == "while_ingesting":
        time.sleep(rng.uniform(0.15, 0.6))  # start-up is ~0.15 s; ingestion follows
    else:
        threshold = rng.randrange(1, N - 100)
        deadline = time.monotonic() + 60
        while len(srv.messages) < threshold and time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    received_at_kill = len(srv.messages)
    assert proc.returncode == -signal.SIGKILL
    assert received_at_kill < N, "the kill came after the run had finished"

    again = _run(cfg)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()[-2000:]

    ids = collections.Counter(message_from_bytes(m.data)["Message-ID"] for m in srv.messages)
    missing = {f"<crash-{i}@test>" for i in range(N)} - set(ids)
    duplicates = sum(c - 1 for c in ids.values())
    context = f"seed={seed} moment={moment} received_at_kill={received_at_kill}"
    assert not missing, f"lost {len(missing)} messages ({context})"
    assert duplicates <= MAX_CONNECTIONS, f"{duplicates} duplicates ({context})"
    rows = history(cfg, "--limit", str(N * 2))
    assert len(rows) == N, context
    assert {r["status"] for r in rows} == {"sent"}, context
    assert not list((tmp_path / "spool" / "new").iterdir())
