"""``mailsync demo``: the whole path on one machine, with no mail server installed.

:class:`Sink` is an SMTP server on 127.0.0.1 (aiosmtpd, no TLS, no AUTH) that delivers
what it accepts into Maildirs, as a mail server would:

- mail for the *local domain* (the demo's alias domain: replies to ``catchall@``,
  bounces to ``bounce+<id>.<sig>@``) goes to the ``local`` Maildir, which the demo config
  declares as a ``type: local`` incoming server;
- mail for any other domain goes to the ``delivered`` Maildir ("the outside world");
- a recipient the sink calls undeliverable (local part ``nobody``, or a ``.invalid``
  domain) is answered 250 like the others, and then bounced the way Postfix does it: a
  delivery status notification (``multipart/report; report-type=delivery-status``) sent
  to the envelope sender, mailsync's signed VERP address ``bounce+<id>.<sig>@<domain>``
  and so lands in the ``local`` Maildir, where the daemon finds it and marks the message
  ``bounced``.

:func:`run_demo` writes a config from ``config.example.yaml`` that points at the sink,
runs the real daemon (``mailsync run``) as a child process, spools a few messages and
prints what happened: the history, the delivered files, the bounce and the metrics.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import format_datetime, make_msgid
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import click
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailsync.config.load import load_file
from mailsync.config.model import Config
from mailsync.errors import StoreError

HOST = "127.0.0.1"
SINK_HOSTNAME = "sink.demo.invalid"
DIAGNOSTIC = "smtp; 550 5.1.1 user unknown"
HEALTHZ_TIMEOUT = 20.0  # seconds for the daemon to answer /healthz
SETTLE_TIMEOUT = 30.0  # seconds for every message to be sent and the bounce recorded
MARKER = ".mailsync-demo"  # marks a directory this command may wipe
# What a previous run left in the demo directory (only these are removed).
_STATE = ("config.yaml", "daemon.log", "state", "spool", "mail")

Out = Callable[[str], Any]
Kind = Literal["delivered", "local", "bounce"]


def is_undeliverable(address: str) -> bool:
    """The demo's unknown users: local part ``nobody``, or a ``.invalid`` domain."""
    local, _, domain = address.rpartition("@")
    return local.lower() == "nobody" or domain.lower().rstrip(".").endswith(".invalid")


# -- Maildir ----------------------------------------------------------------------------

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def ensure_maildir(path: Path) -> Path:
    """Create ``tmp/``, ``new/`` and ``cur/`` under ``path``; returns ``path``."""
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def maildir_deliver(maildir: Path, data: bytes) -> Path:
    """Write ``data`` into ``maildir`` as Maildir writers do: a unique name in ``tmp/``,
    then a rename into ``new/``. Returns the file's path in ``new/``."""
    with _counter_lock:
        n = next(_counter)
    now = time.time()
    host = socket.gethostname().replace("/", r"\057").replace(":", r"\072") or "localhost"
    name = f"{int(now)}.M{int(now % 1 * 1_000_000)}P{os.getpid()}Q{n}.{host}"
    tmp, new = maildir / "tmp" / name, maildir / "new" / name
    with open(tmp, "xb") as f:
        f.write(data)
    os.rename(tmp, new)
    return new


def _lf(data: bytes) -> bytes:
    """Maildir files end lines with LF, not with SMTP's CRLF."""
    return data.replace(b"\r\n", b"\n")


def _header_block(message: bytes) -> bytes:
    """The header section of a message (without the blank line that ends it)."""
    message = _lf(message)
    head, sep, _ = message.partition(b"\n\n")
    return head if sep else message.rstrip(b"\n")


# -- the delivery status notification --------------------------------------------------

