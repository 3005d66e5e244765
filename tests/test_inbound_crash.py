"""Crash safety: SIGKILL `mailsync inbox poll` while it fetches 2,000 messages, run it again.

Every message must be stored exactly once (checked by Message-ID in the store), and the
deliver_to Maildir must hold each exactly once, wherever the kill landed: while fetching,
while writing the Maildir files, between their rename and the commit, or while the
server deletes what was committed.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from email.parser import BytesHeaderParser

import pytest

from tests.dovecot import (  # noqa: F401  (fixtures)
    dovecot_fixture,
    incoming_yaml,
    mailbox_fixture,
    message,
    write_config,
)
from tests.sqlitedb import sqlite_file

N = 2000


def _poll(cfg, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "mailsync", "inbox", "poll", "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)


def _stored(db) -> int:
    try:
        with sqlite_file(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM fetched").fetchone()[0])
    except sqlite3.Error:
        return 0  # not created or not migrated yet


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "keep"), [("imap", True), ("pop", False)])
def test_sigkill_while_fetching_loses_nothing_and_stores_nothing_twice(mailbox, tmp_path,
                                                                       kind, keep):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    mailbox.drop([message(i) for i in range(N)])
    copies = tmp_path / "copies"
    cfg = write_config(tmp_path, incoming_yaml(
        mailbox, "support", tmp_path / "pw", kind=kind, keep=keep,
        extra=f"    deliver_to: {{maildir: {copies}}}\n"))
    db = tmp_path / "state" / "mailsync.db"

    proc = _poll(cfg)
    threshold = rng.randrange(0, N - 1100)  # batches of 500: two or more are still to come
    deadline = time.monotonic() + 60
    while _stored(db) <= threshold and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.003)
    # Land inside the next batch: a batch of 500 takes ~70 ms on a fast machine (IMAP
    # with deliver_to at ~7,000/s), so a longer wait could let the poll finish first.
    time.sleep(rng.uniform(0, 0.04))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = _stored(db)
    context = f"seed={seed} kind={kind} stored_at_kill={at_kill}"
    assert proc.returncode == -signal.SIGKILL, context
    assert at_kill < N, f"the kill came after the poll had finished ({context})"

    again = subprocess.run([sys.executable, "-m", "mailsync", "inbox", "poll", "-c", str(cfg)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]

    with sqlite_file(db) as conn:
        ids = collections.Counter(r[0] for r in conn.execute("SELECT message_id FROM fetched"))
    expected = {f"<m{i}@test>" for i in range(N)}
    assert set(ids) == expected, f"lost {len(expected - set(ids))} ({context})"
    assert max(ids.values()) == 1, f"stored twice: {sum(ids.values()) - N} ({context})"

    parser = BytesHeaderParser()
    files = [p for sub in ("new", "cur") for p in (copies / sub).iterdir()]
    in_maildir = collections.Counter(parser.parsebytes(p.read_bytes())["Message-ID"]
                                     for p in files)
    assert set(in_maildir) == expected and max(in_maildir.values()) == 1, context
    assert not keep or len(mailbox.uids()) == N
    assert keep or mailbox.uids() == []
