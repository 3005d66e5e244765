"""IMAP and POP3 commands are bounded by deadlines, not by per-read timeouts.

A server dripping its answer one byte every 0.2 s makes a poll with ``timeout: 1s`` fail
as a timeout within about a second, naming the command; a message that streams in for
longer than ``timeout`` at a healthy rate is still fetched, and IMAP IDLE still waits as
long as it is asked to.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from mailsync import values
from tests import slowpeers
from tests.dovecot import (  # noqa: F401  (fixtures)
    dovecot_fixture,
    incoming_yaml,
    mailbox_fixture,
    message,
    rig_fixture,
)


def _yaml(kind: str, port: int, tmp_path: Path) -> str:
    (tmp_path / "pw").write_text("secret")
    return (f"  - name: slow\n    type: {kind}\n    host: {slowpeers.HOST}\n    port: {port}\n"
            f"    security: none\n    username: u\n    password: {{file: {tmp_path / 'pw'}}}\n"
            "    timeout: 1s\n")


@pytest.mark.parametrize(("kind", "step", "command"), [
    ("imap", "greeting", "greeting"),
    ("imap", "login", "LOGIN"),
    ("imap", "select", "EXAMINE"),
    ("pop", "greeting", "greeting"),
    ("pop", "pass", "PASS"),
    ("pop", "uidl", "UIDL"),
])
def test_a_dripped_answer_fails_the_poll_as_a_timeout_within_the_deadline(
        rig, tmp_path, kind, step, command):
    handler = slowpeers.imap(step) if kind == "imap" else slowpeers.pop3(step)
    with slowpeers.serve(handler) as port:
        poller = rig(_yaml(kind, port, tmp_path)).poller("slow")
        started = time.monotonic()
        result = poller.poll_once()
        took = time.monotonic() - started
    assert not result.ok and result.kind == "timeout", result
    assert result.error == f"slow (127.0.0.1:{port}): {command}: no complete reply within 1s"
    assert 0.9 < took < 2.5, f"the poll took {took:.1f}s"


def test_a_message_streaming_longer_than_the_timeout_is_still_fetched(rig, tmp_path):
    raw = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 600  # 600 KB in ~3 s
    with slowpeers.serve(slowpeers.pop3("none", message=raw, rate=200_000)) as port:
        r = rig(_yaml("pop", port, tmp_path))
        started = time.monotonic()
        result = r.poller("slow").poll_once()
        took = time.monotonic() - started
    assert result.ok and result.fetched == 1, result
    assert r.rows()[0]["raw"] == raw
    assert took > 2.0  # longer than the 1 s timeout: the deadline grows with what comes


def test_idle_waits_longer_than_the_timeout_and_wakes_up_for_mail(rig, mailbox, tmp_path):
    r = rig(incoming_yaml(mailbox, "support", tmp_path / "pw"))
    server = values.replace(r.server("support"), timeout=timedelta(seconds=1))
    poller = r.poller("support", server=server)
    assert poller.poll_once().ok
    assert poller.supports_idle

    started = time.monotonic()
    assert poller.wait_for_news(2.5) is False  # nothing came: waited it out, no error
    assert 2.4 < time.monotonic() - started < 4

    threading.Timer(1.5, mailbox.append, (message(1),)).start()
    assert poller.wait_for_news(10) is True
    assert poller.poll_once().fetched == 1
