"""Slow peers for the deadline tests: raw-socket SMTP, IMAP and POP3 servers on 127.0.0.1.

Each answers like a plain server except at one chosen step, where it *drips* its answer
one byte every :data:`DRIP` seconds (so every socket read gets a byte well within any
per-read timeout, yet the answer takes many seconds), and :func:`throttle` is a proxy
that forwards what a client sends at a fixed rate (a healthy server that reads slowly).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

HOST = "127.0.0.1"
DRIP = 0.2  # seconds between two bytes of a dripped answer
PAD = b"x" * 24  # a dripped answer's text: ~30 bytes, so ~6 s in all

Handler = Callable[[socket.socket, BinaryIO], None]


def drip(conn: socket.socket, data: bytes) -> None:
    """Send ``data`` one byte at a time, :data:`DRIP` s apart (stops when the peer left)."""
    for i in range(len(data)):
        conn.sendall(data[i:i + 1])
        time.sleep(DRIP)


@contextlib.contextmanager
def serve(handler: Handler) -> Iterator[int]:
    """Run ``handler(conn, reader)`` for every connection to a new port; yields the port."""
    listener = socket.create_server((HOST, 0))
    port = int(listener.getsockname()[1])
    conns: list[socket.socket] = []

    def one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError), conn.makefile("rb") as reader:
            handler(conn, reader)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                conns.append(conn)
                threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield port
    finally:
        listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def smtp(step: str, *, pipelining: bool = False) -> Handler:
    """An SMTP server that drips its answer at ``step``: greeting, ehlo, auth (the first
    answer to AUTH LOGIN), mail, rcpt, data (the 354) or end (the reply after the
    message content)."""

    def handle(conn: socket.socket, reader: BinaryIO) -> None:
        def answer(at: str, reply: bytes) -> None:
            if at == step:
                drip(conn, reply[:3] + b" " + PAD + b"\r\n")
            else:
                conn.sendall(reply)

        answer("greeting", b"220 slow ESMTP\r\n")
        while line := reader.readline(4096):
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                extra = b"PIPELINING" if pipelining else b"8BITMIME"
                answer("ehlo", b"250-slow\r\n250-SIZE 100000000\r\n250-AUTH LOGIN\r\n250 "
                       + extra + b"\r\n")
            elif verb == b"AUTH":
                answer("auth", b"334 VXNlcm5hbWU6\r\n")
            elif verb == b"MAIL":
                answer("mail", b"250 2.1.0 ok\r\n")
            elif verb == b"RCPT":
                answer("rcpt", b"250 2.1.5 ok\r\n")
            elif verb == b"DATA":
                answer("data", b"354 go ahead\r\n")
                while (body := reader.readline(1 << 20)) and body != b".\r\n":
                    pass
                answer("end", b"250 2.0.0 queued\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                return
            else:
                conn.sendall(b"250 ok\r\n")

    return handle


def imap(step: str) -> Handler:
    """An IMAP server (one empty INBOX) that drips its answer at ``step``: greeting,
    login or select (SELECT and EXAMINE)."""

    def handle(conn: socket.socket, reader: BinaryIO) -> None:
        def answer(at: str, reply: bytes) -> None:
            if at == step:
                drip(conn, reply)
            else:
                conn.sendall(reply)

        answer("greeting", b"* OK slow IMAP ready\r\n")
        while line := reader.readline(4096):
            tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
            verb = rest.split(b" ", 1)[0].upper()
            done = tag + b" OK done\r\n"
            if verb == b"CAPABILITY":
                conn.sendall(b"* CAPABILITY IMAP4rev1 IDLE\r\n" + done)
            elif verb == b"LOGIN":
                answer("login", done)
            elif verb in (b"SELECT", b"EXAMINE"):
                answer("select", b"* OK [UIDVALIDITY 7] ok\r\n" + done)
            elif verb == b"LOGOUT":
                conn.sendall(b"* BYE bye\r\n" + done)
                return
            else:
                conn.sendall(done)

    return handle


def pop3(step: str, *, message: bytes = b"Subject: x\r\n\r\nx\r\n",
         rate: float = 0.0) -> Handler:
    """A POP3 server with one message that drips its answer at ``step``: greeting, pass or
    uidl; ``rate`` (bytes/s, 0: at once): how fast RETR sends the message."""

    def handle(conn: socket.socket, reader: BinaryIO) -> None:
        def answer(at: str, reply: bytes) -> None:
            if at == step:
                drip(conn, reply)
            else:
                conn.sendall(reply)

        answer("greeting", b"+OK slow POP3 ready\r\n")
        while line := reader.readline(4096):
            verb = line[:4].upper()
            if verb == b"PASS":
                answer("pass", b"+OK logged in\r\n")
            elif verb == b"UIDL":
                answer("uidl", b"+OK\r\n1 m1\r\n.\r\n")
            elif verb == b"LIST":  # the sizes, asked before RETR (max_message_size)
                conn.sendall(b"+OK\r\n1 %d\r\n.\r\n" % len(message))
            elif verb == b"RETR":
                conn.sendall(b"+OK\r\n")
                data = message + b".\r\n"
                chunk = 16 * 1024
                for start in range(0, len(data), chunk):
                    conn.sendall(data[start:start + chunk])
                    if rate:
                        time.sleep(chunk / rate)
            elif verb == b"QUIT":
                conn.sendall(b"+OK bye\r\n")
                return
            elif verb == b"CAPA":
                conn.sendall(b"-ERR no\r\n")
            else:
                conn.sendall(b"+OK\r\n")

    return handle


@contextlib.contextmanager
def throttle(port: int, rate: float) -> Iterator[int]:
    """A proxy to ``HOST:port`` that forwards what the client sends at ``rate`` bytes/s
    (its own receive buffer kept small) and the server's answers at once."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    listener.bind((HOST, 0))
    listener.listen()
    proxy_port = int(listener.getsockname()[1])

    def pump(src: socket.socket, dst: socket.socket, limit: float) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(8 * 1024):
                dst.sendall(data)
                if limit:
                    time.sleep(len(data) / limit)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                upstream = socket.create_connection((HOST, port))
                threading.Thread(target=pump, args=(client, upstream, rate),
                                 daemon=True).start()
                threading.Thread(target=pump, args=(upstream, client, 0.0),
                                 daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield proxy_port
    finally:
        listener.close()
