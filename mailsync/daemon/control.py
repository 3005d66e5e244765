"""The daemon's control socket: ``mailsync reload`` (and ``status``) talk to it.

A Unix stream socket ``mailsync.sock`` in ``state_dir`` (mode 0660: the daemon's user
and group). One request per connection, one JSON line each way::

    → {"command": "reload"}
    ← {"ok": true, "result": "applied", "summary": "Plan: 0 to add, 1 to change, 0 to remove.", ...}

The server only parses and answers; what a command does is the daemon's ``handle``,
called from the socket's thread (the daemon forwards reloads to its supervisor loop and
waits for the outcome, so the client learns the real result).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("mailsync.control")

SOCKET_NAME = "mailsync.sock"
MAX_REQUEST = 64 * 1024
Handler = Callable[[dict[str, Any]], dict[str, Any]]


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


def locator_name(config_path: Path) -> bytes:
    """The abstract socket (Linux) where the daemon started on ``config_path`` says where
    its control socket is: ``mailsync reload`` finds the daemon of a file even when the
    file now names another state_dir, has a duplicate key or does not parse."""
    digest = hashlib.sha256(os.path.abspath(config_path).encode()).hexdigest()[:40]
    return b"\0mailsync-" + digest.encode()


class _Acceptor:
    """A listening socket's accept loop, in a thread of its own until :meth:`close`;
    ``serve`` gets each connection, and is to close it. An accept that fails while the socket
    is open (out of descriptors or memory for a moment: EMFILE, ENFILE, ENOBUFS, ENOMEM)
    is logged and tried again half a second later: the socket answers again once the
    shortage is over, instead of its thread dying."""

    def __init__(self, sock: socket.socket, name: str,
                 serve: Callable[[socket.socket], None]) -> None:
        self._sock = sock
        self._name = name
        self._serve = serve
        sock.listen(8)
        sock.settimeout(0.5)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._closed.is_set():
                    return
                log.warning("%s: cannot accept a connection (trying again in 0.5s): %s",
                            self._name, exc)
                self._closed.wait(0.5)
                continue
            try:
                self._serve(conn)
            except Exception:  # noqa: BLE001 - one connection must not end the socket
                log.exception("%s: a connection failed", self._name)
                conn.close()

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        self._thread.join(2.0)


class Locator:
    """Answers every connection to :func:`locator_name` with ``{"socket": PATH}``.

    Only a path is told (nothing is read from the client): any local user may ask.
    Not available (another process holds the name, no abstract sockets): it stays off
    and clients fall back to the state_dir the file names.
    """

    def __init__(self, config_path: Path, control: Path) -> None:
        self._answer = json.dumps({"socket": str(control.absolute())}).encode() + b"\n"
        self._acceptor: _Acceptor | None = None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(locator_name(config_path))
        except OSError as exc:
            log.debug("no control locator for %s: %s", config_path, exc)
            sock.close()
            return
        self._acceptor = _Acceptor(sock, "mailsync-locator", self._answer_one)

    def _answer_one(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(1.0)
            conn.sendall(self._answer)

    def close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()


def locate(config_path: Path, timeout: float = 2.0) -> Path | None:
    """The control socket of the daemon running on ``config_path``; None when none
    answers, or when the one answering could not read the file (so it is not its
    daemon: a local user squatting the name is not trusted)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(locator_name(config_path))
            cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            line = _read_line(sock)
        except (OSError, ValueError):
            return None
    _pid, uid, gid = struct.unpack("3i", cred)
    if not could_read(config_path, uid, gid):
        return None
    try:
        found = json.loads(line)["socket"]
    except (ValueError, KeyError, TypeError):
        return None
    return Path(found) if isinstance(found, str) and found.startswith("/") else None


def could_read(path: Path, uid: int, gid: int) -> bool:
    """Whether a process of ``uid``/``gid`` may read ``path`` by its mode (root may)."""
    try:
        st = path.stat()
    except OSError:
        return uid in (0, os.geteuid())  # the file is gone: trust only root and us
    if uid in (0, os.geteuid()):
        return True
    if uid == st.st_uid:
        return bool(st.st_mode & 0o400)
    if gid == st.st_gid:
        return bool(st.st_mode & 0o040)
    return bool(st.st_mode & 0o004)


class ControlServer:
    """Serves ``handle`` on ``path`` in a thread until :meth:`close`."""

    def __init__(self, path: Path, handle: Handler) -> None:
        self.path = path
        self._handle = handle
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            # A socket left by a killed daemon; a live daemon holds the flock on
            # state_dir/mailsync.pid, taken first, so this never steals its socket.
            if path.is_socket():
                path.unlink()
        old_umask = os.umask(0o117)
        try:
            sock.bind(str(path))
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        self._acceptor = _Acceptor(sock, "mailsync-control", self._start_one)

    def _start_one(self, conn: socket.socket) -> None:
        try:
            threading.Thread(target=self._one, args=(conn,), name="mailsync-control-req",
                             daemon=True).start()
        except RuntimeError as exc:  # no thread to be had now: this request goes unanswered
            log.warning("control socket: cannot serve a request: %s", exc)
            conn.close()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5.0)
            try:
                request = json.loads(_read_line(conn))
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
            except (OSError, ValueError) as exc:
                reply: dict[str, Any] = {"ok": False, "error": f"bad request: {exc}"}
            else:
                conn.settimeout(None)  # the command may take a while (a reload)
                try:
                    reply = self._handle(request)
                except Exception as exc:  # noqa: BLE001 - reported to the client
                    log.exception("control command %r failed", request.get("command"))
                    reply = {"ok": False, "error": f"internal error: {exc}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        self._acceptor.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too long")
    return data.split(b"\n", 1)[0]


def request(path: Path, command: str, timeout: float = 60.0) -> dict[str, Any]:
    """Send ``command`` to the daemon listening on ``path``; its JSON reply.

    Raises ConnectionError when no daemon listens there (with the reason).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ConnectionError(f"{path}: no such socket (is the daemon running?)") from None
        except ConnectionRefusedError:
            raise ConnectionError(f"{path}: connection refused (the daemon is not "
                                  "running)") from None
        except OSError as exc:
            raise ConnectionError(f"{path}: {exc.strerror or exc}") from None
        sock.sendall(json.dumps({"command": command}).encode() + b"\n")
        try:
            line = _read_line(sock)
        except TimeoutError:
            raise ConnectionError(f"{path}: no answer within {timeout:g}s") from None
    if not line:
        raise ConnectionError(f"{path}: the daemon closed the connection without answering")
    reply = json.loads(line)
    if not isinstance(reply, dict):
        raise ConnectionError(f"{path}: unexpected answer {line[:200]!r}")
    return reply
