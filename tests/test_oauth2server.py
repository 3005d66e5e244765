"""The test OAuth2 server itself, over real HTTP: every grant, introspection, failures."""

from __future__ import annotations

import threading
import time

import pytest

from tests.oauth2jwt import sign_assertion
from tests.oauth2server import (  # noqa: F401  (fixture)
    CLIENT_CREDENTIALS,
    DEVICE_CODE,
    JWT_BEARER,
    REFRESH_TOKEN,
    OAuth2Server,
    oauth2_server_fixture,
    post_form,
)

USER = "user1@example.com"


def cc(server: OAuth2Server, **extra: str) -> tuple[int, dict]:
    return post_form(server.token_url, {"grant_type": CLIENT_CREDENTIALS, "client_id": "app",
                                        "client_secret": "s3cret", **extra})


def test_client_credentials_by_post_and_by_basic_give_a_token_for_the_clients_user(
        oauth2_server):
    server = oauth2_server(lifetime=20)
    server.add_client("app", "s3cret", user=USER, scopes=["mail"])
    status, got = cc(server, scope="mail")
    assert status == 200 and got["token_type"] == "Bearer" and got["expires_in"] == 20
    assert "refresh_token" not in got
    intro = post_form(server.introspection_url, {"token": got["access_token"]})[1]
    assert intro["active"] is True and intro["username"] == USER and intro["scope"] == "mail"
    assert abs(intro["exp"] - (time.time() + 20)) < 2
    status, got = post_form(server.token_url, {"grant_type": CLIENT_CREDENTIALS},
                            basic=("app", "s3cret"))
    assert status == 200 and server.user_of(got["access_token"]) == USER
    assert [r.client_auth for r in server.token_requests()] == [
        "client_secret_post", "client_secret_basic"]
    assert all(r.client_id == "app" and r.ok for r in server.token_requests(CLIENT_CREDENTIALS))


def test_a_wrong_secret_an_unknown_client_or_scope_are_refused(oauth2_server):
    server = oauth2_server()
    server.add_client("app", "s3cret", user=USER, scopes=["mail"])
    assert cc(server, client_secret="nope") == (401, {
        "error": "invalid_client", "error_description": "client authentication failed "
        "(client_secret_post)"})
    status, got = post_form(server.token_url, {"grant_type": CLIENT_CREDENTIALS},
                            basic=("app", "bad"))
    assert (status, got["error"]) == (401, "invalid_client")
    assert cc(server, client_id="other")[1]["error"] == "invalid_client"
    assert cc(server, scope="mail admin")[1]["error"] == "invalid_scope"
    assert post_form(server.token_url, {"grant_type": "password", "client_id": "app",
                                        "client_secret": "s3cret"})[1]["error"] == (
        "unsupported_grant_type")
    assert [r.status for r in server.requests] == [401, 401, 401, 400, 400]


def test_refresh_with_rotation_revokes_the_used_token(oauth2_server):
    server = oauth2_server(rotate_refresh_tokens=True)
    server.add_client("app")  # public client
    first = server.refresh_token(USER, "app", "mail offline_access")
    form = {"grant_type": REFRESH_TOKEN, "client_id": "app"}
    status, got = post_form(server.token_url, {**form, "refresh_token": first})
    assert status == 200 and got["refresh_token"] != first
    assert server.user_of(got["access_token"]) == USER and got["scope"] == "mail offline_access"
    again = post_form(server.token_url, {**form, "refresh_token": first})
    assert again[0] == 400 and again[1]["error"] == "invalid_grant"
    assert post_form(server.token_url, {**form, "refresh_token": got["refresh_token"]})[0] == 200
    assert [r.ok for r in server.token_requests(REFRESH_TOKEN)] == [True, False, True]


def test_refresh_without_rotation_keeps_the_token_and_returns_none(oauth2_server):
    server = oauth2_server()
    server.add_client("app", "s3cret")
    token = server.refresh_token(USER, "app", "mail")
    for _ in range(2):
        status, got = post_form(server.token_url, {"grant_type": REFRESH_TOKEN,
                                                   "refresh_token": token},
                                basic=("app", "s3cret"))
        assert status == 200 and "refresh_token" not in got
    server.revoke(token)
    assert post_form(server.token_url, {"grant_type": REFRESH_TOKEN, "refresh_token": token},
                     basic=("app", "s3cret"))[1]["error"] == "invalid_grant"


