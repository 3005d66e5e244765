#!/usr/bin/env python3
"""End-to-end outbound throughput: spool → store → SMTP, as `mailsync run --once`.

Drops N (default 5,000) ~2 KB messages into the spool before the clock starts, then runs
`mailsync run --once` as a subprocess against Postfix's `smtp-sink` on 127.0.0.1 (or an
aiosmtpd sink when smtp-sink is absent: slower than the sender, and said in the output)
with `max_connections: 4` (``--connections N``: another number of sessions). Prints one
JSON line per run and a summary line with medians: messages/s end to end (process start
to exit), CPU per message (mailsync and its pickup child), SMTP connections opened, peak
RSS.

Each run also sends the same N messages with raw smtplib in the same round (right after
mailsync's run, to the same sink): 4 threads, each with one persistent ``smtplib.SMTP``
connection sending its share, no queue and no store. That is the ceiling of Python's SMTP
client on this machine at that moment; ``raw_smtplib_per_s`` and ``ratio_to_raw``
(mailsync's rate over it) are printed in each run's line and as medians in the summary.

With ``--dkim rsa|ed25519``, each round runs `run --once` twice, without then with DKIM
signing (a key of that type for example.com), and the summary gives the signing cost per
message: the median of the rounds' CPU ms/message with DKIM minus without.

With ``--daemon``, each round sends the same burst twice, through `run --once` and
through a running daemon (`mailsync run`, idle and healthy before the clock starts), in
alternating order, and prints the daemon's rate over `run --once`'s (the issue's "as fast
as run --once"; target ≥ 1) and the ratio of their drop-to-last-sent times (below). For
the daemon, the N files are dropped while it runs, and
the clock stops when the store records N sent (read beside the daemon every 5 ms on one
kept read-only connection; its `/metrics` must then agree). The daemon is not asked
meanwhile: an HTTP request is a thread and a scrape in the process that sends, and
asking `/metrics` every 20 ms cost it ~10 % of its rate. That is the rate applications
see when they drop a burst into a live system (drops and sending overlap). Its CPU per
message is the daemon's and its pickup child's over the burst (from /proc), as run
--once's is its process's and its child's. The daemon's clock includes the application's
dropping (~0.6-0.9 s of one of this machine's two cores for 5,000 files), `run --once`'s
does not; ``drop_to_sent_s`` counts it on both sides: from the first drop to the last
sent (for `run --once`, the drop's time plus the run's: a cron run that started the
moment the drop ended).

Spool and state go on a loop-mounted journaled ext4 image when this runs as root and
`mount` works (file creation on this machine's root filesystem costs ~0.8 ms); the output
names the filesystem used.

The state directory is as the earlier runs of a cron `run --once` leave it: before the
drop, two `run --once` on the empty spool create the store (its migrations applied) and
let mailsync remember the file's schema verdict (the first run has no state_dir to write
it to). ``--first-run`` measures the very first run instead, which also creates the store
and validates the file against the schema (~0.1-0.15 s more; the line says which).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from benchfs import workdir  # bench/benchfs.py, beside this script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])




@contextlib.contextmanager
def sink(port: int) -> Iterator[str]:
    """An SMTP sink on 127.0.0.1:port; yields its name."""
    exe = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink"
                                         if os.path.exists("/usr/sbin/smtp-sink") else None)
    if exe:
        cmd = [exe, "-u", "nobody", f"127.0.0.1:{port}", "256"] if os.geteuid() == 0 \
            else [exe, f"127.0.0.1:{port}", "256"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        name = "postfix smtp-sink"
    else:
        code = ("import asyncio,sys\nfrom aiosmtpd.controller import Controller\n"
                "class H:\n    async def handle_DATA(self, s, e, en): return '250 OK'\n"
                f"c=Controller(H(), hostname='127.0.0.1', port={port}); c.start()\n"
                "import time\nwhile True: time.sleep(3600)\n")
        proc = subprocess.Popen([sys.executable, "-c", code])
        name = "aiosmtpd (smtp-sink absent: a Python sink is slower than the sender)"
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.05)
    try:
        yield name
    finally:
        proc.terminate()
        proc.wait()


CONFIG = """\
version: 1
daemon:
  state_dir: {root}/state
  spool_dir: {root}/spool
