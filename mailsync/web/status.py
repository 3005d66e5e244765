"""What the daemon knows of its servers and its last reload, for the Servers and
Configuration pages: a small read-only snapshot the daemon hands the console
(``mailsync/daemon/admin.py`` makes it from its pools, pollers and reloader).

Nothing in it is a secret: reasons are the error texts the daemon logs (which never
hold a password), times are wall-clock seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mailsync.values import field, valueclass


@valueclass
class ServerState:
    """One server as the daemon sees it. ``up`` is None when it has not been used yet
    (no message sent through it, no poll done); ``since`` is when it went down;
    ``last_at`` the last poll (incoming) and ``error`` why the last try failed."""

    up: bool | None = None
    since: float | None = None
    last_at: float | None = None
    error: str | None = None
    note: str | None = None


@valueclass
class DaemonStatus:
    """The snapshot: servers by name, the last reload's outcome (``result``, ``at``,
    ``source``, ``summary``, ``errors``, ``error_count``: what ``mailsync status`` shows;
    None before the first reload) and the config file the daemon reads."""

    outgoing: Mapping[str, ServerState] = field(default_factory=dict)
    incoming: Mapping[str, ServerState] = field(default_factory=dict)
    reload: Mapping[str, Any] | None = None
    config_path: Path | None = None
    daemon: bool = False  # False: not served by a daemon (no live state to show)


def no_status(config_path: Path | None = None) -> DaemonStatus:
    """The snapshot of a console that runs without a daemon (tests, tools)."""
    return DaemonStatus(config_path=config_path)
