"""A rate limit in the running daemon against aiosmtpd: 3 per 10 s holds across a
restart (the window is in the store), measured at the server by arrival times."""

from __future__ import annotations

import time
from pathlib import Path

from mailsync.outbound.spool import drop, ensure_dirs
from tests.daemon_helpers import (
    daemon_config,
    daemons_fixture,  # noqa: F401 - the daemons fixture
    wait_until,
)
from tests.outbound_helpers import history, server_yaml
from tests.smtpserver import smtp_server_fixture  # noqa: F401

LIMIT, WINDOW = 3, 10.0


def _most_in_any_window(times: list[float], window: float) -> int:
    """The most arrivals in any window of ``window`` seconds (each starting at one)."""
    return max(sum(1 for t in times if start <= t < start + window) for start in times)


def test_three_per_ten_seconds_hold_across_a_restart(tmp_path: Path, smtp_server, daemons):
    server = smtp_server()
    arrivals: list[float] = []
    record = server._record

    def timed(message):  # the arrival time of each message, as the server saw it
        arrivals.append(time.time())
        record(message)

    server._record = timed
    extra = f"    rate_limits: [{{messages: {LIMIT}, per: {int(WINDOW)}s}}]\n"
    config = tmp_path / "config.yaml"
    config.write_text(daemon_config(tmp_path, server_yaml("main", server.port, extra=extra)))
    ensure_dirs(tmp_path / "spool")
    for i in range(9):
        drop(tmp_path / "spool", user="alice", to=[f"r{i}@example.org"], subject=f"m{i}",
             text="x")

    first = daemons(config)
    server.wait_for(3, timeout=20)
    wait_until(lambda: first.metric("mailsync_rate_limit_waiting", server="main",
                                    account="") == 6, 10, "6 messages wait for the limit")
    assert first.stop() == 0
    assert len(server.messages) == 3  # the others waited: none was let through at stop

    second = daemons(config)
    server.wait_for(9, timeout=40)
    assert _most_in_any_window(arrivals, WINDOW) == LIMIT
    assert arrivals[3] - arrivals[0] >= WINDOW  # the restart did not reset the window
    wait_until(lambda: second.metric("mailsync_rate_limit_waiting", server="main",
                                     account="") == 0, 10, "nothing waits any more")
    assert second.stop() == 0
    rows = history(config)
    assert [r["status"] for r in rows] == ["sent"] * 9
    assert all(r["attempts"] == 1 for r in rows)  # the waits were not retries
    # The limit reached is logged once per window it held messages back, not per message.
    reached = (tmp_path / "daemon.log").read_text().count("rate limit reached: server 'main'")
    assert 1 <= reached <= 4
