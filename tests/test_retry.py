"""Retry schedule: doubling, clamping, jitter bounds, lifetime; SMTP reply classes."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsync.config.load import load_text
from mailsync.config.model import Retry
from mailsync.outbound.retry import JITTER, classify_reply, expired, next_attempt

RETRY = Retry(first=timedelta(minutes=5), max=timedelta(hours=1), lifetime=timedelta(days=5))
FIRST, MAX, LIFETIME = 300.0, 3600.0, 5 * 86400.0
T0 = 1_800_000_000.0  # an epoch time in 2027


def delays(age: float, n: int = 500, retry: Retry = RETRY, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    now = T0 + age
    return [next_attempt(T0, now, retry, rng) - now for _ in range(n)]


def test_retry_comes_from_the_config_file(tmp_path: Path) -> None:
    text = "version: 1\ndaemon: {retry: {first: 1m, max: 2h, lifetime: 3d}}\n"
    loaded = load_text(text, "config.yaml", tmp_path)
    assert loaded.config is not None, loaded.errors
    retry = loaded.config.daemon.retry
    assert min(delays(0, retry=retry)) >= 60 and max(delays(0, retry=retry)) <= 66
    assert min(delays(10 * 86400, retry=retry)) >= 7200 * (1 - JITTER)
    assert max(delays(10 * 86400, retry=retry)) <= 7200
    assert not expired(T0, T0 + 3 * 86400, retry)
    assert expired(T0, T0 + 3 * 86400 + 1, retry)


def test_age_is_doubled_with_jitter_around_it():
    got = delays(900)  # 15 minutes old: next try in about 30 minutes
    assert all(1800 * (1 - JITTER) <= d <= 1800 * (1 + JITTER) for d in got)
    assert abs(sum(got) / len(got) - 1800) < 1800 * JITTER / 4  # centred on the doubling


def test_young_message_waits_at_least_first_and_is_spread():
    got = delays(10)  # doubled age 20 s is below first (5 min)
    assert all(FIRST <= d <= FIRST * (1 + JITTER) for d in got)
    assert max(got) - min(got) > FIRST * JITTER / 2  # a backlog does not come due at once
    assert len(set(got)) == len(got)


def test_old_message_waits_at_most_max_and_is_spread():
    got = delays(86400)  # doubled age 2 days is above max (1 hour)
    assert all(MAX * (1 - JITTER) <= d <= MAX for d in got)
    assert max(got) - min(got) > MAX * JITTER / 2


def test_clock_stepping_back_is_treated_as_a_new_message():
    rng = random.Random(3)
    now = T0 - 1000
    assert FIRST <= next_attempt(T0, now, RETRY, rng) - now <= FIRST * (1 + JITTER)


def test_first_equal_to_max_gives_a_fixed_delay():
    fixed = Retry(first=timedelta(minutes=10), max=timedelta(minutes=10))
    assert set(delays(0, retry=fixed, n=20)) == {600.0}
    assert set(delays(86400, retry=fixed, n=20)) == {600.0}


def test_same_seed_same_schedule():
    assert delays(123, n=20, seed=7) == delays(123, n=20, seed=7)
    assert delays(123, n=20, seed=7) != delays(123, n=20, seed=8)


@given(
    age=st.floats(min_value=-1e6, max_value=1e8, allow_nan=False),
    first=st.integers(min_value=0, max_value=86400),
    extra=st.integers(min_value=0, max_value=86400),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_next_attempt_stays_within_first_and_max(age, first, extra, seed):
    retry = Retry(first=timedelta(seconds=first), max=timedelta(seconds=first + extra),
                  lifetime=timedelta(days=5))
    now = T0 + age
    at = next_attempt(T0, now, retry, random.Random(seed))
    # The documented bounds: jitter never leaves [first, max]...
    assert now + first <= at <= now + first + extra
    # ...which lies inside the looser [first·(1-j), max·(1+j)] window.
    assert now + first * (1 - JITTER) <= at <= now + (first + extra) * (1 + JITTER)
    # ...and within ±jitter of the clamped doubled age.
    doubled = min(max(2 * max(age, 0.0), first), first + extra)
    assert doubled * (1 - JITTER) - 1e-6 <= at - now <= doubled * (1 + JITTER) + 1e-6


@given(
    age=st.floats(min_value=0, max_value=1e7, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_next_attempt_is_deterministic_for_a_seeded_rng(age, seed):
    now = T0 + age
    a = next_attempt(T0, now, RETRY, random.Random(seed))
    b = next_attempt(T0, now, RETRY, random.Random(seed))
    assert a == b and a > now


@pytest.mark.parametrize(("age", "gone"), [
    (0, False), (LIFETIME - 1, False), (LIFETIME, False), (LIFETIME + 0.001, True),
    (LIFETIME * 2, True), (-60, False),
])
def test_expired_after_lifetime(age, gone):
    assert expired(T0, T0 + age, RETRY) is gone


@pytest.mark.parametrize(("code", "outcome"), [
    (250, "sent"), (200, "sent"), (299, "sent"), (251, "sent"),
    (421, "deferred"), (450, "deferred"), (452, "deferred"), (None, "deferred"),
    (550, "failed"), (554, "failed"), (500, "failed"), (599, "failed"),
    (354, "deferred"), (199, "deferred"), (600, "deferred"), (-1, "deferred"),
])
def test_classify_reply(code, outcome):
    assert classify_reply(code) == outcome
