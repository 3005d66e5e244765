"""The SMTP fixture's XOAUTH2 / OAUTHBEARER: real aiosmtpd, real tokens, real smtplib."""

from __future__ import annotations

import base64
import json
import smtplib

import pytest

from tests.oauth2server import OAuth2Server, oauthbearer_string, xoauth2_string
from tests.smtpserver import OAUTH2_SCOPE, SmtpServer, smtp_server_fixture  # noqa: F401

USER = "relay@example.com"


@pytest.fixture
def authority(oauth2_server) -> OAuth2Server:
    return oauth2_server(lifetime=60)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def connect(server: SmtpServer) -> smtplib.SMTP:
    client = smtplib.SMTP(server.host, server.port, timeout=10)
    client.ehlo()
    return client


def send_one(client: smtplib.SMTP) -> None:
    client.sendmail(USER, ["to@example.org"], b"Subject: hi\r\n\r\nbody\r\n")


def test_oauth2_offers_only_the_bearer_mechanisms_unless_passwords_too(smtp_server, authority):
    only = smtp_server(oauth2=authority)
    both = smtp_server(oauth2=authority, auth={"relay": "pw"})
    plain = smtp_server(auth={"relay": "pw"})
    offers = []
    for server in (only, both, plain):
        with connect(server) as client:
            offers.append(client.esmtp_features["auth"].split())
    assert offers == [["OAUTHBEARER", "XOAUTH2"], ["LOGIN", "OAUTHBEARER", "PLAIN", "XOAUTH2"],
                      ["LOGIN", "PLAIN"]]


def test_xoauth2_with_a_valid_token_logs_in_and_sends(smtp_server, authority):
    server = smtp_server(oauth2=authority)
    token = authority.access_token(USER)
    with connect(server) as client:
        assert client.mail(USER)[0] == 530  # no AUTH yet
        assert client.docmd("AUTH", "XOAUTH2 " + b64(xoauth2_string(USER, token))) == (
            235, b"2.7.0 Authentication successful")
        send_one(client)
    [got] = server.wait_for(1)
    assert (got.auth_user, got.auth_mechanism) == (USER, "XOAUTH2")
    assert [(a.mechanism, a.user, a.token, a.ok) for a in server.auth_attempts] == [
        ("XOAUTH2", USER, token, True)]
    assert server.logins == [USER]


def test_smtplibs_own_xoauth2_flow_works_without_an_initial_response(smtp_server, authority):
    server = smtp_server(oauth2=authority)
    token = authority.access_token(USER)
    with connect(server) as client:
        code, text = client.auth("XOAUTH2", lambda challenge=None: xoauth2_string(
            USER, token).decode(), initial_response_ok=False)
        assert code == 235
        send_one(client)
    assert server.wait_for(1)[0].auth_mechanism == "XOAUTH2"


def test_an_expired_token_gets_the_401_challenge_then_535(smtp_server, authority):
    server = smtp_server(oauth2=authority)
    token = authority.access_token(USER)
    authority.expire_access_tokens()
    with connect(server) as client:
        code, challenge = client.docmd("AUTH", "XOAUTH2 " + b64(xoauth2_string(USER, token)))
        assert code == 334
        assert json.loads(base64.b64decode(challenge)) == {
            "status": "401", "schemes": "bearer", "scope": OAUTH2_SCOPE}
        assert client.docmd("") == (535, b"5.7.3 Authentication unsuccessful")
        assert client.mail(USER)[0] == 530
    [attempt] = server.auth_attempts
    assert not attempt.ok and attempt.challenge == {"status": "401", "schemes": "bearer",
                                                    "scope": OAUTH2_SCOPE}
    assert server.failed_logins == [USER] and server.logins == []


