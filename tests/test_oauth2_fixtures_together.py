"""The OAuth2 fixtures together: a token from the real endpoint opens aiosmtpd, Dovecot
IMAP and Dovecot POP3; once it has expired, all three refuse that same token."""

from __future__ import annotations

import base64
import imaplib
import poplib
import smtplib
import time

import pytest

from tests.dovecot import HOST
from tests.dovecot_oauth2 import oauth2_dovecot_fixture, oauth2_mailbox_fixture  # noqa: F401
from tests.oauth2server import CLIENT_CREDENTIALS, post_form, xoauth2_string
from tests.smtpserver import smtp_server_fixture  # noqa: F401


def logins(mailbox, smtp, token: str) -> list[bool]:
    """Whether SMTP AUTH, IMAP AUTHENTICATE and POP3 AUTH accept ``token`` (XOAUTH2)."""
    sasl = xoauth2_string(mailbox.user, token)
    results = []
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
        client.ehlo()
        code, _ = client.docmd("AUTH", "XOAUTH2 " + base64.b64encode(sasl).decode())
        if code == 334:
            code, _ = client.docmd("")
        results.append(code == 235)
    imap = imaplib.IMAP4(HOST, mailbox.dovecot.port("imap"), timeout=10)
    try:
        results.append(imap.authenticate("XOAUTH2", lambda c: b"" if c else sasl)[0] == "OK")
    except imaplib.IMAP4.error:
        results.append(False)
    imap.shutdown()
    pop = poplib.POP3(HOST, mailbox.dovecot.port("pop3"), timeout=10)
    try:
        reply = pop._shortcmd("AUTH XOAUTH2 " + base64.b64encode(sasl).decode())
        if reply.startswith(b"+ "):
            reply = pop._shortcmd("")
        results.append(reply.startswith(b"+OK"))
    except poplib.error_proto:
        results.append(False)
    pop.close()
    return results


def test_one_token_opens_smtp_imap_and_pop3_until_it_expires(oauth2_mailbox, smtp_server):
    authority = oauth2_mailbox.authority
    authority.lifetime = 1
    authority.add_client("mailsync", "s3cret", user=oauth2_mailbox.user, scopes=["mail"])
    smtp = smtp_server(oauth2=authority)
    status, answer = post_form(authority.token_url, {"grant_type": CLIENT_CREDENTIALS,
                                                     "scope": "mail"},
                               basic=("mailsync", "s3cret"))
    assert status == 200 and answer["expires_in"] == 1
    token = answer["access_token"]
    assert logins(oauth2_mailbox, smtp, token) == [True, True, True]
    deadline = time.monotonic() + 5
    while authority.introspect(token)["active"]:  # its own lifetime, no expire_*() shortcut
        if time.monotonic() > deadline:
            pytest.fail("the token did not expire")
        time.sleep(0.05)
    assert logins(oauth2_mailbox, smtp, token) == [False, False, False]
    assert [a.ok for a in smtp.auth_attempts] == [True, False]
    introspected = [r for r in authority.requests if r.endpoint == "/introspect"]
    assert len(introspected) == 6 and all(r.params["token"] == token for r in introspected)
    assert len(authority.token_requests(CLIENT_CREDENTIALS, ok=True)) == 1