def test_revoking_a_user_ends_their_access_and_refresh_tokens(oauth2_server):
    server = oauth2_server()
    server.add_client("app")
    refresh = server.refresh_token(USER, "app")
    access = server.access_token(USER)
    other = server.access_token("someone@example.com")
    server.revoke_user(USER)
    assert server.introspect(access) == {"active": False}
    assert server.introspect(other)["active"] is True
    assert post_form(server.token_url, {"grant_type": REFRESH_TOKEN, "client_id": "app",
                                        "refresh_token": refresh})[1]["error"] == "invalid_grant"


def test_tokens_expire_after_their_lifetime_or_at_once_on_demand(oauth2_server):
    server = oauth2_server(lifetime=0.3)
    short = server.access_token(USER)
    assert server.introspect(short)["active"] is True
    time.sleep(0.4)
    assert post_form(server.introspection_url, {"token": short})[1] == {"active": False}
    server.lifetime = 3600
    long = server.access_token(USER)
    server.expire_access_tokens(USER)
    assert server.introspect(long) == {"active": False}
    assert post_form(server.introspection_url, {"token": "made-up"})[1] == {"active": False}


def device_start(server: OAuth2Server) -> dict:
    status, got = post_form(server.device_url, {"client_id": "cli", "scope": "mail"})
    assert status == 200, got
    return got


def poll(server: OAuth2Server, code: str) -> tuple[int, dict]:
    return post_form(server.token_url, {"grant_type": DEVICE_CODE, "client_id": "cli",
                                        "device_code": code})


def test_device_code_is_pending_until_approved_then_gives_a_refresh_token(oauth2_server):
    server = oauth2_server()
    server.add_client("cli")
    got = device_start(server)
    assert set(got) == {"device_code", "user_code", "verification_uri",
                        "verification_uri_complete", "expires_in", "interval"}
    assert got["verification_uri"] == server.url + "/device" and got["interval"] == 0
    assert server.pending_user_codes() == [got["user_code"]]
    assert poll(server, got["device_code"])[1]["error"] == "authorization_pending"
    server.approve(USER, got["user_code"])
    status, token = poll(server, got["device_code"])
    assert status == 200 and server.user_of(token["access_token"]) == USER
    assert server.user_of(token["refresh_token"]) == USER
    assert poll(server, got["device_code"])[1]["error"] == "invalid_grant"  # used


def test_device_code_slow_down_denied_and_expired(oauth2_server):
    server = oauth2_server(device_interval=30, slow_down_step=5)
    server.add_client("cli")
    got = device_start(server)
    assert got["interval"] == 30
    assert poll(server, got["device_code"])[1]["error"] == "authorization_pending"
    status, answer = poll(server, got["device_code"])  # at once: too soon
    assert (status, answer["error"], answer["error_description"]) == (
        400, "slow_down", "poll every 35s")
    server.device_interval = 0
    denied = device_start(server)
    server.deny(denied["user_code"])
    assert poll(server, denied["device_code"])[1]["error"] == "access_denied"
    late = device_start(server)
    server.expire_device_code(late["user_code"])
    assert poll(server, late["device_code"])[1]["error"] == "expired_token"


def claims(key: dict, **changes: object) -> dict:
    now = int(time.time())
    base = {"iss": key["client_email"], "scope": "https://mail.google.com/",
            "aud": key["token_uri"], "iat": now, "exp": now + 3600, "sub": USER}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def jwt_grant(server: OAuth2Server, assertion: str) -> tuple[int, dict]:
    return post_form(server.token_url, {"grant_type": JWT_BEARER, "assertion": assertion})


def test_a_service_account_assertion_gives_a_token_for_the_impersonated_user(oauth2_server):
    server = oauth2_server(lifetime=20)
    key = server.service_account_key(scopes=["https://mail.google.com/"])
    assert key["type"] == "service_account" and key["token_uri"] == server.token_url
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    status, got = jwt_grant(server, sign_assertion(key, claims(key)))
    assert status == 200 and got["expires_in"] == 20 and "refresh_token" not in got
    assert server.introspect(got["access_token"])["username"] == USER


