"""Where the daemon of a configuration file keeps its state, even when the file is bad.

A typo in the file must not stop the commands that only need state_dir or spool_dir
(``send``, ``history``, ``queue``, ``inbox``, ``test``) while the daemon keeps running on
its last good configuration: they use the configuration the daemon last applied, kept in
its store, with one warning. ``reload`` and ``status`` find the daemon's control socket
the same way. Everything here reads the file with the one loader (bounded depth,
duplicate keys reported and the first one kept, as the daemon reads it).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from mailsync.config.yamlload import parse, read_text
from mailsync.errors import ConfigError, StoreError
from mailsync.values import valueclass

if TYPE_CHECKING:
    from mailsync.config.load import Loaded
    from mailsync.config.model import Config

# Imports inside functions: only a command whose file does not load reads the store
# and the control socket; `validate` never does; `status` and `reload` read only the
# YAML (not the loader, the model and the checks).

DEFAULT_STATE_DIR = "./var/state"  # as mailsync.config.model builds it
_BLOCK_STATE_DIR = re.compile(r"^daemon:\s*\n(?:[ \t]+.*\n|\s*\n)*?[ \t]+state_dir:[ \t]*"
                              r"[\"']?([^\"'#\s]+)", re.MULTILINE)


def named_state_dir(config_path: Path) -> Path | None:
    """The state_dir the file names (the first one when the key is repeated, as the
    loader keeps it), even when the file has errors elsewhere; None when it cannot be
    told (unreadable file, or no state_dir to be found in it)."""
    try:
        text = read_text(config_path)
    except ConfigError:
        return None
    doc = parse(text, str(config_path))
    raw: object = None
    if isinstance(doc.data, dict):
        daemon = doc.data.get("daemon", {})
        raw = daemon.get("state_dir", DEFAULT_STATE_DIR) if isinstance(daemon, dict) else None
    elif doc.data is None:
        # A syntax error somewhere: the usual block layout still names it on its line.
        found = _BLOCK_STATE_DIR.search(text)
        raw = found.group(1) if found else None
    if not isinstance(raw, str) or not raw:
        return None
    path = Path(raw).expanduser()
    return path if path.is_absolute() else config_path.resolve().parent / path


def daemon_state_dir(config_path: Path) -> Path | None:
    """The state_dir of the daemon running on this file (it says where its control
    socket is), else the one the file names."""
    from mailsync.daemon.control import SOCKET_NAME, locate

    found = locate(config_path)
    if found is not None and found.name == SOCKET_NAME:
        return found.parent
    return named_state_dir(config_path)


@valueclass
class Fallback:
    """The configuration last applied, to use instead of a file that does not load."""

    config: Config
    warning: str


def last_applied(config_path: Path, first_error: str) -> Fallback | None:
    """The configuration the daemon of ``config_path`` last applied (it was valid then),
    and the warning to print; None when there is none to be found or it no longer loads
    (the caller then refuses the file as before)."""
    from mailsync.config.load import load_text
    from mailsync.store import Store, existed

    # The state_dir the file names, never the locator's answer: a local user could answer
    # in the daemon's place while it is down, and this configuration decides where a
    # message is written (spool_dir) and what is read. reload and status, which only talk
    # to a daemon, use the locator (daemon_state_dir).
    state_dir = named_state_dir(config_path)
    if state_dir is None or not existed(state_dir):
        return None
    try:
        store = Store.open(state_dir, create=False, readonly=True)
    except StoreError:
        return None
    try:
        applied = store.last_applied_config()
    except Exception:  # noqa: BLE001 - a damaged store: refuse the file as before
        applied = None
    finally:
        store.close()
    if applied is None:
        return None
    loaded = load_text(applied.text, f"{state_dir}/applied config",
                       config_path.resolve().parent)
    if loaded.config is None:
        return None
    at = applied.applied_at.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    return Fallback(loaded.config, f"warning: {first_error}; using the configuration "
                                   f"last applied ({at}, from {applied.source})")


def first_error(loaded: Loaded | ConfigError) -> str:
    """The first thing wrong with a file that does not load, on one line."""
    if isinstance(loaded, ConfigError):
        return str(loaded)
    errors = loaded.errors
    return errors[0].render() if errors else f"{loaded.file}: does not load"
