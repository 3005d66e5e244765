"""``mailsync auth login NAME``: sign a user in by the device flow (RFC 8628) and store
the first refresh token in ``state_dir/tokens/NAME.json`` (docs/oauth2.md)."""

from __future__ import annotations

from pathlib import Path

import click

from mailsync.auth.settings import OAuth2
from mailsync.cli.root import Exit, config_option, load_config_or_exit, main
from mailsync.config.model import Config
from mailsync.errors import OAuth2Error

# Imports inside functions: `mailsync --help` imports every command module, so each
# command imports what only it runs when it runs.


def oauth2_logins(config: Config) -> dict[str, OAuth2]:
    """The OAuth2 settings of every server and account login that has ``auth.oauth2``,
    by name (outgoing servers, accounts' own logins, incoming servers)."""
    found: dict[str, OAuth2] = {}
    for name, server in config.sending_servers().items():
        if server.auth is not None:
            found[name] = server.auth
    for inc in config.incoming_servers:
        if inc.auth is not None:
            found[inc.name] = inc.auth
    return found


@main.group("auth")
def auth_group() -> None:
    """OAuth2 sign-ins of the servers that use a refresh token (docs/oauth2.md)."""


@auth_group.command("login")
@click.argument("name")
@config_option
def login(name: str, config_path: Path) -> None:
    """Sign NAME's user in: prints a URL and a code to enter there (on any device), waits
    for the sign-in, and stores the refresh token in state_dir/tokens/NAME.json (0600).
    Run it again when mailsync says the refresh token was revoked or expired."""
    from mailsync.auth.device import login as device_login
    from mailsync.auth.grants import GrantContext
    from mailsync.auth.store import check_name

    config = load_config_or_exit(config_path)
    logins = oauth2_logins(config)
    settings = logins.get(name)
    if settings is None:
        known = ", ".join(sorted(logins)) or "none"
        click.echo(f"error: {name!r} is no server or account login with auth.oauth2 "
                   f"(those with one: {known})", err=True)
        raise Exit(1)
    if settings.grant != "refresh_token":
        click.echo(f"error: {name} uses the {settings.grant} grant: there is no user to sign "
                   "in (only refresh_token logins need mailsync auth login)", err=True)
        raise Exit(1)
    try:
        check_name(name)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        raise Exit(1) from None

    def show(url: str, code: str) -> None:
        click.echo(f"To sign in {name}, open {url} and enter the code {code}")
        click.echo("Waiting for the sign-in ...")

    ctx = GrantContext(name, state_dir=config.daemon.state_dir)
    try:
        token = device_login(settings, ctx, show)
    except OAuth2Error as exc:
        click.echo(f"error: {exc}", err=True)
        raise Exit(1) from None
    import time

    until = time.strftime("%H:%M", time.localtime(token.expires_at))
    click.echo(f"OK: {name} is signed in; the refresh token is in "
               f"{config.daemon.state_dir / 'tokens' / (name + '.json')} "
               f"(access token valid until {until})")
