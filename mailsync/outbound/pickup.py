"""Spool ingestion in a child process, so that it runs beside the sender on another core.

Reading, parsing, composing and committing thousands of spool files is CPU-bound Python;
the sender is latency-bound and would wait for the GIL behind it (Postfix separates
`pickup` and `smtp` processes for the same reason). The child opens its own store
connection and ingests one pass, exactly-once as always (the store, not the process,
decides what was taken); writers of both processes queue on the store's flock rather
than on SQLite's sleeping busy handler. The child tells the parent after each committed
batch, so that sending starts at once, and it dies with its parent.

:class:`Pickup` is the one-pass child of `run --once`; :class:`PickupService` the
daemon's long-lived one, which runs a pass whenever the spool thread asks.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import signal
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from mailsync.config.model import Config
from mailsync.errors import MailsyncError, StoreUnavailable
from mailsync.outbound.queue import OutboundStore
from mailsync.outbound.types import IngestStats
from mailsync.outbound.verp import VerpKey
from mailsync.store import Store
from mailsync.telemetry.metrics import Metrics
from mailsync.values import asdict

# The ingesting code (parsing, composing, enqueueing) is imported by the child, after the
# fork: `run --once` forks first and imports its sender meanwhile, on the other core.

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (no orphaned ingester)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _child_signals() -> None:
    """The parent's handlers were copied by the fork: the parent decides when to stop
    (SIGTERM kills the child; a Ctrl-C or SIGHUP reaches the parent, which decides)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


class IngestionCrashed(MailsyncError):
    """The ingestion child failed on something unexpected (a bug: the text is its
    traceback) or died; not an error worded for the operator."""


_DUPLICATES = "\0duplicates"  # the spool_duplicates counter among the rejection reasons


def _rejected_totals(metrics: Metrics) -> dict[str, int]:
    """The child's counters the parent adds to its own: rejections by reason, and the
    idempotency duplicates."""
    totals = {s.labels["reason"]: int(s.value)
              for family in metrics.messages_rejected.collect()
              for s in family.samples if s.name.endswith("_total") and s.value}
    duplicates = sum(int(s.value) for family in metrics.spool_duplicates.collect()
                     for s in family.samples if s.name.endswith("_total"))
    if duplicates:
        totals[_DUPLICATES] = duplicates
    return totals


def _relay(conn: Connection, on_commit: Callable[[], None] | None) -> tuple[str, Any]:
    """Read the child's messages, calling ``on_commit`` for each commit, until its answer
    to the pass; EOFError when the child is gone."""
    while True:
        kind, payload = conn.recv()
        if kind != "committed":
            return kind, payload
        if on_commit is not None:
            on_commit()


def _failure(exc: BaseException) -> tuple[str, Any]:
    """A failed pass's answer to the parent (read back by :func:`_outcome`)."""
    if isinstance(exc, StoreUnavailable):  # the files wait in new/ for the next pass
        return "unavailable", (exc.kind, str(exc))
    if isinstance(exc, MailsyncError):  # worded for the operator (and free of secrets)
        return "failed", str(exc)
    return "error", traceback.format_exc()  # a bug: its traceback, for the report


def _outcome(kind: str, payload: Any, metrics: Metrics) -> IngestStats:
    """A pass's answer: its stats, its rejections counted in ``metrics``."""
    if kind == "unavailable":  # the store could not commit: the files wait in new/
        raise StoreUnavailable(payload[1], payload[0])
    if kind == "failed":  # an error of mailsync's own (a DKIM key it cannot read): its text
        raise MailsyncError(payload)
    if kind != "done":  # anything else is a bug: its traceback, for the report
        raise IngestionCrashed(f"spool ingestion failed: {payload}")
    stats, rejected = payload
    for reason, count in rejected.items():
        if reason == _DUPLICATES:
            metrics.spool_duplicates.inc(count)
        else:
            metrics.messages_rejected.labels(reason).inc(count)
    return IngestStats(**stats)


def _child(config: Config, conn: Connection, verp_key: VerpKey | None, served: bool) -> None:
    """The one-pass child of `run --once`; its rejections counted (for the parent's
    metrics) only when the parent's are ``served``."""
    _die_with_parent()
    _child_signals()
    try:
        # Here, in the child: the parent forks before importing it (see above).
        from mailsync.outbound.ingest import Ingester

        store = Store.open(config.daemon.state_dir, create=False,  # the parent made it
                           backend=config.daemon.store)
        metrics = Metrics(served=served)  # not served: no prometheus_client to import
        try:
            ingester = Ingester(config, OutboundStore(store), metrics,
                                on_commit=lambda: conn.send(("committed", None)),
                                verp_key=verp_key)
            stats = ingester.run_once()
        finally:
            store.close()
        conn.send(("done", (asdict(stats), _rejected_totals(metrics))))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(_failure(exc))
    finally:
        conn.close()