alias_domain: {{domain: example.com, bounce: bounce, catchall: catchall}}
users: [app]
outgoing_servers:
  - name: sink
    host: 127.0.0.1
    port: {port}
    security: none
    max_connections: 4
accounts:
  - name: notifications
    sender_name: Notifications
    email: notifications@example.com
    server: sink
    granted_to: [app]
"""

BODY = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
        "incididunt ut labore et dolore magna aliqua.\r\n") * 14


def message(i: int) -> bytes:
    return (f"X-Mailsync-User: app\r\nTo: user{i}@example.org\r\n"
            f"Subject: Benchmark message {i}\r\nContent-Type: text/plain\r\n\r\n{BODY}"
            ).encode()


def prepare_state(cfg: Path, spool: Path, env: dict[str, str] | None = None) -> None:
    """The state a node's earlier runs leave: the store made and its migrations applied
    (the first `run --once`), the file's schema verdict remembered (the second)."""
    from mailsync.outbound.spool import ensure_dirs

    ensure_dirs(spool)
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "mailsync", "run", "--once", "-c",
                               str(cfg)], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"mailsync failed preparing the state: {proc.stderr[-2000:]}")


def drop_messages(spool: Path, n: int) -> None:
    from mailsync.outbound.spool import drop_eml, ensure_dirs

    ensure_dirs(spool)
    for i in range(n):
        drop_eml(spool, message(i))


RAW_THREADS = 4
FIRST_RUN = False  # --first-run


def state() -> str:
    """The state directory the timed runs start on, as the output lines name it."""
    return ("fresh (the run makes the store and validates the file in full)" if FIRST_RUN
            else "prepared by two earlier run --once (store made, verdict remembered)")


def raw_smtplib(n: int, port: int, threads: int = RAW_THREADS) -> float:
    """Messages/s of raw smtplib sending the same ``n`` messages to the sink: ``threads``
    threads, each with one persistent connection sending its share (the clock includes
    connecting); no queue, no store: the ceiling mailsync's sender is compared with."""
    shares = [range(t, n, threads) for t in range(threads)]
    errors: list[BaseException] = []

    def send(share: range) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                for i in share:
                    smtp.sendmail("notifications@example.com", [f"user{i}@example.org"],
                                  message(i))
        except BaseException as exc:  # noqa: BLE001 - reported below, in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=send, args=(share,)) for share in shares]
    start = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise SystemExit(f"raw smtplib failed: {errors[0]!r}")
    return round(n / elapsed, 1)


def with_raw(result: dict[str, object], n: int, port: int) -> dict[str, object]:
    """``result`` with the raw smtplib rate of the same round and mailsync's ratio to it."""
    raw = raw_smtplib(n, port)
    result["raw_smtplib_per_s"] = raw
    result["ratio_to_raw"] = round(float(result["messages_per_s"]) / raw, 3)  # type: ignore[arg-type]
    return result


