"""The admin console as a live part of the daemon (``daemon.admin_listen``; docs/admin.md).

Started after the other parts when the address is set; a reload that changes the
address or the console's TLS files serves it anew there, one that changes its users or
roles needs nothing: the console reads the configuration in force at each request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from mailsync.config.model import Config
from mailsync.daemon.runtime import Runtime

if TYPE_CHECKING:  # imported when a console is served (below): Jinja2 and argon2 with it
    from mailsync.web.console import Console

log = logging.getLogger("mailsync.daemon")


def _where(config: Config) -> tuple[object, ...]:
    admin = config.admin
    return (config.daemon.admin_listen, admin and admin.tls_cert_file,
            admin and admin.tls_key_file, admin and admin.session_key)


class AdminConsole:
    """The console on ``daemon.admin_listen``, if set: :meth:`start`, :meth:`reconfigure`,
    :meth:`close`."""

    def __init__(self, runtime: Runtime, wake: Callable[[], None]) -> None:
        self._runtime = runtime
        self._wake = wake
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
                              self._wake)

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
