"""The ``mailsync`` group, the helpers every command uses, and ``validate``, ``plan``, ``schema``.

Exit 0 ok, 1 failure, 2 usage.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mailsync import __version__, collector
from mailsync.config.problems import Problem, summary
from mailsync.errors import ConfigError, StoreError, StoreOutdated

if TYPE_CHECKING:
    from mailsync.config.load import Loaded
    from mailsync.config.model import Config
    from mailsync.outbound.verp import VerpKey
    from mailsync.store import Store

# Imports inside functions: `mailsync validate` runs in pre-commit hooks and imports this
# module only, so what the other commands need is imported when they run; the loader
# too, which `mailsync status` (and `--help`) do not run.

DEFAULT_CONFIG = "config.yaml"

config_option = click.option(
    "-c", "--config", "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("MAILSYNC_CONFIG", DEFAULT_CONFIG),
    show_default="config.yaml, or $MAILSYNC_CONFIG",
    help="The configuration file.",
)
format_option = click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text",
    show_default=True, help="Output format.",
)


class Exit(click.exceptions.Exit):
    """Leave with an exit code after printing."""


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (or help lists it).

    `mailsync validate` runs in pre-commit hooks on every commit: it should not pay for
    importing the sending, inbound and activity code it does not use.
    """

    lazy = {
        "send": "mailsync.cli.send",
        "run": "mailsync.cli.run",
        "history": "mailsync.cli.history",
        "queue": "mailsync.cli.queue",
        "test": "mailsync.cli.connect",
        "inbox": "mailsync.cli.inbound",
        "activity": "mailsync.cli.activities",
        "reload": "mailsync.cli.daemon",
        "status": "mailsync.cli.daemon",
        "store": "mailsync.cli.store",
        "demo": "mailsync.cli.demo",
        "auth": "mailsync.cli.auth",
        "admin": "mailsync.cli.admin",
        "dkim": "mailsync.cli.dkim",
        "suppression": "mailsync.cli.suppression",
        "plan": "mailsync.cli.plan",
    }

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The process's entry (the console script, ``python -m mailsync``; CliRunner calls
        :meth:`main`, so a test process keeps its collector as it is).

        The collector runs rarely while the command starts (:mod:`mailsync.collector`: the
        process's entry made it so before importing this module; a command called as
        ``mailsync.cli:main``, an older console script, is made so here, a moment later)
        and not at all at exit: everything is frozen when the command returns, so the
        interpreter's last collection does not traverse every object the command made
        (~18 ms of a `run --once`; the memory is the system's again a moment later)."""
        collector.patient()
        try:
            return super().__call__(*args, **kwargs)
        finally:
            gc.freeze()

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            import importlib

            importlib.import_module(self.lazy[cmd_name])  # registers its commands on main
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mailsync")
def main() -> None:
    """mailsync: a declarative, configuration-as-code mail daemon."""


def to_subcommand(ctx: click.Context) -> None:
    """A listing group's options given before its subcommand (``history -c FILE show 1``,
    ``inbox --server S poll``): each becomes the subcommand's default for its option of
    that name (its own, given after its name, still wins); one the subcommand does not
    have is a usage error, not silently ignored."""
    name = ctx.invoked_subcommand
    assert isinstance(ctx.command, click.Group) and name is not None
    sub = ctx.command.get_command(ctx, name)
    own = {p.name for p in sub.params} if sub is not None else set()
    given: dict[str, Any] = {}
    for param in ctx.command.params:
        if param.name is None or ctx.get_parameter_source(param.name) is not \
                click.core.ParameterSource.COMMANDLINE:
            continue
        if param.name not in own:
            flag = max(getattr(param, "opts", [param.name]), key=len)
            raise click.UsageError(f"{flag} is an option of `{ctx.command_path}` (the "
                                   f"listing), not of `{ctx.command_path} {name}`", ctx)
        given[param.name] = ctx.params[param.name]
    if given:
        ctx.default_map = {name: given}


def _print_problems(problems: tuple[Problem, ...] | list[Problem], *, err: bool = False) -> None:
    for p in problems:
        click.echo(p.render(), err=err)


@main.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@config_option
@format_option
@click.option("--strict", is_flag=True,
              help="Warnings fail too (exit 1), e.g. a plain-text secret in CI.")
def validate(files: tuple[Path, ...], config_path: Path, fmt: str, strict: bool) -> None:
    """Check configuration FILES (default: the -c file) against the schema and the rules.

    Prints every problem as FILE:LINE:COL: error|warning: PATH: message, then a summary.
    Exit 0 valid (warnings allowed, unless --strict), 1 invalid, 2 unreadable.
    """
    from mailsync.config.load import load_file

    targets = list(files) or [config_path]
    problems: list[Problem] = []
    unreadable = 0
    for target in targets:
        try:
            loaded = load_file(target)
        except ConfigError as exc:
            click.echo(f"{exc}", err=True)
            unreadable += 1
            continue
        problems.extend(loaded.problems)
    if fmt == "json":
        click.echo(json.dumps([p.as_dict() for p in problems], indent=2))
    else:
        _print_problems(problems)
        # A file not read is not a clean one: the summary says so (its error is on stderr).
        not_read = f"; {unreadable} file{'s' if unreadable > 1 else ''} not read" \
            if unreadable else ""
        click.echo(summary(problems) + not_read)
    if unreadable:
        raise Exit(2)
    if any(p.severity == "error" or strict for p in problems):
        raise Exit(1)


def _read_loaded(path: Path, base_dir: Path) -> Loaded | ConfigError:
    from mailsync.config.load import load_text
    from mailsync.config.yamlload import read_text

    try:
        return load_text(read_text(path), str(path), base_dir, validate=False)
    except ConfigError as exc:
        return exc


def _checked(loaded: Loaded | ConfigError, name: str) -> Loaded:
    """Exit 1 (with every problem printed) unless ``loaded`` holds a model."""
    if isinstance(loaded, ConfigError):
        click.echo(f"error: {loaded}", err=True)
        raise Exit(1)
    if loaded.config is None:
        _print_problems(loaded.problems, err=True)
        click.echo(f"{name}: refused: {summary(list(loaded.problems))}", err=True)
        raise Exit(1)
    return loaded


def load_config_or_exit(config_path: Path) -> Config:
    """The model of a valid -c file, or exit 1 with every problem on stderr."""
    loaded = _load_or_exit(config_path)
    assert loaded.config is not None
    return loaded.config


def config_or_last_applied(config_path: Path) -> Config:
    """The model of the -c file; when it does not load, the configuration its daemon last
    applied (with one warning naming the file's first error), for the commands that only
    need state_dir and spool_dir; exit 1 with every problem when there is none either."""
    from mailsync.config.load import load_file

    try:
        loaded: Loaded | ConfigError = load_file(config_path, remembered=True)
    except ConfigError as exc:
        loaded = exc
    if not isinstance(loaded, ConfigError) and loaded.config is not None:
        return loaded.config
    from mailsync.cli.fallback import first_error, last_applied

    fallback = last_applied(config_path, first_error(loaded))
    if fallback is None:
        _checked(loaded, str(config_path))
        raise AssertionError("unreachable")  # pragma: no cover
    click.echo(fallback.warning, err=True)
    return fallback.config


def open_store_or_exit(config: Config, *, create: bool = True, new_store: bool = False,
                       check: bool = False, prefix: str = "error",
                       migrate: bool = False) -> Store:
    """The store in state_dir, or exit 1 saying why it cannot be opened (one line). A
    reader (not ``create``) who may only read state_dir opens it read only. Only
    ``migrate`` (``mailsync run``) upgrades a store of an older schema version; every
    other command refuses it, naming the daemon that runs on it if one answers."""
    from mailsync.store import Store, read_only

    state_dir, backend = config.daemon.state_dir, config.daemon.store
    try:
        return Store.open(state_dir, create=create, new_store=new_store, check=check,
                          readonly=not create and read_only(state_dir, backend),
                          migrate=migrate, backend=backend)
    except StoreOutdated as exc:
        click.echo(f"{prefix}: {outdated_text(exc, state_dir)}", err=True)
        raise Exit(1) from None
    except StoreError as exc:
        click.echo(f"{prefix}: {exc}", err=True)
        raise Exit(1) from None


def outdated_text(exc: StoreOutdated, state_dir: Path) -> str:
    """Why a store older than this mailsync is refused: with the pid of the (older)
    daemon answering on state_dir's control socket, when one does; a daemon migrates
    its store at start, so a running one on an older store is an older mailsync."""
    from mailsync.daemon.control import request, socket_path
    from mailsync.store import db_path

    try:
        pid = request(socket_path(state_dir), "status", timeout=2.0).get("pid")
    except (ConnectionError, OSError, ValueError):
        return str(exc)
    return (f"{db_path(state_dir)}: the store is at schema version {exc.version} and a "
            f"daemon of an older mailsync runs on it (pid {pid}): upgrade the daemon first "
            "(restart it, e.g. `systemctl restart mailsync`: it upgrades the store); this "
            f"mailsync uses version {exc.current}")


def verp_key_or_exit(config: Config) -> VerpKey:
    """The VERP key in state_dir (made on first use), or exit 1 saying why it cannot be
    read; for the commands that send or poll."""
    from mailsync.outbound.verp import load_key

    try:
        return load_key(config.daemon.state_dir)
    except StoreError as exc:
        click.echo(f"error: {exc}", err=True)
        raise Exit(1) from None
@contextmanager
def using_store(config: Config, *, create: bool = False) -> Iterator[Store | None]:
    """The store for one command (see :func:`closing`); None when reading (not
    ``create``) in a state_dir that never had a store. A store that is missing, replaced
    or damaged exits 1 with one line saying why."""
    from mailsync.store import existed

    if not create and not existed(config.daemon.state_dir, config.daemon.store):
        yield None
        return
    with closing(open_store_or_exit(config, create=create)) as store:
        yield store


@contextmanager
def closing(store: Store) -> Iterator[Store]:
    """``store``, closed after the block; an SQLite error inside it (a damaged page met
    while reading) exits 1 with one line instead of a traceback or partial output."""
    import sqlite3

    from mailsync.store import store_error

    try:
        yield store
    except sqlite3.Error as exc:
        click.echo(f"error: {store_error(exc, store.path)}", err=True)
        raise Exit(1) from None
    finally:
        store.close()


def _load_or_exit(path: Path) -> Loaded:
    """The -c file loaded, or exit 1 with every problem. The schema's verdict on an
    unchanged file is remembered in its state_dir (:mod:`mailsync.config.verdicts`);
    ``validate`` does not use it: it checks in full, and writes nothing."""
    from mailsync.config.load import load_file

    try:
        loaded: Loaded | ConfigError = load_file(path, remembered=True)
    except ConfigError as exc:
        loaded = exc
    return _checked(loaded, str(path))


@main.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of the configuration file (for editors and CI)."""
    from mailsync.config.schema import schema

    click.echo(json.dumps(schema(), indent=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