def dkim_section(root: Path, kind: str) -> str:
    """A ``dkim`` section signing example.com with a new key of ``kind`` in ``root``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from mailsync.config.dkimkeys import generate

    key = root / "dkim.key"
    key.write_bytes(generate("rsa" if kind == "rsa" else "ed25519")[0])
    key.chmod(0o600)
    return f"dkim:\n  - {{domain: example.com, selector: bench, private_key: {{file: {key}}}}}\n"


def one_run(n: int, port: int, dkim: str | None = None) -> dict[str, object]:
    with workdir() as (root, fs):
        cfg = root / "config.yaml"
        cfg.write_text(CONFIG.format(root=root, port=port)
                       + (dkim_section(root, dkim) if dkim else ""))
        if not FIRST_RUN:
            prepare_state(cfg, root / "spool")
        dropping = time.perf_counter()
        drop_messages(root / "spool", n)
        dropping = time.perf_counter() - dropping
        size = sum(p.stat().st_size for p in (root / "spool" / "new").iterdir()) / n
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        before, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "mailsync", "run", "--once", "-c", str(cfg)],
                              capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        rss_kb, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime - cpu
        if proc.returncode != 0:
            raise SystemExit(f"mailsync failed: {proc.stderr[-2000:]}")
        m = re.search(r"(\d+) sent.*?(\d+) SMTP connections", proc.stdout)
        sent, conns = (int(m.group(1)), int(m.group(2))) if m else (0, -1)
        return {"bench": "outbound", "messages": n, "sent": sent, "seconds": round(elapsed, 3),
                "messages_per_s": round(sent / elapsed, 1), "smtp_connections": conns,
                # CPU of mailsync and its pickup child: steadier than the rate on a busy host.
                "cpu_ms_per_message": round(cpu * 1000 / max(sent, 1), 4),
                "peak_rss_mb": round(max(rss_kb, before) / 1024, 1),
                "avg_message_bytes": round(size), "filesystem": fs, "dkim": dkim,
                "state": state(), "dropping_s": round(dropping, 3),
                # What the application sees: from its first drop to the last sent, had
                # run --once started the moment the drop ended (a cron run starts later).
                "drop_to_sent_s": round(dropping + elapsed, 3)}


def dkim_rounds(n: int, port: int, runs: int, kind: str) -> None:
    """Alternating runs without and with DKIM; the signing cost per message."""
    pairs = []
    for _ in range(runs):
        pair = (one_run(n, port), one_run(n, port, kind))
        for r in pair:
            print(json.dumps(r), flush=True)
        pairs.append(pair)
    without = [float(a["cpu_ms_per_message"]) for a, _ in pairs]  # type: ignore[arg-type]
    with_ = [float(b["cpu_ms_per_message"]) for _, b in pairs]  # type: ignore[arg-type]
    print(json.dumps({"bench": "outbound_dkim", "summary": True, "runs": runs, "dkim": kind,
                      "median_cpu_ms_per_message_without": statistics.median(without),
                      "median_cpu_ms_per_message_with": statistics.median(with_),
                      "signing_cpu_ms_per_message": round(statistics.median(
                          b - a for a, b in zip(without, with_, strict=True)), 4),
                      "median_messages_per_s_without": statistics.median(
                          float(a["messages_per_s"]) for a, _ in pairs),  # type: ignore[arg-type]
                      "median_messages_per_s_with": statistics.median(
                          float(b["messages_per_s"]) for _, b in pairs)}),  # type: ignore[arg-type]
          flush=True)


def process_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and its children (the pickup child), from /proc."""
    pids = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            pids += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def recorded_sent(conn: sqlite3.Connection) -> int:
    """Messages the store records as sent, read beside the daemon on ``conn``, read-only
    and kept (WAL: a reader takes nothing from the writers, and each read is its own
    transaction, so it holds back no checkpoint)."""
    return int(conn.execute("SELECT count(*) FROM messages WHERE status = 'sent'")
               .fetchone()[0])


