"""The read sides the admin console's pages read through, on both backends.

The Queue, Inbox, Servers and Activities pages run no SQL of their own (test_layout):
their listings are the parts' (``outbound.history.list_waiting`` and ``server_lasts``,
``inbound.records.list_fetched`` (linked) and ``last_fetched``,
``ActivityStore.counts_by_user``), each tested here on a real SQLite file and on a real
PostgreSQL database (the ``store`` fixture of tests/test_store_backends.py).
"""

from __future__ import annotations

from datetime import date

from mailsync.activities.rules import NewActivity
from mailsync.activities.store import ActivityStore, insert
from mailsync.inbound import records
from mailsync.inbound.message import Summary
from mailsync.outbound import history
from mailsync.outbound.actions import act
from mailsync.outbound.enqueue import NewMessage
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.types import Delivery, RecipientResult
from tests.test_store_backends import backend, store  # noqa: F401

WAITING = ("queued", "deferred", "held", "sending")


def _new(source: str, subject: str, to: tuple[str, ...] = ("a@example.com",)) -> NewMessage:
    return NewMessage(source, "sha-" + source, "alice", "sales", "sales@example.com",
                      f"<{source}@example.com>", subject, b"Subject: x\r\n\r\nbody\r\n", to,
                      None)


def test_the_queue_lists_waiting_messages_oldest_first_by_keyset(store):  # noqa: F811
    queue = OutboundStore(store)
    done = queue.ingest([_new(f"{i}.json", f"m{i}", ("a@example.com", "b@example.com")
                              if i == 0 else ("a@example.com",)) for i in range(5)], 100.0)
    ids = [done.queued[f"{i}.json"] for i in range(5)]
    claimed = queue.claim_due(200.0, 2)  # ids[0], ids[1]: sending
    queue.record_delivery(claimed[1].id, Delivery("main", (
        RecipientResult("a@example.com", "sent", 250, "ok"),)), "sent", 201.0,
        next_attempt_at=None, error=None, duration=0.1)
    act(queue, "hold", ids[3], 202.0, by="olga")

    rows = history.list_waiting(queue, history.Filters(WAITING, limit=10))
    assert [r["id"] for r in rows] == [ids[0], ids[2], ids[3], ids[4]]  # not the sent one
    assert [r["status"] for r in rows] == ["sending", "queued", "held", "queued"]
    assert rows[0]["to"] == "a@example.com, b@example.com" and rows[0]["subject"] == "m0"
    assert rows[0]["created_at"] is not None and rows[0]["created_at"].startswith("1970-")
    # The keyset: ids above ids[2].
    page = history.list_waiting(queue, history.Filters(WAITING, limit=1, after=ids[2]))
    assert [r["id"] for r in page] == [ids[3]]
    held = history.list_waiting(queue, history.Filters(("held",), limit=10))
    assert [r["id"] for r in held] == [ids[3]]
    # The History's filters narrow it too: the Queue page's Search and Since.
    found = history.list_waiting(queue, history.Filters(WAITING, search="m4", limit=10))
    assert [r["id"] for r in found] == [ids[4]]
    assert history.list_waiting(queue, history.Filters(WAITING, since=150.0)) == []


def test_a_servers_last_send_and_last_error(store):  # noqa: F811
    queue = OutboundStore(store)
    done = queue.ingest([_new("a.json", "a"), _new("b.json", "b"), _new("c.json", "c")], 1.0)
    assert history.server_lasts(queue, "main") == (None, None)
    first, second, third = queue.claim_due(10.0, 3)
    queue.record_delivery(first.id, Delivery("main", (
        RecipientResult("a@example.com", "sent", 250, "ok"),)), "sent", 11.0,
        next_attempt_at=None, error=None, duration=0.1)
    queue.record_failure(second.id, "failed", "550 no such user", 12.0, server="main",
                         code=550)
    queue.record_delivery(third.id, Delivery("main", (
        RecipientResult("a@example.com", "sent", 250, "ok"),)), "sent", 13.0,
        next_attempt_at=None, error=None, duration=0.1)
    assert len(done.queued) == 3
    assert history.server_lasts(queue, "main") == (13.0, "550 no such user")
    assert history.server_lasts(queue, "other") == (None, None)


