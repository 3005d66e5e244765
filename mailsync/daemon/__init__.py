"""The daemon: the long-running process that drives every part, and ``run --once``.

:mod:`~mailsync.daemon.supervisor` starts the parts, supervises and stops them; a module
per section: :mod:`~mailsync.daemon.runtime` (what the daemon and
:mod:`~mailsync.daemon.once` share, and their common start),
:mod:`~mailsync.daemon.spooling` (spool intake and sending threads),
:mod:`~mailsync.daemon.mailboxes` (a poll thread per incoming server),
:mod:`~mailsync.daemon.health`, :mod:`~mailsync.daemon.watch` (config file and spool),
:mod:`~mailsync.daemon.reload` (load, plan, ``part.reconfigure(new)``),
:mod:`~mailsync.daemon.wakeup` (the supervisor's sleep and signals); the control socket
(:mod:`~mailsync.daemon.control`) answers ``mailsync reload``/``status``/``wake``;
:mod:`~mailsync.daemon.sdnotify` tells systemd; :mod:`~mailsync.daemon.collectors` are
the metrics it registers that read the store at each scrape.
"""
