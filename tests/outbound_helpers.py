"""Helpers for end-to-end outbound tests: a config around real SMTP servers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from mailsync.cli import main
from mailsync.config.load import load_file
from mailsync.config.model import Config
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.spool import ensure_dirs
from mailsync.store import Store


def server_yaml(name: str, port: int, *, security: str = "none", priority: int = 10,
                max_connections: int = 2, extra: str = "") -> str:
    return (f"  - name: {name}\n    host: 127.0.0.1\n    port: {port}\n"
            f"    security: {security}\n    priority: {priority}\n"
            f"    max_connections: {max_connections}\n    timeout: 5s\n{extra}")


# sales (alice, bob) and support (bob), both through the outgoing server "main".
DEFAULT_ACCOUNTS = (
    "  - name: sales\n    sender_name: Sales Team\n    email: sales@example.com\n"
    "    server: main\n    granted_to: [alice, bob]\n"
    "  - name: support\n    email: support@example.com\n    server: main\n"
    "    granted_to: [bob]\n")


def write_config(tmp_path: Path, servers: str, *, accounts: str | None = None,
                 retry: str = "{first: 5m, max: 1h, lifetime: 5d}",
                 alias: str = "{domain: example.com, bounce: bounce, catchall: catchall}",
                 max_size: str = "1MiB") -> Path:
    accounts = accounts if accounts is not None else DEFAULT_ACCOUNTS
    text = (f"version: 1\ndaemon:\n  state_dir: ./state\n  spool_dir: ./spool\n"
            f"  retry: {retry}\n  max_message_size: {max_size}\n"
            f"alias_domain: {alias}\nusers: [alice, bob, carol]\n"
            f"outgoing_servers:\n{servers}accounts:\n{accounts}")
    path = tmp_path / "config.yaml"
    path.write_text(text)
    ensure_dirs(tmp_path / "spool")
    return path


def run(args: list[str], *, input: str | bytes | None = None) -> Result:
    result = CliRunner().invoke(main, args, input=input, catch_exceptions=False)
    return result


def run_once(config: Path) -> Result:
    result = run(["run", "--once", "-c", str(config)])
    assert result.exit_code == 0, result.output
    return result


def history(config: Path, *args: str) -> list[dict[str, Any]]:
    result = run(["history", "-c", str(config), "--format", "json", *args])
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.output)
    return rows


def show(config: Path, mid: int) -> dict[str, Any]:
    result = run(["history", "show", str(mid), "-c", str(config), "--format", "json"])
    assert result.exit_code == 0, result.output
    detail: dict[str, Any] = json.loads(result.output)
    return detail


def load(config: Path) -> Config:
    loaded = load_file(config)
    assert loaded.config is not None, loaded.problems
    return loaded.config


def open_store(config: Path) -> tuple[Store, OutboundStore]:
    store = Store.open(load(config).daemon.state_dir)
    return store, OutboundStore(store)
