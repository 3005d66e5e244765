"""Writing a message's raw bytes for ``inbox show --raw`` and ``history show --raw``."""

from __future__ import annotations

import sys

import click

from mailsync.printable import printable_raw

TTY_NOTE = ("(shown escaped: stdout is a terminal; pipe or redirect --raw for the exact "
            "bytes)")


def write_raw(content: bytes) -> None:
    """``content`` to stdout byte for byte, or, when stdout is a terminal, as lines of text
    with every control character escaped (raw bytes could drive the terminal) and a note
    saying so on stderr."""
    if sys.stdout.isatty():
        click.echo(printable_raw(content))
        click.echo(TTY_NOTE, err=True)
        return
    sys.stdout.buffer.write(content)
    sys.stdout.flush()
