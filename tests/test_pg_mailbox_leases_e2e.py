"""Two daemons on one PostgreSQL store polling one Dovecot mailbox (#16 item 4).

Both run ``mailsync run`` as subprocesses, each with its own state_dir, on the same
configuration (only ``metrics_listen`` differs: one machine) and one database, with
``mailbox_lease: 3s``. A thread appends messages to the mailbox (IMAP APPEND) all along;
the node holding the mailbox's lease is SIGKILLed mid-stream: the other takes the lease
over within the 3 s, and in the end every message appended is stored exactly once.
"""

from __future__ import annotations

import threading
import time

import psycopg

from tests.daemon_helpers import daemons_fixture, free_port, wait_until  # noqa: F401
from tests.dovecot import dovecot_fixture, incoming_yaml, mailbox_fixture, message  # noqa: F401

LEASE = 3.0


def _config(directory, mailbox, secret):
    directory.mkdir()
    incoming = incoming_yaml(mailbox, "support-in", secret, extra="    poll_interval: 1s\n")
    text = ("version: 1\ndaemon:\n  state_dir: ./state\n  spool_dir: ./spool\n"
            f"  metrics_listen: 127.0.0.1:{free_port()}\n  mailbox_lease: {LEASE:g}s\n"
            "  store: {postgresql: {dsn: {env: MAILSYNC_DSN}}}\n"
            "alias_domain: {domain: example.com, bounce: bounce, catchall: catchall}\n"
            "users: [alice]\noutgoing_servers:\n  - name: main\n    host: 127.0.0.1\n"
            "    port: 2525\n    security: none\naccounts:\n  - name: sales\n"
            "    email: sales@example.com\n    server: main\n    granted_to: [alice]\n"
            f"incoming_servers:\n{incoming}")
    path = directory / "config.yaml"
    path.write_text(text)
    return path


def _holder(dsn):
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT holder FROM leases WHERE name = 'mailbox/support-in'"
                           " AND lease_until > EXTRACT(EPOCH FROM clock_timestamp())"
                           ).fetchone()
    return row[0] if row else None


def _stored(dsn):
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT message_id FROM fetched")]


class _Feeder(threading.Thread):
    """Appends message(i), i = 0, 1, ..., every ``every`` s until stopped."""

    def __init__(self, mailbox, every=0.05):
        super().__init__(daemon=True)
        self.mailbox = mailbox
        self.every = every
        self.sent: list[str] = []
        self.halt = threading.Event()

    def run(self):
        with self.mailbox.session() as client:
            i = 0
            while not self.halt.is_set():
                typ, data = client.append("INBOX", None, None, message(i))
                assert typ == "OK", data
                self.sent.append(f"<m{i}@test>")
                i += 1
                self.halt.wait(self.every)


def test_the_mailbox_holder_killed_mid_stream_is_taken_over_within_the_lease(
        tmp_path, mailbox, pg_dsn, daemons):
    env = {"MAILSYNC_DSN": pg_dsn}
    first = daemons(_config(tmp_path / "node1", mailbox, tmp_path / "pw"), env=env)
    second = daemons(_config(tmp_path / "node2", mailbox, tmp_path / "pw"), env=env)
    by_pid = {d.proc.pid: d for d in (first, second)}
    holder = wait_until(lambda: _holder(pg_dsn), 10, "one node holds the mailbox's lease")
    held = by_pid[int(str(holder).rsplit(":", 1)[1])]
    standby = second if held is first else first
    assert wait_until(lambda: held.metric("mailsync_mailbox_lease_held",
                                          server="support-in") == 1, 5)
    assert standby.metric("mailsync_mailbox_lease_held", server="support-in") == 0

    feeder = _Feeder(mailbox)
    feeder.start()
    try:
        wait_until(lambda: len(_stored(pg_dsn)) >= 20, 15, "the holder stores the stream")
        held.proc.kill()  # SIGKILL: no lease given back
        killed_at = time.monotonic()
        held.wait()
        survivor = f"{standby.proc.pid}"
        wait_until(lambda: (_holder(pg_dsn) or "").endswith(f":{survivor}"), LEASE + 2,
                   "the standby takes the lease over")
        took = time.monotonic() - killed_at
        count = len(_stored(pg_dsn))
        wait_until(lambda: len(_stored(pg_dsn)) > count + 5, 10,
                   "the new holder stores what keeps coming")
        time.sleep(1.0)
    finally:
        feeder.halt.set()
        feeder.join(10)
    # Measured by polling the table (every 20 ms) after the kill: within the lease.
    assert took <= LEASE + 0.5, took
    assert standby.metric("mailsync_mailbox_lease_held", server="support-in") == 1
    sent = feeder.sent
    wait_until(lambda: set(_stored(pg_dsn)) >= set(sent), 10, "every message stored")
    stored = _stored(pg_dsn)
    assert len(stored) == len(set(stored)), "a message was stored twice"
    assert sorted(stored, key=lambda m: int(m[2:-6])) == sent
    assert "holds the lease now" in standby.log