def build_dsn(*, sender: str, failed: list[str], original: bytes, reporting_mta: str,
              queue_id: str, arrival: datetime, diagnostic: str = DIAGNOSTIC) -> bytes:
    """A non-delivery report shaped like Postfix's (RFC 3464): a text part, a
    ``message/delivery-status`` part (one ``Action: failed`` block per recipient) and the
    original headers as ``text/rfc822-headers``; addressed to ``sender``."""
    boundary = f"{queue_id}.{int(arrival.timestamp())}/{reporting_mta}"
    status = diagnostic.split()[2] if len(diagnostic.split()) > 2 else "5.0.0"
    reasons = "\n".join(f"<{r}>: {diagnostic.split(';', 1)[-1].strip()}" for r in failed)
    blocks = "\n".join(
        f"Final-Recipient: rfc822; {r}\nOriginal-Recipient: rfc822;{r}\nAction: failed\n"
        f"Status: {status}\nDiagnostic-Code: {diagnostic}\n"
        for r in failed)
    head = (
        f"Return-Path: <>\n"
        f"Delivered-To: {sender}\n"
        f"Date: {format_datetime(arrival)}\n"
        f"From: MAILER-DAEMON@{reporting_mta} (Mail Delivery System)\n"
        f"Subject: Undelivered Mail Returned to Sender\n"
        f"To: {sender}\n"
        f"Auto-Submitted: auto-replied\n"
        f"MIME-Version: 1.0\n"
        f"Content-Type: multipart/report; report-type=delivery-status;\n"
        f"\tboundary=\"{boundary}\"\n"
        f"Content-Transfer-Encoding: 8bit\n"
        f"Message-Id: {make_msgid(queue_id, domain=reporting_mta)}\n"
        f"\n"
        f"This is a MIME-encapsulated message.\n"
        f"\n"
        f"--{boundary}\n"
        f"Content-Description: Notification\n"
        f"Content-Type: text/plain; charset=us-ascii\n"
        f"\n"
        f"This is the mail system at host {reporting_mta}.\n"
        f"\n"
        f"I'm sorry to have to inform you that your message could not\n"
        f"be delivered to one or more recipients. It's attached below.\n"
        f"\n"
        f"                   The mail system\n"
        f"\n"
        f"{reasons}\n"
        f"\n"
        f"--{boundary}\n"
        f"Content-Description: Delivery report\n"
        f"Content-Type: message/delivery-status\n"
        f"\n"
        f"Reporting-MTA: dns; {reporting_mta}\n"
        f"X-Postfix-Queue-ID: {queue_id}\n"
        f"X-Postfix-Sender: rfc822; {sender}\n"
        f"Arrival-Date: {format_datetime(arrival)}\n"
        f"\n"
        f"{blocks}"
        f"\n"
        f"--{boundary}\n"
        f"Content-Description: Undelivered Message Headers\n"
        f"Content-Type: text/rfc822-headers\n"
        f"Content-Transfer-Encoding: 8bit\n"
        f"\n"
    ).encode()
    return head + _header_block(original) + f"\n\n--{boundary}--\n".encode("ascii")


# -- the SMTP sink ----------------------------------------------------------------------

@dataclass(frozen=True)
class Delivery:
    """One file the sink wrote: ``kind`` is delivered, local or bounce (a DSN)."""

    kind: Kind
    path: Path
    mail_from: str
    recipient: str


class _Handler:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        queue_id = self.sink.deliver(envelope.mail_from or "", list(envelope.rcpt_tos),
                                     envelope.original_content or b"")
        return f"250 2.0.0 Ok: queued as {queue_id}"


