"""Latency of the running daemon: drop → accepted by SMTP, and save config → in force.

Starts `mailsync run` as a subprocess with its spool and state on a loop-mounted
journaled ext4 image when possible (bench/benchfs.py), sending to an aiosmtpd sink in
this process, which timestamps each message at the end of DATA with the same clock the
drop was timed with. Single messages are dropped into the idle daemon one at a time
(``-n``, default 500, spaced so that each finds it idle); then the config file is saved
(a grants change, written to a new file and renamed over the old one, as editors do)
``--reloads`` times, and the time until `mailsync_config_reloads_total` counts it is
taken from /metrics. Prints one JSON line per run and a summary line with medians.

Targets: drop → accepted p50 ≤ 10 ms on the idle daemon (issue #19; #5 asked ≤ 20 ms),
p99 ≤ 100 ms; reload ≤ 1 s. The summary's ``ok`` says whether the medians meet them.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from aiosmtpd.controller import Controller  # noqa: E402
from benchfs import workdir  # noqa: E402

from mailsync.outbound.spool import drop  # noqa: E402

CONFIG = """\
version: 1
daemon:
  state_dir: {root}/state
  spool_dir: {root}/spool
  metrics_listen: 127.0.0.1:{metrics}
alias_domain: {{domain: example.com, bounce: bounce, catchall: catchall}}
users: [app, ops]
outgoing_servers:
  - name: sink
    host: 127.0.0.1
    port: {port}
    security: none
    max_connections: 2
accounts:
  - name: notifications
    sender_name: Notifications
    email: notifications@example.com
    server: sink
    granted_to: {granted}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """Accepts everything; records when each Subject arrived (perf_counter)."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.cond = threading.Condition()

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        now = time.perf_counter()
        data: bytes = envelope.content  # type: ignore[attr-defined]
        subject = ""
        for line in data.split(b"\r\n"):
            if line.lower().startswith(b"subject:"):
                subject = line[8:].strip().decode()
                break
        with self.cond:
            self.arrived[subject] = now
            self.cond.notify_all()
        return "250 OK"

    def wait(self, subject: str, timeout: float = 10.0) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: subject in self.arrived, timeout):
                raise SystemExit(f"{subject!r} did not arrive within {timeout}s")
            return self.arrived[subject]


def scrape(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("the daemon did not become healthy")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def one_run(n: int, reloads: int, gap: float, sink: Sink, port: int) -> dict[str, object]:
    with workdir() as (root, fs):
        metrics = free_port()
        cfg = root / "config.yaml"

        def write(granted: str) -> None:
            tmp = root / ".config.yaml.tmp"
            tmp.write_text(CONFIG.format(root=root, port=port, metrics=metrics, granted=granted))
            os.replace(tmp, cfg)

        write("[app]")
        url = f"http://127.0.0.1:{metrics}"
        log = open(root / "daemon.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "mailsync", "run", "-c", str(cfg)],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(url, proc)
            spool = root / "spool"
            for i in range(5):  # warm up: the SMTP session, the page cache
                drop(spool, user="app", to=["warm@example.org"], subject=f"warm {i}", text="x")
                sink.wait(f"warm {i}")
            latencies = []
            for i in range(n):
                time.sleep(gap)
                subject = f"latency {os.getpid()} {i} {time.time()}"
                start = time.perf_counter()
                drop(spool, user="app", to=["user@example.org"], subject=subject,
                     text="Hello.\n" * 20)
                latencies.append((sink.wait(subject) - start) * 1000)
            reload_ms = []
            for i in range(reloads):
                time.sleep(0.3)
                before = scrape(url + "/metrics",
                                'mailsync_config_reloads_total{result="success"}')
                start = time.perf_counter()
                write("[app, ops]" if i % 2 == 0 else "[app]")
                while scrape(url + "/metrics",
                             'mailsync_config_reloads_total{result="success"}') <= before:
                    if time.perf_counter() - start > 10:
                        raise SystemExit("a reload took more than 10 s")
                    time.sleep(0.005)
                reload_ms.append((time.perf_counter() - start) * 1000)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            log.close()
        if code != 0:
            raise SystemExit(f"the daemon exited {code}: {(root / 'daemon.log').read_text()}")
        return {"bench": "latency", "drops": n, "p50_ms": round(pct(latencies, 50), 2),
                "p90_ms": round(pct(latencies, 90), 2), "p95_ms": round(pct(latencies, 95), 2),
                "p99_ms": round(pct(latencies, 99), 2),
                "max_ms": round(max(latencies), 2), "reloads": reloads,
                "reload_median_ms": round(statistics.median(reload_ms), 1),
                "reload_max_ms": round(max(reload_ms), 1), "filesystem": fs,
                "sink": "aiosmtpd in the benchmark process"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=500, help="single drops per run")
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--gap", type=float, default=0.02,
                        help="seconds of idleness before each drop")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    results = []
    try:
        for _ in range(args.runs):
            r = one_run(args.n, args.reloads, args.gap, sink, port)
            print(json.dumps(r), flush=True)
            results.append(r)
    finally:
        controller.stop()
    medians = {key: statistics.median(float(r[key]) for r in results)  # type: ignore[arg-type]
               for key in ("p50_ms", "p95_ms", "p99_ms", "reload_median_ms", "reload_max_ms")}
    summary: dict[str, object] = {"bench": "latency",
                                  "summary": f"median of {len(results)} runs", **medians}
    summary["targets"] = "p50 <= 10 ms, p99 <= 100 ms, reload <= 1000 ms"
    summary["ok"] = (medians["p50_ms"] <= 10 and medians["p99_ms"] <= 100
                     and medians["reload_median_ms"] <= 1000)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
