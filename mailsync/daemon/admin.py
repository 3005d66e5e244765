"""The admin console as a live part of the daemon (``daemon.admin_listen``; docs/admin.md).

Started after the other parts when the address is set; a reload that changes the
address or the console's TLS files serves it anew there, one that changes its users or
roles needs nothing: the console reads the configuration in force at each request.
What the daemon knows of its servers and reloads reaches the console as a read-only
snapshot made at each request (:func:`daemon_status`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mailsync.config.model import Config
from mailsync.daemon.runtime import Runtime
from mailsync.web.status import DaemonStatus, ServerState

if TYPE_CHECKING:  # imported when a console is served (below): Jinja2 and argon2 with it
    from mailsync.daemon.mailboxes import Mailboxes
    from mailsync.daemon.reload import Reloader
    from mailsync.outbound.pool import ConnectionPool
    from mailsync.web.console import Console

log = logging.getLogger("mailsync.daemon")


def _where(config: Config) -> tuple[object, ...]:
    admin = config.admin
    return (config.daemon.admin_listen, admin and admin.tls_cert_file,
            admin and admin.tls_key_file, admin and admin.session_key)


def daemon_status(pools: Mapping[str, ConnectionPool], mailboxes: Mailboxes | None,
                  reloader: Reloader | None, config_path: Path) -> DaemonStatus:
    """The snapshot of the pools' up/down state (a server not sent to yet has no pool:
    unknown), the pollers' last results and the last reload's outcome."""
    wall, mono = time.time(), time.monotonic()
    outgoing: dict[str, ServerState] = {}
    for name, pool in list(pools.items()):
        outage = pool.outage
        if outage is not None:  # its since is on the pool's (monotonic) clock
            outgoing[name] = ServerState(up=False, since=wall - (mono - outage[1]),
                                         error=outage[0])
        else:
            outgoing[name] = ServerState(up=pool.up, note=f"{pool.open_count} sessions open, "
                                         f"concurrency {pool.concurrency}")
    incoming: dict[str, ServerState] = {}
    for name, box in list(mailboxes.boxes.items()) if mailboxes is not None else ():
        last = box.last
        if last is None:
            incoming[name] = ServerState(note="not polled yet")
            continue
        result, at = last
        incoming[name] = ServerState(up=result.ok, last_at=at, error=result.error,
                                     note=result.describe())
    last_reload = reloader.last if reloader is not None else None  # None until it exists
    return DaemonStatus(outgoing, incoming, last_reload, config_path, daemon=True)


class AdminConsole:
    """The console on ``daemon.admin_listen``, if set: :meth:`start`, :meth:`reconfigure`,
    :meth:`close`. ``status`` makes the snapshot the Servers and Configuration pages show."""

    def __init__(self, runtime: Runtime, wake: Callable[[], None],
                 status: Callable[[], DaemonStatus] | None = None) -> None:
        self._runtime = runtime
        self._wake = wake
        self._status = status or (lambda: DaemonStatus(config_path=runtime.config_path,
                                                       daemon=True))
        self._console: Console | None = None
        self._where: tuple[object, ...] = (None,)

    @property
    def url(self) -> str | None:
        return self._console.url if self._console is not None else None

    def start(self, config: Config) -> None:
        """Serve the console if ``config`` sets an address; OSError when it cannot."""
        self._where = _where(config)
        if config.daemon.admin_listen is None:
            return
        # Imported only when served: a daemon without a console loads no Jinja2 or argon2.
        from mailsync.web.console import serve

        self._console = serve(config, lambda: self._runtime.config, self._runtime.outbound,
                              self._wake, status=self._status, tokens=self._runtime.tokens)

    def reconfigure(self, config: Config) -> None:
        if _where(config) == self._where:
            return
        self.close()
        try:
            self.start(config)
        except (OSError, ValueError) as exc:
            log.error("admin console: cannot serve on %s: %s (the console is off until "
                      "the next reload or restart)", config.daemon.admin_listen, exc)
        except Exception:  # noqa: BLE001 - the console's failure never stops the daemon
            log.exception("admin console: cannot start")

    def close(self) -> None:
        if self._console is not None:
            self._console.close()
            self._console = None
