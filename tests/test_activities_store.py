"""Activities in a real SQLite store: the migration, scheduling from fetched messages inside
the poller's transaction, done with chaining and attachments, chains, metrics."""

from __future__ import annotations

import logging
import sqlite3
import time
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mailsync.activities.rules import RecordRef, local_date
from mailsync.activities.store import (
    ActivityCollector,
    ActivityStore,
    Filters,
    schedule_for_fetched,
)
from mailsync.config.model import (
    ActivityRule,
    ActivityType,
    Config,
    Daemon,
    Delay,
    IncomingServer,
)
from mailsync.errors import ActivityRefused
from mailsync.store import Store

NOW = datetime(2025, 1, 31, 12, 0, tzinfo=UTC).timestamp()
TODAY = date(2025, 1, 31)


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    """Dates here are UTC dates, whatever the machine's zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    assert local_date(NOW) == TODAY
    yield
    monkeypatch.undo()
    time.tzset()

TYPES = (
    ActivityType("Reply", action="email", default_user="alice", model="crm.lead",
                 default_summary="Answer the customer", delay=Delay(1, "months"),
                 chaining="trigger", default_next="Call",
                 default_description="Reply within one working day."),
    ActivityType("Call", default_user="bob", delay=Delay(2, "days", "completion_date"),
                 recommended_next=("Meeting",)),
    ActivityType("Meeting", delay=Delay(1, "weeks")),
    ActivityType("Contract", action="upload_document", default_user="alice",
                 chaining="trigger", default_next="Meeting"),
)


def make_config(tmp_path: Path, types: tuple[ActivityType, ...] = TYPES) -> Config:
    return Config(daemon=Daemon(tmp_path / "state", tmp_path / "spool"),
                  users=("alice", "bob", "carol"), activity_types=types)


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "state")
    yield s
    s.close()


def server(type_name: str = "Reply", user: str | None = None) -> IncomingServer:
    return IncomingServer("support", "local", path=Path("/m"),
                          activity=ActivityRule(type_name, user))


def test_migration_creates_the_activities_table(store):
    from mailsync.store.migrations import MIGRATIONS

    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    cols = {r[1] for r in store.conn.execute("PRAGMA table_info(activities)")}
    assert {"type", "summary", "note", "user", "deadline", "state", "record_model",
            "record_id", "fetched_id", "previous_id", "done_at", "done_on", "feedback",
            "attachment"} <= cols
    with pytest.raises(sqlite3.IntegrityError):
        store.conn.execute("INSERT INTO activities (type, user, deadline, state, created_at,"
                           " updated_at) VALUES ('A', 'a', '2025-01-01', 'lost', 0, 0)")


# -- from fetched messages ---------------------------------------------------------------
def test_fetched_message_schedules_one_activity_in_the_callers_transaction(tmp_path, store):
    cfg = make_config(tmp_path)
    with store.transaction() as conn:
        aid = schedule_for_fetched(conn, cfg, server(), 17, "Quote for 40 chairs", NOW)
        again = schedule_for_fetched(conn, cfg, server(), 17, "Quote for 40 chairs", NOW)
    assert aid is not None and again == aid
    a = ActivityStore(store).get(aid)
    assert (a.type, a.user, a.summary, a.note, a.fetched_id, a.state) == (
        "Reply", "alice", "Answer the customer", "Reply within one working day.", 17, "open")
    assert a.deadline == date(2025, 2, 28)  # today (31 January) + 1 calendar month
    assert len(ActivityStore(store).find(Filters())) == 1


def test_fetched_message_subject_is_the_summary_without_a_default(tmp_path, store):
    cfg = make_config(tmp_path)
    with store.transaction() as conn:
        aid = schedule_for_fetched(conn, cfg, server("Call", "carol"), 3, "Call me", NOW)
    assert aid is not None
    a = ActivityStore(store).get(aid)
    assert (a.type, a.user, a.summary, a.deadline) == ("Call", "carol", "Call me",
                                                       date(2025, 2, 2))


def test_fetched_message_rolls_back_with_the_poller(tmp_path, store):
    cfg = make_config(tmp_path)
    with pytest.raises(RuntimeError), store.transaction() as conn:
        schedule_for_fetched(conn, cfg, server(), 5, "Hello", NOW)
        raise RuntimeError("the poller failed to store the message")
    assert ActivityStore(store).find(Filters(states=())) == []


def test_fetched_message_of_a_removed_type_schedules_nothing(tmp_path, store):
    cfg = make_config(tmp_path, TYPES[1:])
    with store.transaction() as conn:
        assert schedule_for_fetched(conn, cfg, server("Reply"), 5, "Hello", NOW) is None
    assert ActivityStore(store).find(Filters(states=())) == []


def test_a_refused_rule_is_logged_and_does_not_stop_the_poller(tmp_path, store, caplog):
    cfg = make_config(tmp_path)  # a rule for a user the config no longer declares
    # attached to the logger itself: logs.setup() stops mailsync's records reaching the root
    logger = logging.getLogger("mailsync.activities")
    logger.addHandler(caplog.handler)
    try:
        with store.transaction() as conn:
            assert schedule_for_fetched(conn, cfg, server("Reply", "zed"), 5, "Hi", NOW) is None
            conn.execute("INSERT INTO applied_config (applied_at, sha256, source, text)"
                         " VALUES ('2025-01-31T12:00:00+00:00', 'h', 's', 'x')")
    finally:
        logger.removeHandler(caplog.handler)
    assert store.last_applied_config() is not None  # the poller's transaction committed
    assert ActivityStore(store).find(Filters(states=())) == []
    assert "incoming server support, fetched message 5: no activity: user 'zed' is not " \
           "declared" in caplog.text


# -- done, chains, attachments -----------------------------------------------------------
def test_done_triggers_the_next_and_the_chain_reads_back(tmp_path, store):
    cfg = make_config(tmp_path)
    acts = ActivityStore(store)
    first = acts.schedule(cfg, "Reply", NOW, record=RecordRef("crm.lead", 42))
    result = acts.done(cfg, first.id, NOW + 86400, feedback="answered")
    assert result.activity.state == "done" and result.activity.feedback == "answered"
    call = result.triggered
    assert call is not None
    # Call: 2 days after the completion date (1 February), for Call's default user
    assert (call.type, call.user, call.deadline, call.previous_id, call.record) == (
        "Call", "bob", date(2025, 2, 3), first.id, RecordRef("crm.lead", 42))
    suggested = acts.done(cfg, call.id, NOW + 2 * 86400)
    assert suggested.triggered is None and suggested.next.suggested == ("Meeting",)
    meeting = acts.schedule(cfg, None, NOW, user="carol", after=call.id)
    assert meeting.type == "Meeting" and meeting.previous_id == call.id
    assert meeting.deadline == date(2025, 2, 10)  # Call's deadline (3 Feb) + 1 week
    assert [a.id for a in acts.chain(meeting.id)] == [call.id, first.id]
    assert [a.id for a in acts.following(first.id)] == [call.id]
    assert acts.get(first.id).state == "done" and acts.get(first.id).done_on == date(2025, 2, 1)


def test_attachment_is_kept_in_the_state_dir(tmp_path, store):
    cfg = make_config(tmp_path)
    acts = ActivityStore(store)
    contract = acts.schedule(cfg, "Contract", NOW)
    src = tmp_path / "signed.pdf"
    src.write_bytes(b"%PDF-1.7 signed")
    result = acts.done(cfg, contract.id, NOW, attach=src)
    assert result.activity.attachment == f"attachments/{contract.id}/signed.pdf"
    kept = tmp_path / "state" / "attachments" / str(contract.id) / "signed.pdf"
    assert kept.read_bytes() == b"%PDF-1.7 signed"
    assert acts.get(contract.id).attachment == result.activity.attachment


def test_a_refused_done_keeps_no_file_and_leaves_the_activity_open(tmp_path, store):
    types = (ActivityType("Contract", action="upload_document", default_user="alice",
                          chaining="trigger", default_next="Renew"),
             ActivityType("Renew", delay=Delay(1, "months")))
    cfg = make_config(tmp_path, types)
    acts = ActivityStore(store)
    contract = acts.schedule(cfg, "Contract", NOW, when=date(9999, 12, 15))
    src = tmp_path / "signed.pdf"
    src.write_bytes(b"x")
    with pytest.raises(ActivityRefused, match="past the year 9999"):
        acts.done(cfg, contract.id, NOW, attach=src)
    assert acts.get(contract.id).state == "open"
    assert list((tmp_path / "state" / "attachments" / str(contract.id)).iterdir()) == []


def test_cancel_and_unknown_ids_are_refused_by_name(tmp_path, store):
    cfg = make_config(tmp_path)
    acts = ActivityStore(store)
    a = acts.schedule(cfg, "Reply", NOW)
    assert acts.cancel(a.id, NOW).state == "cancelled"
    with pytest.raises(ActivityRefused, match=f"activity {a.id} is cancelled: cancel applies"):
        acts.cancel(a.id, NOW)
    with pytest.raises(ActivityRefused, match="no activity 999"):
        acts.done(cfg, 999, NOW)


def test_a_removed_type_is_refused_as_removed_when_it_has_activities(tmp_path, store):
    acts = ActivityStore(store)
    acts.schedule(make_config(tmp_path), "Meeting", NOW, user="bob")
    cfg = make_config(tmp_path, TYPES[:2])
    with pytest.raises(ActivityRefused, match="'Meeting' was removed from the config"):
        acts.schedule(cfg, "Meeting", NOW, user="bob")
    with pytest.raises(ActivityRefused, match="'Contract' is not declared"):
        acts.schedule(cfg, "Contract", NOW)
    assert [a.type for a in acts.find(Filters(type="Meeting"))] == ["Meeting"]


# -- metrics -------------------------------------------------------------------------------
def test_collector_exports_open_and_overdue_by_type(tmp_path, store):
    cfg = make_config(tmp_path)
    acts = ActivityStore(store)
    acts.schedule(cfg, "Reply", NOW, when=date(2025, 1, 30))            # overdue
    acts.schedule(cfg, "Reply", NOW, when=TODAY)                        # due today
    acts.done(cfg, acts.schedule(cfg, "Call", NOW, when=date(2000, 1, 1)).id, NOW)  # done
    acts.cancel(acts.schedule(cfg, "Meeting", NOW, user="bob", when=date(2000, 1, 1)).id,
                NOW)
    acts.schedule(make_config(tmp_path, (ActivityType("Old", default_user="bob"),)), "Old",
                  NOW, when=date(2000, 1, 1))  # a type since removed from the config
    calls = []
    opened: Store = store

    def current() -> Store:
        calls.append(1)
        return opened

    registry = CollectorRegistry()
    registry.register(ActivityCollector(current, cfg, clock=lambda: NOW))
    assert calls == []  # registering does not read the store
    value = registry.get_sample_value
    assert value("mailsync_activities_open", {"type": "Reply"}) == 2
    assert value("mailsync_activities_overdue", {"type": "Reply"}) == 1
    # the trigger of Call's completion scheduled nothing (suggest); Call, Meeting: at 0
    for name in ("Call", "Meeting", "Contract"):
        assert value("mailsync_activities_open", {"type": name}) == 0
        assert value("mailsync_activities_overdue", {"type": name}) == 0
    assert value("mailsync_activities_open", {"type": "Old"}) == 1
    assert value("mailsync_activities_overdue", {"type": "Old"}) == 1
    # read at scrape time
    acts.cancel(acts.find(Filters(type="Reply"))[0].id, NOW)
    assert value("mailsync_activities_overdue", {"type": "Reply"}) == 0
    assert b'mailsync_activities_open{type="Reply"} 1.0' in generate_latest(registry)


def test_collector_over_a_state_dir_reads_zero_before_the_first_store(tmp_path):
    cfg = make_config(tmp_path)
    registry = CollectorRegistry()
    registry.register(ActivityCollector(tmp_path / "state", lambda: cfg, clock=lambda: NOW))
    assert registry.get_sample_value("mailsync_activities_open", {"type": "Reply"}) == 0
    assert not (tmp_path / "state").exists()
    s = Store.open(tmp_path / "state")
    try:
        ActivityStore(s).schedule(cfg, "Reply", NOW, when=date(2025, 1, 1))
    finally:
        s.close()
    assert registry.get_sample_value("mailsync_activities_open", {"type": "Reply"}) == 1
    assert registry.get_sample_value("mailsync_activities_overdue", {"type": "Reply"}) == 1
