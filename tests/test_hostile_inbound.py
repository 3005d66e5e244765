"""Hostile IMAP and POP3 servers cannot exhaust the daemon's memory nor stall its sending.

Small raw-socket servers on 127.0.0.1 declare one message small and then send it
endlessly: an IMAP ``{10000000000}`` literal, a POP3 RETR that never ends, a UIDL
listing that never ends. mailsync runs as a real subprocess (the daemon, or ``inbox
poll``); its peak RSS is read from /proc/PID/status (VmHWM). Each server would stream
1.5 GB; mailsync must cut it off early, record the message as skipped (never fetched
again), store the honest one, and send a spool message dropped meanwhile within 2 s.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mailsync.outbound.spool import drop
from tests.daemon_helpers import DaemonProcess, daemon_config, daemons_fixture  # noqa: F401
from tests.dovecot import message
from tests.outbound_helpers import server_yaml
from tests.smtpserver import smtp_server_fixture  # noqa: F401
from tests.test_hostile_smtp import _mailsync

HOST = "127.0.0.1"
STREAM = 1536 * 1024 * 1024  # what each hostile server would send: 1.5 GB
CHUNK = b"x" * 998 + b"\r\n"
HONEST = message(2)


class Streams:
    """What a hostile server sent: bytes per endless answer, and whether the client hung
    up before the end (``dropped``)."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.dropped: list[bool] = []
        self.started = threading.Event()
        self.commands: list[str] = []

    def flood(self, conn: socket.socket, head: bytes) -> None:
        conn.sendall(head)
        self.sent.append(0)
        self.dropped.append(False)
        self.started.set()
        block = CHUNK * 64
        try:
            while self.sent[-1] < STREAM:
                conn.sendall(block)
                self.sent[-1] += len(block)
        except OSError:
            self.dropped[-1] = True


def _lines(conn: socket.socket) -> Iterator[str]:
    reader = conn.makefile("rb")
    while line := reader.readline(10000):
        yield line.decode("ascii", "replace").rstrip("\r\n")


def _uid_set(text: str) -> set[int]:
    uids: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition(":")
        uids.update(range(int(low), (9 if high == "*" else int(high or low)) + 1))
    return uids


def _serve(handler: Callable[[socket.socket], None]) -> tuple[socket.socket, int]:
    listener = socket.create_server((HOST, 0))

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=_one, args=(conn,), daemon=True).start()

    def _one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            handler(conn)

    threading.Thread(target=accept, daemon=True).start()
    return listener, int(listener.getsockname()[1])


def imap_liar(streams: Streams) -> Callable[[socket.socket], None]:
    """UID 1 and 2 declared 100 bytes (RFC822.SIZE); UID 1's BODY[] is a literal of
    10,000,000,000 bytes that never ends; UID 2 is an honest message."""

    def handler(conn: socket.socket) -> None:
        conn.sendall(b"* OK [CAPABILITY IMAP4rev1 UNSELECT] liar ready\r\n")
        for line in _lines(conn):
            tag, _, rest = line.partition(" ")
            words = rest.split()
            cmd = " ".join(words[:2]).upper() if words[:1] == ["UID"] else words[0].upper()
            streams.commands.append(rest)
            out = b""
            if cmd == "CAPABILITY":
                out = b"* CAPABILITY IMAP4rev1 UNSELECT\r\n"
            elif cmd in ("SELECT", "EXAMINE"):
                out = (b"* 2 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 3] ok\r\n")
            elif cmd == "STATUS":
                out = b"* STATUS INBOX (UIDVALIDITY 7 UIDNEXT 3 MESSAGES 2)\r\n"
            elif cmd == "UID SEARCH":
                out = b"* SEARCH 1 2\r\n"
            elif cmd == "UID FETCH":
                uids = [u for u in (1, 2) if u in _uid_set(words[2])]
                if "RFC822.SIZE" in rest.upper():
                    out = b"".join(f"* {u} FETCH (UID {u} RFC822.SIZE 100)\r\n".encode()
                                   for u in uids)
                elif 1 in uids:
                    streams.flood(conn, b"* 1 FETCH (UID 1 BODY[] {10000000000}\r\n")
                    return
                else:
                    out = (f"* 2 FETCH (UID 2 BODY[] {{{len(HONEST)}}}\r\n".encode() + HONEST
                           + b")\r\n")
            elif cmd == "LOGOUT":
                conn.sendall(b"* BYE bye\r\n" + f"{tag} OK done\r\n".encode())
                return
            conn.sendall(out + f"{tag} OK {cmd} done\r\n".encode())

    return handler


