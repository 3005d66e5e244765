"""The daemon: the long-running process that drives every part.

:mod:`~mailsync.daemon.supervisor` starts the parts (store, spool intake, senders,
pollers, exporter), watches the config and reloads it, and stops them; the control socket
(:mod:`~mailsync.daemon.control`) answers ``mailsync reload``/``status``/``wake``;
:mod:`~mailsync.daemon.sdnotify` tells systemd; :mod:`~mailsync.daemon.collectors` are
the metrics it registers that read the store at each scrape.
"""
