"""The admin console around a real store: messages sent by `mailsync run --once` through
a real SMTP server (aiosmtpd), the console served on 127.0.0.1, and an HTTP client that
keeps cookies and follows nothing on its own."""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest

from mailsync.config.model import Config
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.spool import Attachment, drop
from mailsync.store import Store
from mailsync.web.console import Console, serve
from mailsync.web.passwords import hash_password
from tests.outbound_helpers import load, run_once, server_yaml, write_config

PASSWORDS = {"olga": "olga-operator-pass-1", "victor": "victor-viewer-pass-2"}
HOSTILE_HTML = ("<p>Hi <b>there</b></p><script>console.log('MAILSCRIPT-RAN')</script>"
                "<img src=x onerror=\"console.log('MAILSCRIPT-ONERROR')\">"
                "<img src=\"http://127.0.0.1:{port}/pixel.gif\">")
HASHES: dict[str, str] = {}


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
              more: int = 0) -> Iterator[Site]:
    srv = smtp_server(recipient_replies={"bad@example.org": "550 5.1.1 No such user",
                                         "later@example.org": "451 4.3.0 Try later"})
    cfg = write_config(tmp_path, server_yaml("main", srv.port))  # type: ignore[attr-defined]
    for name in PASSWORDS:
        (tmp_path / f"{name}.hash").write_text(_hash(name) + "\n")
    text = cfg.read_text().replace("  state_dir: ./state\n",
                                   "  state_dir: ./state\n  admin_listen: 127.0.0.1:9\n")
    cfg.write_text(text + admin_yaml(9, extra_admin))
    spool = tmp_path / "spool"
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
    for i in range(more):
        drop(spool, user="bob", account="support", to=[f"n{i}@example.org"],
             subject=f"Bulk {i:03d}", text="bulk\n")
    run_once(cfg)
    config = load(cfg)
    store = Store.open(config.daemon.state_dir)
    outbound = OutboundStore(store)
    ids = {r["subject"]: r["id"] for r in
           outbound.query("SELECT id, subject FROM messages")}
    console = serve(config, lambda: config, outbound, lambda: None, listen="127.0.0.1:0")
    try:
        yield Site(cfg, config, store, console, ids, pixel_port)
    finally:
        console.close()
        store.close()


@pytest.fixture(name="site")
def site_fixture(tmp_path, smtp_server) -> Iterator[Site]:
    yield from make_site(tmp_path, smtp_server)