def pop3_liar(streams: Streams, *, endless_uidl: bool = False) -> Callable[[socket.socket], None]:
    """Messages 1 and 2 listed at 100 bytes; RETR 1 never ends (or, with
    ``endless_uidl``, the UIDL listing itself does not); message 2 is honest."""

    def handler(conn: socket.socket) -> None:
        conn.sendall(b"+OK liar ready\r\n")
        for line in _lines(conn):
            cmd, _, arg = line.partition(" ")
            cmd = cmd.upper()
            streams.commands.append(line)
            if cmd == "UIDL" and endless_uidl:
                streams.flood(conn, b"+OK\r\n1 lie\r\n" + b"".join(
                    f"{n} u{n}\r\n".encode() for n in range(2, 5000)))
                return
            if cmd == "UIDL":
                conn.sendall(b"+OK\r\n1 lie\r\n2 honest\r\n.\r\n")
            elif cmd == "LIST":
                conn.sendall(b"+OK\r\n1 100\r\n2 100\r\n.\r\n")
            elif cmd == "RETR" and arg == "1":
                streams.flood(conn, b"+OK\r\n")
                return
            elif cmd == "RETR":
                conn.sendall(b"+OK\r\n" + HONEST + b".\r\n")
            elif cmd == "QUIT":
                conn.sendall(b"+OK bye\r\n")
                return
            else:
                conn.sendall(b"+OK\r\n")

    return handler


