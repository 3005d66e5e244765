"""The admin console: the send history and each message in a browser (docs/admin.md).

Served by the daemon on ``daemon.admin_listen`` (:mod:`~mailsync.web.server`, a thread of
its own) as server-rendered HTML from autoescaped Jinja2 templates; it reads through the
parts' read sides (``outbound/history.py``) and acts through the same queue functions as
``mailsync queue`` (``outbound/actions.py``). Logins (:mod:`~mailsync.web.passwords`,
:mod:`~mailsync.web.throttle`), signed session cookies and CSRF tokens
(:mod:`~mailsync.web.sessions`), the requests and their security headers
(:mod:`~mailsync.web.http`), the application (:mod:`~mailsync.web.app`) and its pages
(:mod:`~mailsync.web.pages`, a message's parts :mod:`~mailsync.web.mail`).
"""
