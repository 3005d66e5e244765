"""The OAuth2 Dovecot fixture: real IMAP and POP3 logins with tokens, and what a refusal
looks like on the wire (the client side decodes it into its error)."""

from __future__ import annotations

import base64
import imaplib
import json
import poplib

import pytest

from tests.dovecot import HOST, message
from tests.dovecot_oauth2 import (  # noqa: F401  (fixtures)
    OAuth2Mailbox,
    oauth2_dovecot_fixture,
    oauth2_mailbox_fixture,
)
from tests.oauth2server import oauthbearer_string, xoauth2_string

XOAUTH2_ERROR = {"status": "401", "schemes": "bearer", "scope": "mail"}


def imap(mailbox: OAuth2Mailbox) -> imaplib.IMAP4:
    return imaplib.IMAP4(HOST, mailbox.dovecot.port("imap"), timeout=10)


def pop3(mailbox: OAuth2Mailbox) -> poplib.POP3:
    return poplib.POP3(HOST, mailbox.dovecot.port("pop3"), timeout=10)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Sasl:
    """An imaplib authenticate() callback: the initial response, then "" (XOAUTH2) or
    ^A (OAUTHBEARER) to a refusal; it keeps the challenges it was given."""

    def __init__(self, first: bytes, ack: bytes = b"") -> None:
        self.first, self.ack, self.challenges = first, ack, []

    def __call__(self, challenge: bytes) -> bytes:
        self.challenges.append(challenge)
        return self.first if len(self.challenges) == 1 else self.ack


def test_imap_xoauth2_logs_in_with_a_valid_token_and_reads_the_mailbox(oauth2_mailbox):
    oauth2_mailbox.append(message(1))  # passwords still work for PLAIN/LOGIN
    client = imap(oauth2_mailbox)
    assert "AUTH=XOAUTH2" in client.capabilities and "AUTH=OAUTHBEARER" in client.capabilities
    token = oauth2_mailbox.token()
    assert client.authenticate("XOAUTH2", Sasl(xoauth2_string(oauth2_mailbox.user, token))) == (
        "OK", [b"Logged in"])
    assert client.select("INBOX") == ("OK", [b"1"])
    client.logout()
    [asked] = [r for r in oauth2_mailbox.authority.requests if r.endpoint == "/introspect"]
    assert asked.params["token"] == token and asked.ok  # (and empty client_id, client_secret)
    assert oauth2_mailbox.dovecot.logged(f"user=<{oauth2_mailbox.user}>, method=XOAUTH2"), \
        oauth2_mailbox.dovecot.log()[-2000:]


def test_imap_refuses_an_expired_token_with_the_401_challenge(oauth2_mailbox):
    token = oauth2_mailbox.token()
    oauth2_mailbox.authority.expire_access_tokens(oauth2_mailbox.user)
    sasl = Sasl(xoauth2_string(oauth2_mailbox.user, token))
    client = imap(oauth2_mailbox)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[AUTHENTICATIONFAILED\] Authentication "
                       r"failed\."):
        client.authenticate("XOAUTH2", sasl)
    assert sasl.challenges[0] == b""  # the empty "+ " before the initial response
    assert json.loads(sasl.challenges[1]) == XOAUTH2_ERROR
    client.shutdown()


def test_imap_oauthbearer_logs_in_or_answers_invalid_token(oauth2_mailbox):
    user = oauth2_mailbox.user
    port = oauth2_mailbox.dovecot.port("imap")
    good = oauth2_mailbox.token()
    bad = oauth2_mailbox.token()
    oauth2_mailbox.authority.revoke(bad)
    sasl = Sasl(oauthbearer_string(user, bad, HOST, port), ack=b"\x01")
    client = imap(oauth2_mailbox)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.authenticate("OAUTHBEARER", sasl)
    assert json.loads(sasl.challenges[1]) == {"status": "invalid_token"}
    assert client.authenticate("OAUTHBEARER", Sasl(oauthbearer_string(user, good, HOST, port))
                               )[0] == "OK"
    client.logout()


def test_a_token_of_another_user_is_refused(oauth2_mailbox):
    other = oauth2_mailbox.authority.access_token("someone-else")
    sasl = Sasl(xoauth2_string(oauth2_mailbox.user, other))
    client = imap(oauth2_mailbox)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.authenticate("XOAUTH2", sasl)
    assert json.loads(sasl.challenges[1]) == XOAUTH2_ERROR
    client.shutdown()


def test_pop3_auth_xoauth2_logs_in_and_refuses_a_revoked_token(oauth2_mailbox):
    oauth2_mailbox.drop([message(1), message(2)])
    token = oauth2_mailbox.token()
    initial = "AUTH XOAUTH2 " + b64(xoauth2_string(oauth2_mailbox.user, token))
    client = pop3(oauth2_mailbox)
    assert {"XOAUTH2", "OAUTHBEARER"} <= set(client.capa()["SASL"])
    assert client._shortcmd(initial) == b"+OK Logged in."
    assert client.stat()[0] == 2
    client.quit()
    oauth2_mailbox.authority.revoke_user(oauth2_mailbox.user)
    client = pop3(oauth2_mailbox)
    challenge = client._shortcmd(initial)
    assert challenge.startswith(b"+ ")
    assert json.loads(base64.b64decode(challenge[2:])) == XOAUTH2_ERROR
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed\."):
        client._shortcmd("")
    client.close()


def test_a_failing_introspection_endpoint_is_a_temporary_failure(oauth2_mailbox):
    token = oauth2_mailbox.token()
    oauth2_mailbox.authority.fail_next("server_error", 2, endpoint="/introspect")
    client = imap(oauth2_mailbox)
    with pytest.raises(imaplib.IMAP4.error, match=r"\[UNAVAILABLE\] Temporary authentication "
                       r"failure"):
        client.authenticate("XOAUTH2", Sasl(xoauth2_string(oauth2_mailbox.user, token)))
    client.shutdown()
    client = pop3(oauth2_mailbox)
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] Temporary authentication"):
        client._shortcmd("AUTH XOAUTH2 " + b64(xoauth2_string(oauth2_mailbox.user, token)))
    client.close()


def test_the_authority_is_reset_between_tests(oauth2_mailbox):
    assert oauth2_mailbox.authority.requests == []
    assert oauth2_mailbox.authority.lifetime == 3600
    oauth2_mailbox.authority.lifetime = 1  # undone after the test
