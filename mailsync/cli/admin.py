"""``mailsync admin hash-password``: the argon2id hash of an admin console password.

The password is read from the terminal (asked twice, not echoed) or, when standard input
is not a terminal, from its first line; never from the command line, where ``ps`` and
the shell's history would show it. The hash goes to standard output, or to ``--output
FILE`` (written atomically, 0640) for ``admin.users[].password_hash: {file: FILE}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailsync.cli.root import Exit, main

# Imports inside the command: `mailsync --help` imports every command module; argon2
# and the file helpers are loaded only when a hash is made.

MIN_LENGTH = 12


@main.group("admin")
def admin_group() -> None:
    """The admin console (docs/admin.md)."""


def _read_password() -> str:
    if sys.stdin.isatty():
        import getpass  # the terminal prompt, only when there is a terminal

        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            click.echo("error: the two passwords differ", err=True)
            raise Exit(1)
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


@admin_group.command("hash-password")
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the hash to FILE (0640) instead of standard output.")
def hash_password(output: Path | None) -> None:
    """Print the argon2id hash of a password read from the terminal or standard input
    (its first line), for admin.users[].password_hash."""
    password = _read_password()
    if len(password) < MIN_LENGTH:
        click.echo(f"error: the password is {len(password)} characters long; at least "
                   f"{MIN_LENGTH} are needed", err=True)
        raise Exit(1)
    from mailsync.web.passwords import hash_password as make

    hashed = make(password)
    if output is None:
        click.echo(hashed)
        return
    from mailsync import files

    try:
        files.write_atomically(output, (hashed + "\n").encode())
    except OSError as exc:
        click.echo(f"error: cannot write {output}: {exc.strerror or exc}", err=True)
        raise Exit(1) from None
    click.echo(f"wrote the hash to {output} (0640): password_hash: {{file: {output}}}",
               err=True)