def _incoming(kind: str, port: int, tmp_path: Path) -> str:
    (tmp_path / "pw").write_text("secret")
    return (f"  - name: box\n    type: {kind}\n    host: {HOST}\n    port: {port}\n"
            "    security: none\n    username: someone\n    password: {file: pw}\n"
            "    poll_interval: 1s\n    timeout: 10s\n    max_message_size: 5MiB\n")


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("kind", ["imap", "pop"])
def test_an_endless_message_is_cut_off_skipped_once_and_sending_goes_on(
        tmp_path, smtp_server, daemons, kind):
    srv = smtp_server()
    streams = Streams()
    listener, port = _serve(imap_liar(streams) if kind == "imap" else pop3_liar(streams))
    try:
        config = tmp_path / "mailsync.yaml"
        config.write_text(daemon_config(tmp_path, server_yaml("main", srv.port),
                                        incoming=_incoming(kind, port, tmp_path)))
        d: DaemonProcess = daemons(config)
        assert streams.started.wait(10), "the daemon never asked for the endless message"
        drop(tmp_path / "spool", user="alice", to=["b@example.org"], subject="meanwhile",
             text="x")
        started = time.monotonic()
        srv.wait_for(1, timeout=2.0)  # sent while the poller faces the hostile server
        assert time.monotonic() - started < 2.0

        reason = "oversized_literal" if kind == "imap" else "oversized_retr"
        skipped = ("mailsync_mailbox_messages_skipped_total", {"server": "box",
                                                               "reason": reason})
        fetched = ("mailsync_mailbox_messages_fetched_total", {"server": "box"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
                d.metric(skipped[0], **skipped[1]) == 1 and d.metric(fetched[0],
                                                                     **fetched[1]) == 1):
            time.sleep(0.05)
        assert d.metric(skipped[0], **skipped[1]) == 1, d.log
        assert d.metric(fetched[0], **fetched[1]) == 1, d.log  # the honest message
        time.sleep(1.5)  # more polls: the liar's message is not asked for again
        peak = _peak_mb(d.proc.pid)
        log = d.log
        assert d.stop() == 0
    finally:
        listener.close()
    assert len(streams.sent) == 1, streams.commands  # asked for once, never again
    assert streams.dropped == [True]  # mailsync hung up...
    assert streams.sent[0] < 64 << 20, streams.sent  # ...long before 1.5 GB
    assert peak <= 150, f"peak RSS {peak:.0f} MB"
    assert "message 7/1" in log if kind == "imap" else "message lie" in log
    assert log.count("skipped, left on the server and not tried again") == 1, log


def test_an_endless_uidl_listing_fails_the_poll_within_bounds(tmp_path):
    streams = Streams()
    listener, port = _serve(pop3_liar(streams, endless_uidl=True))
    try:
        cfg = tmp_path / "mailsync.yaml"
        cfg.write_text(daemon_config(tmp_path, "  - {name: main, host: 127.0.0.1, port: 9,"
                                     " security: none}\n",
                                     incoming=_incoming("pop", port, tmp_path)))
        done, peak = _mailsync(tmp_path, "inbox", "poll", "-c", str(cfg))
    finally:
        listener.close()
    assert done.returncode == 1
    assert "box: failed: box (127.0.0.1:" in done.stdout
    assert "UIDL listing longer than 20000000 bytes" in done.stdout, done.stdout
    assert streams.dropped == [True] and streams.sent[0] < 64 << 20, streams.sent
    assert peak <= 150, f"peak RSS {peak:.0f} MB"


def test_an_answer_nesting_its_lists_thousands_deep_fails_the_poll_not_the_poller(tmp_path):
    """imapclient reads parenthesised lists by recursion: a FETCH answer nesting them
    3,000 deep raised RecursionError out of the poll (in the daemon: the poller's thread
    stopped and the daemon turned unhealthy). It is a malformed answer: the poll fails,
    saying so, and the mailbox is probed again like a server that is down."""
    from tests.outbound_helpers import run

    def handler(conn: socket.socket) -> None:
        conn.sendall(b"* OK [CAPABILITY IMAP4rev1] deep ready\r\n")
        for line in _lines(conn):
            tag, _, rest = line.partition(" ")
            words = rest.split()
            cmd = " ".join(words[:2]).upper() if words[:1] == ["UID"] else words[0].upper()
            out = b""
            if cmd == "CAPABILITY":
                out = b"* CAPABILITY IMAP4rev1\r\n"
            elif cmd in ("SELECT", "EXAMINE"):
                out = b"* 1 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 2] ok\r\n"
            elif cmd == "STATUS":
                out = b"* STATUS INBOX (UIDVALIDITY 7 UIDNEXT 2 MESSAGES 1)\r\n"
            elif cmd == "UID SEARCH":
                out = b"* SEARCH 1\r\n"
            elif cmd == "UID FETCH":
                out = (b"* 1 FETCH (UID 1 RFC822.SIZE 100 FLAGS " + b"(" * 3000
                       + b")" * 3000 + b")\r\n")
            elif cmd == "LOGOUT":
                conn.sendall(b"* BYE bye\r\n" + f"{tag} OK done\r\n".encode())
                return
            conn.sendall(out + f"{tag} OK {cmd} done\r\n".encode())

    listener, port = _serve(handler)
    try:
        cfg = tmp_path / "config.yaml"
        cfg.write_text("version: 1\ndaemon:\n  state_dir: ./state\n  spool_dir: ./spool\n"
                       "incoming_servers:\n" + _incoming("imap", port, tmp_path))
        polled = run(["inbox", "poll", "-c", str(cfg)])
        assert polled.exit_code == 1 and not isinstance(polled.exception, RecursionError)
        assert "box: poll failed:" in polled.output
        assert "its lists nest too deep to be read" in polled.output
    finally:
        listener.close()
