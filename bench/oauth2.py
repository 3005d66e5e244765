#!/usr/bin/env python3
"""XOAUTH2 against password AUTH: `mailsync run --once` of N messages, alternating runs.

The same aiosmtpd sink (AUTH PLAIN/LOGIN and XOAUTH2/OAUTHBEARER; it checks the token
against the one the endpoint hands out) and the same burst (default 5,000 × ~2 KB over 4
connections) are sent once with a password and once with `auth.oauth2` (client
credentials, from a token endpoint served by this script on 127.0.0.1), in turns. Prints
one JSON line per run and a summary with the medians and the median of the pairwise
ratios (oauth2 / password). Spool and state on a loop-mounted journaled ext4 image when
run as root (bench/benchfs.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchfs import workdir  # bench/benchfs.py, beside this script
from outbound import BODY, free_port  # the burst's body, as bench/outbound.py sends it

TOKEN = "bench-access-token-0123456789abcdef"
PASSWORD = "bench-password"

SINK = f"""
import base64, logging, time
logging.disable(logging.WARNING)  # aiosmtpd's notes on login_data and plain-text AUTH
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

class Sink(SMTP):
    async def auth_XOAUTH2(self, _, args):
        blob = base64.b64decode(args[1]).decode() if len(args) > 1 else ""
        return AuthResult(success="auth=Bearer {TOKEN}\\x01" in blob, handled=False)
    async def auth_OAUTHBEARER(self, _, args):
        return await self.auth_XOAUTH2(_, args)

class Handler:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"

def check(server, session, envelope, mechanism, data):
    if isinstance(data, LoginPassword):
        return AuthResult(success=data.password == b"{PASSWORD}")
    return AuthResult(success=False)

class C(Controller):
    def factory(self):
        return Sink(self.handler, **self.SMTP_kwargs)

c = C(Handler(), hostname="127.0.0.1", port=PORT, authenticator=check,
      auth_require_tls=False, auth_required=True)
c.start()
while True:
    time.sleep(3600)
"""

CONFIG = """\
version: 1
daemon:
  state_dir: {root}/state
  spool_dir: {root}/spool
users: [app]
outgoing_servers:
  - name: sink
    host: 127.0.0.1
    port: {port}
    security: none
    max_connections: 4
    username: app@example.com
{login}accounts:
  - {{name: notifications, email: notifications@example.com, server: sink,
      granted_to: [app]}}
"""
PASSWORD_LOGIN = f"    password: {PASSWORD}\n"
OAUTH2_LOGIN = """\
    auth:
      oauth2: {{provider: generic, client_id: bench, client_secret: bench-secret,
               token_url: "http://127.0.0.1:{token_port}/token", scope: mail}}
"""


@contextlib.contextmanager
def token_endpoint() -> Iterator[int]:
    """A client-credentials token endpoint handing out TOKEN for an hour."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = json.dumps({"access_token": TOKEN, "token_type": "Bearer",
                               "expires_in": 3600}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def sink(port: int) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-c", SINK.replace("PORT", str(port))])
    for _ in range(200):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.05)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait()


def one_run(kind: str, n: int, port: int, token_port: int) -> dict[str, object]:
    from mailsync.outbound.spool import drop_eml, ensure_dirs

    login = PASSWORD_LOGIN if kind == "password" else OAUTH2_LOGIN.format(token_port=token_port)
    with workdir() as (root, fs):
        cfg = root / "config.yaml"
        cfg.write_text(CONFIG.format(root=root, port=port, login=login))
        ensure_dirs(root / "spool")
        for i in range(n):
            drop_eml(root / "spool", (f"X-Mailsync-User: app\r\nTo: user{i}@example.org\r\n"
                                      f"Subject: Benchmark {i}\r\n\r\n{BODY}").encode())
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "mailsync", "run", "--once", "-c", str(cfg)],
                              capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"mailsync failed: {proc.stderr[-2000:]}")
        m = re.search(r"(\d+) sent", proc.stdout)
        sent = int(m.group(1)) if m else 0
        if sent != n:
            raise SystemExit(f"{kind}: only {sent} of {n} sent: {proc.stdout}")
        return {"bench": "oauth2", "auth": kind, "messages": n, "seconds": round(elapsed, 3),
                "messages_per_s": round(n / elapsed, 1), "filesystem": fs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3, help="pairs of runs")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    port = free_port()
    rates: dict[str, list[float]] = {"password": [], "oauth2": []}
    with sink(port), token_endpoint() as token_port:
        for _ in range(args.runs):
            for kind in ("password", "oauth2"):
                result = one_run(kind, args.n, port, token_port)
                print(json.dumps(result), flush=True)
                rates[kind].append(float(str(result["messages_per_s"])))
    ratios = [o / p for p, o in zip(rates["password"], rates["oauth2"], strict=True)]
    print(json.dumps({"bench": "oauth2", "summary": True, "pairs": args.runs,
                      "median_password_per_s": statistics.median(rates["password"]),
                      "median_oauth2_per_s": statistics.median(rates["oauth2"]),
                      "median_ratio": round(statistics.median(ratios), 3),
                      "target_ratio": 0.95}))


if __name__ == "__main__":
    main()
