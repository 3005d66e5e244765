"""The demo's config: ``config.example.yaml`` pointed at the sink, and the messages it spools."""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import yaml

from mailsync.config.checks import LOGIN_KEYS as _LOGIN_KEYS
from mailsync.config.tls import KEYS as _TLS_KEYS
from mailsync.demo.sink import HOST
from mailsync.values import valueclass

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
    daemon.pop("admin_listen", None)  # no admin console: its port and hash files are not the demo's
    cfg.pop("admin", None)
    cfg.pop("dkim", None)      # no key files: the example's keys are not the demo's
    cfg.pop("webhooks", None)  # no receiver: the demo posts events nowhere
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


def render(cfg: dict[str, Any]) -> str:
    header = ("# Written by `mailsync demo` from config.example.yaml: every account sends\n"
              "# through the demo's SMTP sink on loopback; the alias domain's mail (bounces\n"
              "# included) comes back through the `catchall` Maildir.\n")
    return header + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True)


@valueclass
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

