#!/usr/bin/env python3
"""Inbound throughput and latency against a real Dovecot (median of 3 runs).

A Dovecot mailbox of N (default 5,000) messages of ~2 KB is written as Maildir files,
then indexed by Dovecot (one SELECT and FETCH of every size, one POP3 LIST) before the
clock starts. Each run measures, in this process, with every message committed to the
store before the fetch state advances:

- ``imap_first_fetch`` / ``pop3_first_fetch``: a poll of the whole mailbox into an empty
  store, in messages/s;
- ``imap_incremental`` / ``pop3_incremental``: a poll with nothing new, in ms (IMAP: on
  the poller's open session, and with a new session: connect, login, STATUS);
- ``idle_latency``: an IMAP APPEND by another client → the message committed by a poller
  waiting in IDLE (``wait_for_news`` then ``poll_once``), in ms; split into the server's
  part (APPEND → IDLE wake-up; Dovecot waits 500 ms before it notifies IDLE clients) and
  mailsync's (wake-up → committed);
- ``imap_first_fetch_deliver_to``: the first fetch with ``deliver_to: {maildir}``;
- ``pop3_incremental_tuned_server``: ``pop3_incremental`` against a second Dovecot with
  the same mailbox and the settings an operator of a busy POP3 server would use
  (:data:`SERVER_TUNING`, printed with the result); the other figures use
  tests/dovecot.py's configuration, with Dovecot's defaults for these settings. Of the
  ~20 ms of a POP3 poll with nothing new, ~18 ms are Dovecot's: a new login process
  per connection (~4.5 ms to the greeting), authentication and a new pop3 process
  (~3 ms), syncing the Maildir after "+OK Logged in" (~7 ms, ~4.5 ms without re-reading
  cur/) and the UIDL listing itself (~5 ms).

``--only pop3`` (or imap, deliver_to, idle; repeatable) runs only those measurements.
Prints one JSON line per measurement and a summary line with the medians. State and the
deliver_to Maildir go on a loop-mounted journaled ext4 image when this runs as root and
`mount` works; the output names the filesystem used. Needs Dovecot (dovecot-imapd,
dovecot-pop3d) and the test dependencies (trustme, pytest): it reuses tests/dovecot.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import poplib
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchfs import workdir  # noqa: E402  (bench/benchfs.py, beside this script)

from mailsync.config.load import load_file  # noqa: E402
from mailsync.inbound.poller import Poller  # noqa: E402
from mailsync.outbound.verp import load_key  # noqa: E402
from mailsync.store import Store  # noqa: E402
from mailsync.telemetry.metrics import Metrics  # noqa: E402
from tests.dovecot import Dovecot, Mailbox, incoming_yaml, write_config  # noqa: E402

BODY = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
        "incididunt ut labore et dolore magna aliqua.\r\n") * 14


# Dovecot settings for pop3_incremental_tuned_server, all documented operator choices:
# a login process serves many connections ("high-performance mode") and one is always
# there; two pop3 processes wait ready; Dovecot assumes it alone changes the Maildirs, so
# a sync does not re-read cur/ (5,000 file names) when nothing it knows of changed there.
SERVER_TUNING = """\
maildir_very_dirty_syncs = yes
service pop3-login {
  service_count = 0
  process_min_avail = 1
}
service pop3 {
  process_min_avail = 2
}
"""
PARTS = ("imap", "pop3", "deliver_to", "idle")


class TunedDovecot(Dovecot):
    """tests.dovecot.Dovecot with :data:`SERVER_TUNING` added to its configuration."""

    def _config(self) -> str:
        return super()._config() + SERVER_TUNING


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def fill(dovecot: Dovecot, n: int) -> Mailbox:
    """A user with ``n`` messages, indexed by Dovecot before any clock starts."""
    mailbox = dovecot.add_user()
    mailbox.drop([message(i) for i in range(n)])
    index = mailbox.imap()
    index.select("INBOX")
    index.fetch("1:*", "(UID RFC822.SIZE)")
    index.logout()
    pop = poplib.POP3("127.0.0.1", dovecot.port("pop3"))
    pop.user(mailbox.user)
    pop.pass_(mailbox.password)
    pop.list()
    pop.quit()
    return mailbox


def message(i: int) -> bytes:
    return (f"From: Customer {i} <c{i}@example.org>\r\nTo: support@example.com\r\n"
            f"Subject: Question number {i}\r\nMessage-ID: <bench-{i}@example.org>\r\n"
            f"Date: Tue, 25 Nov 2025 10:00:00 +0000\r\n\r\n{BODY}").encode()


class Setup:
    """A config with one incoming server, its store and metrics, in ``directory``."""

    def __init__(self, directory: Path, incoming: str) -> None:
        directory.mkdir(parents=True)
        loaded = load_file(write_config(directory, incoming, accounts=False))
        assert loaded.config is not None, loaded.problems
        self.config = loaded.config
        self.server = self.config.incoming_servers[0]
        self.store = Store.open(self.config.daemon.state_dir)
        self.metrics = Metrics()

    def poller(self) -> Poller:
        return Poller(self.config, self.server, self.store, self.metrics,
                      verp_key=load_key(self.config.daemon.state_dir))


def first_fetch(directory: Path, incoming: str, n: int) -> tuple[float, Setup, Poller]:
    setup = Setup(directory, incoming)
    poller = setup.poller()
    started = time.perf_counter()
    result = poller.poll_once()
    seconds = time.perf_counter() - started
    assert result.ok and result.fetched == n, result
    return seconds, setup, poller


def incremental(setup: Setup, poller: Poller, *, fresh: bool, times: int = 15) -> float:
    samples = []
    for _ in range(times):
        p = setup.poller() if fresh else poller
        started = time.perf_counter()
        result = p.poll_once()
        samples.append((time.perf_counter() - started) * 1000)
        assert result.ok and result.fetched == 0, result
        if fresh:
            p.close()
    return statistics.median(samples)


def idle_latency(directory: Path, mailbox: Mailbox, arrivals: int) -> list[tuple[float, float]]:
    """(APPEND → committed, IDLE wake-up → committed) in ms, for each arrival."""
    setup = Setup(directory, incoming_yaml(mailbox, "idle", directory.parent / "idle.pw"))
    poller = setup.poller()
    poller.poll_once()
    stop = threading.Event()
    stored: list[tuple[float, float]] = []  # (woke, committed), monotonic
    cond = threading.Condition()

    def loop() -> None:
        while not stop.is_set():
            if poller.wait_for_news(2, stop):
                woke = time.monotonic()
                if poller.poll_once().fetched:
                    with cond:
                        stored.append((woke, time.monotonic()))
                        cond.notify_all()

    thread = threading.Thread(target=loop)
    thread.start()
    client = mailbox.imap()
    out = []
    try:
        time.sleep(0.5)  # let it settle into IDLE
        for i in range(arrivals):
            typ, _ = client.append("INBOX", None, None, message(100_000 + i))
            appended = time.monotonic()
            assert typ == "OK"
            with cond:
                assert cond.wait_for(lambda n=i: len(stored) > n, 10), "not stored within 10 s"
                woke, committed = stored[i]
            out.append(((committed - appended) * 1000, (committed - woke) * 1000))
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
        client.logout()
        poller.close()
        setup.store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=5000, help="messages in the mailbox")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--arrivals", type=int, default=10, help="IDLE arrivals per run")
    parser.add_argument("--only", action="append", choices=PARTS,
                        help="run only these measurements (repeatable; default: all)")
    args = parser.parse_args()
    n = args.n
    parts = set(args.only or PARTS)
    results: dict[str, list[float]] = {}

    def record(name: str, value: float, run: int, **extra: Any) -> None:
        results.setdefault(name, []).append(value)
        emit(metric=name, run=run, value=round(value, 2), **extra)

    with contextlib.ExitStack() as stack:
        root, fs = stack.enter_context(workdir())
        dovecot = stack.enter_context(Dovecot())
        mailbox = fill(dovecot, n)
        size = sum(len(message(i)) for i in range(n)) // n
        emit(setup=f"{n} messages of {size} bytes in Dovecot", fs=fs)
        tuned: Mailbox | None = None
        if "pop3" in parts:
            tuned = fill(stack.enter_context(TunedDovecot()), n)
            emit(setup="pop3_incremental_tuned_server: a second Dovecot with these settings",
                 server_tuning=SERVER_TUNING)

        for run in range(1, args.runs + 1):
            base = root / f"run{run}"
            base.mkdir()
            if "imap" in parts:
                imap = incoming_yaml(mailbox, "bench", base / "imap.pw")
                seconds, setup, poller = first_fetch(base / "imap", imap, n)
                record("imap_first_fetch", n / seconds, run, unit="messages/s")
                record("imap_incremental", incremental(setup, poller, fresh=False), run,
                       unit="ms", session="open")
                record("imap_incremental_new_session", incremental(setup, poller, fresh=True),
                       run, unit="ms", session="new")
                poller.close()
                setup.store.close()

            if "pop3" in parts:
                assert tuned is not None
                for name, box in (("pop3", mailbox), ("pop3_tuned", tuned)):
                    pop3 = incoming_yaml(box, "bench", base / f"{name}.pw", kind="pop")
                    seconds, setup, poller = first_fetch(base / name, pop3, n)
                    if box is mailbox:
                        record("pop3_first_fetch", n / seconds, run, unit="messages/s")
                        record("pop3_incremental", incremental(setup, poller, fresh=False),
                               run, unit="ms")
                    else:
                        record("pop3_incremental_tuned_server",
                               incremental(setup, poller, fresh=False), run, unit="ms")
                    poller.close()
                    setup.store.close()

            if "deliver_to" in parts:
                copies = base / "maildir"
                imap_dt = incoming_yaml(mailbox, "bench", base / "dt.pw",
                                        extra=f"    deliver_to: {{maildir: {copies}}}\n")
                seconds, setup, poller = first_fetch(base / "deliver", imap_dt, n)
                assert len(os.listdir(copies / "new")) == n
                record("imap_first_fetch_deliver_to", n / seconds, run, unit="messages/s")
                poller.close()
                setup.store.close()

            if "idle" in parts:
                latencies = idle_latency(base / "idle", dovecot.add_user(), args.arrivals)
                record("idle_latency", statistics.median(a for a, _ in latencies), run,
                       unit="ms", samples=[round(a, 1) for a, _ in latencies])
                record("idle_wakeup_to_stored", statistics.median(b for _, b in latencies),
                       run, unit="ms")

    emit(summary={k: round(statistics.median(v), 2) for k, v in results.items()}, fs=fs,
         runs=args.runs, messages=n,
         targets={"imap_first_fetch": ">= 1500/s", "pop3_first_fetch": ">= 1000/s",
                  "imap_incremental": "<= 50 ms", "pop3_incremental": "<= 50 ms",
                  "idle_latency": "<= 100 ms"})


if __name__ == "__main__":
    main()