class _SMTP(SMTP):
    """aiosmtpd's SMTP, tracking its connections so that stop() can hang up on them."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink = handler.sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        with self.sink._lock:
            self.sink._live.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        with self.sink._lock:
            self.sink._live.discard(self)
        super().connection_lost(error)


class _Controller(Controller):
    def __init__(self, sink: Sink) -> None:
        super().__init__(_Handler(sink), hostname=HOST, port=0, ready_timeout=10.0,
                         server_hostname=SINK_HOSTNAME, enable_SMTPUTF8=True)

    def factory(self) -> SMTP:
        return _SMTP(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # Bound to port 0 (the system picks a free port, no race): learn the real port
        # before aiosmtpd's start() connects to self.port to check that it is up.
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]


class Sink:
    """An SMTP server on 127.0.0.1 with a free port that delivers into Maildirs (see the
    module docstring); a context manager. ``deliveries`` lists every file written."""

    def __init__(self, delivered: Path, local: Path, *, local_domain: str,
                 undeliverable: Callable[[str], bool] = is_undeliverable) -> None:
        self.delivered = delivered
        self.local = local
        self.local_domain = local_domain.lower().rstrip(".")
        self.undeliverable = undeliverable
        self.host = HOST
        self.port = 0
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._live: set[_SMTP] = set()
        self._queue_ids = itertools.count(1)
        self._controller: _Controller | None = None

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Sink:
        """Create the Maildirs and listen on 127.0.0.1 (a free port: see ``port``)."""
        ensure_maildir(self.delivered)
        ensure_maildir(self.local)
        controller = _Controller(self)
        controller.start()
        self._controller = controller
        self.port = int(controller.port)
        return self

    def stop(self) -> None:
        """Hang up on connected clients and stop listening (idempotent)."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._hang_up(), controller.loop)
        future.result(timeout=10)
        controller.stop()

    def files(self, kind: Kind | None = None) -> list[Delivery]:
        """The deliveries so far (of one kind), in order."""
        with self._lock:
            return [d for d in self.deliveries if kind is None or d.kind == kind]

    def maildir_for(self, address: str) -> tuple[Kind, Path]:
        domain = address.rpartition("@")[2].lower().rstrip(".")
        return ("local", self.local) if domain == self.local_domain else (
            "delivered", self.delivered)

    def deliver(self, mail_from: str, rcpt_tos: list[str], data: bytes) -> str:
        """Deliver one accepted message (called in the server's thread); returns the queue
        id given in the 250 reply. Undeliverable recipients get a DSN to ``mail_from``."""
        mail_from = mail_from.strip().removeprefix("<").removesuffix(">").strip()  # <> is null
        queue_id = f"DEMO{next(self._queue_ids):06X}"
        arrival = datetime.now(UTC)
        body = _lf(data)
        written: list[Delivery] = []
        failed: list[str] = []
        for rcpt in rcpt_tos:
            if self.undeliverable(rcpt):
                failed.append(rcpt)
                continue
            kind, maildir = self.maildir_for(rcpt)
            trace = (f"Return-Path: <{mail_from}>\nDelivered-To: {rcpt}\n"
                     f"Received: from localhost by {SINK_HOSTNAME} (mailsync demo sink)"
                     f" with SMTP id {queue_id}\n\tfor <{rcpt}>; {format_datetime(arrival)}\n")
            path = maildir_deliver(maildir, trace.encode("utf-8") + body)
            written.append(Delivery(kind, path, mail_from, rcpt))
        if failed and mail_from:  # no bounce of a bounce (null sender <>)
            dsn = build_dsn(sender=mail_from, failed=failed, original=data,
                            reporting_mta=SINK_HOSTNAME, queue_id=queue_id, arrival=arrival)
            _, maildir = self.maildir_for(mail_from)
            path = maildir_deliver(maildir, dsn)
            written.append(Delivery("bounce", path, "", mail_from))
        with self._lock:
            self.deliveries.extend(written)
        return queue_id

    async def _hang_up(self) -> None:
        with self._lock:
            live = list(self._live)
        for protocol in live:
            if protocol.transport is not None:
                protocol.transport.abort()  # type: ignore[attr-defined]
        for _ in range(100):
            with self._lock:
                if not self._live:
                    return
            await asyncio.sleep(0.01)


# -- the demo config --------------------------------------------------------------------

_TLS_KEYS = ("tls_ca_file", "tls_ca_only", "tls_client_cert", "tls_client_key",
             "tls_min_version")
_LOGIN_KEYS = ("provider", "host", "port", "security", "tls_verify", *_TLS_KEYS, "helo_name",
               "username", "password", "auth", "max_connections", "timeout")
SINK_SERVER = "demo-sink"
INBOX_SERVER = "catchall"


def example_text() -> str:
    """``config.example.yaml`` as shipped in the package."""
    return resources.files("mailsync").joinpath("data/config.example.yaml").read_text("utf-8")


