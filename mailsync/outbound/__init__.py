"""Outbound mail: spool → queue → SMTP, with routing, composition and retries.

The spool (``spool.py``) is what applications write; ``ingest.py`` (run in the pickup
child, ``pickup.py``) turns its files into queued messages (``queue.py``, over the
store); ``deliver.py`` sends what is due through one connection pool per server
(``pool.py``, sessions from ``smtp.py``); ``history.py`` is the read side of what was sent.
"""
