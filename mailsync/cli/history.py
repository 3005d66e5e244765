"""``mailsync history``, ``history show ID`` and ``history follow``: what was sent, queued
or refused, and each event as it is recorded."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from mailsync.cli.render import WIDTH, say_cut, table, time_window
from mailsync.cli.root import (
    Exit,
    config_option,
    config_or_last_applied,
    main,
    open_store_or_exit,
    to_subcommand,
    using_store,
)
from mailsync.outbound.queue import STATUSES, OutboundStore
from mailsync.printable import csv_text

if TYPE_CHECKING:
    from mailsync.config.model import Config
    from mailsync.outbound.follow import Follower
    from mailsync.outbound.history import Filters

Command = TypeVar("Command", bound=Callable[..., Any])

# Imports inside the commands: each loads what its command runs and no more (`mailsync
# --help` imports every command module; `validate`, a pre-commit hook, none of them).

list_format = click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]),
                           default="table", show_default=True,
                           help="Output format (json and csv: every field, stable keys).")
wide_option = click.option("--wide", is_flag=True,
                           help="Every column in full (default: what fits 100 columns).")


# A file with a typo must not stop these while the daemon runs on its last good config.
_config = config_or_last_applied


def listing_options(statuses: str) -> Callable[[Command], Command]:
    """The filters of a listing of messages (``mailsync history``, ``queue list``):
    --status (of ``statuses``), --account, --user, --server, --since, --until, --search;
    :func:`listing_filters` reads them."""
    options = (
        click.option("--status", multiple=True, help=f"Only these statuses (repeatable): "
                     f"{statuses}."),
        click.option("--account"),
        click.option("--user"),
        click.option("--server", help="Only the messages of this outgoing server."),
        click.option("--since", help="Only messages since: 2h, 7d, or an ISO date."),
        click.option("--until", help="Only messages before: 1h (ago), or an ISO date or "
                     "time (with --since: a window, e.g. --since 2026-12-01T09:00 --until "
                     "2026-12-01T10:00)."),
        click.option("--search", help="@domain: its recipients; a recipient's address or a"
                     " Message-ID (another term with @); or a part of the subject (any "
                     "case)."))

    def apply(command: Command) -> Command:
        for option in reversed(options):
            command = option(command)
        return command
    return apply


def listing_filters(allowed: tuple[str, ...], status: tuple[str, ...], account: str | None,
                    user: str | None, server: str | None, since: str | None,
                    until: str | None, search: str | None, limit: int) -> Filters:
    """The :func:`listing_options` given as filters (statuses not given: ``allowed``, or
    any when ``allowed`` is empty); a status not of ``allowed`` is a usage error."""
    from mailsync.outbound import history as h

    for s in status:
        if s not in (allowed or STATUSES):
            raise click.BadParameter(f"{s!r} (allowed: {', '.join(allowed or STATUSES)})",
                                     param_hint="--status")
    since_t, until_t = time_window(since, until)
    return h.Filters(status or allowed, account, user, since_t, limit, server=server,
                     search=(search or "").strip() or None, until=until_t)


@main.group(invoke_without_command=True)
@config_option
@listing_options(", ".join(STATUSES))
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@list_format
@wide_option
@click.pass_context
def history(ctx: click.Context, config_path: Path, status: tuple[str, ...],
            account: str | None, user: str | None, server: str | None, since: str | None,
            until: str | None, search: str | None, limit: int, fmt: str, wide: bool) -> None:
    """List sent, queued and refused messages, newest first (`history show ID` for one)."""
    if ctx.invoked_subcommand is not None:
        to_subcommand(ctx)
        return
    from mailsync.outbound import history as h

    list_messages(_config(config_path),
                  listing_filters((), status, account, user, server, since, until, search,
                                  limit),
                  h.LIST_COLUMNS if wide else h.NARROW_COLUMNS, fmt, wide)


def list_messages(config: Config, filters: Filters, columns: tuple[str, ...], fmt: str,
                  wide: bool) -> None:
    """The messages ``filters`` select, printed as :func:`print_rows` does; a table the
    limit cut ends with ``showing N of M (--limit)`` (a listing is never cut silently)."""
    from mailsync.outbound import history as h

    rows: list[dict[str, Any]] = []
    total = 0
    with using_store(config) as store:
        if store is not None:
            outbound = OutboundStore(store)
            rows = h.list_messages(outbound, filters)
            total = h.count_messages(outbound, filters) \
                if len(rows) == filters.limit else len(rows)
    print_rows(rows, columns, fmt, wide)
    say_cut(len(rows), total, fmt)


def print_rows(rows: list[dict[str, Any]], columns: tuple[str, ...], fmt: str,
                wide: bool) -> None:
    from mailsync.outbound import history as h

    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif fmt == "csv":
        click.echo(csv_text(rows, h.SUMMARY_KEYS), nl=False)
    elif rows:
        click.echo(table(h.for_table(rows, wide), columns, width=None if wide else WIDTH,
                         shrink=h.SHRINK))
    else:
        click.echo("(no messages)")


@history.command("show")
@click.argument("message_id", type=int)
@config_option
@click.option("--raw", is_flag=True,
              help="Print the message exactly as stored (to a terminal: escaped).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def history_show(message_id: int, config_path: Path, raw: bool, fmt: str) -> None:
    """Everything about one message: status, recipients' replies, attempts, content.

    Control characters in what servers and senders wrote are shown escaped (\\x1b);
    --raw writes the stored bytes to a pipe or a file, escaped to a terminal.
    """
    from mailsync.cli.terminal import write_raw
    from mailsync.outbound import history as h

    config = _config(config_path)
    detail = None
    with using_store(config) as store:
        if store is not None:
            detail = h.show(OutboundStore(store), message_id)
    if detail is None:
        click.echo(f"error: no message {message_id}", err=True)
        raise Exit(1)
    if raw:
        if detail["raw"] is None:
            click.echo(f"error: the content of message {message_id} was not kept", err=True)
            raise Exit(1)
        write_raw(detail["raw"])
        return
    if fmt == "json":
        content = detail.pop("raw")
        detail["content"] = content.decode("utf-8", "replace") if content else None
        click.echo(json.dumps(detail, indent=2))
    else:
        click.echo(h.render_show(detail))


# How often `history follow` asks the store for new events.
FOLLOW_EVERY = 0.5


@history.command("follow")
@config_option
@click.option("--status", multiple=True,
              help="Only events of these statuses (repeatable): sent, deferred, failed, ...")
@click.option("--account")
@click.option("--user")
@click.option("--server", help="Only the events of this outgoing server.")
@click.option("--since", help="Start with the events since: 10m, 2h, or an ISO date "
              "(default: only those from now on).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="json: one object a line (JSON Lines).")
def history_follow(config_path: Path, status: tuple[str, ...], account: str | None,
                   user: str | None, server: str | None, since: str | None,
                   fmt: str) -> None:
    """Print each event of the send history as it is recorded (queued, sent, deferred,
    failed, bounced, held, ...), oldest first, until interrupted (Ctrl-C): a mail log's
    tail -f, read from the store (read only; the daemon may run on any node)."""
    import sys

    from mailsync.outbound.follow import Filter, Follower

    since_t, _ = time_window(since, None)
    config = _config(config_path)
    with using_store(config) as store:
        if store is None:
            click.echo("error: no store yet: the daemon has not started", err=True)
            raise Exit(1)
        follower = Follower(OutboundStore(store), Filter(status, account, user, server),
                            since_t)
        current = store
        try:
            while True:
                for event in _poll(follower, current.frozen):
                    click.echo(json.dumps(event) if fmt == "json" else _event_line(event))
                sys.stdout.flush()
                time.sleep(FOLLOW_EVERY)
                if current.frozen:  # the file as it was: open it again to see new commits
                    if current is not store:
                        current.close()
                    current = open_store_or_exit(config, create=False)
                    follower.store = OutboundStore(current)
        except KeyboardInterrupt:
            return
        except BrokenPipeError:  # | head: the reader has gone
            import os

            # Nothing more to write, not even at exit's flush.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        finally:
            if current is not store:
                current.close()


def _poll(follower: Follower, frozen: bool) -> list[dict[str, Any]]:
    """The follower's new events. A store read as a frozen file (no daemon had it open)
    may change under the read once a daemon starts: then nothing this time (the follower
    where it was), and the next poll reads the store opened again."""
    import sqlite3

    last, gaps = follower.last, dict(follower.gaps)
    try:
        return follower.poll()
    except sqlite3.Error:
        if not frozen:
            raise
        follower.last, follower.gaps = last, gaps
        return []


def _event_line(e: dict[str, Any]) -> str:
    """An event as one line: time (UTC, to the second), message, status, recipients,
    server, the reply (or detail), then account, user and Subject; what servers and
    senders wrote is escaped."""
    from mailsync.printable import one_line

    reply = " ".join(str(x) for x in (e["code"], e["reply"] or e["detail"]) if x)
    return "  ".join(part for part in (
        e["at"].replace("T", " ").removesuffix("+00:00"), f"message {e['message']}",
        f"{e['status']:<9}", one_line(e["to"]), e["server"] or "-", one_line(reply) or "-",
        f"[{e['account'] or '-'} {e['user'] or '-'}]", one_line(e["subject"] or "")) if part)
