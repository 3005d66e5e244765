"""Spool preparation in a child process, so that it runs beside the sender on another core.

Reading, parsing and composing thousands of spool files is CPU-bound Python; the sender
is latency-bound and would wait for the GIL behind it (Postfix separates `pickup` and
`smtp` processes for the same reason). The child only reads: it sends prepared batches
over a pipe, and the parent commits them to the store and then removes the files, so
exactly-once ingestion works as in one process, and only one process writes the store
(SQLite's busy handler sleeps for milliseconds when two processes contend). The child
dies with its parent.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import traceback
from multiprocessing.connection import Connection
from typing import Any

from mailsync.config.model import Config
from mailsync.errors import MailsyncError
from mailsync.outbound.ingest import Ingester, IngestStats, prepare_spool

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (no orphaned ingester)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _child(config: Config, conn: Connection) -> None:
    _die_with_parent()
    try:
        for batch in prepare_spool(config):
            conn.send(("batch", batch))
        conn.send(("done", None))
    except BaseException:  # noqa: BLE001 - reported to the parent
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Pickup:
    """A running preparation child. Start it before this process starts any thread: a
    fork copies the locks of the forking process, not the threads that own them."""

    def __init__(self, config: Config) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child_end = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, args=(config, child_end),
                                 name="mailsync-pickup")
        self._proc.start()
        child_end.close()

    def wait(self, ingester: Ingester) -> IngestStats:
        """Commit each batch the child prepares (through ``ingester``) until it is done."""
        stats = IngestStats()
        outcome: tuple[str, Any] = ("error", "the preparation process died")
        try:
            while True:
                try:
                    kind, payload = self._conn.recv()
                except EOFError:
                    break
                if kind == "batch":
                    ingester.commit(payload, stats)
                    continue
                outcome = (kind, payload)
                break
        finally:
            self._conn.close()
            self._proc.join()
        kind, payload = outcome
        if kind != "done":
            raise MailsyncError(f"spool ingestion failed: {payload}")
        return stats
