"""Commands of the outbound side: send, run --once, history, queue, test."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from mailsync.cli import (
    Exit,
    _load_or_exit,
    closing,
    config_option,
    config_or_last_applied,
    main,
    open_store_or_exit,
    using_store,
    verp_key_or_exit,
)
from mailsync.config.model import Config
from mailsync.errors import ConnectError, SecretError
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.verp import VerpKey
from mailsync.printable import printable
from mailsync.store import Store
from mailsync.tables import WIDTH, table

list_format = click.option("--format", "fmt", type=click.Choice(["table", "json"]),
                           default="table", show_default=True, help="Output format.")
wide_option = click.option("--wide", is_flag=True,
                           help="Every column in full (default: what fits 100 columns).")


# A file with a typo must not stop these while the daemon runs on its last good config.
_config = config_or_last_applied


# -- send ------------------------------------------------------------------------------
@main.command()
@config_option
@click.option("--user", required=True, help="Who sends (a declared user).")
@click.option("--account", help="Account to send through (default: the user's only one).")
@click.option("--to", "to", multiple=True, required=True, help="Recipient (repeatable).")
@click.option("--cc", multiple=True, help="Cc recipient (repeatable).")
@click.option("--bcc", multiple=True, help="Bcc recipient (repeatable).")
@click.option("--subject", required=True)
@click.option("--text-file", type=click.File("r"), help="Plain-text body ('-' = stdin).")
@click.option("--html-file", type=click.File("r"), help="HTML body.")
@click.option("--reply-to")
@click.option("--header", "headers", multiple=True, metavar="NAME=VALUE",
              help="Extra header (repeatable).")
@click.option("--attach", multiple=True, type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help="Attach a file (repeatable).")
@click.option("--idempotency-key", help="A key that makes a repeated send a no-op.")
def send(config_path: Path, user: str, account: str | None, to: tuple[str, ...],
         cc: tuple[str, ...], bcc: tuple[str, ...], subject: str, text_file: Any,
         html_file: Any, reply_to: str | None, headers: tuple[str, ...],
         attach: tuple[Path, ...], idempotency_key: str | None) -> None:
    """Drop a message into the spool (tmp/ then new/); the daemon sends it.

    The body comes from --text-file and/or --html-file, or from standard input.
    """
    from mailsync.outbound.identity import Submitters
    from mailsync.outbound.spool import drop, ensure_dirs

    config = _config(config_path)
    # The file will be ours: say now what the daemon would say in rejected/NAME.error.
    # The daemon trusts root and its own user, whom state_dir belongs to.
    trusted = {0}
    with contextlib.suppress(OSError):
        trusted.add(config.daemon.state_dir.stat().st_uid)
    refused = Submitters(config, trusted=trusted).check(user, os.geteuid())
    if refused is not None:
        click.echo(f"error: {refused.reason}: {refused.detail}", err=True)
        raise Exit(1)
    text = text_file.read() if text_file else None
    html = html_file.read() if html_file else None
    if text is None and html is None:
        text = sys.stdin.read()
    extra: dict[str, str] = {}
    for h in headers:
        name, sep, value = h.partition("=")
        if not sep or not name.strip():
            raise click.UsageError(f"--header {h!r}: expected NAME=VALUE")
        extra[name.strip()] = value.strip()
    try:
        # The spool path comes from the config, not from a caller's typo: create it.
        ensure_dirs(config.daemon.spool_dir)
        path = drop(config.daemon.spool_dir, user=user, account=account, to=list(to),
                    cc=list(cc), bcc=list(bcc), subject=subject, text=text, html=html,
                    reply_to=reply_to, headers=extra, attachments=list(attach),
                    idempotency_key=idempotency_key)
    except (ValueError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        raise Exit(1) from None
    click.echo(str(path))


# -- run --once ------------------------------------------------------------------------
@main.command()
@config_option
@click.option("--once", is_flag=True,
              help="Ingest the spool, send all that is due, poll each mailbox, then exit.")
@click.option("--new-store", is_flag=True,
              help="Accept an empty store where state_dir/store-id records one that is "
                   "missing, or another store in its place (the old one's history and "
                   "queued mail are lost). Deletes nothing.")
def run(config_path: Path, once: bool, new_store: bool) -> None:
    """Run the daemon until SIGTERM (with --once: one pass, then exit 0).

    The daemon reloads the file when it changes, on SIGHUP and on `mailsync reload`;
    it serves /metrics and /healthz on daemon.metrics_listen. It refuses to start on a
    store that is missing, replaced (see --new-store) or damaged (docs/store.md).
    """
    from mailsync.outbound.deliver import Deliverer
    from mailsync.telemetry import logs
    from mailsync.telemetry.metrics import Metrics

    loaded = _load_or_exit(config_path)
    config = loaded.config
    assert config is not None
    logs.setup(config.daemon.log_format)
    if not once:
        from mailsync.daemon.supervisor import run as run_daemon

        raise Exit(run_daemon(config_path, loaded, new_store=new_store))
    store = open_store_or_exit(config, new_store=new_store, check=True,
                               prefix="cannot start", migrate=True)
    with closing(store):
        outbound = OutboundStore(store)
        metrics = Metrics()
        metrics.prime(config)
        last = store.last_applied_config()
        if last is None or last.sha256 != loaded.sha256:
            store.record_applied_config(loaded.text, loaded.sha256, str(config_path))
        outbound.recover(time.time())
        outbound.prune(time.time(), config.daemon.history_retention.total_seconds())
        # A one-shot run waits at most this long for a full disk to record an outcome.
        verp_key = verp_key_or_exit(config)
        deliverer = Deliverer(config, outbound, metrics, verp_key=verp_key,
                              record_patience=30.0)
        try:
            ingested, sent = _ingest_and_send(config, metrics, deliverer)
        finally:
            deliverer.close()
        polls = _poll_mailboxes(config, store, metrics, verp_key, deliverer.tokens)
    click.echo(
        f"spool: {ingested.queued} queued, {ingested.rejected} rejected, "
        f"{ingested.duplicates} duplicate{'' if ingested.duplicates == 1 else 's'}"
        + (f", {ingested.taken} already taken" if ingested.taken else "") + "; "
        f"send: {sent.sent} sent, {sent.deferred} deferred, {sent.failed} failed, "
        f"{sent.held} held; {deliverer.connections_opened} SMTP connections")
    for result in polls:
        click.echo(f"inbox: {printable(result.describe())}")


def _poll_mailboxes(config: Config, store: Store, metrics: Any,
                    verp_key: VerpKey, tokens: Any) -> list[Any]:
    """Poll each incoming server once; new messages of servers with an activity rule
    schedule their activity in the same transaction."""
    if not config.incoming_servers:
        return []
    from mailsync.activities.store import schedule_for_fetched
    from mailsync.inbound.poller import poll_all_once

    def on_message(conn: Any, server: Any, fetched_id: int, subject: str, now: float) -> None:
        schedule_for_fetched(conn, config, server, fetched_id, subject, now)

    return list(poll_all_once(config, store, metrics, verp_key=verp_key,
                              on_message=on_message, tokens=tokens).values())


def _ingest_and_send(config: Config, metrics: Any, deliverer: Any) -> tuple[Any, Any]:
    """Ingest the spool (prepared in a child process) while sending each committed batch."""
    import threading

    from mailsync.outbound.pickup import Pickup

    pickup = Pickup(config, deliverer.verp_key)  # forked before this process starts any thread
    done = threading.Event()
    result: dict[str, Any] = {}

    def send() -> None:
        result["sent"] = deliverer.run_once(until=done)

    sender = threading.Thread(target=send, name="mailsync-deliver")
    sender.start()
    try:
        ingested = pickup.wait(metrics, on_commit=deliverer.wake)
    finally:
        done.set()
        deliverer.wake()
        sender.join()
    return ingested, result["sent"]


# -- history ---------------------------------------------------------------------------
@main.group(invoke_without_command=True)
@config_option
@click.option("--status", multiple=True, help="Only these statuses (repeatable).")
@click.option("--account")
@click.option("--user")
@click.option("--since", help="Only messages since: 2h, 7d, or an ISO date.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@list_format
@wide_option
@click.pass_context
def history(ctx: click.Context, config_path: Path, status: tuple[str, ...],
            account: str | None, user: str | None, since: str | None, limit: int,
            fmt: str, wide: bool) -> None:
    """List sent, queued and refused messages, newest first (`history show ID` for one)."""
    if ctx.invoked_subcommand is not None:
        return
    from mailsync.outbound import history as h
    from mailsync.outbound.queue import STATUSES
    from mailsync.tables import parse_since

    for s in status:
        if s not in STATUSES:
            raise click.BadParameter(f"{s!r} (allowed: {', '.join(STATUSES)})",
                                     param_hint="--status")
    try:
        since_t = parse_since(since, time.time()) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    config = _config(config_path)
    rows: list[dict[str, Any]] = []
    total = 0
    filters = h.Filters(status, account, user, since_t, limit)
    with using_store(config) as store:
        if store is not None:
            rows = h.list_messages(OutboundStore(store), filters)
            total = h.count_messages(OutboundStore(store), filters) \
                if len(rows) == limit else len(rows)
    _print_rows(rows, h.LIST_COLUMNS if wide else h.NARROW_COLUMNS, fmt, wide)
    if fmt != "json" and total > len(rows):
        click.echo(f"showing {len(rows):,} of {total:,} (--limit)")


def _print_rows(rows: list[dict[str, Any]], columns: tuple[str, ...], fmt: str,
                wide: bool) -> None:
    from mailsync.outbound import history as h

    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
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
    from mailsync.outbound import history as h
    from mailsync.terminal import write_raw

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


# -- queue -----------------------------------------------------------------------------
@main.group()
def queue() -> None:
    """Look at and act on the outbound queue."""


@queue.command("list")
@config_option
@list_format
@wide_option
def queue_list(config_path: Path, fmt: str, wide: bool) -> None:
    """Messages not yet delivered: queued, sending, deferred, held."""
    from mailsync.outbound import history as h

    config = _config(config_path)
    rows: list[dict[str, Any]] = []
    with using_store(config) as store:
        if store is not None:
            rows = h.list_messages(OutboundStore(store), h.Filters(
                ("queued", "sending", "deferred", "held"), limit=10_000))
    _print_rows(rows, ("id", "status", "created_at", "account", "to", "attempts",
                       "next_attempt_at", "error"), fmt, wide)


_ACTIONS = {
    # command: (new status, allowed from, what it says)
    "retry": ("queued", ("deferred", "failed"), "queued for an immediate retry"),
    "hold": ("held", ("queued", "deferred"), "held by an operator"),
    "release": ("queued", ("held",), "released by an operator"),
    "delete": ("failed", ("queued", "deferred", "held"), "deleted from the queue by an operator"),
}


def _queue_action(name: str) -> None:
    new, allowed, what = _ACTIONS[name]

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
                old = OutboundStore(store).transition(message_id, new, allowed, time.time(),
                                                      what)
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


for _name in _ACTIONS:
    _queue_action(_name)


# -- test ------------------------------------------------------------------------------
def _login_note(session: Any) -> str:
    """What was negotiated: `` (STARTTLS, TLSv1.3, certificate valid until 2027-03-01,
    AUTH PLAIN)``, an OAuth2 login with its token's life (``XOAUTH2, token valid until
    14:32``)."""
    from mailsync.auth.sasl import login_note

    parts = [session.negotiated] if session.negotiated else []
    if session.expires_at is not None:
        parts.append(login_note(session.mechanism, session.expires_at))
    return f" ({', '.join(parts)})" if parts else ""


@main.command("test")
@click.argument("names", nargs=-1)
@config_option
def test_cmd(names: tuple[str, ...], config_path: Path) -> None:
    """Connect and log in to each server (or those NAMEd): OK or Connection Error.

    Outgoing servers (and accounts' own logins) get SMTP AUTH; incoming servers a login
    and a check that the folder (IMAP) or the Maildir (local) exists.
    """
    from mailsync.auth.tokens import TokenCache
    from mailsync.outbound.login import connect

    config = _config(config_path)
    tokens = TokenCache(state_dir=config.daemon.state_dir)
    servers = config.sending_servers()
    # An account's own login is the server `account:NAME` (as in the metrics); plain
    # NAME works too unless a declared server has that name.
    own = {a.name: a.own_login for a in config.accounts if a.own_login is not None}
    names = tuple(n if n in servers or n not in own else own[n].name for n in names)
    unknown = [n for n in names if n not in servers]
    incoming = {s.name: s for s in config.incoming_servers}
    unknown = [n for n in unknown if n not in incoming]
    if unknown:
        declared = [*servers, *incoming]
        raise click.BadParameter(
            f"{', '.join(unknown)} (declared: {', '.join(declared) or 'none'})",
            param_hint="NAME")
    failed = 0
    for name in names or tuple(servers):
        if name not in servers:
            continue
        server = servers[name]
        try:
            session = connect(server, tokens)
            session.close()
        except (ConnectError, SecretError) as exc:
            failed += 1
            click.echo(printable(f"{name}: Connection Error: {exc}"))
            continue
        click.echo(printable(f"{name}: OK{_login_note(session)}"))
    for name in names or tuple(incoming):
        if name not in incoming:
            continue
        from mailsync.inbound.poller import check_incoming

        try:
            note = check_incoming(incoming[name], tokens=tokens)
        except (ConnectError, SecretError) as exc:
            failed += 1
            click.echo(printable(f"{name} (incoming): Connection Error: {exc}"))
            continue
        click.echo(printable(f"{name} (incoming): OK" + (f" ({note})" if note else "")))
    if failed:
        raise Exit(1)
