"""Nodes sharing one PostgreSQL store, in one process (#16 items 2, 3, 5): the sending
lease's decisions on a fake clock; claims of two nodes at once (SKIP LOCKED: disjoint,
none waits); ids of two nodes queueing at once; a dead node's claims back to the queue
when its lease ends, and not before; a restarting node recovers only its own claims;
the heartbeat's row and the drift gauge; `plan` against the configuration the cluster
applied; daemon.node and daemon.send_lease in the config."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from mailsync.config.tree import StoreBackend
from mailsync.daemon.node import NodeHeartbeat
from mailsync.outbound.enqueue import NewMessage
from mailsync.outbound.lease import SendLease
from mailsync.outbound.queue import OutboundStore
from mailsync.store import Store, nodes
from mailsync.telemetry.metrics import Metrics
from tests.outbound_helpers import load, run, server_yaml, write_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lease_decisions_on_a_fake_clock():
    clock = Clock()
    lease = SendLease(8.0, clock=clock)  # margin 2 s: may send while < 6 s since renewal
    assert lease.lapsed() and not lease.may_claim()  # nothing before the first renewal
    sent = lease.started()
    clock.now += 0.1
    assert lease.renewed(sent)
    claimed = clock.now
    assert lease.may_claim() and lease.may_send(claimed)
    clock.now = sent + 5.9
    assert lease.may_send(claimed)
    clock.now = sent + 6.0  # lease - margin since the renewal was sent: stop sending
    assert not lease.may_send(claimed) and lease.lapsed() and not lease.may_claim()
    # Renewed after the lapse: a new lease; what was claimed before it is never sent.
    again = lease.started()
    assert lease.renewed(again)
    assert lease.may_claim() and not lease.may_send(claimed)
    later = clock.now
    clock.now += 0.01
    assert lease.may_send(later)
    # A renewal sent in time but committed after the lease ended renews nothing.
    sent = lease.started()
    clock.now = sent + 7.0
    assert not lease.renewed(sent) and lease.lapsed()
    assert pytest.raises(ValueError, SendLease, 0)


@pytest.fixture
def shared(pg_dsn, tmp_path, monkeypatch):
    """Open stores of one database, one per node (each with its own state_dir)."""
    monkeypatch.setenv("PG_TEST_DSN", pg_dsn)
    from mailsync.config.secrets import Secret

    backend = StoreBackend("postgresql", Secret("env", "PG_TEST_DSN"), 4)
    opened: list[Store] = []

    def node(name: str, lease: float | None = None) -> OutboundStore:
        store = Store.open(tmp_path / name, backend=backend)
        opened.append(store)
        outbound = OutboundStore(store)
        outbound.node = name
        if lease is not None:
            outbound.send_lease = SendLease(lease)
            outbound.send_lease.renewed(outbound.send_lease.started())
        return outbound

    yield node
    for store in opened:
        store.close()


def _new(i: int) -> NewMessage:
    return NewMessage(f"m{i}.eml", f"sha{i}", "alice", "sales", "sales@example.com",
                      f"<m{i}@example.com>", f"S{i}", b"Subject: x\r\n\r\nbody\r\n",
                      (f"r{i}@example.org",), None)


def test_two_nodes_queue_at_once_with_distinct_signed_ids(shared):
    a, b = shared("a"), shared("b")
    results: dict[str, dict[str, int]] = {}

    def ingest(node: OutboundStore, name: str, base: int) -> None:
        got: dict[str, int] = {}
        for start in range(0, 200, 20):
            batch = [_new(base + i) for i in range(start, start + 20)]
            got.update(node.ingest(batch, time.time(), sign=lambda mid: f"sig{mid}").queued)
        results[name] = got

    threads = [threading.Thread(target=ingest, args=(a, "a", 0)),
               threading.Thread(target=ingest, args=(b, "b", 1000))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = list(results["a"].values()) + list(results["b"].values())
    assert len(ids) == 400 and len(set(ids)) == 400  # MAX(id)+1 collides between nodes
    rows = a.query("SELECT id, verp FROM messages")
    assert len(rows) == 400 and all(r["verp"] == f"sig{r['id']}" for r in rows)


def test_claims_of_two_nodes_at_once_are_disjoint_and_leased(shared, pg_dsn):
    a, b = shared("a", lease=30.0), shared("b", lease=30.0)
    a.ingest([_new(i) for i in range(300)], time.time())
    got: dict[str, list[int]] = {"a": [], "b": []}
    claimed_at = time.monotonic()

    def claim(node: OutboundStore, name: str) -> None:
        while batch := node.claim_due(time.time(), 25):
            got[name] += [m.id for m in batch]
            assert all(m.claimed_at >= claimed_at for m in batch)

    threads = [threading.Thread(target=claim, args=(n, k)) for k, n in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(got["a"]) & set(got["b"])
    assert len(got["a"]) + len(got["b"]) == 300
    assert got["a"] and got["b"]  # neither waited for the other's whole queue
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT claimed_by, count(*), min(lease_until - extract(epoch"
                            " FROM now())) FROM messages WHERE status = 'sending'"
                            " GROUP BY claimed_by").fetchall()
    by = {r[0]: (r[1], r[2]) for r in rows}
    assert by["a"][0] == len(got["a"]) and by["b"][0] == len(got["b"])
    assert 20 < by["a"][1] <= 30  # leased for send_lease by the database's clock


def test_a_dead_nodes_claims_go_back_when_its_lease_ends_not_before(shared):
    a, b = shared("a", lease=2.0), shared("b", lease=30.0)
    a.ingest([_new(i) for i in range(5)], time.time())
    mine = [m.id for m in a.claim_due(time.time(), 10)]
    assert len(mine) == 5
    assert b.reclaim_expired(time.time()) == {}  # a's lease runs: nothing to take
    assert b.claim_due(time.time(), 10) == []
    a.renew(time.time(), give_back=False)  # a renews: still a's
    assert b.reclaim_expired(time.time()) == {}
    time.sleep(2.2)  # a is dead: no renewal
    assert b.reclaim_expired(time.time()) == {"a": 5}
    taken = b.claim_due(time.time(), 10)
    assert sorted(m.id for m in taken) == sorted(mine)
    detail = b.query("SELECT detail FROM events WHERE message = ? AND status = 'queued'"
                     " ORDER BY id DESC LIMIT 1", (mine[0],))[0]["detail"]
    assert "sending lease of node a ended" in detail
    # a comes back: it gives back only its own claims (none left), b's stay b's.
    a.unclaim(mine, time.time())
    assert a.recover(time.time()) == 0
    assert {r["claimed_by"] for r in b.query(
        "SELECT claimed_by FROM messages WHERE status = 'sending'")} == {"b"}


def test_a_lapsed_node_gives_its_claims_back_on_renewal(shared):
    a = shared("a", lease=30.0)
    a.ingest([_new(i) for i in range(3)], time.time())
    assert len(a.claim_due(time.time(), 10)) == 3
    assert a.renew(time.time(), give_back=True) == 3
    assert a.counts()["queued"] == 3 and a.counts()["sending"] == 0


def test_heartbeat_writes_the_row_and_the_drift_gauge(shared):
    a, b = shared("a"), shared("b")
    metrics = Metrics()
    beats = []
    for outbound, sha in ((a, "1" * 64), (b, "1" * 64)):
        lease = SendLease(8.0)
        outbound.send_lease = lease
        beat = NodeHeartbeat(outbound, lease, metrics, config_sha256=lambda s=sha: s,
                             in_flight=lambda: 3)
        beat.held_mailboxes = lambda: ["support-imap"]
        assert beat.beat()  # the lease holds after the first heartbeat
        beats.append(beat)
    listed = nodes.listing(a.store)
    assert [n.name for n in listed] == ["a", "b"]
    assert listed[0].in_flight == 3 and listed[0].mailboxes == ("support-imap",)
    assert all(n.live(time.time()) for n in listed)
    assert metrics.registry.get_sample_value("mailsync_cluster_config_drift") == 0
    assert metrics.registry.get_sample_value("mailsync_cluster_nodes") == 2
    beats[1].config_sha256 = lambda: "2" * 64
    beats[1].beat()
    assert metrics.registry.get_sample_value("mailsync_cluster_config_drift") == 1
    assert nodes.drift(listed, time.time() + 60) == 0  # dead nodes are not compared
    # A minute on, node b has not beaten since: node a counts itself alone.
    beats[0].clock = lambda: time.time() + 60
    beats[0].beat()
    assert metrics.registry.get_sample_value("mailsync_cluster_nodes") == 1
    assert metrics.registry.get_sample_value("mailsync_cluster_config_drift") == 0


def test_plan_compares_with_the_config_the_live_nodes_applied(tmp_path, pg_dsn, monkeypatch,
                                                               shared):
    monkeypatch.setenv("MAILSYNC_DSN", pg_dsn)
    cfg = write_config(tmp_path, server_yaml("main", 2525))
    text = cfg.read_text().replace(
        "daemon:\n", "daemon:\n  store: {postgresql: {dsn: {env: MAILSYNC_DSN}}}\n", 1)
    cfg.write_text(text)
    a = shared("a")
    a.store.record_applied_config(text, "a" * 64, "node-a")
    newer = text.replace("max_connections: 2", "max_connections: 3")
    a.store.record_applied_config(newer, "b" * 64, "node-b")  # the last applied
    # Both live nodes run the first: plan compares with it, not with the last row.
    for name in ("a", "b"):
        with a.store.transaction() as conn:
            nodes.write(conn, nodes.Node(name, "h", 1, time.time(), time.time(), 30.0,
                                         "0.1.0", "a" * 64, 0, ()))
    planned = run(["plan", "-c", str(cfg)])
    assert planned.exit_code == 0, planned.output
    assert "No changes" in planned.output or "0 to change" in planned.output
    with a.store.transaction() as conn:
        nodes.write(conn, nodes.Node("b", "h", 1, time.time(), time.time(), 30.0,
                                     "0.1.0", "b" * 64, 0, ()))
    planned = run(["plan", "-c", str(cfg)])
    assert "the nodes run different configurations" in planned.output
    assert "max_connections" in planned.output  # against the last one applied


def test_store_forget_node_removes_a_gone_node_and_refuses_a_live_one(tmp_path, pg_dsn,
                                                                     monkeypatch, shared):
    monkeypatch.setenv("MAILSYNC_DSN", pg_dsn)
    cfg = write_config(tmp_path, server_yaml("main", 2525))
    cfg.write_text(cfg.read_text().replace(
        "daemon:\n", "daemon:\n  store: {postgresql: {dsn: {env: MAILSYNC_DSN}}}\n", 1))
    a = shared("a")
    now = time.time()
    with a.store.transaction() as conn:
        nodes.write(conn, nodes.Node("old-edge", "edge1", 7, now - 7200, now - 3600, 30.0,
                                     "0.1.0", "a" * 64, 0, ("imap",)))
        nodes.write(conn, nodes.Node("edge-2", "edge2", 8, now - 60, now - 2, 30.0,
                                     "0.1.0", "a" * 64, 4, ()))
    gone = run(["store", "forget-node", "old-edge", "-c", str(cfg)])
    assert gone.exit_code == 0, gone.output
    assert "forgot node 'old-edge' (edge1, mailsync 0.1.0; last heartbeat 1.0 h ago)" \
        in gone.output
    live = run(["store", "forget-node", "edge-2", "-c", str(cfg)])
    assert live.exit_code == 1 and "node 'edge-2' is live" in live.output
    assert "stop it first" in live.output
    unknown = run(["store", "forget-node", "old-edge", "-c", str(cfg)])
    assert unknown.exit_code == 1 and "no node named 'old-edge'" in unknown.output
    assert [n.name for n in nodes.listing(a.store)] == ["edge-2"]


def test_daemon_node_and_send_lease_in_the_config(tmp_path, monkeypatch):
    cfg = write_config(tmp_path, server_yaml("main", 2525))
    monkeypatch.setenv("MAILSYNC_NODE", "edge-7")
    assert load(cfg).daemon.node == "edge-7"
    monkeypatch.delenv("MAILSYNC_NODE")
    import socket

    assert load(cfg).daemon.node == socket.gethostname().split(".")[0]
    cfg.write_text(cfg.read_text().replace("daemon:\n", "daemon:\n  node: mail-2\n"
                                           "  send_lease: 45s\n", 1))
    config = load(cfg)
    assert config.daemon.node == "mail-2" and config.daemon.send_lease.total_seconds() == 45
    cfg.write_text(cfg.read_text().replace("send_lease: 45s", "send_lease: 1s"))
    checked = run(["validate", "-c", str(cfg)])
    assert checked.exit_code == 1
    assert "send_lease" in checked.output and "1s" in checked.output and "2s" in checked.output
    cfg.write_text(cfg.read_text().replace("node: mail-2", "node: 'bad name/'"))
    checked = run(["validate", "-c", str(cfg)])
    assert checked.exit_code == 1 and "node" in checked.output
