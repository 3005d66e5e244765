"""The ``mailsync`` command line: parse, call, print. Exit 0 ok, 1 failure, 2 usage.

:mod:`~mailsync.cli.root` is the group (``main``, which the process's entry,
:mod:`mailsync.__main__`, calls), the helpers every command uses and ``validate`` and ``schema``;
each other command group has its module, imported only when that command runs (``plan``,
``send``, ``run``, ``history``, ``queue``, ``test`` as ``connect``, ``inbox`` as
``inbound``, ``activity``, ``reload``/``status`` as ``daemon``, ``store``, ``demo``,
``auth``). :mod:`~mailsync.cli.render` draws the listings' tables,
:mod:`~mailsync.cli.terminal` writes raw bytes safely, :mod:`~mailsync.cli.fallback`
finds the last applied config when the file does not load.
"""

from __future__ import annotations

from mailsync.cli.root import main

__all__ = ["main"]
