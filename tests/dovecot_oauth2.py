"""A real Dovecot whose passdb checks OAuth2 bearer tokens, for tests.

``Dovecot(oauth2=URL or OAuth2Server)`` (tests/dovecot.py) adds ``passdb { driver =
oauth2; mechanisms = xoauth2 oauthbearer }`` with ``introspection_mode = post``: each
token is POSTed to URL as ``token=T&client_id=&client_secret=`` (RFC 7662; no auth cache,
so every login asks), and the answer's ``username`` must equal the SASL user (lowercased)
and ``active`` be true. Passwords keep working for PLAIN/LOGIN through a passwd-file
passdb (the Mailbox helpers use them). The ``oauth2_mailbox`` fixture gives a fresh
user on one such Dovecot per session (``oauth2_dovecot``) whose tokens come from one
session-wide :class:`tests.oauth2server.OAuth2Server`, ``oauth2_mailbox.authority``,
reset after each test (settings, clients, tokens, failures, records)::

    from tests.dovecot_oauth2 import oauth2_dovecot_fixture, oauth2_mailbox_fixture  # noqa: F401

    def test_x(oauth2_mailbox):
        token = oauth2_mailbox.token()  # an access token for oauth2_mailbox.user

What Dovecot 2.3 answers on the wire when it refuses a token (expired, revoked, unknown,
another user's): IMAP ``+ `` then base64 of ``{"status":"401","schemes":"bearer",
"scope":"mail"}`` (XOAUTH2) or ``{"status":"invalid_token"}`` (OAUTHBEARER); after the
client's empty line (XOAUTH2) or ``AQ==`` (OAUTHBEARER), ``NO [AUTHENTICATIONFAILED]
Authentication failed.`` POP3 the same continuation, then ``-ERR [AUTH] Authentication
failed.`` An introspection endpoint that fails or stalls (5 s timeout) gives no
continuation: IMAP ``NO [UNAVAILABLE] Temporary authentication failure. [...]``, POP3
``-ERR [SYS/TEMP] Temporary authentication failure. [...]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.dovecot import Dovecot, Mailbox, _need_dovecot
from tests.oauth2server import OAuth2Server


@dataclass
class OAuth2Mailbox(Mailbox):
    """A Mailbox on the OAuth2 Dovecot, with the authorization server Dovecot trusts."""

    authority: OAuth2Server

    def token(self, **options: Any) -> str:
        """A fresh access token for this user (options as OAuth2Server.access_token)."""
        return self.authority.access_token(self.user, **options)


_OAUTH2_SHARED: list[tuple[OAuth2Server, Dovecot]] = []
_OAUTH2_USERS = [0]


@pytest.fixture(scope="session", name="oauth2_dovecot")
def oauth2_dovecot_fixture() -> Iterator[Dovecot]:
    """One Dovecot with the oauth2 passdb for the whole session (shared like ``dovecot``);
    ``oauth2_dovecot.authority`` is the OAuth2 server whose /introspect it asks."""
    _need_dovecot()
    if not _OAUTH2_SHARED:
        authority = OAuth2Server().start()
        server = Dovecot(oauth2=authority)
        try:
            server.start()
        except BaseException:
            authority.stop()
            raise
        _OAUTH2_SHARED.append((authority, server))
    _OAUTH2_USERS[0] += 1
    yield _OAUTH2_SHARED[0][1]
    _OAUTH2_USERS[0] -= 1
    if _OAUTH2_USERS[0] == 0:
        authority, server = _OAUTH2_SHARED.pop()
        server.stop()
        authority.stop()


@pytest.fixture(name="oauth2_mailbox")
def oauth2_mailbox_fixture(oauth2_dovecot: Dovecot) -> Iterator[OAuth2Mailbox]:
    """A fresh user on the OAuth2 Dovecot; its ``authority`` is reset after the test."""
    authority = oauth2_dovecot.authority
    assert authority is not None
    plain = oauth2_dovecot.add_user()
    yield OAuth2Mailbox(oauth2_dovecot, plain.user, plain.password, authority)
    authority.reset()


oauth2_dovecot = oauth2_dovecot_fixture
oauth2_mailbox = oauth2_mailbox_fixture