def test_the_inbox_lists_fetched_messages_with_what_they_bounced(store):  # noqa: F811
    queue = OutboundStore(store)
    sent = queue.ingest([_new("s.json", "Bounced later")], 1.0).queued["s.json"]
    with store.transaction() as conn:
        plain = records.insert_fetched(conn, "inbox", "INBOX", "1/1",
                                       Summary("<q@x>", "ann@x", "sales@x", "A question",
                                               None, 5.0, 10), b"q", 5.0)
        bounce = records.insert_fetched(conn, "inbox", "INBOX", "1/2",
                                        Summary(None, "MAILER-DAEMON@x", "b@x",
                                                "failure notice", None, 6.0, 20), b"b", 6.0)
        records.mark_bounce_of(conn, bounce, sent)
        other = records.insert_fetched(conn, "drop", "", "k", Summary(
            None, "c@x", "d@x", "other", None, 7.0, 5), b"o", 7.0)
    rows = records.list_fetched(store, records.InboxFilters(limit=10), linked=True)
    assert [r["id"] for r in rows] == [other, bounce, plain]  # newest first
    by_id = {r["id"]: r for r in rows}
    assert by_id[bounce]["bounce_of"] == sent
    assert by_id[bounce]["bounced_subject"] == "Bounced later"
    assert by_id[bounce]["bounced_status"] == "queued"
    assert by_id[plain]["bounced_subject"] is None and by_id[plain]["from"] == "ann@x"
    assert [r["id"] for r in records.list_fetched(
        store, records.InboxFilters(server="inbox", limit=10), linked=True)] == \
        [bounce, plain]
    assert [r["id"] for r in records.list_fetched(
        store, records.InboxFilters(bounces=True), linked=True)] == [bounce]
    assert [r["id"] for r in records.list_fetched(
        store, records.InboxFilters(before=bounce), linked=True)] == [plain]
    assert [r["id"] for r in records.list_fetched(
        store, records.InboxFilters(limit=1), linked=True)] == [other]
    # The search (a part of From, To or Subject in any case, or a Message-ID) and the
    # window (fetched at 5.0, 6.0 and 7.0), through the same SQL on either backend.
    def found(**filters: object) -> list[int]:
        f = records.InboxFilters(**filters)  # type: ignore[arg-type]
        return [r["id"] for r in records.list_fetched(store, f)]

    assert found(search="QUESTION") == [plain] and found(search="<q@x>") == [plain]
    assert found(search="q@x") == [plain] and found(search="MAILER-daemon") == [bounce]
    assert found(search="d@x") == [other] and found(search="%") == []
    assert found(since=6.0) == [other, bounce] and found(since=5.5, until=7.0) == [bounce]
    assert found(until=6.0) == [plain] and found(since=8.0) == []
    assert found(search="x", bounces=True, server="inbox") == [bounce]
    assert records.count_fetched(store, records.InboxFilters(search="x", limit=1)) == 3
    assert records.last_fetched(store, "inbox") == 6.0
    assert records.last_fetched(store, "nowhere") is None


def test_open_and_overdue_activities_by_user_and_type(store):  # noqa: F811
    with store.transaction() as conn:
        insert(conn, NewActivity("call", "bob", date(2030, 1, 2)), 5.0)
        insert(conn, NewActivity("call", "alice", date(2020, 1, 2)), 5.0)
        insert(conn, NewActivity("call", "alice", date(2030, 1, 2)), 5.0)
        insert(conn, NewActivity("reply", "alice", date(2020, 1, 2)), 5.0)
        done = insert(conn, NewActivity("reply", "bob", date(2020, 1, 2)), 5.0)
        conn.execute("UPDATE activities SET state = 'done' WHERE id = ?", (done,))
    assert ActivityStore(store).counts_by_user(date(2025, 1, 1)) == [
        ("alice", "call", 2, 1), ("alice", "reply", 1, 1), ("bob", "call", 1, 0)]
