"""Durations (``30s``, ``5m``, ``1h``, ``5d``) and sizes (``25MiB``): parse and format;
epoch times as ISO 8601 UTC."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^([0-9]+)(s|m|h|d)$")
_SIZE = re.compile(r"^([0-9]+)(B|KiB|MiB|GiB)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_BYTES = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def parse_duration(text: str) -> timedelta:
    """``'5m'`` -> ``timedelta(minutes=5)``; raises ValueError on anything else."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration (expected e.g. 30s, 5m, 1h, 5d)")
    try:
        return timedelta(seconds=int(m.group(1)) * _SECONDS[m.group(2)])
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None


def parse_when(text: str, now: float) -> float:
    """A time as epoch seconds: a duration that long before ``now`` (``2h``, ``7d``) or an
    ISO date or time (UTC unless it says); ValueError naming the value and what is
    allowed. The listings' ``--since``/``--until`` and the console's fields alike."""
    text = text.strip()
    try:
        return now - parse_duration(text).total_seconds()
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration nor a date (allowed: 30m, 2h, 7d "
                         "ago, or an ISO date such as 2026-03-01 or 2026-03-01T14:00)"
                         ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def format_duration(value: timedelta) -> str:
    """The largest exact unit: ``timedelta(hours=2)`` -> ``'2h'``."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds and seconds % _SECONDS[unit] == 0:
            return f"{seconds // _SECONDS[unit]}{unit}"
    return f"{seconds}s"


def parse_size(text: str) -> int:
    """``'25MiB'`` -> bytes; raises ValueError on anything else."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (expected e.g. 512KiB, 25MiB)")
    return int(m.group(1)) * _BYTES[m.group(2)]


def format_size(value: int) -> str:
    for unit in ("GiB", "MiB", "KiB"):
        if value and value % _BYTES[unit] == 0:
            return f"{value // _BYTES[unit]}{unit}"
    return f"{value}B"


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (seconds precision)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def short_time(epoch_iso: str | None) -> str | None:
    """An ISO 8601 UTC time (from :func:`iso`) as ``2026-12-01 10:37`` for a narrow
    listing (``--wide`` and JSON keep the full time)."""
    return epoch_iso[:16].replace("T", " ") if epoch_iso else epoch_iso
