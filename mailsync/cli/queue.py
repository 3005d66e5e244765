"""``mailsync queue``: list the outbound queue; retry, hold, release or delete messages
(by id, or those a selection matches)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mailsync.cli.history import (
    list_format,
    list_messages,
    listing_filters,
    listing_options,
    wide_option,
)
from mailsync.cli.render import time_window
from mailsync.cli.root import (
    Exit,
    config_option,
    config_or_last_applied,
    main,
    using_store,
)
from mailsync.config.model import Config
from mailsync.outbound.actions import ACTIONS, act_many
from mailsync.outbound.queue import IN_QUEUE, OutboundStore

if TYPE_CHECKING:
    from mailsync.outbound.history import Filters

# Imports inside the commands: each loads what its command runs and no more (`mailsync
# --help` imports every command module; `validate`, a pre-commit hook, none of them).

# A file with a typo must not stop these while the daemon runs on its last good config.
_config = config_or_last_applied


@main.group()
def queue() -> None:
    """Look at and act on the outbound queue."""


@queue.command("list")
@config_option
@listing_options(", ".join(IN_QUEUE))
@click.option("--limit", type=click.IntRange(1), default=10_000, show_default=True)
@list_format
@wide_option
def queue_list(config_path: Path, status: tuple[str, ...], account: str | None,
               user: str | None, server: str | None, since: str | None, until: str | None,
               search: str | None, limit: int, fmt: str, wide: bool) -> None:
    """Messages not yet delivered: queued, sending, deferred, held; newest first. The
    options narrow the list as `mailsync history`'s do."""
    list_messages(_config(config_path),
                  listing_filters(IN_QUEUE, status, account, user, server, since, until,
                                  search, limit),
                  ("id", "status", "created_at", "account", "to", "attempts",
                   "next_attempt_at", "error"), fmt, wide)


def _queue_action(name: str) -> None:
    new, allowed, what = ACTIONS[name].new, ACTIONS[name].allowed, ACTIONS[name].what

    @queue.command(name, short_help=f"By ID or a selection: {what}.", help=(
        f"The messages given by ID, or those the options select: {what} (from"
        f" {', '.join(allowed)}).\n\nSelect with --status (of {', '.join(allowed)}; all of"
        " them if not given), --account, --user, --server, --since and --until (2h, 7d"
        " ago, an ISO date) and --search (as history's: @domain, an address, a part of"
        " the subject), each one narrowing the selection; --dry-run prints what would be"
        " done."))
    @click.argument("message_ids", nargs=-1, type=int, metavar="[ID]...")
    @config_option
    @click.option("--status", multiple=True, help=f"Of {', '.join(allowed)} (repeatable).")
    @click.option("--account")
    @click.option("--user")
    @click.option("--server", help="The outgoing server that has (or last had) it.")
    @click.option("--since", help="Messages created since: 2h, 7d, or an ISO date.")
    @click.option("--until", help="Messages created before: 1h (ago), or an ISO date.")
    @click.option("--search", help="@domain: its recipients (all the mail to a domain whose"
                  " servers were down); a recipient's address or a Message-ID; or a part"
                  " of the subject.")
    @click.option("--dry-run", is_flag=True, help="Print what would be done; change nothing.")
    def action(message_ids: tuple[int, ...], config_path: Path, status: tuple[str, ...],
               account: str | None, user: str | None, server: str | None,
               since: str | None, until: str | None, search: str | None,
               dry_run: bool) -> None:
        selection = _selection(name, status, account, user, server, since, until, search)
        if not message_ids and selection is None:
            raise click.UsageError(f"give message IDs, or select the messages to {name} with"
                                   " --status, --account, --user, --server, --since, --until"
                                   " or --search")
        if message_ids and selection is not None:
            raise click.UsageError("give message IDs or a selection, not both")
        config = _config(config_path)
        # Never creates a store: with none there is no message to act on.
        with using_store(config) as store:
            outbound = None if store is None else OutboundStore(store)
            if selection is not None:
                from mailsync.outbound.history import selected_ids

                ids = [] if outbound is None else selected_ids(outbound, selection)
            else:
                ids = list(dict.fromkeys(message_ids))  # each once, in the order given
            moved, refused = _apply(outbound, name, ids, dry_run, selection is not None)
        if selection is not None or len(ids) > 1:
            _summary(name, moved, refused, selection is not None, dry_run)
        if moved and new == "queued" and not dry_run:
            _wake_daemon(config)
        if refused and selection is None:
            raise Exit(1)


def _selection(name: str, status: tuple[str, ...], account: str | None, user: str | None,
               server: str | None, since: str | None, until: str | None,
               search: str | None) -> Filters | None:
    """The messages the options select (None: no option given), of the statuses the
    action applies to."""
    from mailsync.outbound import history as h

    allowed = ACTIONS[name].allowed
    for s in status:
        if s not in allowed:
            raise click.BadParameter(f"{s!r} ({name} applies to {', '.join(allowed)})",
                                     param_hint="--status")
    search = (search or "").strip() or None
    if not (status or account or user or server or since or until or search):
        return None
    since_t, until_t = time_window(since, until)
    return h.Filters(status or allowed, account, user, since_t, server=server,
                     until=until_t, search=search)


def _apply(store: OutboundStore | None, name: str, ids: list[int], dry_run: bool,
           selected: bool) -> tuple[int, int]:
    """Act on each message (or, with ``dry_run``, say what would be done), one line each;
    the numbers moved and refused: a message given by its id that is unknown or of a
    status the action does not apply to is an error (a line on stderr); a selected one
    whose status changed since it was selected (sent meanwhile) is skipped."""
    new, allowed, what = ACTIONS[name].new, ACTIONS[name].allowed, ACTIONS[name].what
    if store is None:
        outcomes: Iterable[tuple[int, str | None, bool]] = ((mid, None, False) for mid in ids)
    elif dry_run:
        from mailsync.outbound.history import statuses

        had = statuses(store, ids)
        outcomes = ((mid, had.get(mid), had.get(mid) in allowed) for mid in ids)
    else:
        outcomes = act_many(store, name, ids, time.time())
    moved = refused = 0
    for mid, old, ok in outcomes:
        if ok:
            moved += 1
            click.echo(f"message {mid}: {old} (would be {what})" if dry_run else
                       f"message {mid}: {old} -> {new} ({what})")
        elif selected:
            refused += 1
            click.echo(f"message {mid}: skipped (now {old or 'no longer there'})")
        elif old is None:
            refused += 1
            click.echo(f"error: no message {mid}", err=True)
        else:
            refused += 1
            click.echo(f"error: message {mid} is {old}; {name} applies to "
                       f"{', '.join(allowed)} messages", err=True)
    return moved, refused


def _summary(name: str, moved: int, skipped: int, selected: bool, dry_run: bool) -> None:
    what = ACTIONS[name].what
    if selected and not moved and not skipped:
        click.echo(f"{name}: no message matches")
        return
    count = f"{moved:,} message{'' if moved == 1 else 's'}"
    line = (f"{name}: {count} would be {what} (--dry-run: nothing changed)" if dry_run
            else f"{name}: {count} {what}")
    if skipped:
        line += (f"; {skipped:,} skipped (their status changed meanwhile)" if selected else
                 f"; {skipped:,} refused (above)")
    click.echo(line)


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