def demo_config(example: dict[str, Any], *, sink_port: int, metrics_port: int) -> dict[str, Any]:
    """The example config, pointed at the sink: one outgoing server (the sink, plain SMTP
    on loopback), one ``local`` incoming server (the Maildir the sink delivers the alias
    domain's mail to, bounces included), no secrets, state and spool in the demo dir."""
    cfg = copy.deepcopy(example)
    daemon = cfg.setdefault("daemon", {})
    daemon.update({"state_dir": "./state", "spool_dir": "./spool",
                   "metrics_listen": f"{HOST}:{metrics_port}", "log_format": "text"})
    for key in _TLS_KEYS:  # the sink speaks plain SMTP; the example's CA files do not exist
        daemon.pop(key, None)
    alias = cfg.get("alias_domain") or {"domain": "example.com"}
    alias.setdefault("bounce", "bounce")
    cfg["alias_domain"] = alias
    cfg["outgoing_servers"] = [{
        "name": SINK_SERVER, "host": HOST, "port": sink_port, "security": "none",
        "max_connections": 2, "timeout": "10s"}]
    cfg["incoming_servers"] = [{
        "name": INBOX_SERVER, "type": "local", "path": "./mail/catchall",
        "poll_interval": "1s"}]
    for account in cfg.get("accounts") or []:
        own_login = any(k in account for k in _LOGIN_KEYS)
        for key in _LOGIN_KEYS:
            account.pop(key, None)
        if "server" in account or own_login:
            account["server"] = SINK_SERVER
    return cfg


def _render(cfg: dict[str, Any]) -> str:
    header = ("# Written by `mailsync demo` from config.example.yaml: every account sends\n"
              "# through the demo's SMTP sink on loopback; the alias domain's mail (bounces\n"
              "# included) comes back through the `catchall` Maildir.\n")
    return header + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)


@dataclass(frozen=True)
class Example:
    """A message the demo spools (through ``mailsync.outbound.spool.drop``)."""

    user: str
    account: str | None
    to: str
    subject: str
    text: str
    bounces: bool = False


EXAMPLES = (
    Example("alice", "sales", "Ada Lovelace <ada@example.org>", "Your quote Q-1042",
            "Hello Ada,\n\nplease find our quote below.\n\nAlice, Sales Team\n"),
    Example("crm-app", "newsletter", "grace@example.net", "What's new in March",
            "This month: declarative mail, in one YAML file.\n"),
    Example("crm-app", "alerts", "ops@example.net", "Disk 91% full on db-1",
            "db-1:/var is 91% full.\n"),
    Example("bob", None, "nobody@example.org", "Following up on your request",
            "Hello,\n\njust following up.\n\nBob\n", bounces=True),
)


# -- running it -------------------------------------------------------------------------

class DemoFailed(Exception):
    """The demo could not go on; the message says why (and what to look at)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _opener() -> urllib.request.OpenerDirector:
    # Loopback only: never through an http_proxy from the environment.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with _opener().open(url, timeout=timeout) as response:
            return int(response.status), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def _prepare(workdir: Path) -> None:
    """Create ``workdir``, or empty one a previous demo made (only what it made)."""
    if workdir.exists() and not workdir.is_dir():
        raise DemoFailed(f"{workdir}: exists and is not a directory; choose another --dir")
    if workdir.is_dir() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise DemoFailed(f"{workdir}: not empty and not made by `mailsync demo` (no {MARKER});"
                         " choose another --dir")
    workdir.mkdir(parents=True, exist_ok=True)
    for name in _STATE:
        path = workdir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    (workdir / MARKER).write_text("made by `mailsync demo`; removed by the next run\n")


def _show(path: Path) -> str:
    """``path`` relative to the current directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _command_name() -> str:
    """How the user runs mailsync from here: ``mailsync``, or the venv's script."""
    here = Path(sys.executable).parent / "mailsync"
    found = shutil.which("mailsync")
    if found and here.exists() and Path(found).resolve() == here.resolve():
        return "mailsync"
    if here.exists():
        return _show(here)
    return f"{_show(Path(sys.executable))} -m mailsync"


