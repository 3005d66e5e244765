"""One pass over every incoming server, one after the other: ``run --once`` and
``inbox poll``.

The IMAP and POP3 servers are connected to first, without waiting
(:mod:`mailsync.inbound.early`): the handshakes and greetings come while the adapters
are imported, instead of after.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mailsync.auth.tokens import TokenCache
from mailsync.config.model import Config
from mailsync.inbound import early
from mailsync.inbound.poller import OnMessage, Poller, PollResult
from mailsync.outbound.verp import VerpKey
from mailsync.store import Store

if TYPE_CHECKING:
    from mailsync.telemetry.metrics import Metrics


def poll_all_once(config: Config, store: Store, metrics: Metrics, *,
                  verp_key: VerpKey | None, on_message: OnMessage | None = None,
                  clock: Callable[[], float] = time.time,
                  tokens: TokenCache | None = None) -> dict[str, PollResult]:
    """Poll each incoming server once, one after the other; each one's result."""
    results: dict[str, PollResult] = {}
    tokens = tokens or TokenCache(state_dir=config.daemon.state_dir,
                                  observer=metrics.oauth2_observer)
    for server in config.incoming_servers:
        if server.type in ("imap", "pop") and server.host and server.port:
            early.connect_early(server.host, server.port)
    try:
        for server in config.incoming_servers:
            poller = Poller(config, server, store, metrics, verp_key=verp_key,
                            on_message=on_message, clock=clock, tokens=tokens)
            try:
                results[server.name] = poller.poll_once()
            finally:
                poller.close()
    finally:
        early.close_all()
    return results
