"""Connection tests of any server, outgoing or incoming: connect, log in, and (incoming)
check the folder or Maildir. ``mailsync test`` prints their lines; the admin console's
"Test connection" button shows one, within a time limit (:func:`test_within`).

Here, in the lowest part that sees both sides (outbound's SMTP login and inbound's
checks), so that the command and the console run the same code.
"""

from __future__ import annotations

import threading
from typing import Any

from mailsync.auth.tokens import TokenCache
from mailsync.config.model import IncomingServer, OutgoingServer
from mailsync.errors import ConnectError, SecretError
from mailsync.printable import printable


def login_note(session: Any) -> str:
    """What was negotiated: `` (STARTTLS, TLSv1.3, certificate valid until 2027-03-01,
    AUTH PLAIN)``, an OAuth2 login with its token's life (``XOAUTH2, token valid until
    14:32``)."""
    from mailsync.auth.sasl import login_note as token_note  # what OAuth2 logins need

    parts = [session.negotiated] if session.negotiated else []
    if session.expires_at is not None:
        parts.append(token_note(session.mechanism, session.expires_at))
    return f" ({', '.join(parts)})" if parts else ""


def test_outgoing(server: OutgoingServer, tokens: TokenCache) -> tuple[bool, str]:
    """Log in to an outgoing server: (True, ``OK (...)``) or (False, ``Connection Error:
    <reason>``); the reason never holds a password."""
    from mailsync.outbound.login import connect  # the SMTP code: only when testing one

    try:
        session = connect(server, tokens)
        session.close()
    except (ConnectError, SecretError) as exc:
        return False, printable(f"Connection Error: {exc}")
    return True, printable(f"OK{login_note(session)}")


def test_incoming(server: IncomingServer, tokens: TokenCache) -> tuple[bool, str]:
    """Log in to an incoming server and check its folder or Maildir, as
    :func:`test_outgoing` says."""
    from mailsync.inbound.poller import check_incoming  # the protocols: only when testing

    try:
        note = check_incoming(server, tokens=tokens)
    except (ConnectError, SecretError) as exc:
        return False, printable(f"Connection Error: {exc}")
    return True, printable("OK" + (f" ({note})" if note else ""))


def test_within(server: OutgoingServer | IncomingServer, tokens: TokenCache,
                limit: float) -> tuple[bool, str]:
    """:func:`test_outgoing` or :func:`test_incoming` in a thread of its own, waited for
    at most ``limit`` seconds: past that, ``Connection Error: no answer within N s`` (the
    thread ends by itself at the server's own timeout)."""
    outcome: list[tuple[bool, str]] = []

    def run() -> None:
        try:
            if isinstance(server, OutgoingServer):
                outcome.append(test_outgoing(server, tokens))
            else:
                outcome.append(test_incoming(server, tokens))
        except Exception as exc:  # noqa: BLE001 - shown as the test's outcome, not a 500
            outcome.append((False, printable(f"Connection Error: {type(exc).__name__}: "
                                             f"{exc}")))

    thread = threading.Thread(target=run, name=f"mailsync-test-{server.name}", daemon=True)
    thread.start()
    thread.join(limit)
    if not outcome:
        return False, f"Connection Error: no answer within {limit:g} s"
    return outcome[0]
