#!/usr/bin/env python3
"""Whole-process time of `mailsync validate` and `mailsync plan --against` on a big config.

Generates a configuration with 2,000 accounts, 200 outgoing and 200 incoming servers,
500 users and 300 activity types (about 16,000 lines) plus an edited copy, runs each
command several times as a fresh process (start-up included, as in a pre-commit hook)
and prints one JSON line per figure with the median. Standalone: run with the Python
that has mailsync installed (`.venv/bin/python bench/config_bench.py`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def generate(accounts: int = 2000, outgoing: int = 200, incoming: int = 200, users: int = 500,
             types: int = 300, edit: bool = False) -> str:
    """A valid config of the given size; ``edit`` changes some objects, adds and removes others."""
    out = [
        "version: 1\n",
        "daemon:\n  state_dir: ./var/state\n  spool_dir: ./var/spool\n"
        "  retry: {first: 5m, max: 1h, lifetime: 5d}\n",
        "alias_domain:\n  domain: example.com\n  catchall: catchall\n  bounce: bounce\n"
        "  default_from: notifications\n",
        "users:\n",
    ]
    out += [f"  - user{i}\n" for i in range(users + (1 if edit else 0))]
    out.append("outgoing_servers:\n")
    for i in range(outgoing):
        port = 465 if edit and i % 50 == 0 else 587
        sec = "ssl" if port == 465 else "starttls"
        out.append(
            f"  - name: smtp{i}\n    provider: custom\n    host: smtp{i}.example.com\n"
            f"    port: {port}\n    security: {sec}\n    username: relay{i}@example.com\n"
            f"    password: {{env: SMTP_PASSWORD_{i}}}\n"
            f"    from_filter: [example.com, example{i}.com]\n    priority: {i % 10}\n"
            f"    max_connections: 4\n    timeout: 30s\n"
        )
    out.append("incoming_servers:\n")
    for i in range(incoming - (2 if edit else 0)):
        out.append(
            f"  - name: in{i}\n    type: {'imap' if i % 2 else 'pop'}\n"
            f"    host: mail{i}.example.com\n    username: in{i}@example.com\n"
            f"    password: {{credential: in{i}}}\n    poll_interval: 60s\n"
            f"    keep_on_server: true\n"
            f"    activity: {{type: T{i % types}, user: user{i % users}}}\n"
        )
    out.append("accounts:\n")
    for i in range(accounts):
        grants = [f"user{i % users}", f"user{(i + 7) % users}"]
        if edit and i % 100 == 0:
            grants.append(f"user{users}")
        out.append(
            f"  - name: acct{i}\n    sender_name: Account {i}\n    email: a{i}@example.com\n"
            f"    server: smtp{i % outgoing}\n    granted_to: [{', '.join(grants)}]\n"
        )
    out.append("activity_types:\n")
    for i in range(types):
        out.append(
            f"  - name: T{i}\n    action: email\n    default_user: user{i % users}\n"
            f"    default_summary: Follow up {i}\n    icon: fa-reply\n"
            f"    delay: {{count: {2 if edit and i % 30 == 0 else 1}, unit: days,"
            " from: previous_deadline}\n"
            f"    chaining: suggest\n    recommended_next: [T{(i + 1) % types}]\n"
        )
    return "".join(out)


def timed(cmd: list[str], runs: int) -> tuple[float, list[float], int]:
    times = []
    code = 0
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True)
        times.append(time.perf_counter() - start)
        code = proc.returncode
    return statistics.median(times), times, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        new, old = base / "config.yaml", base / "old.yaml"
        new.write_text(generate(edit=True))
        old.write_text(generate())
        lines = new.read_text().count("\n")
        mailsync = [sys.executable, "-m", "mailsync"]
        for name, cmd, ok in (
            ("validate", mailsync + ["validate", "-c", str(new)], {0}),
            ("plan_against", mailsync + ["plan", "-c", str(new), "--against", str(old)], {0}),
        ):
            median, times, code = timed(cmd, args.runs)
            print(json.dumps({
                "bench": "config", "command": name, "lines": lines,
                "median_s": round(median, 3), "runs_s": [round(t, 3) for t in times],
                "exit": code, "target_s": 1.0, "ok": code in ok and median < 1.0,
            }), flush=True)


if __name__ == "__main__":
    main()
