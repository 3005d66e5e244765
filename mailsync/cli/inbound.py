"""Commands of the inbound side (registered on `mailsync.cli.main`): inbox, inbox show,
inbox poll."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mailsync.cli.render import WIDTH, say_cut, table
from mailsync.cli.root import (
    Exit,
    config_option,
    config_or_last_applied,
    load_config_or_exit,
    main,
    to_subcommand,
    using_store,
    verp_key_or_exit,
)
from mailsync.cli.terminal import write_raw
from mailsync.config.units import short_time
from mailsync.printable import csv_text, one_line, printable

if TYPE_CHECKING:
    from mailsync.config.model import Config

# Imports inside functions: `mailsync --help` imports every command module, so each
# command imports what only it runs when it runs.

# Reading what was fetched needs only state_dir: a typo in the file does not stop it.
_config = config_or_last_applied


def _check_server(config: Config, server: str | None) -> None:
    names = [s.name for s in config.incoming_servers]
    if server is not None and server not in names:
        raise click.BadParameter(f"{server!r} is not a declared incoming server "
                                 f"(declared: {', '.join(names) or 'none'})",
                                 param_hint="--server")


@main.group(invoke_without_command=True)
@config_option
@click.option("--server", help="Only messages fetched from this incoming server.")
@click.option("--since", help="Only messages fetched since: 2h, 7d, or an ISO date.")
@click.option("--until", help="Only messages fetched before: 1h (ago), or an ISO date or "
              "time (with --since: a window).")
@click.option("--search", help="A part of the From, To or Subject header (any case), or a"
              " Message-ID.")
@click.option("--bounces", is_flag=True,
              help="Only the bounces of messages sent from here.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]),
              default="table", show_default=True,
              help="Output format (json and csv: every field, stable keys).")
@click.option("--wide", is_flag=True,
              help="Every column in full (default: what fits 100 columns).")
@click.pass_context
def inbox(ctx: click.Context, config_path: Path, server: str | None, since: str | None,
          until: str | None, search: str | None, bounces: bool, limit: int, fmt: str,
          wide: bool) -> None:
    """List fetched messages, newest first (`inbox show ID` for one, `inbox poll` to fetch)."""
    if ctx.invoked_subcommand is not None:
        to_subcommand(ctx)
        return
    from mailsync.cli.render import time_window
    from mailsync.inbound import records

    since_t, until_t = time_window(since, until)
    config = _config(config_path)
    _check_server(config, server)
    filters = records.InboxFilters(server, since_t, limit, until=until_t,
                                   search=(search or "").strip() or None, bounces=bounces)
    rows: list[dict[str, Any]] = []
    total = 0
    with using_store(config) as store:
        if store is not None:
            rows = records.list_fetched(store, filters)
            total = records.count_fetched(store, filters) if len(rows) == limit else len(rows)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif fmt == "csv":
        click.echo(csv_text(rows, records.SUMMARY_KEYS), nl=False)
    elif rows:
        shown = rows if wide else [{**r, "fetched_at": short_time(r["fetched_at"])}
                                   for r in rows]
        click.echo(table(shown, records.LIST_COLUMNS, width=None if wide else WIDTH,
                         shrink=("server", "from", "subject")))
    else:
        click.echo("(no messages)")
    say_cut(len(rows), total, fmt)


@inbox.command("show")
@click.argument("fetched_id", metavar="ID", type=int)
@config_option
@click.option("--raw", is_flag=True,
              help="Print the message exactly as fetched (to a terminal: escaped).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
def inbox_show(fetched_id: int, config_path: Path, raw: bool, fmt: str) -> None:
    """One fetched message: where it came from, its headers and its text.

    Control characters (escape sequences, CR, bidi controls) are shown escaped, e.g.
    \\x1b. --raw writes the bytes as fetched to a pipe or a file; to a terminal it shows
    them escaped too.
    """
    from mailsync.inbound.records import show_fetched
    from mailsync.outbound.history import readable

    config = _config(config_path)
    detail = None
    with using_store(config) as store:
        if store is not None:
            detail = show_fetched(store, fetched_id)
    if detail is None:
        click.echo(f"error: no fetched message {fetched_id}", err=True)
        raise Exit(1)
    content: bytes | None = detail.pop("raw")
    if raw:
        if content is None:
            click.echo(f"error: the content of message {fetched_id} was not kept", err=True)
            raise Exit(1)
        write_raw(content)
        return
    if fmt == "json":
        detail["content"] = content.decode("utf-8", "replace") if content else None
        click.echo(json.dumps(detail, indent=2))
        return
    lines = [f"Fetched message {detail['id']} from {one_line(detail['server'])}"]
    for key in ("folder", "fetched_at", "message_id", "from", "to", "subject", "date", "size",
                "bounce_of"):
        if detail.get(key) not in (None, ""):
            lines.append(f"  {key.replace('_', ' ')}: {one_line(detail[key])}")
    lines.append("Content:")
    lines.append(readable(content) if content is not None else "  (not kept)")
    click.echo("\n".join(lines))


@inbox.command("poll")
@config_option
@click.option("--server", help="Poll only this incoming server.")
def inbox_poll(config_path: Path, server: str | None) -> None:
    """Poll each incoming server (or --server) once and print what each poll did.

    Exit 0 when every poll worked, 1 when one failed (its reason is printed).
    """
    from mailsync.activities.hook import ActivityHook
    from mailsync.inbound.onepass import poll_all_once
    from mailsync.telemetry import logs
    from mailsync.telemetry.metrics import Metrics
    from mailsync.values import replace

    config = load_config_or_exit(config_path)  # polls (and writes) by the file itself
    _check_server(config, server)
    logs.setup(config.daemon.log_format)
    if server is not None:
        config = replace(config, incoming_servers=tuple(
            s for s in config.incoming_servers if s.name == server))
    if not config.incoming_servers:
        click.echo("(no incoming servers)")
        return
    metrics = Metrics(served=False)  # no /metrics: nothing to count
    metrics.prime(config)
    with using_store(config, create=True) as store:
        assert store is not None
        results = poll_all_once(config, store, metrics, verp_key=verp_key_or_exit(config),
                                on_message=ActivityHook(config))
    for result in results.values():
        click.echo(printable(result.describe()))
    if any(not r.ok for r in results.values()):
        raise Exit(1)
