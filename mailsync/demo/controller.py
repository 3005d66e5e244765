"""The aiosmtpd controller of the demo's sink and of the test suite's SMTP server.

aiosmtpd's :class:`~aiosmtpd.controller.Controller` runs a server in a thread of its
own on a host and port given in advance; after starting it, it connects to that port to
check that the server is up. Bound to port 0 (the system picks a free port: no race for
one), the port must be learnt from the listening socket before that check.
"""

from __future__ import annotations

import asyncio

from aiosmtpd.controller import Controller


class FreePortController(Controller):
    """aiosmtpd's Controller whose ``port`` is the listening socket's once it is bound
    (port 0: a free port the system picks; any other port: that port)."""

    def _trigger_server(self) -> None:
        # Learn the real port before aiosmtpd's start() connects to self.port.
        assert isinstance(self.server, asyncio.Server)
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()  # type: ignore[no-untyped-call]
