"""A hostile SMTP server cannot exhaust memory: replies (the greeting included) are bounded.

A small raw-socket server on 127.0.0.1 answers normally until a chosen step, then sends an
endless multi-line reply (``220-...``, ``250-...``) of up to 200 MB. mailsync runs as a
real subprocess; its peak RSS is read from the kernel's accounting of the child.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailsync.outbound.spool import drop
from tests.outbound_helpers import history, write_config

STREAM = 200 * 1024 * 1024
LINE = b"x" * 990


@contextlib.contextmanager
def hostile(step: str) -> Iterator[int]:
    """A server that floods at ``step``: greeting, ehlo or mail."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def flood(conn: socket.socket, code: bytes) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while sent < STREAM and not stop.is_set():
                conn.sendall(code + b"-" + LINE + b"\r\n")
                sent += len(LINE) + 6

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            if step == "greeting":
                return flood(conn, b"220")
            conn.sendall(b"220 hostile ESMTP\r\n")
            reader = conn.makefile("rb")
            while line := reader.readline(2000):
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    if step == "ehlo":
                        return flood(conn, b"250")
                    conn.sendall(b"250-hostile\r\n250 PIPELINING\r\n")
                elif verb == b"MAIL":
                    return flood(conn, b"250")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")

    def accept() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                conn, _ = listener.accept()
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield port
    finally:
        stop.set()
        listener.close()


def _mailsync(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run mailsync; its output and its peak RSS in MB, read from /proc/PID/status
    (VmHWM, the high-water mark of the process after its exec) while it runs."""
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    peak = 0
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "mailsync", *args], stdout=stdout,
                                stderr=stderr)
        deadline = time.monotonic() + 60
        while proc.poll() is None:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.005)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out.read_text(),
                                       err.read_text())
    return done, peak / 1024


@pytest.mark.parametrize("step", ["greeting", "ehlo"])
def test_an_endless_reply_while_connecting_is_cut_off(tmp_path: Path, step: str) -> None:
    with hostile(step) as port:
        cfg = write_config(tmp_path, f"  - {{name: main, host: 127.0.0.1, port: {port}, "
                                     "security: none, timeout: 10s}\n")
        done, rss = _mailsync(tmp_path, "test", "main", "-c", str(cfg))
    assert done.returncode == 1
    assert "main: Connection Error: main (127.0.0.1:" in done.stdout
    assert "the server's reply is longer than 64 KiB" in done.stdout, done.stdout
    assert rss < 150, f"peak RSS {rss:.0f} MB"


def test_an_endless_reply_in_a_transaction_defers_the_message(tmp_path: Path) -> None:
    with hostile("mail") as port:
        cfg = write_config(tmp_path, f"  - {{name: main, host: 127.0.0.1, port: {port}, "
                                     "security: none, timeout: 10s}\n")
        drop(tmp_path / "spool", user="alice", to=["a@example.org"], subject="x", text="x")
        done, rss = _mailsync(tmp_path, "run", "--once", "-c", str(cfg))
    assert done.returncode == 0, done.stderr
    assert "1 deferred" in done.stdout, done.stdout
    (row,) = history(cfg)
    assert row["status"] == "deferred" and "longer than 64 KiB" in row["error"]
    assert rss < 150, f"peak RSS {rss:.0f} MB"
