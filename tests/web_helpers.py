"""The admin console around a real store: messages sent by `mailsync run --once` through
a real SMTP server (aiosmtpd), the console served on 127.0.0.1, and an HTTP client that
keeps cookies and follows nothing on its own."""

from __future__ import annotations

import http.client
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest

from mailsync.activities.rules import local_date
from mailsync.activities.store import ActivityStore
from mailsync.config.model import Config
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.spool import Attachment, drop
from mailsync.outbound.verp import load_key, verp_sender
from mailsync.store import Store
from mailsync.web.console import Console, serve
from mailsync.web.passwords import hash_password
from mailsync.web.status import DaemonStatus, no_status
from tests.outbound_helpers import load, run_once, server_yaml, write_config

PASSWORDS = {"olga": "olga-operator-pass-1", "victor": "victor-viewer-pass-2"}
HOSTILE_HTML = ("<p>Hi <b>there</b></p><script>console.log('MAILSCRIPT-RAN')</script>"
                "<img src=x onerror=\"console.log('MAILSCRIPT-ONERROR')\">"
                "<img src=\"http://127.0.0.1:{port}/pixel.gif\">")
HASHES: dict[str, str] = {}
# Distinctive secret values the canary test looks for in every page.
CANARIES = {"password": "CANARY-SMTP-PASSWORD-5521", "client_secret": "CANARY-CLIENT-SECRET-8813",
            "refresh_token": "CANARY-REFRESH-TOKEN-3307",
            "session_key": "CANARY-SESSION-KEY-0123456789abcdef0123456789"}
INBOX_YAML = """incoming_servers:
  - name: drop
    type: local
    path: ./maildir
    poll_interval: 10s
activity_types:
  - name: Reply
    action: email
    icon: fa-reply
    decoration: warning
    chaining: trigger
    default_next: Call
    delay: {count: 1, unit: days}
  - name: Call
    action: phonecall
    icon: fa-phone
    chaining: suggest
    recommended_next: [Meeting, Contract]
    delay: {count: 2, unit: days}
  - name: Meeting
    action: meeting
    icon: fa-users
    decoration: danger
  - name: Contract
    action: upload_document
    icon: fa-upload
"""
CANARY_SERVER = f"""  - name: canary
    host: 127.0.0.1
    port: 9
    username: canary@example.com
    password: {CANARIES['password']}
    from_filter: canary.invalid
  - name: canary-oauth
    host: 127.0.0.1
    port: 9
    username: canary@example.com
    from_filter: canary.invalid
    auth:
      oauth2:
        provider: generic
        grant: refresh_token
        client_id: mailsync
        client_secret: {CANARIES['client_secret']}
        refresh_token: {CANARIES['refresh_token']}
        token_url: http://127.0.0.1:9/token
        scope: email
"""


def _hash(name: str) -> str:
    if name not in HASHES:  # argon2id at its full cost: once per test session
        HASHES[name] = hash_password(PASSWORDS[name])
    return HASHES[name]


def admin_yaml(listen_port: int, extra: str = "") -> str:
    return ("admin:\n  users:\n"
            "    - {name: olga, password_hash: {file: olga.hash}, role: operator}\n"
            "    - {name: victor, password_hash: {file: victor.hash}}\n" + extra)


