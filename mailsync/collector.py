"""The garbage collector of a mailsync process: patient while a command starts, as Python
sets it for a command that runs on.

A command's start imports click, the configuration's model and what the command uses:
tens of thousands of objects, none of them garbage, which Python's default first
threshold (700) has the collector traverse again and again (~30 collections, ~2.5 ms of
an `inbox poll`, before the command line has even been parsed). :func:`patient` is called
first thing by the process's entry (:mod:`mailsync.__main__`), before any of it is
imported; the daemon puts Python's thresholds back (:func:`long_running`).
"""

from __future__ import annotations

import gc

STARTUP_GC_THRESHOLD = 50_000
# Python's own, read before anything of mailsync changes them (3.13 raised the first).
PYTHON_THRESHOLD = gc.get_threshold()


def patient() -> None:
    """The collector runs rarely: a one-shot command starts and ends before it matters."""
    gc.set_threshold(STARTUP_GC_THRESHOLD, *PYTHON_THRESHOLD[1:])


def long_running() -> None:
    """The collector as Python sets it, for a command that runs on (the daemon)."""
    gc.set_threshold(*PYTHON_THRESHOLD)
