"""POP3 against a real Dovecot: UIDL state, keep and delete, security modes."""

from __future__ import annotations

import pytest

from mailsync.errors import ConnectError
from mailsync.inbound.pop3 import Pop3Source
from tests.dovecot import (  # noqa: F401  (fixtures)
    dovecot_fixture,
    incoming_yaml,
    mailbox_fixture,
    message,
    rig_fixture,
)


def _rig(rig, mailbox, tmp_path, **kwargs):
    return rig(incoming_yaml(mailbox, "shop", tmp_path / "pw", kind="pop", **kwargs))


def test_pop3_stores_each_message_once_and_keeps_them_on_the_server(rig, mailbox, tmp_path):
    mailbox.append(message(1), message(2))
    r = _rig(rig, mailbox, tmp_path)
    poller = r.poller("shop")

    first = poller.poll_once()
    again = poller.poll_once()
    mailbox.append(message(3))
    third = poller.poll_once()

    assert (first.fetched, again.fetched, third.fetched) == (2, 0, 1)
    rows = r.rows()
    assert [row["message_id"] for row in rows] == ["<m1@test>", "<m2@test>", "<m3@test>"]
    assert rows[0]["raw"] == message(1)  # dot-stuffing and line ends undone exactly
    assert len({row["source_key"] for row in rows}) == 3  # the UIDLs
    assert len(mailbox.uids()) == 3
    assert r.metric("mailsync_mailbox_messages_fetched_total", server="shop") == 3


def test_pop3_keeps_lines_that_start_with_a_dot_and_long_lines(rig, mailbox, tmp_path):
    body = ".leading dot\r\n..two dots\r\n" + "x" * 5000 + "\r\n.\r\nend\r\n"
    raw = message(1, body=body)
    mailbox.append(raw)
    r = _rig(rig, mailbox, tmp_path)
    assert r.poller("shop").poll_once().fetched == 1
    assert r.rows()[0]["raw"] == raw


def test_pop3_keep_on_server_false_deletes_after_storing(rig, mailbox, tmp_path):
    mailbox.append(message(1), message(2), message(3))
    r = _rig(rig, mailbox, tmp_path, keep=False)
    result = r.poller("shop").poll_once()
    assert result.ok and result.fetched == 3
    assert mailbox.uids() == []
    assert len(r.rows()) == 3


def test_pop3_deletes_lost_before_quit_are_redone_without_storing_twice(rig, mailbox,
                                                                       tmp_path, monkeypatch):
    mailbox.append(message(1), message(2))
    r = _rig(rig, mailbox, tmp_path, keep=False)

    def crash(self):  # the connection drops before QUIT: the server forgets the DELEs
        self.close()
        raise ConnectError("shop: the server closed the connection", "closed")

    with monkeypatch.context() as m:
        m.setattr(Pop3Source, "end_poll", crash)
        first = r.poller("shop").poll_once()
    assert not first.ok and first.fetched == 2
    assert len(mailbox.uids()) == 2

    second = r.poller("shop").poll_once()

    assert second.ok and second.fetched == 0
    assert mailbox.uids() == []
    assert len(r.rows()) == 2


def test_pop3_batches_are_committed_one_by_one(rig, mailbox, tmp_path):
    mailbox.append(*(message(i) for i in range(5)))
    r = _rig(rig, mailbox, tmp_path)
    source = Pop3Source(r.server("shop"), password=lambda: mailbox.password, batch=2)
    commits = []
    r.store.conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    result = r.poller("shop", source=source).poll_once()
    r.store.conn.set_trace_callback(None)
    assert result.fetched == 5 and len(commits) == 3


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_pop3_tls_modes(rig, mailbox, tmp_path, monkeypatch, security):
    monkeypatch.setenv("SSL_CERT_FILE", str(mailbox.dovecot.ca_file))
    mailbox.append(message(1))
    r = _rig(rig, mailbox, tmp_path, security=security)
    result = r.poller("shop").poll_once()
    assert result.ok and result.fetched == 1, result.error


def test_pop3_wait_for_news_sleeps_and_says_nothing(rig, mailbox, tmp_path):
    r = _rig(rig, mailbox, tmp_path)
    poller = r.poller("shop")
    assert poller.supports_idle is False
    assert poller.wait_for_news(0.05) is False
