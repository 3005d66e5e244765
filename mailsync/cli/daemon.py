"""``mailsync reload``: ask the running daemon to reload its file and print the outcome."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from mailsync.cli.fallback import daemon_state_dir
from mailsync.cli.root import Exit, _print_problems, config_option, main
from mailsync.config.units import iso
from mailsync.daemon.control import request, socket_path
from mailsync.errors import ConfigError
from mailsync.printable import printable


def _socket(config_path: Path, socket_opt: Path | None) -> Path:
    """The control socket: --socket, $MAILSYNC_SOCKET, the one the daemon running on
    this file says it listens on, or mailsync.sock in the state_dir the file names."""
    if socket_opt is not None:
        return socket_opt
    if os.environ.get("MAILSYNC_SOCKET"):
        return Path(os.environ["MAILSYNC_SOCKET"])
    state_dir = daemon_state_dir(config_path)
    if state_dir is None:
        click.echo(f"error: cannot tell the daemon's state_dir from {config_path}; "
                   "pass --socket. The file's problems:", err=True)
        from mailsync.config.load import load_file  # only when the file names no state_dir

        try:
            _print_problems(load_file(config_path).problems, err=True)
        except ConfigError as exc:
            click.echo(str(exc), err=True)
        raise Exit(1)
    return socket_path(state_dir)


socket_option = click.option(
    "--socket", "socket_opt", type=click.Path(dir_okay=False, path_type=Path),
    help="The daemon's control socket (default: mailsync.sock in the config's state_dir, "
         "or $MAILSYNC_SOCKET).")


@main.command("status")
@config_option
@socket_option
def status_cmd(config_path: Path, socket_opt: Path | None) -> None:
    """Whether the daemon runs, its one-line summary and the last reload's outcome.

    Exit 1 when it does not run; a refused last reload still exits 0 (the daemon runs, on
    the configuration in force): the printed line and the metric
    mailsync_config_last_reload_successful say so.
    """
    path = _socket(config_path, socket_opt)
    try:
        reply = request(path, "status", timeout=10.0)
    except ConnectionError as exc:
        click.echo(printable(f"not running: {exc}"), err=True)
        raise Exit(1) from None
    click.echo(printable(f"running (pid {reply.get('pid')}): {reply.get('status')}"))
    if "last_reload" in reply:  # an older daemon does not tell
        for line in last_reload_lines(reply["last_reload"]):
            click.echo(printable(line))
    if isinstance(reply.get("nodes"), list):  # a shared (PostgreSQL) store
        click.echo(nodes_table(reply["nodes"], str(reply.get("node"))))


def nodes_table(rows: list[dict[str, Any]], this: str) -> str:
    """The nodes sharing the store: whether each is live, its last heartbeat, version,
    config hash, messages in flight and mailboxes held; configurations that differ
    between live nodes are said below the table."""
    from mailsync.cli.render import table  # only for a daemon on a shared store

    shown = [{"node": f"{r.get('name')}{' (this)' if r.get('name') == this else ''}",
              "state": "live" if r.get("live") else "gone",
              "heartbeat": f"{float(r.get('heartbeat_age') or 0):.1f}s ago",
              "version": r.get("version"), "config": str(r.get("config_sha256"))[:12],
              "in_flight": r.get("in_flight"),
              "mailboxes": ", ".join(r.get("mailboxes") or []) or "-"} for r in rows]
    text = f"nodes ({len(rows)}):\n" + table(shown, ["node", "state", "heartbeat", "version",
                                                     "config", "in_flight", "mailboxes"])
    configs = {r.get("config_sha256") for r in rows if r.get("live")}
    if len(configs) > 1:
        text += (f"\nwarning: the live nodes run {len(configs)} different configurations "
                 "(mailsync_cluster_config_drift)")
    return text


def last_reload_lines(last: dict[str, Any] | None) -> list[str]:
    """``last reload: RESULT at TIME: first error or summary``, then the next errors.

    The daemon sends its first three errors and how many there were; the rest are
    for ``mailsync validate``.
    """
    if not isinstance(last, dict):
        return ["last reload: none since the daemon started"]
    result = str(last.get("result"))
    at = iso(last["at"]) if isinstance(last.get("at"), int | float) else "?"
    errors = [str(e) for e in last.get("errors") or []]
    if result != "refused" or not errors:
        return [f"last reload: {result} at {at}: {last.get('summary', '')}"]
    lines = [f"last reload: refused at {at}: {errors[0]}"]
    lines += [f"  {e}" for e in errors[1:]]
    more = int(last.get("error_count") or len(errors)) - len(errors)
    if more > 0:
        lines.append(f"  ... and {more} more (mailsync validate)")
    return lines


@main.command("reload")
@config_option
@socket_option
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds to wait for the outcome.")
def reload_cmd(config_path: Path, socket_opt: Path | None, timeout: float) -> None:
    """Make the running daemon reload its configuration; print what it did.

    Exit 0 when the file was applied (or already in force), 1 when the daemon refused
    it (its errors are printed; the configuration in force stays) or cannot be reached.
    """
    path = _socket(config_path, socket_opt)
    try:
        reply = request(path, "reload", timeout=timeout)
    except ConnectionError as exc:
        click.echo(printable(f"error: cannot reach the daemon: {exc}"), err=True)
        raise Exit(1) from None
    if "result" not in reply:
        click.echo(printable(f"error: {reply.get('error', 'no outcome')}"), err=True)
        raise Exit(1)
    result, summary = reply["result"], reply.get("summary", "")
    if result == "refused":
        click.echo(printable(f"refused: {summary}; the configuration in force stays"),
                   err=True)
        for line in reply.get("errors", []):
            click.echo(printable(f"  {line}"), err=True)
        raise Exit(1)
    click.echo(printable(f"{result}: {summary}"))
    for line in reply.get("changes", []):
        click.echo(printable(f"  {line}"))
    for account, count in sorted(reply.get("held", {}).items()):
        click.echo(printable(f"  held {count} waiting message(s) of account {account} "
                             "(it left the configuration)"))
