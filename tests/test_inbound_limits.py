"""Incoming limits: max_message_size (a real Dovecot, and a local Maildir), batches by
bytes, and a dead mailbox marked down once and probed on a backoff (not in a loop)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from mailsync.inbound import poller as poller_mod
from mailsync.inbound.imap import ImapSource
from mailsync.inbound.pop3 import Pop3Source
from mailsync.inbound.records import list_skipped
from tests.dovecot import (  # noqa: F401  (fixtures)
    dovecot_fixture,
    incoming_yaml,
    mailbox_fixture,
    message,
    rig_fixture,
)
from tests.test_inbound_duplicates import imap as honest_imap

CAP = "64KiB"


def _big(i: int, size: int) -> bytes:
    line = "0123456789" * 9 + "\r\n"
    return message(i, body=line * (size // len(line) + 1))


@pytest.mark.parametrize("kind", ["imap", "pop"])
def test_a_message_over_max_message_size_is_skipped_once_and_left_on_the_server(
        rig, mailbox, tmp_path, kind, caplog):
    mailbox.append(message(1), _big(2, 100_000), message(3))
    r = rig(incoming_yaml(mailbox, "support", tmp_path / "pw", kind=kind, keep=False,
                          extra=f"    max_message_size: {CAP}\n"))
    caplog.set_level(logging.INFO, "mailsync.inbound")

    first = r.poller("support").poll_once()

    assert first.ok and first.fetched == 2 and first.skipped == 1, first
    assert "1 skipped (over max_message_size)" in first.describe()
    assert [row["message_id"] for row in r.rows()] == ["<m1@test>", "<m3@test>"]
    ((_, key, reason, size),) = list_skipped(r.store, "support")
    assert reason == "too_large" and size >= 100_000
    assert r.metric("mailsync_mailbox_messages_skipped_total", server="support",
                    reason="too_large") == 1
    assert len(mailbox.uids()) == 1  # the two stored were deleted, the big one kept
    assert caplog.text.count("skipped, left on the server and not tried again") == 1
    assert f"message {key} (" in caplog.text and "larger than max_message_size" in caplog.text

    caplog.clear()
    again = r.poller("support").poll_once()  # a new poller: a restart

    assert again.ok and again.fetched == 0 and again.skipped == 0, again
    assert len(mailbox.uids()) == 1  # still not deleted: it was never stored
    assert r.metric("mailsync_mailbox_messages_skipped_total", server="support",
                    reason="too_large") == 1
    assert "skipped" not in caplog.text


@pytest.mark.parametrize("kind", ["imap", "pop"])
def test_batches_end_at_a_byte_budget_not_only_at_a_count(rig, mailbox, tmp_path, kind):
    size = 1 << 20
    mailbox.drop([_big(i, size) for i in range(1, 41)])  # 40 messages of 1 MiB
    r = rig(incoming_yaml(mailbox, "support", tmp_path / "pw", kind=kind))
    server = r.server("support")
    adapter = ImapSource if kind == "imap" else Pop3Source
    source = adapter(server, password=lambda: mailbox.password, batch_bytes=4 << 20)
    taken = source.batches
    batches: list[int] = []  # the bytes of each batch the poller commits

    def recorded(cursor: Any, known: Any) -> Iterator[Any]:
        for batch in taken(cursor, known):
            if batch.messages:
                batches.append(sum(len(m.raw) for m in batch.messages))
            yield batch

    source.batches = recorded  # type: ignore[method-assign]
    poller = r.poller("support", source=source)

    result = poller.poll_once()

    assert result.ok and result.fetched == 40, result
    assert len(batches) >= 10, batches
    assert max(batches) <= 4 * (size + 1000), batches


def test_a_maildir_file_over_the_cap_stays_in_new_and_is_recorded_once(rig, tmp_path):
    maildir = tmp_path / "drop"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.small").write_bytes(message(1))
    (maildir / "new" / "2.big").write_bytes(_big(2, 100_000))
    r = rig(f"  - name: drop\n    type: local\n    path: {maildir}\n"
            f"    max_message_size: {CAP}\n")

    first = r.poller("drop").poll_once()
    again = r.poller("drop").poll_once()

    assert (first.fetched, first.skipped, again.fetched, again.skipped) == (1, 1, 0, 0)
    assert sorted(p.name for p in (maildir / "new").iterdir()) == ["2.big"]
    assert [k for _, k, _, _ in list_skipped(r.store, "drop")] == ["2.big"]
    assert r.metric("mailsync_mailbox_messages_skipped_total", server="drop",
                    reason="too_large") == 1


def test_max_message_size_defaults_to_the_daemons(rig, tmp_path):
    r = rig("  - {name: box, type: local, path: ./box}\n")
    assert r.server("box").max_message_size == r.config.daemon.max_message_size == 25 << 20


# -- a dead mailbox ----------------------------------------------------------------------

def test_the_backoff_doubles_from_one_second_up_to_five_minutes_or_the_interval():
    assert [poller_mod.retry_delay(n, 60) for n in range(1, 12)] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert poller_mod.retry_delay(13, 3600) == 3600 and poller_mod.retry_delay(1, 0) == 1


class _Flaky:
    """A listener that accepts and closes each connection until ``up`` is set, then
    serves an honest IMAP server (3 messages); counts the connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.attempts = 0
        self.up = threading.Event()
        self._serve = honest_imap(False)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.attempts += 1
            if not self.up.is_set():
                conn.close()
                continue
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            self._serve(conn)


def test_a_dead_mailbox_is_marked_down_once_probed_on_a_backoff_and_back_up_once(
        rig, tmp_path, caplog, monkeypatch):
    from mailsync.daemon.mailboxes import Mailbox

    monkeypatch.setattr(poller_mod, "BACKOFF_FIRST", 0.1)  # 0.1, 0.2, 0.4, 0.8 s...
    flaky = _Flaky()
    (tmp_path / "pw").write_text("secret")
    r = rig(f"  - name: box\n    type: imap\n    host: 127.0.0.1\n    port: {flaky.port}\n"
            "    security: none\n    username: someone\n    password: {file: pw}\n"
            "    poll_interval: 0s\n    timeout: 5s\n")
    caplog.set_level(logging.DEBUG, "mailsync.inbound")
    poller = poller_mod.Poller(r.config, r.server("box"), r.store, r.metrics,
                               verp_key=r.verp_key, on_message=None, tokens=None)
    box = Mailbox(poller, threading.Event(), on_failure=set().add)
    try:
        time.sleep(1.3)  # attempts at 0, 0.1, 0.3, 0.7 s (1.5 s is the next)
        down = [rec for rec in caplog.records if rec.levelno >= logging.INFO
                and rec.name.startswith("mailsync.inbound")]
        attempts = flaky.attempts
        assert 3 <= attempts <= 5, attempts  # a poll_interval of 0s: not a loop
        assert len(down) == 1 and down[0].levelno == logging.WARNING, caplog.text
        assert "marked down" in down[0].getMessage()
        assert r.metric("mailsync_server_up", server="box", direction="incoming") == 0

        flaky.up.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(r.rows()) < 3:
            time.sleep(0.05)
        assert len(r.rows()) == 3
    finally:
        box.retire()
        box.thread.join(10)
        flaky.sock.close()
    ups = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.INFO
           and "back up" in rec.getMessage()]
    assert len(ups) == 1 and ups[0].startswith("box: the mailbox is back up"), caplog.text
    warnings = [rec for rec in caplog.records if rec.levelno >= logging.WARNING
                and rec.name.startswith("mailsync.inbound")]
    assert len(warnings) == 1, caplog.text
