"""``mailsync test``: connect and log in to each server, or those named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mailsync.cli.root import (
    Exit,
    config_option,
    config_or_last_applied,
    main,
)
from mailsync.errors import ConnectError, SecretError
from mailsync.printable import printable

# Imports inside the commands: each loads what its command runs and no more (`mailsync
# --help` imports every command module; `validate`, a pre-commit hook, none of them).

# A file with a typo must not stop these while the daemon runs on its last good config.
_config = config_or_last_applied


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
