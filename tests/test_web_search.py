"""The History page's searches and filters go through indexes (migration 10), not a scan
of the whole history: what keeps a page under 100 ms on 200,000 messages
(bench/admin.py)."""

from __future__ import annotations

import time

import pytest

from mailsync.outbound import history as h
from mailsync.store import Store
from mailsync.store.migrations import MIGRATIONS


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "state")
    yield s
    s.close()


def _plan(store: Store, f: h.Filters) -> str:
    clause, args = h._where(f)
    rows = store.conn.execute(
        f"EXPLAIN QUERY PLAN SELECT m.id FROM messages m {clause} ORDER BY m.id DESC LIMIT 51",
        args).fetchall()
    return "\n".join(str(r[3]) for r in rows)


def test_migration_10_adds_the_search_indexes(store):
    assert len(MIGRATIONS) >= 10
    names = {r[0] for r in store.conn.execute(
        "SELECT name FROM sqlite_schema WHERE type = 'index'")}
    assert {"messages_subject", "recipients_address", "messages_message_id"} <= names


def test_an_address_search_reads_the_recipient_and_message_id_indexes(store):
    plan = _plan(store, h.Filters(search="Ann@Example.org"))
    assert "recipients_address" in plan and "messages_message_id" in plan
    assert "SCAN" not in plan, plan


def test_a_domain_search_reads_the_recipients_domain_index(store):
    plan = _plan(store, h.Filters(search="@Example.ORG"))
    assert "SEARCH recipients USING COVERING INDEX recipients_domain" in plan
    assert "SCAN recipients" not in plan, plan


def test_a_subject_search_reads_the_subject_index_only(store):
    plan = _plan(store, h.Filters(search="invoice 42"))
    assert "SCAN messages USING COVERING INDEX messages_subject" in plan
    assert "SCAN m\n" not in plan + "\n", plan


def test_since_is_a_range_of_ids_found_by_the_created_index(store):
    plan = _plan(store, h.Filters(since=time.time() - 3600))
    assert "messages_created" in plan and "SCAN" not in plan, plan
