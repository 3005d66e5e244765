"""Retry schedule of deferred messages (Postfix-style backoff), and reply classification.

Pure: times are epoch seconds passed in, randomness comes from the ``rng`` given, so a
seeded ``random.Random`` makes every schedule reproducible in tests.
"""

from __future__ import annotations

import random
from typing import Literal

from mailsync.config.model import Retry

JITTER = 0.1
"""Relative spread of a retry delay: ±10% around the doubled age.

The jittered window is then cut to [``retry.first``, ``retry.max``], never shifted
outside it: the operator's bounds hold exactly, and at either bound the delays still
spread over a 10% band (in ``[first, 1.1·first]`` for a fresh backlog, in
``[0.9·max, max]`` for old messages) instead of all landing on the bound. With
``first == max`` there is no room to spread, and the delay is exactly ``first``.
"""

ReplyClass = Literal["sent", "deferred", "failed"]


def next_attempt(created_at: float, now: float, retry: Retry, rng: random.Random) -> float:
    """Epoch seconds of the next try of a message created at ``created_at``, deferred ``now``.

    The delay is the message's age doubled, clamped to [``first``, ``max``], then drawn
    uniformly from ±``JITTER`` of that, kept within [``first``, ``max``]: so a backlog
    deferred at once does not all come due at once.
    """
    first = retry.first.total_seconds()
    longest = max(retry.max.total_seconds(), first)  # first > max is refused by the checks
    age = max(0.0, now - created_at)  # a clock stepping back never gives a negative age
    delay = min(max(2 * age, first), longest)
    low = max(first, delay * (1 - JITTER))
    high = min(longest, delay * (1 + JITTER))
    # uniform() may round one ulp past ``high``; the bounds are a promise, so hold them.
    return now + min(high, max(low, rng.uniform(low, high)))


def expired(created_at: float, now: float, retry: Retry) -> bool:
    """Whether the message is older than ``retry.lifetime``: a temporary failure then
    becomes permanent."""
    return now - created_at > retry.lifetime.total_seconds()


def classify_reply(code: int | None) -> ReplyClass:
    """What an SMTP reply code means for a recipient: 2xx sent, 5xx failed, else deferred.

    None (timeout, lost connection) and 4xx defer, as do codes that make no sense as a
    final reply (1xx, 3xx, out of range): the lifetime bounds how long they are retried.
    """
    if code is None:
        return "deferred"
    if 200 <= code <= 299:
        return "sent"
    if 500 <= code <= 599:
        return "failed"
    return "deferred"
