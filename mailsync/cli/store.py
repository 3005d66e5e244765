"""``mailsync store check`` (SQLite's integrity_check) and ``store backup`` (a running
SQLite store's consistent copy; both docs/store.md), ``store copy`` (an SQLite store into
PostgreSQL) and ``store forget-node`` (a gone node's row of a shared store; both
docs/postgresql.md)."""

from __future__ import annotations

from pathlib import Path

import click

from mailsync.cli.root import Exit, config_option, load_config_or_exit, main
from mailsync.errors import StoreError

# Imports inside functions: `mailsync --help` imports every command module, so each
# command imports what only it runs when it runs.


@main.group("store")
def store_group() -> None:
    """Look after the store: check or back up an SQLite one, copy one into PostgreSQL,
    forget a node that is gone."""


@store_group.command("check")
@config_option
@click.option("--db", "db", type=click.Path(dir_okay=False, path_type=Path),
              help="Check this database file instead (e.g. a recovered copy); no -c needed.")
def check(config_path: Path, db: Path | None) -> None:
    """Run SQLite's integrity_check on every page of the store (read only; the daemon may
    run). Prints ok (exit 0), or each problem SQLite finds (exit 1)."""
    from mailsync.store import db_path, integrity

    path = db if db is not None else db_path(load_config_or_exit(config_path).daemon.state_dir)
    if not path.exists():
        click.echo(f"error: {path}: no such file (no store to check)", err=True)
        raise Exit(1)
    try:
        problems = integrity(path)
    except StoreError as exc:
        click.echo(f"error: {exc}", err=True)
        raise Exit(1) from None
    if not problems:
        click.echo("ok")
        return
    for problem in problems:
        click.echo(problem)
    click.echo(f"error: the store {path} is damaged ({len(problems)} problem(s) above); "
               "see docs/store.md for recovery", err=True)
    raise Exit(1)


@store_group.command("backup")
@config_option
@click.argument("dest", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
def backup_command(config_path: Path, dest: Path) -> None:
    """Copy the SQLite store into the new file FILE, consistently, while the daemon runs:
    one moment's pages, one self-contained file (0640), checked page by page. Refuses an
    existing FILE (exit 1). Restoring: docs/store.md."""
    from mailsync.store import db_path
    from mailsync.store.backup import backup

    config = load_config_or_exit(config_path)
    if config.daemon.store.kind == "postgresql":
        click.echo("error: the store is in PostgreSQL: back it up with PostgreSQL's tools "
                   "(pg_dump, or your service's backups; docs/postgresql.md)", err=True)
        raise Exit(1)
    try:
        done = backup(db_path(config.daemon.state_dir), dest)
    except StoreError as exc:
        click.echo(f"error: {exc}", err=True)
        raise Exit(1) from None
    click.echo(f"ok: {done.path}: {done.store}, schema version {done.schema_version}, "
               f"{done.messages:,} messages, {done.size / 1e6:,.1f} MB; checked")


@store_group.command("copy")
@click.option("--from", "source", required=True, metavar="sqlite:PATH",
              help="The SQLite store file to copy (read only; stop the daemon first).")
@click.option("--to", "target", required=True, metavar="postgresql:DSN",
              help="The PostgreSQL database: postgresql:env:NAME (the DSN in $NAME; keeps "
                   "the password out of the process list), postgresql:DSN or a "
                   "postgresql:// URI. It must be empty.")
def copy_command(source: str, target: str) -> None:
    """Copy every table of an SQLite store into an empty PostgreSQL database, verify the
    rows per table, and commit (all or nothing). Refuses a non-empty target (exit 1).
    See docs/postgresql.md."""
    from mailsync.store.pgcopy import copy, parse_source, parse_target

    try:
        path, dsn = parse_source(source), parse_target(target)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        raise Exit(1) from None
    try:
        done = copy(path, dsn, lambda table, rows: click.echo(f"{table}: {rows:,} rows"))
    except StoreError as exc:
        click.echo(f"error: {exc}", err=True)
        raise Exit(1) from None
    total = sum(done.tables.values())
    click.echo(f"ok: {total:,} rows in {len(done.tables)} tables copied to {done.target} "
               "and counted on both sides")


@store_group.command("forget-node")
@config_option
@click.argument("name")
def forget_node(config_path: Path, name: str) -> None:
    """Remove the node NAME from the nodes a shared store lists (`mailsync status`), once
    it is gone: decommissioned, or renamed by daemon.node. A node that still beats is
    refused (exit 1): stop it first. Its claims and mailbox leases lapse as when a node
    dies; nothing else is touched."""
    import time

    from mailsync.cli.root import closing, open_store_or_exit
    from mailsync.store import nodes

    with closing(open_store_or_exit(load_config_or_exit(config_path))) as store:
        now = time.time()
        try:
            node = nodes.forget(store, name, now)
        except StoreError as exc:
            click.echo(f"error: {exc}", err=True)
            raise Exit(1) from None
    if node is None:
        click.echo(f"error: no node named {name!r} in the store", err=True)
        raise Exit(1)
    age = max(0.0, now - node.heartbeat_at)
    if node.live(now):
        click.echo(f"error: node {name!r} is live (its last heartbeat was {age:.0f}s ago, "
                   f"on {node.host}): stop it first; it is gone {node.stale_after:.0f}s "
                   "after its last heartbeat", err=True)
        raise Exit(1)
    click.echo(f"forgot node {name!r} ({node.host}, mailsync {node.version}; last "
               f"heartbeat {age / 3600:.1f} h ago)")
