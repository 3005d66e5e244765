"""Group commit: writes from several threads committed together, each caller returning
once its own write is committed (the senders' outcomes, :meth:`OutboundStore.record_delivery`)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable

from mailsync.store import Store


class GroupCommit:
    """Writes from several threads committed together: each caller returns only once its
    own write is committed, but one COMMIT serves everyone who arrived meanwhile.

    The first waiting caller becomes the leader and commits the whole group; the others
    wait for it. :meth:`submit` and :meth:`wait` split a write's hand-off from the wait for
    its commit: a sender hands its outcome over and goes on with the next message's
    envelope meanwhile, so commits group more writes. A group that fails is retried write
    by write, so one bad write does not fail the others, and each caller gets its own
    write's exception.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cv = threading.Condition()
        self._pending: list[tuple[int, Callable[[sqlite3.Connection], None]]] = []
        self._issued = 0
        self._done = 0
        self._leading = False
        self._errors: dict[int, BaseException] = {}

    def run(self, write: Callable[[sqlite3.Connection], None]) -> None:
        """Commit ``write`` (with whatever else is pending); returns once it is committed."""
        self.wait(self.submit(write))

    def submit(self, write: Callable[[sqlite3.Connection], None]) -> int:
        """Hand ``write`` to the next group without waiting; returns its ticket, which
        must be given to :meth:`wait` (the write is committed by whoever waits first)."""
        with self._cv:
            self._issued += 1
            self._pending.append((self._issued, write))
            return self._issued

    def wait(self, ticket: int) -> None:
        """Return once the write of ``ticket`` is committed (leading the group commit if
        no one does); raises that write's own exception if it failed."""
        with self._cv:
            while self._done < ticket:
                if self._leading:
                    self._cv.wait()
                    continue
                self._leading = True
                batch, self._pending = self._pending, []
                last = batch[-1][0]
                self._cv.release()
                errors: dict[int, BaseException] = {}
                try:
                    errors = self._commit(batch)  # never raises: errors are per write
                finally:
                    self._cv.acquire()
                    self._leading = False
                    self._done = last
                    self._errors.update(errors)
                    self._cv.notify_all()
            error = self._errors.pop(ticket, None)
        if error is not None:
            raise error

    def _commit(self, batch: list[tuple[int, Callable[[sqlite3.Connection], None]]]
                ) -> dict[int, BaseException]:
        try:
            with self.store.transaction() as conn:
                for _, write in batch:
                    write(conn)
            return {}
        except Exception as exc:  # noqa: BLE001 - retried one by one below
            if len(batch) == 1:
                return {batch[0][0]: exc}
        errors: dict[int, BaseException] = {}
        for ticket, write in batch:
            try:
                with self.store.transaction() as conn:
                    write(conn)
            except Exception as exc:  # noqa: BLE001 - handed to its own caller
                errors[ticket] = exc
        return errors
