"""``mailsync run`` (the daemon) and ``mailsync run --once`` (one pass, then exit)."""

from __future__ import annotations

from pathlib import Path

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
from mailsync.collector import long_running
from mailsync.printable import printable

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
    from mailsync.telemetry import logs

    loaded = _load_or_exit(config_path)
    config = loaded.config
    assert config is not None
    logs.setup(config.daemon.log_format)
    if not once:
        from mailsync.daemon.supervisor import run as run_daemon

        long_running()
        raise Exit(run_daemon(config_path, loaded, new_store=new_store))
    from mailsync.daemon.once import run_pass
    from mailsync.daemon.runtime import Runtime
    from mailsync.telemetry.metrics import Metrics

    store = open_store_or_exit(config, new_store=new_store, check=True,
                               prefix="cannot start", migrate=True)
    with closing(store):
        runtime = Runtime(config_path, loaded, store, verp_key_or_exit(config),
                          Metrics(served=False))  # no /metrics: nothing to count
        done = run_pass(runtime)  # the daemon's start, then one pass of each part
    click.echo(done.summary())
    for result in done.polls:
        click.echo(f"inbox: {printable(result.describe())}")
    if done.spool_error is not None:
        click.echo(f"error: the spool was not taken: {printable(done.spool_error)}; its "
                   f"files wait in {config.daemon.spool_dir / 'new'}", err=True)
        raise Exit(1)
