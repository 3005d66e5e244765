"""POP3 against a real Dovecot: UIDL state, keep and delete, security modes, long listings."""

from __future__ import annotations

import pytest

from mailsync.errors import ConnectError
from mailsync.inbound.pop3 import Pop3Source, parse_uidl
from mailsync.inbound.records import StoreKnown
from mailsync.store import Store
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


# -- long listings: the stored UIDLs kept in memory, the listing read in blocks ----------

MANY = 700  # more UIDLs than one lookup query takes: the stored keys are kept in memory


def _lookups(store):
    """Start counting the statements that look UIDLs up one by one (IN lists)."""
    seen: list[str] = []
    store.conn.set_trace_callback(lambda sql: seen.append(sql) if " IN (" in sql else None)
    return seen


def test_pop3_long_listing_stores_each_message_once_whoever_else_writes(rig, mailbox,
                                                                         tmp_path):
    mailbox.drop([message(i) for i in range(MANY)])
    r = _rig(rig, mailbox, tmp_path)
    poller = r.poller("shop")
    assert poller.poll_once().fetched == MANY

    lookups = _lookups(r.store)
    again = poller.poll_once()
    assert again.ok and again.fetched == 0
    assert lookups == []  # nothing new: one COUNT, no per-UIDL lookup

    # Another process (its own connection to the same store) stores a new message first.
    mailbox.append(message(MANY))
    other = _rig(rig, mailbox, tmp_path)
    assert other.poller("shop").poll_once().fetched == 1
    assert poller.poll_once().fetched == 0

    # The operator removes a row to have that message fetched again: it is, once.
    gone = r.rows()[10]
    r.store.conn.execute("DELETE FROM fetched WHERE id = ?", (gone["id"],))
    assert poller.poll_once().fetched == 1
    mailbox.append(message(MANY + 1))
    assert poller.poll_once().fetched == 1
    assert poller.poll_once().fetched == 0

    rows = r.rows()
    assert len(rows) == MANY + 2
    assert len({row["message_id"] for row in rows}) == MANY + 2
    assert len({row["source_key"] for row in rows}) == MANY + 2
    assert gone["source_key"] in {row["source_key"] for row in rows}


def test_pop3_long_listing_deletes_lost_before_quit_are_redone_without_storing_twice(
        rig, mailbox, tmp_path, monkeypatch):
    mailbox.drop([message(i) for i in range(MANY)])
    r = _rig(rig, mailbox, tmp_path, keep=False)
    poller = r.poller("shop")

    def crash(self):
        self.close()
        raise ConnectError("shop: the server closed the connection", "closed")

    with monkeypatch.context() as m:
        m.setattr(Pop3Source, "end_poll", crash)
        first = poller.poll_once()
    assert not first.ok and first.fetched == MANY
    assert len(mailbox.uids()) == MANY

    second = poller.poll_once()  # the same poller: its keys in memory are out of date
    assert second.ok and second.fetched == 0
    assert mailbox.uids() == []
    assert len(r.rows()) == MANY


def test_pop3_empty_maildrop(rig, mailbox, tmp_path):
    mailbox.append(message(1))
    r = _rig(rig, mailbox, tmp_path, keep=False)
    poller = r.poller("shop")
    assert poller.poll_once().fetched == 1
    empty = poller.poll_once()  # UIDL lists nothing: its answer is the "." line alone
    assert empty.ok and empty.fetched == 0
    assert len(r.rows()) == 1


def _line_by_line(body: bytes) -> dict[str, str]:
    """The UIDL parsing this module did before (poplib's lines, each stripped), but with
    the first of duplicate UIDLs kept."""
    numbers: dict[str, str] = {}
    for line in body.split(b"\r\n")[:-1]:
        number, _, uidl = line.decode("ascii", "replace").strip().partition(" ")
        numbers.setdefault(uidl.strip(), number)
    return numbers


@pytest.mark.parametrize("body", [
    b"",
    b"1 000000017a8b5c1d\r\n2 000000027a8b5c1d\r\n",
    b"1 a.b\r\n2 .c\r\n3 a\r\n4 a\r\n",  # dots inside; a duplicate UIDL: the first wins
    b"1  padded\r\n 2 b \r\n3\tc\r\n",  # padding: stripped as before
    b"1 a b\r\n2\r\n",  # a UIDL with a space, a line without one: as before
    b"1 caf\xc3\xa9\r\n",  # not ASCII
])
def test_parse_uidl_splits_like_the_line_by_line_reader(body):
    numbers, skipped = parse_uidl(body)
    assert numbers == _line_by_line(body)
    assert skipped == ([("4", "a")] if b"4 a" in body else [])


def _row(store, key):
    store.conn.execute("INSERT INTO fetched (server, folder, source_key, fetched_at, size)"
                       " VALUES ('shop', '', ?, 0, 1)", (key,))


def test_store_known_answers_new_only_after_asking_the_store(tmp_path):
    store = Store.open(tmp_path)
    try:
        keys = [f"k{i}" for i in range(MANY)]
        for key in keys:
            _row(store, key)
        known = StoreKnown(store, "shop", "")
        assert known.keys(keys) == set(keys)
        # One row goes and another comes, so the count is what it was: the new one is
        # still found (a key missing from memory is looked up), the gone one is not new.
        store.conn.execute("DELETE FROM fetched WHERE source_key = 'k5'")
        _row(store, "late")
        assert known.keys([*keys, "late", "unknown"]) == set(keys) | {"late"}
        # A short listing is looked up directly; another server's keys are not its own.
        assert known.keys(["k1", "late", "unknown"]) == {"k1", "late"}
        assert StoreKnown(store, "other", "").keys(keys) == set()
    finally:
        store.close()
