"""SASL XOAUTH2 / OAUTHBEARER initial responses and failure challenges (pure, bytes)."""

from __future__ import annotations

import base64

import pytest

from mailsync.auth import sasl


def test_xoauth2_initial_response() -> None:
    assert sasl.xoauth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg") \
        == (b"user=someuser@example.com\x01auth=Bearer "
            b"ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01")
    # Google's documented base64 form of that same response
    assert base64.b64encode(sasl.xoauth2(
        "someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")) == (
        b"dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhk"
        b"SFJoZG1semRHRXVZMjl0Q2cBAQ==")


def test_oauthbearer_initial_response_rfc7628_example() -> None:
    # RFC 7628 section 4.1
    assert sasl.oauthbearer("user@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==",
                            "server.example.com", 143) == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143"
        b"\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01")


def test_oauthbearer_without_host_and_escaped_authzid() -> None:
    assert sasl.oauthbearer("a,b=c@example.com", "tok") == \
        b"n,a=a=2Cb=3Dc@example.com,\x01auth=Bearer tok\x01\x01"


@pytest.mark.parametrize("user,token", [("u\x01x", "t"), ("u", "t\x01auth=Bearer evil"),
                                        ("u\r\n", "t")])
def test_separators_in_values_are_refused(user: str, token: str) -> None:
    with pytest.raises(ValueError, match="control character") as info:
        sasl.xoauth2(user, token)
    assert "evil" not in str(info.value)
    with pytest.raises(ValueError):
        sasl.oauthbearer(user, token)


def test_google_failure_challenge() -> None:
    challenge = (b"eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwu"
                 b"Z29vZ2xlLmNvbS8ifQ==")
    assert base64.b64decode(challenge) == \
        b'{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}'
    assert sasl.describe_failure(challenge) == \
        "status 401 (schemes bearer, scope https://mail.google.com/)"
    assert sasl.describe_failure(challenge.decode()) == sasl.describe_failure(challenge)


def test_rfc7628_failure_challenge() -> None:
    doc = (b'{"status":"invalid_token","scope":"example_scope",'
           b'"openid-configuration":"https://example.com/.well-known/openid-configuration"}')
    failure = sasl.parse_failure(base64.b64encode(doc))
    assert failure.status == "invalid_token"
    assert failure.openid_configuration == "https://example.com/.well-known/openid-configuration"
    assert failure.describe() == "status invalid_token (scope example_scope)"
    # an already decoded challenge reads the same
    assert sasl.describe_failure(doc) == "status invalid_token (scope example_scope)"


def test_unreadable_challenge_is_named_printably() -> None:
    assert sasl.describe_failure(b"bm90IGpzb24=") == "unreadable failure challenge 'bm90IGpzb24='"
    text = sasl.describe_failure(base64.b64encode(b"{\"status\":\"401\\u001b[2J\"}"))
    assert text == "status 401?[2J"


def test_failure_acks() -> None:
    assert sasl.XOAUTH2_FAILURE_ACK == b""
    assert sasl.OAUTHBEARER_FAILURE_ACK == b"\x01"
