"""Rate limits: the pure window, the presets and the configuration, and the store-backed
limiter of the claim, driven by a test clock (no sleeping), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from mailsync.config.load import load_text
from mailsync.config.model import Account, Config, Daemon, OutgoingServer, RateLimit
from mailsync.config.secrets import Secret
from mailsync.config.tree import StoreBackend
from mailsync.outbound import history
from mailsync.outbound.enqueue import NewMessage
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.ratelimit import Gate, earliest
from mailsync.outbound.types import Delivery, RecipientResult
from mailsync.store import Store
from mailsync.telemetry.metrics import Metrics

MIN = timedelta(minutes=1)


def _limits(*pairs: tuple[int, float]) -> tuple[RateLimit, ...]:
    return tuple(RateLimit(n, timedelta(seconds=s)) for n, s in pairs)


# -- the window, pure -------------------------------------------------------------------

def test_a_send_may_go_while_the_window_holds_fewer_than_the_limit():
    limits = _limits((3, 10))
    assert earliest([], limits, 100.0) == (100.0, None)
    assert earliest([95.0, 96.0], limits, 100.0) == (100.0, None)
    # Full: the oldest send in the window leaves it at 95 + 10.
    assert earliest([95.0, 96.0, 97.0], limits, 100.0) == (105.0, limits[0])
    # A send exactly one window ago no longer counts.
    assert earliest([90.0, 96.0, 97.0], limits, 100.0) == (100.0, None)


def test_every_limit_applies_and_the_latest_decides():
    limits = _limits((2, 60), (3, 86_400))
    times = [0.0, 1000.0, 1001.0]
    at, limit = earliest(times, limits, 1002.0)
    assert at == 86_400.0 and limit == limits[1]  # the daily limit is the one reached
    assert earliest([1000.0, 1001.0], limits, 1002.0) == (1060.0, limits[0])


# -- configuration ------------------------------------------------------------------------

def _config(text: str, tmp_path: Path) -> Config:
    loaded = load_text("version: 1\ndaemon: {state_dir: ./state, spool_dir: ./spool}\n"
                       "users: [alice]\n" + text, "config.yaml", tmp_path)
    assert loaded.config is not None, [p.render() for p in loaded.problems]
    return loaded.config


def test_provider_presets_give_default_limits_that_can_be_overridden_or_removed(tmp_path):
    config = _config(
        "outgoing_servers:\n"
        "  - {name: m365, provider: office365, username: a@contoso.com, password: {env: P}}\n"
        "  - {name: gmail, provider: gmail, username: a@gmail.com, password: {env: P}}\n"
        "  - {name: workspace, provider: gmail, username: a@corp.example, password: {env: P}}\n"
        "  - {name: mine, provider: office365, username: b@contoso.com, password: {env: P},\n"
        "     rate_limits: [{messages: 5, per: 10s}]}\n"
        "  - {name: none, provider: gmail, username: c@gmail.com, password: {env: P},\n"
        "     rate_limits: []}\n"
        "  - {name: relay, host: relay.example.com}\n"
        "accounts:\n"
        "  - {name: own, email: o@gmail.com, provider: gmail, username: o@gmail.com,\n"
        "     password: {env: P}, rate_limits: [{messages: 100, per: 1h}]}\n"
        "  - {name: sales, email: s@example.com, server: relay,\n"
        "     rate_limits: [{messages: 1, per: 1m}]}\n", tmp_path)
    limits = {n: s.rate_limits for n, s in config.sending_servers().items()}
    assert limits == {
        "m365": _limits((30, 60), (10_000, 86_400)),
        "gmail": _limits((500, 86_400)),
        "workspace": _limits((2000, 86_400)),
        "mine": _limits((5, 10)),
        "none": (),
        "relay": (),
        "account:own": _limits((100, 3600)),   # replaces the gmail preset of its login
    }
    assert [a.rate_limits for a in config.accounts] == [(), _limits((1, 60))]


@pytest.mark.parametrize(("entry", "message"), [
    ("{messages: 0, per: 1m}", ".messages: 0 is out of range: must be at least 1"),
    ("{messages: 3, per: 0s}", ".per: '0s' is not valid: expected the window: a whole number, "
                               "at least 1"),
    ("{messages: 3}", ": missing required key 'per'"),
    ("{messages: 3, per: 1m, burst: 2}", ".burst: unknown key 'burst' (allowed: messages, per)"),
])
def test_a_bad_rate_limit_is_an_error_naming_it(entry, message, tmp_path):
    loaded = load_text("version: 1\noutgoing_servers:\n  - name: relay\n"
                       f"    host: relay.example.com\n    rate_limits: [{entry}]\n",
                       "config.yaml", tmp_path)
    errors = [p.render() for p in loaded.problems if p.severity == "error"]
    assert loaded.config is None and errors, errors
    assert any(f"outgoing_servers[0].rate_limits[0]{message}" in e for e in errors), errors


# -- the store-backed limiter, both backends ---------------------------------------------

@pytest.fixture
def backend(either_backend):
    """Each backend in turn (tests/postgres.py)."""
    return either_backend


@pytest.fixture
def store(either_store):
    return either_store


def limited(server: tuple[RateLimit, ...] = (), account: tuple[RateLimit, ...] = (),
            backup: bool = False) -> Config:
    servers = [OutgoingServer("main", "127.0.0.1", 25, "none", rate_limits=server)]
    if backup:
        servers.append(OutgoingServer("backup", "127.0.0.1", 26, "none", priority=20))
    return Config(daemon=Daemon(Path("state"), Path("spool")), users=("alice",),
                  outgoing_servers=tuple(servers),
                  accounts=(Account("sales", "sales@example.com", server=None if backup
                                    else "main", granted_to=("alice",),
                                    rate_limits=account),))


def queue_messages(queue: OutboundStore, count: int, at: float = 0.0) -> list[int]:
    done = queue.ingest([NewMessage(f"m{i}.json", f"sha{i}", "alice", "sales",
                                    "sales@example.com", f"<m{i}@example.com>", f"m{i}",
                                    b"Subject: hi\r\n\r\nbody\r\n", (f"to{i}@example.org",),
                                    None) for i in range(count)], at)
    return sorted(done.queued.values())


def drive(queue: OutboundStore, gate: Gate, until: float, step: float = 1.0,
          start: float = 0.0, send_takes: float = 0.0) -> list[tuple[float, int]]:
    """Claim every ``step`` s of the test clock from ``start`` to ``until``; each message
    claimed is 'sent' (its outcome recorded ``send_takes`` s later). (time, id) claimed."""
    claimed = []
    now = start
    while now <= until:
        for m in queue.claim_due(now, 200, gate.admit):
            gate.committed()
            claimed.append((now, m.id))
            servers, route = gate.servers(m.id, limited().outgoing_servers)
            delivery = Delivery("main", (RecipientResult(m.recipients[0], "sent", 250, "ok"),))
            done = now + send_takes
            queue.record_delivery(m.id, delivery, "sent", done, next_attempt_at=None,
                                  error=None, duration=send_takes,
                                  also=gate.after_send(m.id, route, delivery, done))
        now += step
    return claimed


def test_with_one_a_minute_exactly_one_message_goes_each_minute(store):
    queue = OutboundStore(store)
    ids = queue_messages(queue, 4)
    gate = Gate(limited(server=_limits((1, 60))), Metrics(), store.dialect)

    claimed = drive(queue, gate, until=200)

    assert claimed == [(0.0, ids[0]), (60.0, ids[1]), (120.0, ids[2]), (180.0, ids[3])]


def test_the_window_opens_one_period_after_the_send_ended(store):
    queue = OutboundStore(store)
    queue_messages(queue, 2)
    gate = Gate(limited(server=_limits((1, 60))), Metrics(), store.dialect)

    claimed = drive(queue, gate, until=100, step=0.5, send_takes=2.5)

    # The first send ended at 2.5: the second may only start at 62.5, not at 60.
    assert [t for t, _ in claimed] == [0.0, 62.5]


def test_a_message_over_the_limit_waits_deferred_without_an_attempt(store):
    queue = OutboundStore(store)
    ids = queue_messages(queue, 5)
    gate = Gate(limited(server=_limits((3, 10))), Metrics(), store.dialect)

    first = queue.claim_due(1000.0, 200, gate.admit)

    assert [m.id for m in first] == ids[:3]
    rows = {r["id"]: r for r in history.list_messages(queue, history.Filters(("deferred",)))}
    assert sorted(rows) == ids[3:]
    for mid in ids[3:]:
        row = rows[mid]
        assert row["attempts"] == 0 and row["reason"] == "rate_limited"
        assert row["error"].startswith("rate_limited: server 'main' allows 3 per 10s")
        assert row["next_attempt_at"] == history.iso(1010.0)
        events = history.show(queue, mid)["events"]
        assert [e["status"] for e in events][-1] == "deferred"
        assert events[-1]["detail"].startswith("rate_limited:")
    assert queue.claim_due(1009.0, 200, gate.admit) == []
    assert [m.id for m in queue.claim_due(1010.0, 200, gate.admit)] == ids[3:]
    waiting = store.conn.execute("SELECT COUNT(*) FROM messages WHERE reason IS NOT NULL"
                                 " OR waiting_for IS NOT NULL").fetchone()[0]
    assert waiting == 0  # claimed: no longer shown as waiting


def test_the_window_survives_a_restart(store, backend, tmp_path):
    queue = OutboundStore(store)
    ids = queue_messages(queue, 3)
    config = limited(server=_limits((2, 10)))
    assert len(drive(queue, Gate(config, Metrics(), store.dialect), until=0)) == 2
    store.close()

    reopened = Store.open(tmp_path / "state", backend=backend)
    try:
        again = OutboundStore(reopened)
        gate = Gate(config, Metrics(), reopened.dialect)  # a new process: nothing in memory
        assert again.claim_due(5.0, 200, gate.admit) == []
        assert [m.id for m in again.claim_due(10.0, 200, gate.admit)] == [ids[2]]
    finally:
        reopened.close()


def test_an_account_limit_holds_whatever_server_and_a_full_server_fails_over(store):
    queue = OutboundStore(store)
    ids = queue_messages(queue, 4)
    # main allows 1 per minute, backup has no limit: the second message goes to backup
    # only; the account allows 3 per minute in all.
    config = limited(server=_limits((1, 60)), account=_limits((3, 60)), backup=True)
    gate = Gate(config, Metrics(), store.dialect)

    claimed = queue.claim_due(0.0, 200, gate.admit)

    assert [m.id for m in claimed] == ids[:3]
    names = [[s.name for s in gate.servers(m.id, config.outgoing_servers)[0]] for m in claimed]
    assert names.count(["main", "backup"]) == 1   # the one with main's slot
    assert names.count(["backup"]) == 2            # main is full for them
    row = history.show(queue, ids[3])
    assert row["status"] == "deferred" and "account 'sales'" in row["error"]


def test_two_nodes_claiming_at_once_share_one_window(pg_dsn, tmp_path):
    # PostgreSQL only: on SQLite there is one node, and its single writer is the whole story.
    backend = StoreBackend("postgresql", Secret("plain", pg_dsn))
    a = Store.open(tmp_path / "a", backend=backend)
    b = Store.open(tmp_path / "b", backend=backend)
    try:
        ids = queue_messages(OutboundStore(a), 40)
        config = limited(server=_limits((5, 60)))
        admitted: list[int] = []
        barrier = threading.Barrier(4)

        def node(store: Store, mine: list[int]) -> None:
            # Each node claims messages of its own (the claim's row locks keep them apart):
            # the limiter's row lock is what keeps their sends in one window.
            gate = Gate(config, Metrics(), store.dialect)
            rows = [(mid, 0.0, "sales", "sales@example.com", b"", 0, None) for mid in mine]
            barrier.wait()
            for start in range(0, len(rows), 2):
                with store.transaction() as conn:
                    admitted.extend(r[0] for r in gate.admit(conn, rows[start:start + 2], 1.0))

        threads = [threading.Thread(target=node, args=(s, ids[i::4]))
                   for i, s in enumerate((a, b, a, b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(admitted) == 5 == len(set(admitted))
    finally:
        a.close()
        b.close()
