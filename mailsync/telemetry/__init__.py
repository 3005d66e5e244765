"""Telemetry: what the daemon tells its operators.

:mod:`~mailsync.telemetry.metrics` holds the Prometheus counters and gauges the parts
update; :mod:`~mailsync.telemetry.exporter` serves a registry on ``/metrics`` and the
``/healthz`` probe over HTTP; :mod:`~mailsync.telemetry.logs` sets up the text or JSON log,
every line made printable. The collectors that read the store at each scrape belong to the
daemon that registers them (``daemon/collectors.py``).
"""
