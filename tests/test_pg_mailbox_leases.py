"""Leases (#16 item 4): the pure decisions on a fake clock, their SQL on both backends,
the batch fence against a real Dovecot on PostgreSQL, the singleton pruning, the config.

The two-daemon failover is tests/test_pg_mailbox_leases_e2e.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mailsync.config.load import load_file
from mailsync.daemon.leases import LeaseKeeper
from mailsync.daemon.runtime import Runtime
from mailsync.inbound.poller import Poller
from mailsync.outbound.verp import load_key
from mailsync.store import Store
from mailsync.store import leases as sql
from mailsync.store.leases import SINGLETON, LeaseState, Timing
from mailsync.telemetry.metrics import Metrics
from tests.daemon_helpers import wait_until
from tests.dovecot import (  # noqa: F401
    dovecot_fixture,
    incoming_yaml,
    mailbox_fixture,
    message,
    write_config,
)
from tests.outbound_helpers import run


# -- the decisions, on a fake clock -------------------------------------------------------
def test_a_grant_is_used_until_a_margin_before_it_ends_and_renewed_every_third():
    t = Timing(30.0)
    state = LeaseState("mailbox/x", t)
    assert not state.valid(100.0) and state.due(100.0)
    assert state.granted(100.0) is True  # newly held
    assert state.valid(100.0 + 21.9) and not state.valid(100.0 + 22.0)  # 0.9 L - L/6
    assert not state.due(109.9) and state.due(110.0)  # renewed every L/3
    assert state.granted(110.0) is False  # a renewal, not a new hold
    assert state.valid(131.9) and not state.valid(132.0)


def test_a_holder_that_cannot_renew_stops_before_the_database_grant_ends():
    t = Timing(30.0)
    state = LeaseState("mailbox/x", t)
    state.granted(0.0)
    now = 10.0
    while state.valid(now):  # every renewal fails (the database is unreachable)
        assert state.due(now)
        state.failed(now)
        now = state.next_at  # tried again every L/10
    assert now == pytest.approx(22.0)  # stopped at 0.9 L - L/6 by its own clock...
    assert now < t.term  # ...before the grant (0.9 L from the asking) ends in the database
    assert state.lapsed(now) is True and state.lapsed(now + 1) is False  # reported once


def test_another_node_holding_it_ends_the_use_at_once_and_a_standby_asks_every_tenth():
    t = Timing(30.0)
    state = LeaseState("mailbox/x", t)
    assert state.refused(5.0) is False  # never held: nothing lost
    assert state.next_at == pytest.approx(8.0)
    state.granted(8.0)
    assert state.refused(9.0) is True and not state.valid(9.0)
    # A dead holder's grant ends 0.9 L after its last renewal; a standby asks every L/10:
    # it holds the lease within L of that renewal, so of the holder's death.
    assert t.term + t.try_every == pytest.approx(t.seconds)


# -- the SQL, on both backends --------------------------------------------------------------
@pytest.fixture
def store(either_store):
    """Each backend in turn (tests/postgres.py)."""
    return either_store


def _take(store, name, holder, term):
    with store.transaction() as conn:
        return sql.take(conn, store.dialect, name, holder, term)


def _fence(store, name, holder, term=5.0):
    with store.transaction() as conn:
        return sql.fence(conn, store.dialect, name, holder, term)


def test_one_holder_at_a_time_taken_over_once_the_grant_ends(store):
    assert _take(store, "mailbox/a", "n1:1", 0.4)
    assert not _take(store, "mailbox/a", "n2:2", 5.0)  # held
    assert _take(store, "mailbox/a", "n1:1", 0.4)  # renewed by its holder
    assert _take(store, "mailbox/b", "n2:2", 5.0)  # another lease: independent
    [a, b] = sql.holders(store)
    assert (a.name, a.holder, b.name, b.holder) == ("mailbox/a", "n1:1", "mailbox/b", "n2:2")
    assert 0 < a.remaining <= 0.41 and 4 < b.remaining <= 5.01  # julianday: ms steps
    time.sleep(0.5)  # n1 stopped renewing: its grant ended by the database's clock
    assert _take(store, "mailbox/a", "n2:2", 5.0)
    assert not _fence(store, "mailbox/a", "n1:1")  # the old holder's batch is refused
    assert _fence(store, "mailbox/a", "n2:2")
    with store.transaction() as conn:
        sql.release(conn, ["mailbox/a", "mailbox/b"], "n1:1")  # not n1's: kept
    assert [h.holder for h in sql.holders(store)] == ["n2:2", "n2:2"]
    with store.transaction() as conn:
        sql.release(conn, ["mailbox/a"], "n2:2")
    assert _take(store, "mailbox/a", "n1:1", 5.0)  # given back: taken at once


def _config(tmp_path, mailbox, lease="3s", store_yaml=""):
    cfg = write_config(tmp_path, incoming_yaml(mailbox, "support", tmp_path / "pw"))
    cfg.write_text(cfg.read_text().replace(
        "daemon:\n", f"daemon:\n  mailbox_lease: {lease}\n{store_yaml}", 1))
    loaded = load_file(cfg)
    assert loaded.config is not None, loaded.problems
    return cfg, loaded


def test_sqlite_holds_every_lease_without_a_row_or_a_thread(tmp_path, mailbox):
    _, loaded = _config(tmp_path, mailbox)
    store = Store.open(loaded.config.daemon.state_dir)
    metrics = Metrics()
    keeper = LeaseKeeper(store, loaded.config, metrics)
    keeper.start()
    try:
        assert keeper.holds(SINGLETON) and keeper.lease("support").valid()
        assert keeper.held_mailboxes() == ["support"]
        assert keeper.thread.ident is None
        assert sql.holders(store) == []
        assert metrics.registry.get_sample_value("mailsync_mailbox_lease_held",
                                                 {"server": "support"}) == 1
    finally:
        keeper.stop()
        store.close()


# -- the fence, on PostgreSQL with a real Dovecot -------------------------------------------
def test_a_node_whose_lease_was_taken_over_stores_nothing_and_the_new_holder_all(
        tmp_path, mailbox, pg_dsn, monkeypatch):
    monkeypatch.setenv("MAILSYNC_DSN", pg_dsn)
    _, loaded = _config(tmp_path, mailbox, store_yaml=(
        "  store: {postgresql: {dsn: {env: MAILSYNC_DSN}}}\n"))
    config = loaded.config
    mailbox.append(*(message(i) for i in range(5)))
    store = Store.open(config.daemon.state_dir, backend=config.daemon.store)
    metrics = Metrics()
    metrics.prime(config)
    now = [1000.0]  # both keepers' local clock (the rows use the database's)
    old = LeaseKeeper(store, config, metrics, holder="old:1", clock=lambda: now[0])
    new = LeaseKeeper(store, config, Metrics(), holder="new:2", clock=lambda: now[0])
    pollers = []
    try:
        old.tick()
        assert old.lease("support").valid() and old.held_mailboxes() == ["support"]
        new.tick()
        assert not new.lease("support").valid()
        assert metrics.registry.get_sample_value("mailsync_mailbox_lease_held",
                                                 {"server": "support"}) == 1
        # The old holder stalls (a pause, a partition): its grant ends in the database
        # while its own clock still says it holds it; the new one takes the lease.
        with store.transaction() as conn:
            conn.execute("UPDATE leases SET lease_until = 0 WHERE holder = 'old:1'")
        now[0] += 0.3  # the standby's next try (every tenth of the 3 s lease)
        new.tick()
        assert new.lease("support").valid() and old.lease("support").valid()

        def poller(keeper):
            p = Poller(config, config.incoming_servers[0], store, metrics,
                       verp_key=load_key(config.daemon.state_dir),
                       lease=keeper.lease("support"))
            pollers.append(p)
            return p

        stale = poller(old).poll_once()
        assert not stale.ok and stale.kind == "lease_lost" and stale.fetched == 0
        assert "another node holds the lease" in (stale.error or "")
        assert store.conn.execute("SELECT count(*) FROM fetched").fetchone()[0] == 0
        assert store.conn.execute("SELECT count(*) FROM fetch_state").fetchone()[0] == 0

        done = poller(new).poll_once()
        assert done.ok and done.fetched == 5
        assert poller(new).poll_once().fetched == 0  # nothing twice
        ids = [r[0] for r in store.conn.execute("SELECT message_id FROM fetched")]
        assert sorted(ids) == sorted(f"<m{i}@test>" for i in range(5))
        now[0] += 0.7  # the old holder's renewal (every third)...
        old.tick()  # ...is refused: it stops, and says so
        assert not old.lease("support").valid()
        assert metrics.registry.get_sample_value("mailsync_mailbox_lease_held",
                                                 {"server": "support"}) == 0
    finally:
        for p in pollers:
            p.close()
        new.stop()
        old.stop()
        assert sql.holders(store) == []  # both gave theirs back
        store.close()


# -- the singleton work ---------------------------------------------------------------------
def test_run_once_prunes_only_when_no_node_holds_the_singleton_lease(tmp_path, mailbox,
                                                                     pg_dsn, monkeypatch):
    monkeypatch.setenv("MAILSYNC_DSN", pg_dsn)
    cfg, loaded = _config(tmp_path, mailbox, store_yaml=(
        "  store: {postgresql: {dsn: {env: MAILSYNC_DSN}}}\n"))
    config = loaded.config
    store = Store.open(config.daemon.state_dir, backend=config.daemon.store)
    runtime = Runtime(cfg, loaded, store, load_key(config.daemon.state_dir), Metrics())
    pruned: list[float] = []
    real = runtime.outbound.prune
    runtime.outbound.prune = lambda now, retention: pruned.append(now) or real(now, retention)
    try:
        assert _take(store, SINGLETON, "daemon:7", 30.0)  # a daemon holds it
        runtime.prepare()
        assert pruned == []  # that node prunes, not this run
        assert [(h.name, h.holder) for h in sql.holders(store)] == [(SINGLETON, "daemon:7")]
        with store.transaction() as conn:
            sql.release(conn, [SINGLETON], "daemon:7")
        runtime.prepare()
        assert len(pruned) == 1
        assert sql.holders(store) == []  # taken for the pruning, given back
    finally:
        store.close()


# -- the configuration ----------------------------------------------------------------------
def test_mailbox_lease_defaults_to_30s_and_a_too_short_one_is_refused(tmp_path, mailbox):
    cfg = write_config(tmp_path, incoming_yaml(mailbox, "support", tmp_path / "pw"))
    loaded = load_file(cfg)
    assert loaded.config is not None
    assert loaded.config.daemon.mailbox_lease.total_seconds() == 30
    cfg.write_text(cfg.read_text().replace("daemon:\n", "daemon:\n  mailbox_lease: 1s\n", 1))
    refused = run(["validate", "-c", str(cfg)])
    assert refused.exit_code == 1
    assert "mailbox_lease 1s is too short: at least 3s" in refused.output
    cfg.write_text(cfg.read_text().replace("mailbox_lease: 1s", "mailbox_lease: soon"))
    refused = run(["validate", "-c", str(cfg)])
    assert refused.exit_code == 1 and "mailbox_lease" in refused.output


# -- a thread in IMAP IDLE ------------------------------------------------------------------
def test_a_mailbox_in_idle_stops_when_its_lease_runs_out_and_goes_on_once_held_again(
        tmp_path, mailbox, pg_dsn, monkeypatch):
    from mailsync.daemon.mailboxes import Mailbox

    monkeypatch.setenv("MAILSYNC_DSN", pg_dsn)
    _, loaded = _config(tmp_path, mailbox, lease="30s", store_yaml=(
        "  store: {postgresql: {dsn: {env: MAILSYNC_DSN}}}\n"))
    config = loaded.config
    store = Store.open(config.daemon.state_dir, backend=config.daemon.store)
    now = [1000.0]
    keeper = LeaseKeeper(store, config, Metrics(), holder="n:1", clock=lambda: now[0])
    keeper.tick()
    poller = Poller(config, config.incoming_servers[0], store, Metrics(),
                    verp_key=load_key(config.daemon.state_dir), lease=keeper.lease("support"))
    stop = threading.Event()
    box = Mailbox(poller, stop, on_failure=print, lease=keeper.lease("support"))

    def stored():
        return store.conn.execute("SELECT count(*) FROM fetched").fetchone()[0]

    def sessions():  # this process's established connections to Dovecot's IMAP port
        port = f":{mailbox.dovecot.port('imap'):04X}"
        lines = Path("/proc/self/net/tcp").read_text().splitlines()[1:]
        return sum(1 for line in lines
                   if line.split()[2].endswith(port) and line.split()[3] == "01")

    try:
        mailbox.append(message(0))
        wait_until(lambda: stored() == 1, 10, "the first message stored")
        time.sleep(0.5)  # in IDLE now (Dovecot offers it)
        assert sessions() == 1
        now[0] += 22.0  # no renewal for 0.9 x 30 s - 30 s / 6: this node stops
        wait_until(lambda: sessions() == 0, 3, "IDLE ends and the session is closed")
        mailbox.append(message(1))
        time.sleep(1.5)
        assert stored() == 1  # IDLE would have reported it: the node no longer polls
        keeper.tick()  # renewed (the row was still this node's): polling goes on
        wait_until(lambda: stored() == 2, 10, "the second message once held again")
    finally:
        stop.set()
        box.thread.join(10)
        keeper.stop()
        store.close()
