"""``mailsync plan``: what applying the -c file would change, against the configuration
the daemon last applied (or the cluster's) or ``--against FILE``, like a Terraform plan."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mailsync.cli.root import (
    Exit,
    _checked,
    _load_or_exit,
    _print_problems,
    _read_loaded,
    config_option,
    format_option,
    main,
    using_store,
)

if TYPE_CHECKING:
    from mailsync.config.load import Loaded

# Imports inside functions: the plan's diff, the forked reader of --against and the
# cluster's query load only when a plan is made (`mailsync --help` lists this module).


class _PlanCommand(click.Command):
    """``plan``, whose usage errors exit 1 under ``--detailed-exitcode``: there 2 means
    "changes", and a mistyped option must not read as changes pending in CI."""

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        detailed = "--detailed-exitcode" in args  # before parsing, which consumes args
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            if detailed:
                raise _DetailedUsageError(exc.format_message(), exc.ctx) from None
            raise


class _DetailedUsageError(click.UsageError):
    exit_code = 1


@main.command(cls=_PlanCommand)
@config_option
@click.option("--against", type=click.Path(dir_okay=False, path_type=Path),
              help="Compare with this file instead of the config the daemon last applied.")
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 0 with no changes, 2 with changes, 1 on error (a usage error "
                   "too).")
@format_option
def plan(config_path: Path, against: Path | None, detailed_exitcode: bool, fmt: str) -> None:
    """Show what applying the -c file would change, like a Terraform plan.

    Compares with the configuration the daemon last applied (kept in state_dir), or
    with --against FILE, e.g. --against <(git show main:config.yaml).
    """
    from mailsync.config.plan import diff

    base_dir = config_path.resolve().parent
    pending = None
    if against is not None:
        from mailsync.cli.forked import Forked

        # The other side is only compared with (checked in full only if it does not fit
        # the model); it is parsed in a forked child while this process checks the new file.
        other = against
        pending = Forked(lambda: _read_loaded(other, base_dir))
    new = _load_or_exit(config_path)
    assert new.config is not None
    old_config = None
    if pending is not None:
        old_loaded = _checked(pending.result(), str(against))
        old_config = old_loaded.config
        compared = str(against)
    else:
        old_config, compared = _last_applied(new, base_dir)
    _print_problems(new.warnings, err=True)
    result = diff(old_config, new.config)
    if fmt == "json":
        out: dict[str, Any] = {"file": str(config_path), "against": compared, **result.as_dict()}
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(result.render())
    if detailed_exitcode and not result.empty:
        raise Exit(2)


def _last_applied(new: Loaded, base_dir: Path) -> tuple[Any, str]:
    """The config the daemon last applied; (None, why) when there is none yet. A store
    that is missing, replaced or damaged exits 1: planning from nothing would show every
    line as added."""
    from mailsync.config.load import load_text

    assert new.config is not None
    state_dir = new.config.daemon.state_dir
    note = ""
    with using_store(new.config) as store:
        applied = store.last_applied_config() if store is not None else None
        if store is not None and store.dialect == "postgresql":
            # Several nodes: the configuration the live ones run (mailsync/store/nodes.py).
            from mailsync.store.nodes import cluster_applied

            applied, note = cluster_applied(store, time.time())
    if note:
        click.echo(f"warning: {note}", err=True)
    if applied is None:
        return None, "(nothing applied yet)"
    loaded = load_text(applied.text, f"{state_dir}/applied config", base_dir, validate=False)
    if loaded.config is None:
        click.echo("warning: the last applied config no longer loads; planning from nothing",
                   err=True)
        return None, "(unreadable applied config)"
    return loaded.config, f"applied config of {applied.applied_at.isoformat()}"