class Pickup:
    """A running one-pass ingestion child. Start it before this process starts any thread
    (and before it uses the store from another thread): a fork copies the locks of the
    forking process, not the threads that own them."""

    def __init__(self, config: Config, verp_key: VerpKey | None = None, *,
                 served: bool = True) -> None:
        """``served``: whether the metrics :meth:`wait` is given count (the child counts
        its rejections for them only then)."""
        ctx = multiprocessing.get_context("fork")
        self._conn, child_end = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child, args=(config, child_end, verp_key, served),
                                 name="mailsync-pickup")
        self._proc.start()
        child_end.close()

    def wait(self, metrics: Metrics, on_commit: Callable[[], None] | None = None) -> IngestStats:
        """Relay its commits to ``on_commit`` until it is done; its stats; its rejections
        counted in ``metrics``."""
        try:
            outcome = _relay(self._conn, on_commit)
        except EOFError:
            outcome = ("error", "the ingestion process died")
        finally:
            self._conn.close()
            self._proc.join()
        return _outcome(*outcome, metrics)

    def stop(self) -> None:
        """Stop the child if it still runs (the pass failed before its answer was read):
        what it committed stays; the files it had not taken wait in ``new/``."""
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()
        self._conn.close()


def _serve(config: Config, conn: Connection, verp_key: VerpKey | None) -> None:
    """The daemon's long-lived child: one ingestion pass per ``("pass", limit)`` request;
    ``("config", config)`` reconfigures its ingester for the next passes."""
    # Here, in the child: the parent forks before importing it (see above).
    from mailsync.outbound.ingest import Ingester

    _die_with_parent()
    _child_signals()
    store = Store.open(config.daemon.state_dir, create=False,  # the daemon made it
                       backend=config.daemon.store)
    metrics = Metrics()
    outbound = OutboundStore(store)

    current = Ingester(config, outbound, metrics,
                       on_commit=lambda: conn.send(("committed", None)), verp_key=verp_key)
    try:
        while True:
            try:
                kind, payload = conn.recv()
            except EOFError:
                return
            if kind == "config":
                current.reconfigure(payload)
                continue
            before = _rejected_totals(metrics)
            try:
                stats = current.run_once(limit=payload)
            except BaseException as exc:  # noqa: BLE001 - reported; the next pass tries again
                conn.send(_failure(exc))
                continue
            after = _rejected_totals(metrics)
            delta = {r: n - before.get(r, 0) for r, n in after.items() if n != before.get(r, 0)}
            conn.send(("done", (asdict(stats), delta)))
    finally:
        store.close()
        conn.close()


class PickupService:
    """A long-lived ingestion child for the daemon (Postfix's ``pickup`` process).

    Forked when the daemon starts, before it has any thread; afterwards the daemon's
    spool thread asks it for one pass at a time (:meth:`run_pass`), and the parent's
    GIL stays with the senders. Only one thread may use it.
    """

    def __init__(self, config: Config, verp_key: VerpKey | None = None) -> None:
        ctx = multiprocessing.get_context("fork")
        self._conn, child_end = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(target=_serve, args=(config, child_end, verp_key),
                                 name="mailsync-pickup", daemon=True)
        self._proc.start()
        child_end.close()
        self._config = config  # the child's
        self._next = config  # the passes' from now on

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    def reconfigure(self, config: Config) -> None:
        """Run the next passes under ``config`` (any thread: it is sent to the child with
        the next pass, by the thread running the passes)."""
        self._next = config

    def run_pass(self, metrics: Metrics, on_commit: Callable[[], None] | None = None,
                 limit: int | None = None) -> IngestStats:
        """Ingest what is in ``new/`` now, under the configuration last handed to
        :meth:`reconfigure` (sent first if it changed); MailsyncError when the pass failed
        or the child is gone."""
        try:
            config = self._next
            if config is not self._config:
                self._conn.send(("config", config))
                self._config = config
            self._conn.send(("pass", limit))
            outcome = _relay(self._conn, on_commit)
        except (EOFError, OSError) as exc:
            raise MailsyncError(f"the pickup process is gone ({exc or 'closed'})") from None
        return _outcome(*outcome, metrics)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child now, even mid-pass (what it committed stays; the files it had
        not taken wait in ``new/``). Safe from another thread than :meth:`run_pass`'s,
        which then fails with MailsyncError."""
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(timeout)
