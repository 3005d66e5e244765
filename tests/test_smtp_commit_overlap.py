"""A sender's outcome commits while its next message's envelope goes, and before its content.

Real parts: aiosmtpd offering PIPELINING (tests/smtpserver.py), a SQLite store in tmp_path,
the deliverer's worker. The group commit is watched (not replaced): at each commit, what
the server has seen so far.
"""

from __future__ import annotations

import time

from mailsync.outbound.deliver import Deliverer
from mailsync.outbound.ingest import Ingester
from mailsync.outbound.spool import drop
from mailsync.outbound.verp import load_key
from mailsync.telemetry.metrics import Metrics
from tests.outbound_helpers import history, load, open_store, server_yaml, write_config
from tests.smtpserver import SmtpServer


def test_the_next_envelope_overlaps_the_commit_and_its_content_waits_for_it(
        tmp_path, smtp_server):
    srv: SmtpServer = smtp_server(pipelining=True)
    cfg = write_config(tmp_path, server_yaml("main", srv.port, max_connections=1))
    for i in range(3):
        drop(tmp_path / "spool", user="alice", subject=f"m{i}", text="x",
             to=[f"r{i}@example.org"])
    config = load(cfg)
    metrics = Metrics()
    metrics.prime(config)
    store, outbound = open_store(cfg)
    seen: list[tuple[int, int]] = []  # (MAIL commands, messages received) at each commit
    group = outbound._group
    commit = group._commit

    def watched(batch):  # type: ignore[no-untyped-def]
        if not seen:  # the first outcome: give the next envelope the time to come
            deadline = time.monotonic() + 3
            while srv.commands.count("MAIL") < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        with srv._lock:
            seen.append((srv.commands.count("MAIL"), len(srv.messages)))
        return commit(batch)

    group._commit = watched  # type: ignore[method-assign]
    try:
        assert Ingester(config, outbound, metrics).run_once().queued == 3
        deliverer = Deliverer(config, outbound, metrics,
                              verp_key=load_key(config.daemon.state_dir))
        stats = deliverer.run_once(workers=1)
        deliverer.close()
    finally:
        store.close()
    assert stats.sent == 3
    # The first outcome committed once the second MAIL had gone (the overlap), and before
    # the second content (at most one accepted message unrecorded per session).
    assert seen[0] == (2, 1)
    assert all(received - done <= 1 for done, (_, received) in enumerate(seen))
    assert [m.rcpt_tos for m in srv.wait_for(3)] == [(f"r{i}@example.org",) for i in range(3)]
    assert {row["status"] for row in history(cfg)} == {"sent"}
