"""``mailsync test``: connect and log in to each server, or those named."""

from __future__ import annotations

from pathlib import Path

import click

from mailsync.cli.root import (
    Exit,
    config_option,
    config_or_last_applied,
    main,
)
from mailsync.printable import printable

# Imports inside the commands: each loads what its command runs and no more (`mailsync
# --help` imports every command module; `validate`, a pre-commit hook, none of them).

# A file with a typo must not stop these while the daemon runs on its last good config.
_config = config_or_last_applied


@main.command("test")
@click.argument("names", nargs=-1)
@config_option
def test_cmd(names: tuple[str, ...], config_path: Path) -> None:
    """Connect and log in to each server (or those NAMEd): OK or Connection Error.

    Outgoing servers (and accounts' own logins) get SMTP AUTH; incoming servers a login
    and a check that the folder (IMAP) or the Maildir (local) exists.
    """
    from mailsync.auth.tokens import TokenCache
    from mailsync.inbound.connection import test_incoming, test_outgoing

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
        ok, line = test_outgoing(servers[name], tokens)
        failed += not ok
        click.echo(f"{printable(name)}: {line}")  # the line is printable already
    for name in names or tuple(incoming):
        if name not in incoming:
            continue
        ok, line = test_incoming(incoming[name], tokens)
        failed += not ok
        click.echo(f"{printable(name)} (incoming): {line}")
    if failed:
        raise Exit(1)
