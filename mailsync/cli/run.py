"""``mailsync run`` (the daemon) and ``mailsync run --once`` (one pass, then exit)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from mailsync.cli.root import (
    Exit,
    _load_or_exit,
    closing,
    config_option,
    main,
    open_store_or_exit,
    verp_key_or_exit,
)
from mailsync.config.model import Config
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.verp import VerpKey
from mailsync.printable import printable
from mailsync.store import Store

# Imports inside the commands: each loads what its command runs and no more (`mailsync
# --help` imports every command module; `validate`, a pre-commit hook, none of them).


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
