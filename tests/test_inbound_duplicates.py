"""Servers naming one message twice (a UID in UID SEARCH/FETCH, a UIDL in a listing)
must not wedge the mailbox: each message is stored once, the next poll works, and a
store that refuses a batch is reported in words, not in SQLite's.

The servers are small hostile ones written here on raw sockets (127.0.0.1), speaking
just enough IMAP4rev1 or POP3 for a poll; the polls go through ``mailsync inbox poll``.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from mailsync.cli import main
from tests.dovecot import message, write_config
from tests.sqlitedb import sqlite_file

HOST = "127.0.0.1"
RAW_SQLITE = ("UNIQUE constraint", "IntegrityError", "sqlite3", "constraint failed")

Handler = Callable[[socket.socket], None]


class Server:
    """A loopback listener serving each connection with ``handler`` in its own thread."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock = socket.create_server((HOST, 0))
        self.port = int(self.sock.getsockname()[1])
        self.sessions = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.sessions += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            with contextlib.suppress(OSError):
                self.handler(conn)

    def close(self) -> None:
        self.sock.close()


def _lines(conn: socket.socket) -> Iterator[str]:
    buf = b""
    while True:
        while b"\r\n" not in buf:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\r\n", 1)
        yield line.decode("ascii", "replace")


# -- IMAP ------------------------------------------------------------------------------

UIDVALIDITY = 7
IMAP_MESSAGES = {1: message(1), 2: message(2), 3: message(3)}


def _uid_set(text: str) -> list[int]:
    uids: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition(":")
        top = max(IMAP_MESSAGES) if high == "*" else int(high or low)
        uids.extend(range(int(low), top + 1))
    return uids


def imap(duplicate: bool) -> Handler:
    """An IMAP server; with ``duplicate``, it lists UID 2 twice more in UID SEARCH and
    answers UID FETCH with UID 2 twice."""
    return lambda conn: _imap(conn, [2, 2] if duplicate else [])


def _imap(conn: socket.socket, extra: list[int]) -> None:
    conn.sendall(b"* OK [CAPABILITY IMAP4rev1 UNSELECT] hostile IMAP ready\r\n")
    uidnext = max(IMAP_MESSAGES) + 1
    for line in _lines(conn):
        tag, _, rest = line.partition(" ")
        words = rest.split()
        cmd = " ".join(words[:2]).upper() if words[:1] == ["UID"] else words[0].upper()
        out = b""
        if cmd == "CAPABILITY":
            out = b"* CAPABILITY IMAP4rev1 UNSELECT\r\n"
        elif cmd in ("SELECT", "EXAMINE"):
            out = (f"* {len(IMAP_MESSAGES)} EXISTS\r\n* 0 RECENT\r\n"
                   f"* OK [UIDVALIDITY {UIDVALIDITY}] UIDs valid\r\n"
                   f"* OK [UIDNEXT {uidnext}] predicted\r\n* FLAGS (\\Seen)\r\n").encode()
        elif cmd == "STATUS":
            out = (f"* STATUS INBOX (UIDVALIDITY {UIDVALIDITY} UIDNEXT {uidnext} "
                   f"MESSAGES {len(IMAP_MESSAGES)})\r\n").encode()
        elif cmd == "UID SEARCH":
            found = [u for u in _uid_set(words[-1]) if u in IMAP_MESSAGES]
            out = ("* SEARCH " + " ".join(str(u) for u in [*found, *extra]) + "\r\n").encode()
        elif cmd == "UID FETCH":
            for uid in [*_uid_set(words[2]), *extra[:1]]:
                if uid in IMAP_MESSAGES:
                    body = IMAP_MESSAGES[uid]
                    out += (f"* {uid} FETCH (UID {uid} BODY[] {{{len(body)}}}\r\n".encode()
                            + body + b")\r\n")
        elif cmd == "LOGOUT":
            conn.sendall(b"* BYE bye\r\n" + f"{tag} OK LOGOUT done\r\n".encode())
            return
        elif cmd not in ("LOGIN", "NOOP", "UNSELECT", "CLOSE"):
            conn.sendall(f"{tag} BAD unknown command\r\n".encode())
            continue
        conn.sendall(out + f"{tag} OK {cmd} done\r\n".encode())


