"""``mailsync demo``: the whole path on one machine, with no mail server installed.

The SMTP sink (:mod:`~mailsync.demo.sink`) stands in for the world's mail servers and
bounces the way Postfix does (:mod:`~mailsync.demo.dsn` builds its delivery status
notifications); :mod:`~mailsync.demo.driver` writes the demo's config
(:mod:`~mailsync.demo.config`), runs the real daemon as a child process
(:mod:`~mailsync.demo.child`), spools a few messages and shows what happened.
"""