@pytest.mark.parametrize(("change", "why"), [
    ({"aud": "https://oauth2.googleapis.com/token"}, "aud must be"),
    ({"iss": "someone@else.iam.gserviceaccount.com"}, "iss must be"),
    ({"exp": int(time.time()) - 120}, "short-lived"),
    ({"exp": int(time.time()) + 7200}, "short-lived"),
    ({"iat": None}, "iat and exp"),
])
def test_a_bad_assertion_is_invalid_grant(oauth2_server, change, why):
    server = oauth2_server()
    key = server.service_account_key()
    status, got = jwt_grant(server, sign_assertion(key, claims(key, **change)))
    assert (status, got["error"]) == (400, "invalid_grant") and why in got["error_description"]


def test_an_assertion_signed_by_another_key_or_for_another_scope_is_refused(oauth2_server):
    server = oauth2_server()
    key = server.service_account_key(scopes=["https://mail.google.com/"])
    forged = {**key, "private_key": OAuth2Server().service_account_key()["private_key"]}
    got = jwt_grant(server, sign_assertion(forged, claims(key)))[1]
    assert (got["error"], got["error_description"]) == ("invalid_grant", "Invalid JWT Signature.")
    got = jwt_grant(server, sign_assertion(key, claims(key, scope="https://www.googleapis.com/"
                                                              "auth/gmail.readonly")))[1]
    assert got["error"] == "unauthorized_client"
    assert jwt_grant(server, "not.a-jwt")[1]["error"] == "invalid_grant"


def test_injected_failures_answer_the_next_requests_then_stop(oauth2_server):
    server = oauth2_server()
    server.add_client("app", "s3cret", user=USER)
    server.fail_next("invalid_grant", 2)
    server.fail_next("server_error")
    server.fail_next("invalid_client")
    answers = [cc(server) for _ in range(5)]
    assert [(s, a.get("error")) for s, a in answers] == [
        (400, "invalid_grant"), (400, "invalid_grant"), (500, "server_error"),
        (401, "invalid_client"), (200, None)]
    assert [r.injected for r in server.requests] == [
        "invalid_grant", "invalid_grant", "server_error", "invalid_client", None]


def test_a_stall_outlasts_the_clients_timeout_then_the_server_answers(oauth2_server):
    server = oauth2_server()
    server.add_client("app", "s3cret", user=USER)
    server.fail_next("stall", seconds=0.5)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        post_form(server.token_url, {"grant_type": CLIENT_CREDENTIALS, "client_id": "app",
                                     "client_secret": "s3cret"}, timeout=0.1)
    assert time.monotonic() - started < 0.45
    assert cc(server)[0] == 200  # the next request is not stalled
    stalled, then = sorted(server.wait_for_requests(2), key=lambda r: r.time)  # answer order
    assert (stalled.injected, stalled.ok, then.injected) == ("stall", True, None)


def test_stop_cuts_a_stall_short(oauth2_server):
    server = oauth2_server()
    server.fail_next("stall", endpoint="/introspect", seconds=30)
    outcome: list[BaseException] = []

    def ask() -> None:
        try:
            post_form(server.introspection_url, {"token": "x"}, timeout=20)
        except Exception as e:  # the connection closes without an answer
            outcome.append(e)

    thread = threading.Thread(target=ask)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    server.stop()
    thread.join(10)
    assert time.monotonic() - started < 5 and outcome


def test_every_request_is_recorded_with_its_grant_client_and_time(oauth2_server):
    server = oauth2_server()
    server.add_client("app", "s3cret", user=USER)
    before = time.time()
    cc(server)
    post_form(server.device_url, {"client_id": "nobody"})
    [token, device] = server.requests
    assert (token.endpoint, token.grant_type, token.client_id, token.status) == (
        "/token", CLIENT_CREDENTIALS, "app", 200)
    assert before <= token.time <= time.time()
    assert (device.endpoint, device.error) == ("/devicecode", "invalid_client")


def test_the_server_works_as_a_context_manager_and_restarts_on_its_port():
    with OAuth2Server() as server:
        port = server.port
        token = server.access_token(USER)
    assert port > 0
    server.start()
    try:
        assert server.port == port
        assert post_form(server.introspection_url, {"token": token})[1]["active"] is True
    finally:
        server.stop()
