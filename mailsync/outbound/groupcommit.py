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
    wait for it. A group that fails is retried write by write, so one bad write does not
    fail the others, and each caller gets its own write's exception.
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
        with self._cv:
            self._issued += 1
            ticket = self._issued
            self._pending.append((ticket, write))
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
