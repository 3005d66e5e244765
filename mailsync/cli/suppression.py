"""``mailsync suppression``: list, add or remove the addresses not sent to.

The list is the store's (mailsync/outbound/suppression.py): hard bounces add to it, for
``suppression.expiry``; these commands let an operator look at it and correct it.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import click

from mailsync.cli.history import list_format, wide_option
from mailsync.cli.root import Exit, config_option, config_or_last_applied, main, using_store
from mailsync.printable import csv_text

_ADDRESS = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")
COLUMNS = ("address", "reason", "since", "until", "message", "detail")

# Imports inside the commands: each loads what its command runs and no more (`mailsync
# --help` imports every command module).

# A file with a typo must not stop these while the daemon runs on its last good config.
_config = config_or_last_applied


def _iso(at: float | None) -> str | None:
    return None if at is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _address(value: str) -> str:
    """``value`` as an address to list, or exit 2 saying what is allowed."""
    if not _ADDRESS.match(value.strip()):
        click.echo(f"error: address: {value!r} is not an email address (expected "
                   "local@domain, without spaces or angle brackets)", err=True)
        raise Exit(2)
    # The spool's own bound on a recipient (RFC 5321): no longer address is ever sent to,
    # and the list's key is indexed on either backend.
    from mailsync.outbound.spoolparse import MAX_ADDRESS

    if len(value.strip()) > MAX_ADDRESS:
        click.echo(f"error: address: {len(value.strip()):,} characters long (at most "
                   f"{MAX_ADDRESS}, RFC 5321)", err=True)
        raise Exit(2)
    return value.strip().lower()


@main.group()
def suppression() -> None:
    """The suppression list: recipients not sent to again after a hard bounce."""


@suppression.command("list")
@config_option
@click.option("--all", "everything", is_flag=True, help="Expired entries too.")
@list_format
@wide_option
def suppression_list(config_path: Path, everything: bool, fmt: str, wide: bool) -> None:
    """Suppressed addresses: why (bounced, rejected, manual), since and until when (UTC),
    and the message whose bounce added it."""
    from mailsync.cli.render import table
    from mailsync.outbound import suppression as s

    config = _config(config_path)
    rows: list[dict[str, Any]] = []
    with using_store(config) as store:
        if store is not None:
            with store.lock:
                found = s.entries(store.conn, time.time(), expired=everything)
            rows = [{"address": e.address, "reason": e.reason, "since": _iso(e.since),
                     "until": _iso(e.until) or "(removed by hand)", "message": e.message,
                     "detail": e.detail} for e in found]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    elif fmt == "csv":
        click.echo(csv_text(rows, COLUMNS), nl=False)
    elif rows:
        click.echo(table(rows, COLUMNS, width=None if wide else 100))
    else:
        click.echo("(no suppressed address)")


@suppression.command("add")
@click.argument("address")
@config_option
@click.option("--for", "duration", metavar="DURATION",
              help="How long (e.g. 30d); default: until removed.")
@click.option("--note", help="Why, kept with the entry.")
def suppression_add(address: str, config_path: Path, duration: str | None,
                    note: str | None) -> None:
    """Stop sending to ADDRESS (reason manual)."""
    from mailsync.config.units import parse_duration
    from mailsync.outbound import suppression as s

    address = _address(address)
    until = None
    now = time.time()
    if duration is not None:
        try:
            seconds = parse_duration(duration).total_seconds()
        except ValueError as exc:
            click.echo(f"error: --for: {exc}", err=True)
            raise Exit(2) from None
        if seconds <= 0:
            click.echo(f"error: --for: {duration!r} is no time at all (expected e.g. 1h, 30d)",
                       err=True)
            raise Exit(2)
        until = now + seconds
    config = _config(config_path)
    with using_store(config, create=True) as store:
        assert store is not None
        with store.transaction() as conn:
            s.add(conn, address, "manual", note, now, until)
    click.echo(f"{address}: suppressed " + (f"until {_iso(until)}" if until else
                                            "until removed"))


@suppression.command("remove")
@click.argument("address")
@config_option
def suppression_remove(address: str, config_path: Path) -> None:
    """Send to ADDRESS again (its entry is deleted)."""
    from mailsync.outbound import suppression as s

    address = _address(address)
    config = _config(config_path)
    with using_store(config) as store:
        removed = False
        if store is not None:
            with store.transaction() as conn:
                removed = s.remove(conn, address)
    if not removed:
        click.echo(f"error: {address} is not on the suppression list", err=True)
        raise Exit(1)
    click.echo(f"{address}: removed from the suppression list")
