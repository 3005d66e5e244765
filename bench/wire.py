#!/usr/bin/env python3
"""The SMTP exchanges alone, driven by threads or by one I/O loop: what the loop saves.

Sends N (default 5,000) of bench/outbound.py's messages to Postfix's ``smtp-sink`` (or
the aiosmtpd sink) over K sessions (default 4), with no queue, store or parsing: per
message one write of MAIL, RCPT and DATA (pipelined), their three replies, one write of
the content, its reply. Two ways, alternating in each round:

- ``threads``: a thread per session, blocking sockets (as mailsync's senders);
- ``loop``: one thread, non-blocking sockets, a ``selectors`` loop over the K sessions.

The difference of their CPU per message bounds what replacing mailsync's sender threads
with one I/O loop could save. Prints one JSON line per round and a summary of medians.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Callable

import outbound  # bench/outbound.py, beside this script: its message and its sink

ENVELOPE = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"


def content(i: int) -> bytes:
    data = outbound.message(i).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data + (b"" if data.endswith(b"\r\n") else b"\r\n") + b".\r\n"


def connect(port: int) -> tuple[socket.socket, io.BufferedReader]:
    sock = socket.create_connection(("127.0.0.1", port))
    reader = sock.makefile("rb")
    reader.readline()  # the greeting
    sock.sendall(b"EHLO bench.example\r\n")
    while reader.readline()[3:4] != b" ":
        pass
    return sock, reader


def threads(port: int, n: int, k: int, body: bytes) -> None:
    def session(count: int) -> None:
        sock, reader = connect(port)
        with sock:
            for _ in range(count):
                sock.sendall(ENVELOPE)
                for _ in range(3):
                    while reader.readline()[3:4] != b" ":
                        pass
                sock.sendall(body)
                while reader.readline()[3:4] != b" ":
                    pass
            sock.sendall(b"QUIT\r\n")

    workers = [threading.Thread(target=session, args=(n // k,)) for _ in range(k)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


class _Session:
    __slots__ = ("sock", "buffer", "replies", "in_content", "left")

    def __init__(self, sock: socket.socket, left: int) -> None:
        self.sock, self.buffer, self.replies, self.in_content, self.left = \
            sock, b"", 3, False, left


def loop(port: int, n: int, k: int, body: bytes) -> None:
    selector = selectors.DefaultSelector()
    for _ in range(k):
        sock, _reader = connect(port)  # the greeting and EHLO read: nothing buffered after
        sock.setblocking(False)
        session = _Session(sock, n // k)
        sock.sendall(ENVELOPE)
        selector.register(sock, selectors.EVENT_READ, session)
    active = k
    while active:
        for key, _ in selector.select():
            s: _Session = key.data
            s.buffer += s.sock.recv(65536)
            while s.replies and b"\n" in s.buffer:
                line, _, s.buffer = s.buffer.partition(b"\n")
                if line[3:4] == b" ":
                    s.replies -= 1
            if s.replies:
                continue
            if not s.in_content:  # the envelope's three replies: the content now
                s.sock.sendall(body)
                s.in_content, s.replies = True, 1
                continue
            s.left -= 1
            if s.left:
                s.sock.sendall(ENVELOPE)
                s.in_content, s.replies = False, 3
            else:
                selector.unregister(s.sock)
                s.sock.close()
                active -= 1
    selector.close()


def measured(way: Callable[[int, int, int, bytes], None], port: int, n: int, k: int,
             body: bytes) -> tuple[float, float]:
    """(messages/s, CPU ms per message) of this process for one way."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    way(port, n, k, body)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return n / elapsed, cpu * 1000 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    body = content(0)
    port = outbound.free_port()
    rows: dict[str, list[tuple[float, float]]] = {"threads": [], "loop": []}
    with outbound.sink(port) as sink_name:
        for i in range(args.runs):
            order = ("threads", "loop") if i % 2 == 0 else ("loop", "threads")
            for name in order:
                rate, cpu = measured(threads if name == "threads" else loop, port, args.n,
                                     args.sessions, body)
                rows[name].append((rate, cpu))
                print(json.dumps({"bench": "wire", "way": name, "sessions": args.sessions,
                                  "messages": args.n, "messages_per_s": round(rate),
                                  "cpu_ms_per_message": round(cpu, 4), "sink": sink_name}),
                      flush=True)
    cpu_ms = {name: statistics.median(c for _, c in v) for name, v in rows.items()}
    print(json.dumps({
        "bench": "wire", "summary": True, "runs": args.runs, "sessions": args.sessions,
        "median_messages_per_s": {name: round(statistics.median(r for r, _ in v))
                                  for name, v in rows.items()},
        "median_cpu_ms_per_message": {name: round(c, 4) for name, c in cpu_ms.items()},
        "loop_saves_cpu_ms_per_message": round(cpu_ms["threads"] - cpu_ms["loop"], 4)}),
        flush=True)


if __name__ == "__main__":
    main()
