"""Run one function in a forked child while the parent goes on: two cores, one CLI call.

``mailsync plan --against`` parses two large files; libyaml's composer holds the GIL, so
threads cannot overlap them, but a fork can. The result comes back pickled over a pipe.
Where ``fork`` is unavailable the function simply runs when the result is asked for.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Forked(Generic[T]):
    """The pending result of ``fn()`` computed in a child process."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._fn = fn
        self._pid = 0
        self._fd = -1
        if hasattr(os, "fork"):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child
                os.close(r)
                try:
                    payload = pickle.dumps((True, fn()))
                except BaseException as exc:  # noqa: BLE001 - carried to the parent
                    payload = pickle.dumps((False, exc))
                with os.fdopen(w, "wb") as out:
                    out.write(payload)
                os._exit(0)
            os.close(w)
            self._pid, self._fd = pid, r

    def result(self) -> T:
        """``fn()``'s value (or its exception, raised here)."""
        if self._pid == 0:
            return self._fn()
        with os.fdopen(self._fd, "rb") as inp:
            payload = inp.read()
        os.waitpid(self._pid, 0)
        self._pid = 0
        if not payload:
            return self._fn()  # the child died: do the work here
        ok, value = pickle.loads(payload)
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]
