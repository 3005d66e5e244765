"""The operator's actions on a queued message: retry, hold, release, delete.

One table for every front end (``mailsync queue retry ID...`` or a selection, and the
admin console's buttons), each action a
:meth:`~mailsync.outbound.queue.OutboundStore.transition` of the message's status,
recorded as an event of its history.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from mailsync.outbound.queue import OutboundStore
from mailsync.values import valueclass


@valueclass
class Action:
    """What an action does: the new status, the statuses it applies to, what it says."""

    new: str
    allowed: tuple[str, ...]
    what: str


ACTIONS = {
    "retry": Action("queued", ("deferred", "failed"), "queued for an immediate retry"),
    "hold": Action("held", ("queued", "deferred"), "held by an operator"),
    "release": Action("queued", ("held",), "released by an operator"),
    "delete": Action("failed", ("queued", "deferred", "held"),
                     "deleted from the queue by an operator"),
}


def act(store: OutboundStore, name: str, message_id: int, now: float,
        by: str | None = None) -> str:
    """Apply action ``name`` to the message; the status it had.

    ``by`` names who acted (the admin console's user): the event then says so, ``retry
    by alice (admin console): queued for an immediate retry``, the audit record of who,
    what and when in the message's history. KeyError for an unknown message, ValueError
    (the status) when the action does not apply to it.
    """
    action = ACTIONS[name]
    return store.transition(message_id, action.new, action.allowed, now, _detail(name, by))


def _detail(name: str, by: str | None) -> str:
    what = ACTIONS[name].what
    return what if by is None else f"{name} by {by} (admin console): {what}"


# An operator's action on many messages commits this many at a time: a selection of
# 100,000 after an outage costs 200 commits, not 100,000, and never holds the store's
# write lock for long against the senders.
CHUNK = 500


def act_many(store: OutboundStore, name: str, message_ids: Sequence[int], now: float,
             by: str | None = None) -> Iterator[tuple[int, str | None, bool]]:
    """Apply action ``name`` to each message (``by`` as for :func:`act`), :data:`CHUNK` per
    transaction: per message, its id, the status it had (None: no such message) and
    whether it moved (False: the action does not apply to its status)."""
    action, detail = ACTIONS[name], _detail(name, by)
    for start in range(0, len(message_ids), CHUNK):
        chunk = message_ids[start:start + CHUNK]
        done = store.transitions(chunk, action.new, action.allowed, now, detail)
        for mid in chunk:
            yield (mid, *done[mid])
