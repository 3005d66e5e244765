"""Terminal and log injection: what strangers wrote is shown escaped, never run.

A message in a real Dovecot carries escape sequences and bidi controls in its Subject,
From and body; an aiosmtpd relay answers with escape sequences and a CR-injected fake
log line; a hostile server greets with an escape sequence. The listings, `inbox show`,
`history show`, the activity list, `mailsync test` and the daemon's log show them
escaped (`\\x1b`), while the store and `--raw` to a pipe keep the bytes exactly.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

from click.testing import CliRunner

from mailsync.cli import main
from mailsync.outbound.spool import drop
from tests.dovecot import dovecot_fixture, incoming_yaml, mailbox_fixture  # noqa: F401
from tests.outbound_helpers import server_yaml, write_config
from tests.smtpserver import smtp_server_fixture  # noqa: F401
from tests.sqlitedb import sqlite_file

ESC = "\x1b"
SUBJECT = "Invoice \x1b]0;pwned\x07\x1b[2J paid \u202egnp.exe"
BODY = ("Dear admin,\r\n"
        "\x1b]8;;http://evil.example/\x1b\\click here\x1b]8;;\x1b\\\r\n"
        "Total: 100=0DTotal: 999\r\n"  # quoted-printable: a bare CR in the text
        "abc\x08\x08\x08xyz \u202eexe.pdf\r\n")
RAW = ("From: \"Bank\x1b[31m Support\" <evil@example.org>\r\n"
       "To: support@example.com\r\n"
       f"Subject: =?utf-8?b?{base64.b64encode(SUBJECT.encode()).decode()}?=\r\n"
       "Message-ID: <evil@test>\r\nDate: Tue, 25 Nov 2025 10:00:00 +0000\r\n"
       "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
       "Content-Transfer-Encoding: quoted-printable\r\n\r\n" + BODY).encode()
TYPES = ("activity_types:\n  - name: Reply\n    action: email\n    default_user: alice\n"
         "    delay: {count: 1, unit: days}\n")
RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ mailsync\b")


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _clean(out: str) -> None:
    """No character that a terminal would act on or reorder."""
    bad = re.findall(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", out)
    assert not bad, bad


def _mailsync(*args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "mailsync", *args], capture_output=True,
                          timeout=60, check=False, **kwargs)  # type: ignore[call-overload]


def _fetched(tmp_path: Path, mailbox) -> Path:
    cfg = tmp_path / "config.yaml"
    incoming = incoming_yaml(mailbox, "support", tmp_path / "imap.secret",
                             extra="    activity: {type: Reply, user: alice}\n")
    cfg.write_text("version: 1\ndaemon:\n  state_dir: ./state\n  spool_dir: ./spool\n"
                   "users: [alice]\n" + TYPES + "incoming_servers:\n" + incoming)
    mailbox.append(RAW)
    assert "support: 1 fetched\n" in _run("inbox", "poll", "-c", str(cfg))
    return cfg


def test_fetched_mail_is_shown_escaped_and_kept_intact(tmp_path, mailbox):
    cfg = _fetched(tmp_path, mailbox)

    listing = _run("inbox", "-c", str(cfg))
    _clean(listing)
    assert "Invoice \\x1b]0;pwned\\x07…" in listing  # cut to fit 100 columns
    assert '"Bank\\x1b[31m Support"' in listing
    assert max(len(line) for line in listing.splitlines()) <= 100
    wide = _run("inbox", "-c", str(cfg), "--wide")
    _clean(wide)
    assert "Invoice \\x1b]0;pwned\\x07\\x1b[2J paid \\u202egnp.exe  " in wide
    assert '"Bank\\x1b[31m Support" <evil@example.org>  ' in wide

    shown = _run("inbox", "show", "1", "-c", str(cfg))
    _clean(shown)
    assert "  subject: Invoice \\x1b]0;pwned\\x07\\x1b[2J paid \\u202egnp.exe\n" in shown
    assert '  from: "Bank\\x1b[31m Support" <evil@example.org>\n' in shown
    for line in ("  \\x1b]8;;http://evil.example/\\x1b\\click here\\x1b]8;;\\x1b\\\n",
                 "  Total: 100\\rTotal: 999\n", "  abc\\x08\\x08\\x08xyz \\u202eexe.pdf\n"):
        assert line in shown

    # JSON: json.dumps writes ASCII only; the values decode to exactly what was sent.
    as_json = _run("inbox", "-c", str(cfg), "--format", "json")
    _clean(as_json)
    assert "\\u001b]0;pwned\\u0007" in as_json and "\\u202e" in as_json
    assert json.loads(as_json)[0]["subject"] == SUBJECT
    detail = _run("inbox", "show", "1", "-c", str(cfg), "--format", "json")
    _clean(detail)
    assert "abc\x08\x08\x08xyz \u202eexe.pdf" in json.loads(detail)["content"]

    # The activity scheduled from the message has its Subject as summary.
    activities = _run("activity", "list", "-c", str(cfg))
    _clean(activities)
    assert "\\x1b]0;pwned\\x07" in activities
    _clean(_run("activity", "show", "1", "-c", str(cfg)))

    # The store keeps the message as fetched, and --raw to a pipe writes it byte for byte.
    with sqlite_file(tmp_path / "state" / "mailsync.db") as db:
        (stored,) = db.execute("SELECT raw FROM fetched WHERE id = 1").fetchone()
    assert stored == RAW
    piped = _mailsync("inbox", "show", "1", "--raw", "-c", str(cfg))
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == RAW and piped.stderr == b""


def test_raw_to_a_terminal_is_escaped(tmp_path, mailbox):
    cfg = _fetched(tmp_path, mailbox)
    main_fd, tty_fd = os.openpty()
    err = tmp_path / "stderr"
    chunks = []
    try:
        with err.open("wb") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "mailsync", "inbox", "show", "1",
                                     "--raw", "-c", str(cfg)], stdout=tty_fd, stderr=stderr)
        os.close(tty_fd)
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(30) == 0
    finally:
        os.close(main_fd)
    stderr_text = err.read_text()
    out = b"".join(chunks).decode().replace("\r\n", "\n")  # the terminal's ONLCR
    assert ESC.encode() not in b"".join(chunks)
    assert "Total: 100=0DTotal: 999" in out and "\\x08\\x08" in out
    assert "\\x1b[31m" in out and "\\u202eexe" in out
    assert "stdout is a terminal" in stderr_text


def test_server_replies_are_escaped_in_history_and_the_daemon_log(tmp_path, smtp_server):
    forged = "2026-01-01 00:00:00,000 INFO mailsync.outbound.deliver: message 1 sent"
    srv = smtp_server(recipient_replies={
        "ann@example.org": "550-5.7.1 \x1b]0;pwned\x07\x1b[2J\x1b[31mrejected\r\n"
                           f"550 5.7.1 see\r{forged}",
        "bob@example.org": "451 4.7.1 \x1b[5mtry later\x08\x08",
    })
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    drop(tmp_path / "spool", user="alice", to=["ann@example.org", "bob@example.org"],
         subject="Quote 42", text="Hello")

    done = _mailsync("run", "--once", "-c", str(cfg), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = done.stderr.decode()
    assert ESC not in log and "\r" not in log
    lines = log.splitlines()
    assert lines and all(RECORD_START.match(line) for line in lines), log
    deferred = next(line for line in lines if "message 1 deferred" in line)
    assert "550 5.7.1 \\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mrejected" in deferred
    assert "451 4.7.1 \\x1b[5mtry later\\x08\\x08" in deferred

    shown = _run("history", "show", "1", "-c", str(cfg))
    _clean(shown)
    assert ("  ann@example.org: failed 550 5.7.1 \\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mrejected"
            " 5.7.1 see") in shown
    assert "  bob@example.org: deferred 451 4.7.1 \\x1b[5mtry later\\x08\\x08\n" in shown
    for listing in (_run("history", "-c", str(cfg)), _run("queue", "list", "-c", str(cfg))):
        _clean(listing)  # 100 columns: the error is cut, escaped all the same
    for listing in (_run("history", "-c", str(cfg), "--wide"),
                    _run("queue", "list", "-c", str(cfg), "--wide")):
        _clean(listing)
        assert "\\x1b]0;pwned\\x07" in listing
    as_json = _run("history", "show", "1", "-c", str(cfg), "--format", "json")
    _clean(as_json)
    replies = {r["address"]: r["reply"] for r in json.loads(as_json)["recipients"]}
    assert replies["bob@example.org"] == "4.7.1 \x1b[5mtry later\x08\x08"

    with sqlite_file(tmp_path / "state" / "mailsync.db") as db:
        (stored,) = db.execute("SELECT raw FROM contents WHERE message = 1").fetchone()
    piped = _mailsync("history", "show", "1", "--raw", "-c", str(cfg))
    assert piped.returncode == 0 and piped.stdout == stored


def test_a_hostile_greeting_is_escaped_by_mailsync_test(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def greet() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"554 \x1b]0;pwned\x07\x1b[2J go away\r\n")
            conn.recv(100)

    thread = threading.Thread(target=greet, daemon=True)
    thread.start()
    cfg = write_config(tmp_path, server_yaml("main", port))
    try:
        result = CliRunner().invoke(main, ["test", "main", "-c", str(cfg)])
    finally:
        thread.join(10)
        listener.close()
    assert result.exit_code == 1
    _clean(result.output)
    assert "main: Connection Error: " in result.output
    assert "554 \\x1b]0;pwned\\x07\\x1b[2J go away" in result.output