def test_smtplib_reports_a_refused_token_as_an_authentication_error(smtp_server, authority):
    server = smtp_server(oauth2=authority)
    token = authority.access_token(USER)
    authority.revoke(token)
    seen: list[str | None] = []

    def xoauth2(challenge: bytes | None = None) -> str:
        seen.append(challenge.decode() if challenge else None)
        return "" if challenge else xoauth2_string(USER, token).decode()

    with connect(server) as client, pytest.raises(smtplib.SMTPAuthenticationError) as caught:
        client.auth("XOAUTH2", xoauth2)
    assert caught.value.smtp_code == 535
    assert json.loads(seen[-1] or "")["status"] == "401"


def test_a_token_of_another_user_is_refused(smtp_server, authority):
    server = smtp_server(oauth2=authority)
    token = authority.access_token("someone-else@example.com")
    with connect(server) as client:
        assert client.docmd("AUTH", "XOAUTH2 " + b64(xoauth2_string(USER, token)))[0] == 334
        assert client.docmd("")[0] == 535


def test_oauthbearer_logs_in_or_answers_the_rfc7628_error(smtp_server, authority):
    server = smtp_server(oauth2=authority)
    good, bad = authority.access_token(USER), "not-a-token"
    with connect(server) as client:
        code, challenge = client.docmd("AUTH", "OAUTHBEARER " + b64(oauthbearer_string(USER, bad)))
        assert code == 334
        error = json.loads(base64.b64decode(challenge))
        assert error["status"] == "invalid_token" and error["scope"] == OAUTH2_SCOPE
        assert "openid-configuration" in error
        assert client.docmd("AQ==") == (535, b"5.7.8 Authentication credentials invalid")
        assert client.docmd("AUTH", "OAUTHBEARER " + b64(oauthbearer_string(USER, good)))[0] == 235
        send_one(client)
    assert server.wait_for(1)[0].auth_mechanism == "OAUTHBEARER"


def test_a_malformed_string_is_501_and_a_failing_introspection_is_454(smtp_server, authority):
    server = smtp_server(oauth2=authority)
    token = authority.access_token(USER)
    authority.fail_next("server_error", endpoint="/introspect")
    with connect(server) as client:
        assert client.docmd("AUTH", "XOAUTH2 " + b64(b"user=x\x01auth=Basic y\x01\x01"))[0] == 501
        assert client.docmd("AUTH", "XOAUTH2 not-base64!")[0] == 501
        assert client.docmd("AUTH", "XOAUTH2 " + b64(xoauth2_string(USER, token))) == (
            454, b"4.7.0 Temporary authentication failure")
        assert client.docmd("AUTH", "XOAUTH2 " + b64(xoauth2_string(USER, token)))[0] == 235


def test_introspection_may_be_a_callable_or_a_url(smtp_server, authority):
    token = authority.access_token(USER)
    asked: list[str] = []

    def introspect(t: str) -> dict:
        asked.append(t)
        return authority.introspect(t)

    for oauth2 in (introspect, authority.introspection_url):
        server = smtp_server(oauth2=oauth2)
        with connect(server) as client:
            assert client.docmd("AUTH", "XOAUTH2 " + b64(xoauth2_string(USER, token)))[0] == 235
    assert asked == [token]
    assert len([r for r in authority.requests if r.endpoint == "/introspect"]) == 1


def test_a_session_whose_token_expired_can_be_refused_at_mail(smtp_server, authority):
    server = smtp_server(oauth2=authority, expired_token_reply="451 4.7.0 Token expired")
    token = authority.access_token(USER)
    with connect(server) as client:
        assert client.docmd("AUTH", "XOAUTH2 " + b64(xoauth2_string(USER, token)))[0] == 235
        send_one(client)
        authority.expire_access_tokens()
        assert client.mail(USER) == (451, b"4.7.0 Token expired")
    assert len(server.messages) == 1


def test_without_oauth2_the_server_offers_no_bearer_mechanism(smtp_server):
    server = smtp_server()
    with connect(server) as client:
        assert "XOAUTH2" not in client.esmtp_features.get("auth", "")
        assert client.docmd("AUTH", "XOAUTH2 " + b64(b"user=a\x01auth=Bearer b\x01\x01"))[0] == 504
