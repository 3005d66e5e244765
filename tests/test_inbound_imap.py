"""IMAP against a real Dovecot: fetch, keep/delete, batches, security modes, IDLE,
UIDVALIDITY changes."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from mailsync import values
from mailsync.config.model import ActivityRule
from mailsync.errors import ConnectError
from mailsync.inbound.imap import ImapSource
from mailsync.inbound.onepass import poll_all_once
from mailsync.inbound.poller import make_source
from mailsync.inbound.records import uidvalidity_changes
from tests.dovecot import (  # noqa: F401  (fixtures)
    dovecot_fixture,
    free_port,
    incoming_yaml,
    mailbox_fixture,
    message,
    rig_fixture,
)


def _rig(rig, mailbox, tmp_path, **kwargs):
    return rig(incoming_yaml(mailbox, "support", tmp_path / "pw", **kwargs))


def test_first_poll_stores_each_message_with_its_headers_and_counts_it(rig, mailbox,
                                                                        tmp_path):
    encoded = message(2, subject="=?utf-8?q?R=C3=A9sum=C3=A9_attached?=")
    mailbox.append(message(1), encoded, message(3))
    r = _rig(rig, mailbox, tmp_path)
    poller = r.poller("support", clock=lambda: 1_700_000_000.0)

    result = poller.poll_once()

    assert result.ok and result.fetched == 3, result
    rows = r.rows()
    assert [row["message_id"] for row in rows] == ["<m1@test>", "<m2@test>", "<m3@test>"]
    assert rows[1]["subject"] == "Résumé attached"
    assert rows[0]["from_address"] == "Customer 1 <c1@example.org>"
    assert rows[0]["to_address"] == "support@example.com"
    assert rows[0]["date"] == "Tue, 25 Nov 2025 10:00:00 +0000"
    assert rows[0]["sent_at"] == 1764064800.0
    assert rows[0]["raw"] == message(1) and rows[0]["size"] == len(message(1))
    state = r.store.conn.execute("SELECT uidvalidity, last_uid FROM fetch_state").fetchone()
    assert state == (mailbox.uidvalidity(), 3)
    assert len(mailbox.uids()) == 3  # kept on the server
    assert r.metric("mailsync_mailbox_polls_total", server="support", result="success") == 1
    assert r.metric("mailsync_mailbox_messages_fetched_total", server="support") == 3
    assert r.metric("mailsync_mailbox_last_poll_success_timestamp_seconds",
                    server="support") == 1_700_000_000.0
    assert r.metric("mailsync_server_up", server="support", direction="incoming") == 1


def test_later_polls_fetch_only_what_is_new(rig, mailbox, tmp_path):
    mailbox.append(message(1), message(2))
    r = _rig(rig, mailbox, tmp_path)
    poller = r.poller("support")
    assert poller.poll_once().fetched == 2
    assert poller.poll_once().fetched == 0
    mailbox.append(message(3))
    assert poller.poll_once().fetched == 1
    # A fresh poller (a restart) starts from the stored state, not from scratch.
    assert r.poller("support").poll_once().fetched == 0
    assert [row["message_id"] for row in r.rows()] == ["<m1@test>", "<m2@test>", "<m3@test>"]
    assert r.metric("mailsync_mailbox_polls_total", server="support", result="success") == 4


def test_keep_on_server_false_deletes_and_expunges_after_storing(rig, mailbox, tmp_path):
    mailbox.append(message(1), message(2), message(3))
    r = _rig(rig, mailbox, tmp_path, keep=False)

    result = r.poller("support").poll_once()

    assert result.ok and result.fetched == 3
    assert mailbox.uids() == []
    assert len(r.rows()) == 3


def test_a_deletion_missed_by_a_crash_is_done_by_the_next_poll(rig, mailbox, tmp_path,
                                                               monkeypatch):
    mailbox.append(message(1), message(2))
    r = _rig(rig, mailbox, tmp_path, keep=False)

    def crash(self, batch):
        if batch.done:
            raise ConnectError("support: the server closed the connection", "closed")

    with monkeypatch.context() as m:
        m.setattr(ImapSource, "acknowledge", crash)
        first = r.poller("support").poll_once()
    assert not first.ok and first.fetched == 2  # committed, then "crashed"
    assert len(mailbox.uids()) == 2

    second = r.poller("support").poll_once()

    assert second.ok and second.fetched == 0
    assert mailbox.uids() == []
    assert len(r.rows()) == 2


def test_batches_commit_one_by_one_and_call_on_message_in_the_transaction(rig, mailbox,
                                                                          tmp_path):
    mailbox.append(*(message(i) for i in range(7)))
    r = _rig(rig, mailbox, tmp_path)
    server = values.replace(r.server("support"), activity=ActivityRule("Reply", "alice"))
    seen = []

    def on_message(conn, srv, fetched_id, subject, now):
        row = conn.execute("SELECT subject FROM fetched WHERE id = ?", (fetched_id,)).fetchone()
        seen.append((conn.in_transaction, srv.name, row[0], subject))

    source = ImapSource(server, password=lambda: mailbox.password, batch=3)
    poller = r.poller("support", server=server, source=source, on_message=on_message)
    commits = []
    r.store.conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)

    result = poller.poll_once()
    r.store.conn.set_trace_callback(None)

    assert result.fetched == 7
    assert len(commits) == 1 + 3  # the first cursor, then batches of 3, 3 and 1
    assert seen == [(True, "support", f"message {i}", f"message {i}") for i in range(7)]


def test_on_message_is_not_called_for_a_server_without_activity(rig, mailbox, tmp_path):
    mailbox.append(message(1))
    r = _rig(rig, mailbox, tmp_path)
    calls = []
    r.poller("support", on_message=lambda *a: calls.append(a)).poll_once()
    assert calls == [] and len(r.rows()) == 1


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_modes_verify_the_certificate_through_ssl_cert_file(rig, mailbox, tmp_path,
                                                                monkeypatch, security):
    monkeypatch.setenv("SSL_CERT_FILE", str(mailbox.dovecot.ca_file))
    mailbox.append(message(1))
    r = _rig(rig, mailbox, tmp_path, security=security)
    result = r.poller("support").poll_once()
    assert result.ok and result.fetched == 1, result.error


def test_idle_wakes_up_when_mail_arrives_and_the_poll_stores_it(rig, mailbox, tmp_path):
    r = _rig(rig, mailbox, tmp_path)
    poller = r.poller("support")
    poller.poll_once()
    assert poller.supports_idle
    arrived = []

    def deliver():
        time.sleep(0.3)
        mailbox.append(message(1))
        arrived.append(time.monotonic())

    thread = threading.Thread(target=deliver)
    thread.start()
    news = poller.wait_for_news(10)
    result = poller.poll_once()
    stored = time.monotonic()
    thread.join()

    assert news is True and result.fetched == 1
    # Dovecot itself waits 500 ms after a change before it notifies IDLE clients.
    assert stored - arrived[0] < 1.5


def test_idle_times_out_with_nothing_new_and_is_renewed(rig, mailbox, tmp_path):
    r = _rig(rig, mailbox, tmp_path)
    server = r.server("support")
    source = ImapSource(server, password=lambda: mailbox.password, idle_renew=0.3)
    idles = []
    poller = r.poller("support", source=source)
    poller.poll_once()
    real_idle = source._client.idle
    source._client.idle = lambda: (idles.append(time.monotonic()), real_idle())[1]

    started = time.monotonic()
    assert poller.wait_for_news(1.0) is False
    assert 0.9 < time.monotonic() - started < 3
    assert len(idles) >= 3  # issued, then renewed every 0.3 s

    threading.Timer(0.4, mailbox.append, (message(1),)).start()
    assert poller.wait_for_news(10) is True
    assert poller.poll_once().fetched == 1


def test_wait_for_news_returns_at_once_for_mail_that_came_after_the_poll(rig, mailbox,
                                                                         tmp_path):
    r = _rig(rig, mailbox, tmp_path)
    mailbox.append(message(1))
    poller = r.poller("support")
    poller.poll_once()
    idles = []
    client = poller.source._client
    real_idle = client.idle
    client.idle = lambda: (idles.append(1), real_idle())[1]
    mailbox.append(message(2))
    assert poller.wait_for_news(10) is True
    assert idles == []  # seen before waiting in IDLE (Dovecot would notify 0.5 s later)
    assert poller.poll_once().fetched == 1


def test_wait_for_news_stops_when_asked(rig, mailbox, tmp_path):
    r = _rig(rig, mailbox, tmp_path)
    poller = r.poller("support")
    poller.poll_once()
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert poller.wait_for_news(30, stop) is False
    assert time.monotonic() - started < 2


def test_a_uidvalidity_change_does_not_deliver_the_folder_again(rig, mailbox, tmp_path,
                                                                caplog):
    mailbox.create("Support")
    mailbox.append(message(1), message(2), message(3), folder="Support")
    r = _rig(rig, mailbox, tmp_path, folder="Support")
    poller = r.poller("support")  # one session throughout, as a daemon's poller keeps
    assert poller.poll_once().fetched == 3
    before = mailbox.uidvalidity("Support")

    mailbox.recreate("Support")  # new UIDVALIDITY, UIDs from 1 again
    mailbox.append(message(1), message(2), message(4), message(3), folder="Support")
    assert mailbox.uidvalidity("Support") != before
    logger = logging.getLogger("mailsync.inbound")  # `mailsync` may not propagate (logs.setup)
    logger.addHandler(caplog.handler)
    try:
        result = poller.poll_once()
    finally:
        logger.removeHandler(caplog.handler)

    assert result.ok and result.uidvalidity_changed
    assert (result.fetched, result.recognised) == (1, 3)
    assert sorted(row["message_id"] for row in r.rows()) == [
        "<m1@test>", "<m2@test>", "<m3@test>", "<m4@test>"]
    assert uidvalidity_changes(r.store, "support") == 1
    assert any("support (127.0.0.1:" in rec.getMessage() and "UIDVALIDITY changed"
               in rec.getMessage() for rec in caplog.records)
    assert poller.poll_once().fetched == 0
    assert r.poller("support").poll_once().fetched == 0  # nor after a restart


def test_make_source_picks_the_adapter_by_type(rig, mailbox, tmp_path):
    r = _rig(rig, mailbox, tmp_path)
    assert isinstance(make_source(r.server("support")), ImapSource)


def test_wait_for_news_after_a_connection_failure_sleeps_then_asks_for_a_poll(rig, mailbox,
                                                                              tmp_path):
    r = _rig(rig, mailbox, tmp_path)
    server = values.replace(r.server("support"), port=free_port())
    poller = r.poller("support", server=server)
    started = time.monotonic()
    assert poller.wait_for_news(0.3) is True  # so that poll_once reports the failure
    assert 0.3 <= time.monotonic() - started < 2
    result = poller.poll_once()
    assert not result.ok and result.kind == "refused"
    assert r.metric("mailsync_server_up", server="support", direction="incoming") == 0


def test_poll_all_once_polls_every_server_and_passes_on_message(rig, mailbox, tmp_path):
    mailbox.append(message(1))
    for sub in ("new", "cur", "tmp"):
        (tmp_path / "drop" / sub).mkdir(parents=True)
    (tmp_path / "drop" / "new" / "1.a.host").write_bytes(message(2))
    r = rig(incoming_yaml(mailbox, "support", tmp_path / "pw")
            + "  - name: drop\n    type: local\n    path: ./drop\n")
    config = values.replace(r.config, incoming_servers=tuple(
        values.replace(s, activity=ActivityRule("Reply")) if s.name == "drop" else s
        for s in r.config.incoming_servers))
    calls = []

    results = poll_all_once(config, r.store, r.metrics, verp_key=r.verp_key,
                            clock=lambda: 42.0,
                            on_message=lambda conn, srv, fid, subject, now: calls.append(
                                (srv.name, fid, subject, now)))

    assert {name: (res.ok, res.fetched) for name, res in results.items()} == {
        "support": (True, 1), "drop": (True, 1)}
    assert calls == [("drop", 2, "message 2", 42.0)]  # only the server with a rule
    assert [row["fetched_at"] for row in r.rows()] == [42.0, 42.0]
