"""Headers and keys longer than a store can index, on both backends.

PostgreSQL's B-tree refuses an index entry over 2,704 bytes, and a batch holding one
fails whole: before mailsync cut the indexed copy of a header (store.sql.indexed), a
message sent to 150 colleagues at once (its To header some 4 KB long) failed every poll of
its mailbox on PostgreSQL, and nothing after it was fetched again. Here: such a message
from a real Dovecot, a POP3 server listing a unique-id of 5,000 characters and a message
with a Message-ID and Subject of 6,000, and spool files with a Message-ID and Subject that long,
each stored (and tried) once on SQLite and on PostgreSQL, the message's bytes whole; what no
store keeps (a recipient's address over RFC 5321's 254 characters, an idempotency key over
200) is refused with its reason.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mailsync.config.tree import StoreBackend
from mailsync.inbound.pop3 import parse_uidl
from mailsync.outbound.spool import drop, drop_eml, parse
from mailsync.outbound.types import Rejection
from mailsync.store.sql import INDEXED_BYTES, indexed
from tests.dovecot import Mailbox, dovecot_fixture, incoming_yaml, mailbox_fixture  # noqa: F401
from tests.outbound_helpers import server_yaml
from tests.smtpserver import smtp_server_fixture  # noqa: F401
from tests.test_hostile_inbound import _lines, _serve

COLLEAGUES = ", ".join(f"Colleague Number {i} <colleague.{i}@example.com>" for i in range(150))
LONG_ID = "<" + "x" * 6000 + "@hostile.example>"
LONG_SUBJECT = "Ünïcode " * 750  # 6,000 characters, 7,500 bytes of UTF-8
LONG_UIDL = "U" * 5000


def _config(tmp_path: Path, backend: StoreBackend | None, incoming: str = "",
            servers: str = "  - {name: relay, host: 127.0.0.1, port: 9, security: none}\n"
            ) -> Path:
    store = ""
    if backend is not None:
        assert backend.dsn is not None
        store = f"  store: {{postgresql: {{dsn: '{backend.dsn.resolve()}'}}}}\n"
    cfg = tmp_path / "mailsync.yaml"
    cfg.write_text(
        f"version: 1\ndaemon:\n  state_dir: {tmp_path}/state\n  spool_dir: {tmp_path}/spool\n"
        f"{store}alias_domain: {{domain: example.com, bounce: bounce, catchall: catchall}}\n"
        f"users: [alice]\noutgoing_servers:\n{servers}accounts:\n"
        "  - {name: sales, email: sales@example.com, server: relay, granted_to: [alice]}\n"
        + (f"incoming_servers:\n{incoming}" if incoming else ""))
    return cfg


def _run(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailsync", *args, "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60, check=False)


def _inbox(cfg: Path) -> list[dict[str, object]]:
    done = _run(cfg, "inbox", "--format", "json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


def _cut(value: object) -> str:
    assert isinstance(value, str)
    assert len(value.encode()) <= INDEXED_BYTES
    return value


def test_a_mail_to_150_colleagues_from_dovecot_is_fetched_once(tmp_path, either_backend,
                                                              mailbox: Mailbox):
    raw = (f"From: Boss <boss@example.org>\r\nTo: {COLLEAGUES}\r\nSubject: All hands\r\n"
           "Message-ID: <all-hands@example.org>\r\n\r\nTomorrow at nine.\r\n").encode()
    assert len(COLLEAGUES) > 2 * 2704
    mailbox.append(raw)
    mailbox.append(b"From: a@example.org\r\nSubject: after it\r\n"
                   b"Message-ID: <after@example.org>\r\n\r\nnext\r\n")
    cfg = _config(tmp_path, either_backend,
                  incoming_yaml(mailbox, "box", tmp_path / "box.password"))
    first = _run(cfg, "inbox", "poll")
    assert (first.returncode, first.stdout.strip()) == (0, "box: 2 fetched"), first
    again = _run(cfg, "inbox", "poll")
    assert (again.returncode, again.stdout.strip()) == (0, "box: 0 fetched"), again
    rows = _inbox(cfg)
    assert [r["subject"] for r in rows] == ["after it", "All hands"]
    to = _cut(rows[1]["to"])
    assert COLLEAGUES.startswith(to) and len(to) > 900
    shown = _run(cfg, "inbox", "show", str(rows[1]["id"]), "--raw")
    assert "colleague.149@example.com" in shown.stdout  # the message itself is whole
    assert _inbox(cfg) == rows


def _pop3(served: bytes, commands: list[str]) -> Callable[[socket.socket], None]:
    """A POP3 server holding one message, ``served``, under a 5,000-character UIDL."""

    def handler(conn: socket.socket) -> None:
        conn.sendall(b"+OK ready\r\n")
        for line in _lines(conn):
            cmd = line.partition(" ")[0].upper()
            commands.append(cmd)
            if cmd == "CAPA":
                conn.sendall(b"+OK\r\nUIDL\r\nUSER\r\n.\r\n")
            elif cmd == "UIDL":
                conn.sendall(f"+OK\r\n1 {LONG_UIDL}\r\n.\r\n".encode())
            elif cmd == "LIST":
                conn.sendall(f"+OK\r\n1 {len(served)}\r\n.\r\n".encode())
            elif cmd == "RETR":
                conn.sendall(b"+OK\r\n" + served + b".\r\n")
            elif cmd == "QUIT":
                conn.sendall(b"+OK bye\r\n")
                return
            else:
                conn.sendall(b"+OK\r\n")

    return handler


def test_a_uidl_message_id_and_subject_too_long_for_an_index_are_stored_once(
        tmp_path, either_backend):
    served = (f"From: x@hostile.example\r\nMessage-ID: {LONG_ID}\r\n"
              f"Subject: {LONG_SUBJECT}\r\n\r\nbody\r\n").encode()
    commands: list[str] = []
    listener, port = _serve(_pop3(served, commands))
    try:
        (tmp_path / "pw").write_text("secret")
        cfg = _config(tmp_path, either_backend,
                      f"  - {{name: box, type: pop, host: 127.0.0.1, port: {port},"
                      " security: none, username: u, password: {file: pw}, timeout: 10s}\n")
        first = _run(cfg, "inbox", "poll")
        assert (first.returncode, first.stdout.strip()) == (0, "box: 1 fetched"), first
        again = _run(cfg, "inbox", "poll")
        assert (again.returncode, again.stdout.strip()) == (0, "box: 0 fetched"), again
    finally:
        listener.close()
    assert commands.count("RETR") == 1  # the second poll knew the message by its key
    [row] = _inbox(cfg)
    assert row["source_key"] == "sha256:" + hashlib.sha256(LONG_UIDL.encode()).hexdigest()
    assert LONG_ID.startswith(_cut(row["message_id"]))
    assert LONG_SUBJECT.strip().startswith(_cut(row["subject"]).strip())
    raw = subprocess.run([sys.executable, "-m", "mailsync", "inbox", "show", str(row["id"]),
                          "--raw", "-c", str(cfg)], capture_output=True, timeout=60,
                         check=True).stdout
    assert raw == served


def test_spool_files_with_a_message_id_and_subject_that_long_are_queued_and_tried(
        tmp_path, either_backend, smtp_server):
    srv = smtp_server()
    cfg = _config(tmp_path, either_backend, servers=server_yaml("relay", srv.port))
    (tmp_path / "spool" / "new").mkdir(parents=True)
    (tmp_path / "spool" / "tmp").mkdir()
    words = LONG_SUBJECT.split()
    folded = "\r\n ".join(" ".join(words[i:i + 10]) for i in range(0, len(words), 10))
    # A Message-ID line of 6,000 characters: past SMTP's 1,000, which the server refuses.
    drop_eml(tmp_path / "spool",
             (f"X-Mailsync-User: alice\r\nTo: b@example.org\r\nMessage-ID: {LONG_ID}\r\n"
              f"Subject: {folded}\r\n\r\nhello\r\n").encode())
    drop(tmp_path / "spool", user="alice", to=["c@example.org"], subject=LONG_SUBJECT,
         text="and a JSON one")
    done = _run(cfg, "run", "--once")
    assert done.returncode == 0, done.stderr
    assert "2 queued, 0 rejected" in done.stdout, done.stdout  # both in the store
    assert "1 sent, 0 deferred, 1 failed" in done.stdout, done.stdout
    [sent] = srv.wait_for(1)
    # The whole subject went out (in encoded words: it is not ASCII).
    subject = email.message_from_bytes(sent.data, policy=email.policy.default)["Subject"]
    assert subject.split() == words
    history = json.loads(_run(cfg, "history", "--format", "json").stdout)
    assert [r["status"] for r in history] == ["sent", "failed"]
    assert "Line too long" in str(history[1]["error"])  # the server's own reply
    assert LONG_ID.startswith(_cut(history[1]["message_id"]))
    assert all(" ".join(words).startswith(_cut(r["subject"]).strip()) for r in history)


@pytest.mark.parametrize(("doc", "reason", "detail"), [
    ({"to": ["a" * 250 + "@example.org"]}, "bad_recipient",
     "is 262 characters long (at most 254, RFC 5321)"),
    ({"idempotency_key": "k" * 201}, "unparseable",
     "the idempotency key is 201 characters long (at most 200)"),
])
def test_what_no_store_keeps_is_refused_with_its_reason(doc, reason, detail):
    data = json.dumps({"user": "alice", "to": ["a@example.org"], "subject": "s", **doc})
    refused = parse("x.json", data.encode(), max_size=1 << 20)
    assert isinstance(refused, Rejection)
    assert (refused.reason, detail in refused.detail) == (reason, True), refused
    ok = parse("x.json", json.dumps({"user": "alice", "to": ["a" * 240 + "@example.org"],
                                     "subject": "s", "idempotency_key": "k" * 200}).encode(),
               max_size=1 << 20)
    assert not isinstance(ok, Rejection)


def test_the_indexed_copy_is_cut_at_a_character_and_short_text_is_kept():
    assert indexed(None) is None
    assert indexed("short") == "short"
    cut = indexed("é" * 2000)
    assert cut is not None and cut == "é" * (INDEXED_BYTES // 2)
    cut = indexed("a" + "€" * 1000)  # 3 bytes a character: the last one is not split
    assert cut is not None and len(cut.encode()) <= INDEXED_BYTES and cut.endswith("€")


def test_a_long_uidl_is_named_by_its_hash_and_a_short_one_as_it_is():
    numbers, skipped = parse_uidl(f"1 abc\r\n2 {LONG_UIDL}\r\n3 {LONG_UIDL}\r\n".encode())
    assert len(numbers) == 2 and numbers["abc"] == "1"
    [(key, number)] = [(k, n) for k, n in numbers.items() if k != "abc"]
    assert key.startswith("sha256:") and len(key) == 71 and number == "2"
    assert skipped == [("3", key)]  # the same unique-id twice: the first wins