# -- POP3 ------------------------------------------------------------------------------

class HostilePop3:
    """A maildrop whose UIDL listing gives messages 1 and 2 the same unique-id "dup"."""

    def __init__(self, messages: list[tuple[str, bytes]] | None = None,
                 on_retr: Callable[[int], None] | None = None) -> None:
        self.messages = messages if messages is not None else [
            ("dup", message(1)), ("dup", message(2)), ("own", message(3))]
        self.on_retr = on_retr
        self.deleted: list[list[int]] = []  # the DELEd numbers, per session that QUIT

    def __call__(self, conn: socket.socket) -> None:
        conn.sendall(b"+OK hostile POP3 ready\r\n")
        marked: list[int] = []
        for line in _lines(conn):
            cmd, _, arg = line.partition(" ")
            cmd = cmd.upper()
            if cmd == "UIDL":
                listing = "".join(f"{i} {uidl}\r\n"
                                  for i, (uidl, _) in enumerate(self.messages, 1))
                conn.sendall(f"+OK\r\n{listing}.\r\n".encode())
            elif cmd == "RETR":
                if self.on_retr is not None:
                    self.on_retr(int(arg))
                body = self.messages[int(arg) - 1][1]
                stuffed = b"\r\n".join(b"." + x if x.startswith(b".") else x
                                       for x in body.split(b"\r\n"))
                conn.sendall(b"+OK\r\n" + stuffed + b"\r\n.\r\n")
            elif cmd == "DELE":
                marked.append(int(arg))
                conn.sendall(b"+OK marked\r\n")
            elif cmd == "QUIT":
                self.deleted.append(sorted(marked))
                self.messages = [m for i, m in enumerate(self.messages, 1) if i not in marked]
                conn.sendall(b"+OK bye\r\n")
                return
            elif cmd in ("USER", "PASS", "NOOP"):
                conn.sendall(b"+OK\r\n")
            else:
                conn.sendall(b"-ERR unknown command\r\n")


# -- helpers ---------------------------------------------------------------------------

