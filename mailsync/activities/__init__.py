"""Activities: follow-up tasks (call back, reply, check) made from mail by the config's rules.

:mod:`~mailsync.activities.rules` decides (defaults, deadlines, chaining, refusals) without
I/O; :mod:`~mailsync.activities.store` reads and writes them in the store, one transaction
each, and counts them for the metrics; :mod:`~mailsync.activities.hook` is the ``on_message``
hook that schedules them from fetched mail; :mod:`~mailsync.activities.tables` is their
SQL, applied by the store's migrations.
"""
