"""``mailsync store check``: SQLite's integrity_check of the store (docs/store.md)."""

from __future__ import annotations

from pathlib import Path

import click

from mailsync.cli.root import Exit, config_option, load_config_or_exit, main
from mailsync.errors import StoreError

# Imports inside functions: `mailsync --help` imports every command module, so each
# command imports what only it runs when it runs.


@main.group("store")
def store_group() -> None:
    """Look after the SQLite store in state_dir (docs/store.md)."""


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