@pytest.fixture
def serve() -> Iterator[Callable[[Handler], Server]]:
    servers: list[Server] = []

    def start(handler: Handler) -> Server:
        servers.append(Server(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _config(tmp_path: Path, kind: str, port: int, *, keep: bool) -> Path:
    (tmp_path / "pw").write_text("secret")
    return write_config(tmp_path, (
        f"  - name: box\n    type: {kind}\n    host: {HOST}\n    port: {port}\n"
        "    security: none\n    username: someone\n    password: {file: pw}\n"
        f"    keep_on_server: {'true' if keep else 'false'}\n    timeout: 5s\n"))


def _poll(cfg: Path) -> Result:
    return CliRunner().invoke(main, ["inbox", "poll", "-c", str(cfg)])


def _stored(cfg: Path) -> list[tuple[str, str]]:
    listed = CliRunner().invoke(main, ["inbox", "-c", str(cfg), "--format", "json"])
    assert listed.exit_code == 0, listed.output
    return sorted((r["source_key"], r["subject"]) for r in json.loads(listed.output))


def _no_raw_sqlite(result: Result) -> None:
    for text in RAW_SQLITE:
        assert text not in result.output


# -- tests -----------------------------------------------------------------------------

def test_imap_uid_named_twice_is_stored_once_and_the_mailbox_keeps_working(serve, tmp_path):
    server = serve(imap(duplicate=True))
    cfg = _config(tmp_path, "imap", server.port, keep=True)

    first = _poll(cfg)

    assert first.exit_code == 0, first.output
    assert first.stdout == "box: 3 fetched\n"
    assert "named 2 UID(s) more than once" in first.stderr
    _no_raw_sqlite(first)
    assert _stored(cfg) == [(f"{UIDVALIDITY}/{i}", f"message {i}") for i in (1, 2, 3)]
    second = _poll(cfg)
    assert second.exit_code == 0 and second.stdout == "box: 0 fetched\n", second.output
    _no_raw_sqlite(second)
    assert len(_stored(cfg)) == 3


def test_imap_message_stored_under_its_key_already_is_not_stored_again(serve, tmp_path):
    """The folder came back to an earlier UIDVALIDITY (or another poll stored it): a
    UIDVALIDITY/UID the store holds is the same message, skipped, not a wedge."""
    server = serve(imap(duplicate=False))
    cfg = _config(tmp_path, "imap", server.port, keep=True)
    assert _poll(cfg).exit_code == 0  # creates the store
    db = sqlite3.connect(tmp_path / "state" / "mailsync.db")
    with db:
        db.execute("DELETE FROM fetched WHERE source_key != ?", (f"{UIDVALIDITY}/2",))
        db.execute("DELETE FROM fetch_state")
    db.close()

    again = _poll(cfg)

    assert again.exit_code == 0, again.output
    assert again.stdout == "box: 2 fetched, 1 already stored\n"
    assert _stored(cfg) == [(f"{UIDVALIDITY}/{i}", f"message {i}") for i in (1, 2, 3)]


def test_a_store_refusing_the_batch_is_a_classified_poll_failure(serve, tmp_path):
    server = serve(imap(duplicate=False))
    cfg = _config(tmp_path, "imap", server.port, keep=True)
    assert _poll(cfg).exit_code == 0
    db = sqlite3.connect(tmp_path / "state" / "mailsync.db")
    with db:
        db.execute("DELETE FROM fetched")
        db.execute("DELETE FROM fetch_state")
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON fetched"
                   " BEGIN SELECT RAISE(ABORT, 'no room for box'); END")
    db.close()

    refused = _poll(cfg)

    assert refused.exit_code == 1
    assert refused.stdout == ("box: failed: the store refused the fetched messages (SQLite "
                              "error IntegrityError: no room for box)\n")
    assert re.search(r"box: poll failed: the store refused the fetched messages \(",
                     refused.stderr)
    assert _stored(cfg) == []


def test_pop3_uidl_named_twice_stores_the_first_and_leaves_the_other(serve, tmp_path):
    pop = HostilePop3()
    server = serve(pop)
    cfg = _config(tmp_path, "pop", server.port, keep=False)

    first = _poll(cfg)

    assert first.exit_code == 0, first.output
    assert first.stdout == "box: 2 fetched\n"
    assert ("gives 1 message(s) the unique-id of an earlier one (message 2 has 'dup', as "
            "message 1): the first of each is stored") in first.stderr
    _no_raw_sqlite(first)
    assert _stored(cfg) == [("dup", "message 1"), ("own", "message 3")]
    assert pop.deleted == [[1, 3]]  # message 2 was not stored: it is not deleted
    second = _poll(cfg)
    assert second.exit_code == 0 and second.stdout == "box: 0 fetched\n", second.output
    _no_raw_sqlite(second)
    assert _stored(cfg) == [("dup", "message 1"), ("own", "message 3")]


def test_pop3_message_another_poll_stored_meanwhile_fails_in_words_then_heals(serve,
                                                                           tmp_path):
    """Another poll of the same maildrop (the daemon and `inbox poll`) stores message "b"
    between this poll's UIDL and its commit: the batch is refused, said in words, and
    the next poll stores the rest (the store now holds "b")."""
    db = tmp_path / "state" / "mailsync.db"

    def store_b_meanwhile(number: int) -> None:
        if number == 2:
            with sqlite_file(db) as conn:
                conn.execute("INSERT INTO fetched (server, folder, source_key, fetched_at,"
                             " size, subject) VALUES ('box', '', 'b', 0, 1, 'message 2')")

    pop = HostilePop3([("a", message(1)), ("b", message(2))], on_retr=store_b_meanwhile)
    server = serve(pop)
    cfg = _config(tmp_path, "pop", server.port, keep=True)

    raced = _poll(cfg)

    assert raced.exit_code == 1
    assert raced.stdout == ("box: failed: the store refused the fetched messages (message "
                            "'b' is already stored under that key; nothing of this batch "
                            "was kept)\n")
    _no_raw_sqlite(raced)
    pop.on_retr = None
    healed = _poll(cfg)
    assert healed.exit_code == 0 and healed.stdout == "box: 1 fetched\n", healed.output
    assert _stored(cfg) == [("a", "message 1"), ("b", "message 2")]