def _daemon_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "mailsync", "run", "-c", str(config)]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)  # the demo's daemon is not systemd's
    env.pop("MAILSYNC_CONFIG", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _tail(log: Path, lines: int = 20) -> str:
    try:
        text = log.read_text("utf-8", "replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(f"  | {line}" for line in text[-lines:]) or "  | (empty)"


class _Daemon:
    """The ``mailsync run`` child: its own session, so a Ctrl-C reaches only the demo,
    which then stops it with SIGTERM as systemd would."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(_daemon_command(config), stdout=f,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=config.parent, env=_child_env(),
                                         start_new_session=True)

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise DemoFailed(f"the daemon exited with status {code}; the end of "
                             f"{_show(self.log)}:\n{_tail(self.log)}")

    def wait_healthy(self, url: str, timeout: float) -> float:
        start = time.monotonic()
        last = "no answer"
        while time.monotonic() - start < timeout:
            self.check_alive()
            try:
                code, body = _http_get(url, timeout=1.0)
            except (OSError, urllib.error.URLError) as exc:
                last = str(getattr(exc, "reason", exc))
            else:
                if code == 200:
                    return time.monotonic() - start
                last = f"{code} {body.strip()}"
            time.sleep(0.05)
        raise DemoFailed(f"the daemon did not answer {url} with 200 within {timeout:.0f} s "
                         f"(last: {last}); the end of {_show(self.log)}:\n{_tail(self.log)}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait; SIGKILL if it does not stop in time. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -int(signal.SIGKILL)
        return int(self.proc.returncode)


def _statuses(state_dir: Path) -> list[dict[str, Any]]:
    """The history as the daemon's store has it now (read only); [] before it exists."""
    from mailsync.outbound.history import Filters, list_messages
    from mailsync.outbound.queue import OutboundStore
    from mailsync.store import Store, db_path

    if not db_path(state_dir).exists():
        return []
    try:
        store = Store.open(state_dir, create=False)
    except StoreError:
        return []
    try:
        return list_messages(OutboundStore(store), Filters(limit=1000))
    finally:
        store.close()


_DONE = ("sent", "failed", "rejected", "bounced", "held")


def _wait_settled(daemon: _Daemon, sink: Sink, state_dir: Path,
                  timeout: float) -> list[dict[str, Any]]:
    """Wait until every spooled message is settled (sent, failed, ...) and every DSN the
    sink sent back is recorded as a bounce; returns the history rows."""
    start = time.monotonic()
    rows: list[dict[str, Any]] = []
    while time.monotonic() - start < timeout:
        daemon.check_alive()
        rows = _statuses(state_dir)
        if (len(rows) >= len(EXAMPLES) and all(r["status"] in _DONE for r in rows)
                and sum(r["status"] == "bounced" for r in rows) >= len(sink.files("bounce"))):
            return rows
        time.sleep(0.1)
    seen = ", ".join(f"{r['id']}: {r['status']}" for r in rows) or "nothing in the store yet"
    raise DemoFailed(f"not settled within {timeout:.0f} s ({seen}); the end of "
                     f"{_show(daemon.log)}:\n{_tail(daemon.log)}")


def _headers(path: Path) -> Any:
    with open(path, "rb") as f:
        return BytesHeaderParser(policy=default_policy).parse(f)


def _current(path: Path) -> Path:
    """Where a file the sink put in ``new/`` is now (a reader may have moved it to
    ``cur/``, with ``:2,`` flags)."""
    if path.exists():
        return path
    cur = path.parent.parent / "cur"
    for candidate in sorted(cur.glob(f"{path.name}*")):
        return candidate
    return path


_METRICS = ("mailsync_messages_sent_total", "mailsync_messages_bounced_total",
            "mailsync_mailbox_messages_fetched_total", "mailsync_queue_messages")


def _metric_lines(text: str) -> list[str]:
    keep = []
    for line in text.splitlines():
        name = re.split(r"[{ ]", line, maxsplit=1)[0]
        if name in _METRICS and not line.endswith(" 0.0"):
            keep.append(line)
    return keep


def _install_sigterm() -> Callable[[], None]:
    """Make SIGTERM stop the demo as Ctrl-C does (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)

    def undo() -> None:
        signal.signal(signal.SIGTERM, previous)

    return undo


def run_demo(workdir: Path, once: bool, out: Out = click.echo) -> int:
    """Run the demo in ``workdir`` (see the module docstring); returns the exit status.

    ``once``: stop after showing the round trip; otherwise keep the daemon and the sink
    running until Ctrl-C (or SIGTERM).
    """
    undo = _install_sigterm()  # a SIGTERM (CI cancelling) cleans up as Ctrl-C does
    try:
        return _run(workdir, once, out)
    except DemoFailed as exc:
        out(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        out("\ninterrupted: the daemon and the sink are stopped")
        return 130
    finally:
        undo()


def _run(workdir: Path, once: bool, out: Out) -> int:
    start = time.monotonic()
    _prepare(workdir)
    workdir = workdir.resolve()
    example = yaml.safe_load(example_text())
    local_domain = str((example.get("alias_domain") or {}).get("domain") or "example.com")
    sink = Sink(workdir / "mail" / "delivered", workdir / "mail" / "catchall",
                local_domain=local_domain)
    sink.start()
    daemon: _Daemon | None = None
    try:
        config_path = workdir / "config.yaml"
        cfg = demo_config(example, sink_port=sink.port, metrics_port=_free_port())
        config_path.write_text(_render(cfg), "utf-8")
        config = _validated(config_path)
        metrics_url = f"http://{config.daemon.metrics_listen}"
        out(f"mailsync demo in {_show(workdir)}")
        out(f"  SMTP sink  {HOST}:{sink.port} (no TLS, no AUTH): mail for other domains "
            f"-> {_show(sink.delivered)}, for {local_domain} -> {_show(sink.local)}")
        out(f"  config     {_show(config_path)} (from config.example.yaml; valid)")
        daemon = _Daemon(config_path, workdir / "daemon.log")
        ready = daemon.wait_healthy(f"{metrics_url}/healthz", timeout=HEALTHZ_TIMEOUT)
        out(f"  daemon     pid {daemon.proc.pid}, /healthz ok after {ready:.1f} s, "
            f"log {_show(daemon.log)}")
        _spool(config.daemon.spool_dir, out)
        rows = _wait_settled(daemon, sink, config.daemon.state_dir, timeout=SETTLE_TIMEOUT)
        out(f"\nAll settled {time.monotonic() - start:.1f} s after the start.")
        ok = _report(config_path, config, sink, rows, metrics_url, out)
        if not once:
            return _keep_running(daemon, sink, config_path, config.daemon.spool_dir, out)
        code = daemon.stop()
        daemon = None
        if code != 0:
            log = workdir / "daemon.log"
            out(f"error: the daemon exited with status {code} on SIGTERM; the end of "
                f"{_show(log)}:\n{_tail(log)}")
            return 1
        out(f"\nDone in {time.monotonic() - start:.1f} s; the demo's files stay in "
            f"{_show(workdir)}.")
        return 0 if ok else 1
    finally:
        if daemon is not None:
            daemon.stop()
        sink.stop()


def _validated(config_path: Path) -> Config:
    loaded = load_file(config_path)
    if loaded.config is None:
        problems = "\n".join(f"  {p.render()}" for p in loaded.problems)
        raise DemoFailed(f"the demo config derived from config.example.yaml is not valid:\n"
                         f"{problems}")
    return loaded.config


def _spool(spool_dir: Path, out: Out) -> None:
    from mailsync.outbound.spool import drop, ensure_dirs

    ensure_dirs(spool_dir)
    out(f"\nSpooling {len(EXAMPLES)} messages into {_show(spool_dir / 'new')}:")
    for e in EXAMPLES:
        drop(spool_dir, user=e.user, account=e.account, to=[e.to], subject=e.subject,
             text=e.text)
        via = f"account {e.account}" if e.account else "the only account granted"
        note = "  (undeliverable: the sink will bounce it)" if e.bounces else ""
        out(f"  {e.user} via {via} -> {e.to}: {e.subject}{note}")


def _report(config_path: Path, config: Config, sink: Sink, rows: list[dict[str, Any]],
            metrics_url: str, out: Out) -> bool:
    """Print the history, the delivered files, the bounce and metrics; True if all went
    as the demo expects (every message sent, the undeliverable one bounced)."""
    cmd = _command_name()
    out(f"\n$ {cmd} history -c {_show(config_path)}")
    history = subprocess.run(
        [sys.executable, "-m", "mailsync", "history", "-c", str(config_path)],
        capture_output=True, text=True, env=_child_env(), check=False)
    out((history.stdout + history.stderr).rstrip())

    out(f"\nDelivered by the sink ({_show(sink.delivered)}):")
    for d in sink.files("delivered") + sink.files("local"):
        h = _headers(_current(d.path))
        out(f"  {_show(_current(d.path))}")
        out(f"      From: {h['From']}  To: {h['To']}  Subject: {h['Subject']}")

    for d in sink.files("bounce"):
        path = _current(d.path)
        out(f"\nBounce: the sink answered 250, then sent a DSN to {d.recipient}")
        out(f"  {_show(path)}")
        out(f"  fetched by the `{INBOX_SERVER}` incoming server: "
            f"{_bounce_summary(path, config)}")

    try:
        _, text = _http_get(f"{metrics_url}/metrics")
        lines = _metric_lines(text)
    except (OSError, urllib.error.URLError) as exc:
        lines = [f"(could not read the metrics: {exc})"]
    out(f"\nMetrics: {metrics_url}/metrics")
    for line in lines:
        out(f"  {line}")

    bounces = sum(e.bounces for e in EXAMPLES)
    sent = sum(r["status"] == "sent" for r in rows)
    bounced = sum(r["status"] == "bounced" for r in rows)
    expected_sent = len(EXAMPLES) - bounces
    if sent != expected_sent or bounced != bounces:
        out(f"\nerror: expected {expected_sent} sent and {bounces} bounced, got {sent} sent "
            f"and {bounced} bounced: see `{cmd} history show ID -c {_show(config_path)}`")
        return False
    bounced_ids = [str(r["id"]) for r in rows if r["status"] == "bounced"]
    c = _show(config_path)
    out(f"\nLook closer: {cmd} history show {bounced_ids[0] if bounced_ids else 1} -c {c}\n"
        f"             {cmd} inbox -c {c}\n"
        f"             {cmd} plan -c {c}")
    return True


def _bounce_summary(path: Path, config: Config) -> str:
    from mailsync.errors import StoreError
    from mailsync.inbound.bounces import parse_bounce
    from mailsync.outbound.verp import existing_key

    try:
        raw = path.read_bytes()
        key = existing_key(config.daemon.state_dir)  # the daemon's: it signed the address
    except (OSError, StoreError) as exc:
        return f"(unreadable: {getattr(exc, 'strerror', None) or exc})"
    bounce = parse_bounce(raw, config, key)
    if bounce is None:
        return "not recognised as a bounce"
    who = "; ".join(f"{r.address}: {r.reply}" for r in bounce.recipients)
    return f"message {bounce.verp_id} (VERP), {who}"


def _keep_running(daemon: _Daemon, sink: Sink, config_path: Path, spool_dir: Path,
                  out: Out) -> int:
    c = _show(config_path)
    out(f"\nmailsync is running; drop files into {_show(spool_dir / 'new')} or use "
        f"`{_command_name()} send -c {c} --user alice --account sales --to you@example.org "
        f"--subject Hi`; Ctrl-C to stop")
    seen = len(sink.files())
    try:
        while True:
            time.sleep(0.5)
            daemon.check_alive()
            new = sink.files()[seen:]
            seen += len(new)
            for d in new:
                with suppress(OSError):
                    h = _headers(_current(d.path))
                    out(f"sink: {d.kind}: {h['From']} -> {d.recipient}: {h['Subject']} "
                        f"({_show(_current(d.path))})")
    except KeyboardInterrupt:
        out("\nstopping the daemon (SIGTERM)...")
    code = daemon.stop()
    out(f"the daemon exited with status {code}")
    return 0 if code == 0 else 1
