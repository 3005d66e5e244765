"""``mailsync queue``: list the outbound queue, retry, hold, release or delete a message."""

from __future__ import annotations

import time
from pathlib import Path

import click

from mailsync.cli.history import list_format, list_messages, wide_option
from mailsync.cli.root import (
    Exit,
    config_option,
    config_or_last_applied,
    main,
    using_store,
)
from mailsync.config.model import Config
from mailsync.outbound.actions import ACTIONS, act
from mailsync.outbound.queue import OutboundStore

# Imports inside the commands: each loads what its command runs and no more (`mailsync
# --help` imports every command module; `validate`, a pre-commit hook, none of them).

# A file with a typo must not stop these while the daemon runs on its last good config.
_config = config_or_last_applied


@main.group()
def queue() -> None:
    """Look at and act on the outbound queue."""


@queue.command("list")
@config_option
@click.option("--limit", type=click.IntRange(1), default=10_000, show_default=True)
@list_format
@wide_option
def queue_list(config_path: Path, limit: int, fmt: str, wide: bool) -> None:
    """Messages not yet delivered: queued, sending, deferred, held; newest first."""
    from mailsync.outbound import history as h

    list_messages(_config(config_path),
                  h.Filters(("queued", "sending", "deferred", "held"), limit=limit),
                  ("id", "status", "created_at", "account", "to", "attempts",
                   "next_attempt_at", "error"), fmt, wide)


def _queue_action(name: str) -> None:
    new, allowed, what = ACTIONS[name].new, ACTIONS[name].allowed, ACTIONS[name].what

    @queue.command(name, help=f"Message ID: {what} (from {', '.join(allowed)}).")
    @click.argument("message_id", type=int)
    @config_option
    def action(message_id: int, config_path: Path) -> None:
        config = _config(config_path)
        # Never creates a store: with none there is no message to act on.
        with using_store(config) as store:
            try:
                if store is None:
                    raise KeyError(message_id)
                old = act(OutboundStore(store), name, message_id, time.time())
            except KeyError:
                click.echo(f"error: no message {message_id}", err=True)
                raise Exit(1) from None
            except ValueError as exc:
                click.echo(f"error: message {message_id} is {exc}; {name} applies to "
                           f"{', '.join(allowed)} messages", err=True)
                raise Exit(1) from None
        click.echo(f"message {message_id}: {old} -> {new} ({what})")
        if new == "queued":
            _wake_daemon(config)


def _wake_daemon(config: Config) -> None:
    """Tell a running daemon that a message is due now (else it sees it within a second)."""
    import contextlib

    from mailsync.daemon.control import request, socket_path

    path = socket_path(config.daemon.state_dir)
    if path.exists():
        with contextlib.suppress(ConnectionError, OSError, ValueError):
            request(path, "wake", timeout=2.0)


for _name in ACTIONS:
    _queue_action(_name)
