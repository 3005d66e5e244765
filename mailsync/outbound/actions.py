"""The operator's actions on a queued message: retry, hold, release, delete.

One table for every front end (``mailsync queue retry ID`` and the admin console's
buttons), each action a :meth:`~mailsync.outbound.queue.OutboundStore.transition` of
the message's status, recorded as an event of its history.
"""

from __future__ import annotations

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
    detail = action.what if by is None else f"{name} by {by} (admin console): {action.what}"
    return store.transition(message_id, action.new, action.allowed, now, detail)
