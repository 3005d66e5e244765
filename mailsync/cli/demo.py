"""``mailsync demo`` (registered on `mailsync.cli.main`): the whole path on one machine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mailsync.cli.root import Exit, main
from mailsync.collector import long_running

# Imports inside functions: the demo's driver needs aiosmtpd (an extra), whose absence
# the command reports instead of failing at `mailsync --help`.


@main.command()
@click.option("--dir", "workdir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("demo"), show_default=True,
              help="Where the demo keeps its config, state, spool and Maildirs "
                   "(emptied first; only a directory a previous demo made).")
@click.option("--once", is_flag=True,
              help="Exit after showing the round trip, instead of running until Ctrl-C.")
def demo(workdir: Path, once: bool) -> None:
    """Run mailsync against an embedded SMTP sink on 127.0.0.1: no mail server needed.

    Writes a config from config.example.yaml pointing at the sink, runs the daemon,
    spools a few messages (one of them bounces), then prints the history, the delivered
    files, the bounce and the metrics URL.
    """
    try:
        from mailsync.demo.driver import run_demo
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "aiosmtpd":
            raise
        click.echo("error: `mailsync demo` needs aiosmtpd for its SMTP sink; install it with\n"
                   f"  {sys.executable} -m pip install 'aiosmtpd>=1.4.4'\n"
                   "(or install mailsync with its demo extra: pip install 'mailsync[demo]')",
                   err=True)
        raise Exit(1) from None
    long_running()  # it runs until Ctrl-C
    raise Exit(run_demo(workdir, once))