def one_daemon_run(n: int, port: int) -> dict[str, object]:
    import signal
    import urllib.request

    from mailsync.outbound.spool import ensure_dirs

    with workdir() as (root, fs):
        metrics = free_port()
        cfg = root / "config.yaml"
        cfg.write_text(CONFIG.format(root=root, port=port)
                       .replace("daemon:\n", f"daemon:\n  metrics_listen: 127.0.0.1:{metrics}\n"))
        ensure_dirs(root / "spool")
        url = f"http://127.0.0.1:{metrics}"
        with open(root / "daemon.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "mailsync", "run", "-c", str(cfg)],
                                    stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 20
                while True:
                    with contextlib.suppress(OSError), \
                            urllib.request.urlopen(url + "/healthz", timeout=1):
                        break
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("the daemon did not start")
                    time.sleep(0.05)

                def sent() -> float:  # the daemon's counter, and only it (?name[]=)
                    with urllib.request.urlopen(url + "/metrics?name[]="
                                                "mailsync_messages_sent_total",
                                                timeout=5) as reply:
                        for line in reply.read().decode().splitlines():
                            if line.startswith("mailsync_messages_sent_total{"):
                                return float(line.rsplit(" ", 1)[1])
                    return 0.0

                # One read-only connection for the whole run, opened before the clock
                # starts: opening one per read cost ~0.2 ms of CPU a read, on the cores
                # the daemon sends with (~6 % of its rate).
                with contextlib.closing(sqlite3.connect(
                        f"file:{root / 'state' / 'mailsync.db'}?mode=ro", uri=True)) as reader:
                    cpu = process_cpu(proc.pid)
                    start = time.perf_counter()
                    drop_messages(root / "spool", n)
                    dropped = time.perf_counter() - start
                    # The store is read, not the daemon asked: an HTTP request is a thread
                    # and a scrape in the process that sends (asking every 20 ms cost the
                    # daemon ~10 % of its rate).
                    while recorded_sent(reader) < n:
                        if time.perf_counter() - start > 120:
                            raise SystemExit("not all sent within 120 s")
                        time.sleep(0.005)
                    elapsed = time.perf_counter() - start
                cpu = process_cpu(proc.pid) - cpu
                if sent() != n:
                    raise SystemExit(f"the store records {n} sent, /metrics {sent()}")
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        return {"bench": "outbound_daemon", "messages": n, "seconds": round(elapsed, 3),
                "messages_per_s": round(n / elapsed, 1), "dropping_s": round(dropped, 3),
                "drop_to_sent_s": round(elapsed, 3),  # the clock starts at the first drop
                # The daemon's and its pickup child's, as run --once's cpu_ms_per_message.
                "cpu_ms_per_message": round(cpu * 1000 / n, 4),
                "filesystem": fs}


def daemon_rounds(n: int, port: int, runs: int, sink_name: str) -> None:
    """Rounds of the same burst through `run --once` and through a running daemon, in
    alternating order (a busy moment of the machine hits both alike); each round's ratio
    of the daemon to `run --once`, and the medians of those ratios.

    Two ratios: of the rates, each timed as its own line says (the daemon from the first
    drop, while the application is still dropping; `run --once` after the drop), and of
    the whole time from the first drop to the last sent (the drop counted on both sides:
    the wait of an application that drops a burst, had the cron run started as the drop
    ended)."""
    pairs = []
    for i in range(runs):
        first, second = (one_run, one_daemon_run) if i % 2 == 0 else (one_daemon_run, one_run)
        done = {}
        for run in (first, second):
            r = with_raw(run(n, port), n, port)
            r["sink"] = sink_name
            print(json.dumps(r), flush=True)
            done[run] = r
        once, daemon = done[one_run], done[one_daemon_run]
        pair = {"bench": "outbound_daemon_vs_once", "round": i + 1,
                "rate_ratio": round(float(daemon["messages_per_s"])  # type: ignore[arg-type]
                                    / float(once["messages_per_s"]), 3),  # type: ignore[arg-type]
                "drop_to_sent_ratio": round(float(once["drop_to_sent_s"])  # type: ignore[arg-type]
                                            / float(daemon["drop_to_sent_s"]), 3)}  # type: ignore[arg-type]
        print(json.dumps(pair), flush=True)
        pairs.append((once, daemon, pair))

    def median(rows: list[dict[str, object]], key: str) -> float:
        return round(statistics.median(float(r[key]) for r in rows), 3)  # type: ignore[arg-type]

    onces = [o for o, _, _ in pairs]
    daemons = [d for _, d, _ in pairs]
    ratios = [p for _, _, p in pairs]
    rate_ratio = median(ratios, "rate_ratio")
    print(json.dumps({
        "bench": "outbound_daemon", "summary": True, "runs": runs,
        "median_messages_per_s": median(daemons, "messages_per_s"),
        "median_once_messages_per_s": median(onces, "messages_per_s"),
        "median_rate_ratio": rate_ratio,
        "median_drop_to_sent_s": median(daemons, "drop_to_sent_s"),
        "median_once_drop_to_sent_s": median(onces, "drop_to_sent_s"),
        "median_drop_to_sent_ratio": median(ratios, "drop_to_sent_ratio"),
        "median_cpu_ms_per_message": median(daemons, "cpu_ms_per_message"),
        "median_once_cpu_ms_per_message": median(onces, "cpu_ms_per_message"),
        "median_dropping_s": median(daemons, "dropping_s"),
        "median_raw_smtplib_per_s": median(daemons + onces, "raw_smtplib_per_s"),
        "sink": sink_name, "filesystem": daemons[0]["filesystem"], "state": state(),
        "targets": {"rate_ratio": 1.0}, "ok": rate_ratio >= 1.0}), flush=True)


def main() -> None:
    global CONFIG, FIRST_RUN
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4,
                        help="the sink's max_connections (SMTP sessions; default 4, the "
                             "issue's figures)")
    parser.add_argument("--first-run", action="store_true",
                        help="time run --once on a fresh state_dir (it creates the store "
                             "and validates the file in full), not one an earlier run left")
    parser.add_argument("--daemon", action="store_true",
                        help="rounds of the burst through run --once and through a "
                             "running daemon, alternating; the daemon's ratio to run --once")
    import pgbench_support  # bench/pgbench_support.py: --store postgresql, --nodes

    pgbench_support.add_arguments(parser)
    parser.add_argument("--dkim", choices=["rsa", "ed25519"],
                        help="alternate runs without and with DKIM signing; the cost per message")
    args = parser.parse_args()
    CONFIG = CONFIG.replace("max_connections: 4\n", f"max_connections: {args.connections}\n")
    FIRST_RUN = args.first_run
    if args.store == "postgresql":
        return pgbench_support.main(args, one_run=one_run, config=CONFIG, drop=drop_messages,
                                    sink=sink, free_port=free_port,
                                    prepare=None if FIRST_RUN else prepare_state, state=state())
    port = free_port()
    if args.dkim:
        with sink(port):
            dkim_rounds(args.n, port, args.runs, args.dkim)
        return
    if args.daemon:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        with sink(port) as sink_name:
            daemon_rounds(args.n, port, args.runs, sink_name)
        return
    results = []
    with sink(port) as sink_name:
        for _ in range(args.runs):
            r = with_raw(one_run(args.n, port), args.n, port)
            r["sink"] = sink_name
            print(json.dumps(r), flush=True)
            results.append(r)
    rate = statistics.median(float(r["messages_per_s"]) for r in results)  # type: ignore[arg-type]
    raw = statistics.median(float(r["raw_smtplib_per_s"]) for r in results)  # type: ignore[arg-type]
    ratio = statistics.median(float(r["ratio_to_raw"]) for r in results)  # type: ignore[arg-type]
    conns = statistics.median(int(r["smtp_connections"]) for r in results)  # type: ignore[call-overload]
    rss = max(float(r["peak_rss_mb"]) for r in results)  # type: ignore[arg-type]
    cpu = statistics.median(float(r["cpu_ms_per_message"]) for r in results)  # type: ignore[arg-type]
    print(json.dumps({"bench": "outbound", "summary": True, "runs": len(results),
                      "median_messages_per_s": rate, "median_cpu_ms_per_message": cpu,
                      "median_raw_smtplib_per_s": raw, "median_ratio_to_raw": ratio,
                      "median_smtp_connections": conns,
                      "max_peak_rss_mb": rss, "sink": results[0]["sink"],
                      "filesystem": results[0]["filesystem"], "state": state(),
                      "targets": {"messages_per_s": 1500, "smtp_connections": 8,
                                  "peak_rss_mb": 100},
                      "ok": rate >= 1500 and conns <= 8 and rss <= 100}), flush=True)


if __name__ == "__main__":
    main()
