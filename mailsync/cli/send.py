"""``mailsync send``: drop a message into the spool, as an application would."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import click

from mailsync.cli.root import (
    Exit,
    config_option,
    config_or_last_applied,
    main,
)

# Imports inside the commands: each loads what its command runs and no more (`mailsync
# --help` imports every command module; `validate`, a pre-commit hook, none of them).

# A file with a typo must not stop these while the daemon runs on its last good config.
_config = config_or_last_applied


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
    from mailsync.outbound.routing import choose_account
    from mailsync.outbound.spool import drop, ensure_dirs
    from mailsync.outbound.types import Rejection

    config = _config(config_path)
    # The file will be ours: say now what the daemon would say in rejected/NAME.error.
    # The daemon trusts root and its own user, whom state_dir belongs to.
    trusted = {0}
    with contextlib.suppress(OSError):
        trusted.add(config.daemon.state_dir.stat().st_uid)
    refused = Submitters(config, trusted=trusted).check(user, os.geteuid())
    if refused is None:
        # The user and account as the daemon will choose (rejected/ otherwise, later).
        chosen = choose_account(config, user, account, name_it="--account")
        refused = chosen if isinstance(chosen, Rejection) else None
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