@dataclass
class Site:
    """A console on a store with a few messages; ``ids`` by subject."""

    config_path: Path
    config: Config
    store: Store
    console: Console
    ids: dict[str, int]
    pixel_port: int
    activities: dict[str, int] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.console.listener.host

    @property
    def port(self) -> int:
        return self.console.listener.port

    def client(self) -> Client:
        return Client(self.host, self.port)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    cookies: list[str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([^"]*)"', self.text)
        assert found, self.text
        return found.group(1)


@dataclass
class Client:
    host: str
    port: int
    jar: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        sent = dict(headers or {})
        if self.jar:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        body = None
        if form is not None:
            body = urlencode(form)
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body, sent)
        r = conn.getresponse()
        data = r.read()
        cookies = [v for k, v in r.getheaders() if k.lower() == "set-cookie"]
        for c in cookies:
            name, _, rest = c.partition("=")
            value = rest.split(";")[0]
            if "Max-Age=0" in c:
                self.jar.pop(name, None)
            else:
                self.jar[name] = value
        conn.close()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, cookies, data)

    def get(self, path: str, **kw: object) -> Reply:
        return self.request("GET", path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, form: dict[str, str], **kw: object) -> Reply:
        return self.request("POST", path, form, **kw)  # type: ignore[arg-type]

    def login(self, name: str, password: str | None = None) -> Reply:
        page = self.get("/login")
        return self.post("/login", {"csrf": page.csrf(), "name": name,
                                    "password": password or PASSWORDS[name],
                                    "next": "/history"})

    def form_post(self, page_path: str, action: str, extra: dict[str, str] | None = None
                  ) -> Reply:
        """POST ``action`` with the CSRF token of the page at ``page_path``."""
        token = self.get(page_path).csrf()
        return self.post(action, {"csrf": token, **(extra or {})})


def make_site(tmp_path: Path, smtp_server: Callable[..., object], *, extra_admin: str = "",
              more: int = 0, inbox: bool = False, canary: bool = False,
              status: Callable[[], DaemonStatus] | None = None) -> Iterator[Site]:
    """The console on a store of four messages (``more`` bulk ones); ``inbox``: also an
    incoming Maildir server with a message and a bounce of "Bounced later", activity types
    and open activities; ``canary``: servers and a session key with :data:`CANARIES`."""
    srv = smtp_server(recipient_replies={"bad@example.org": "550 5.1.1 No such user",
                                         "later@example.org": "451 4.3.0 Try later"})
    servers = server_yaml("main", srv.port)  # type: ignore[attr-defined]
    if canary:
        servers += CANARY_SERVER
        extra_admin += f"  session_key: {CANARIES['session_key']}\n"
    cfg = write_config(tmp_path, servers)
    for name in PASSWORDS:
        (tmp_path / f"{name}.hash").write_text(_hash(name) + "\n")
    text = cfg.read_text().replace("  state_dir: ./state\n",
                                   "  state_dir: ./state\n  admin_listen: 127.0.0.1:9\n")
    cfg.write_text(text + admin_yaml(9, extra_admin) + (INBOX_YAML if inbox else ""))
    spool = tmp_path / "spool"
    maildir = tmp_path / "maildir"
    if inbox:
        for sub in ("new", "cur", "tmp"):
            (maildir / sub).mkdir(parents=True)
        (maildir / "new" / "1.customer").write_bytes(
            b"From: Ann <ann@example.org>\r\nTo: sales@example.com\r\n"
            b"Subject: A question about Q-1042\r\nMessage-ID: <q1@example.org>\r\n\r\nHi!\r\n")
    import socket

    with socket.socket() as s:  # a port nobody listens on, unless a test does
        s.bind(("127.0.0.1", 0))
        pixel_port = s.getsockname()[1]
    drop(spool, user="alice", to=["ok@example.org"], subject="Quote Q-1042", text="Hello Ada,\n",
         html=HOSTILE_HTML.format(port=pixel_port),
         attachments=[Attachment("quote.pdf", "application/pdf", b"%PDF-1.4 quote")],
         headers={"X-Order": "42"})
    drop(spool, user="alice", to=["ok@example.org", "bad@example.org"], subject="Partly there",
         text="two recipients\n")
    drop(spool, user="bob", account="support", to=["bad@example.org"], subject="Never there",
         text="no such user\n")
    drop(spool, user="bob", account="support", to=["later@example.org"], subject="Later",
         text="deferred\n")
    if inbox:
        drop(spool, user="alice", to=["gone@example.org"], subject="Bounced later",
             text="accepted, then bounced\n")
    for i in range(more):
        drop(spool, user="bob", account="support", to=[f"n{i}@example.org"],
             subject=f"Bulk {i:03d}", text="bulk\n")
    run_once(cfg)
    config = load(cfg)
    store = Store.open(config.daemon.state_dir)
    outbound = OutboundStore(store)
    ids = {r["subject"]: r["id"] for r in
           outbound.query("SELECT id, subject FROM messages")}
    activities: dict[str, int] = {}
    if inbox:
        store.close()
        verp = verp_sender(config, load_key(config.daemon.state_dir), ids["Bounced later"])
        assert verp is not None
        (maildir / "new" / "2.bounce").write_bytes(
            b"From: MAILER-DAEMON@mx.example.net\r\nTo: " + verp.encode()
            + b"\r\nSubject: failure notice\r\n\r\nSorry, no mailbox here by that name."
            b" (#5.1.1)\r\n")
        run_once(cfg)
        store = Store.open(config.daemon.state_dir)
        outbound = OutboundStore(store)
        now = time.time()
        today = local_date(now)
        a = ActivityStore(store)
        for key, kind, user, days in (("reply", "Reply", "alice", -2), ("call", "Call", "bob", 3),
                                      ("contract", "Contract", "alice", 1),
                                      ("meeting", "Meeting", "bob", -1)):
            activities[key] = a.schedule(config, kind, now, user=user, summary=f"{kind} Ann",
                                         when=today + timedelta(days=days)).id
    console = serve(config, lambda: config, outbound, lambda: None, listen="127.0.0.1:0",
                    status=status or (lambda: no_status(cfg)))
    try:
        yield Site(cfg, config, store, console, ids, pixel_port, activities)
    finally:
        console.close()
        store.close()


@pytest.fixture(name="site")
def site_fixture(tmp_path, smtp_server) -> Iterator[Site]:
    yield from make_site(tmp_path, smtp_server)
