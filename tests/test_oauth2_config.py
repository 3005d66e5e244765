"""``auth.oauth2`` in the configuration: presets, the model value, the checks, the plan."""

from __future__ import annotations

from pathlib import Path

from mailsync.config import load_text
from mailsync.config.plan import diff
from mailsync.config.problems import Problem

HEAD = """\
version: 1
users: [{name: alice, unix_users: [alice]}]
"""


def load(text: str):  # noqa: ANN201 - a Loaded
    return load_text(HEAD + text, "c.yaml", Path("/srv/mailsync"))


def problems(text: str) -> list[Problem]:
    return list(load(text).problems)


def messages(text: str) -> list[tuple[str, str, str]]:
    return [(p.severity, p.path, p.message) for p in problems(text)]


M365 = """\
outgoing_servers:
  - name: m365
    provider: office365
    username: relay@contoso.com
    auth:
      oauth2:
        provider: microsoft
        tenant: contoso.onmicrosoft.com
        client_id: 6731de76-14a6-49ae-97bc-6eba6914391e
        client_secret: {credential: m365-secret}
"""


def test_microsoft_app_only_is_filled_from_the_preset():
    loaded = load(M365)
    assert loaded.problems == ()
    (server,) = loaded.config.outgoing_servers
    auth = server.auth
    assert (server.host, server.port, server.security) == ("smtp.office365.com", 587, "starttls")
    assert auth.grant == "client_credentials"
    assert auth.token_url == ("https://login.microsoftonline.com/contoso.onmicrosoft.com"
                              "/oauth2/v2.0/token")
    assert auth.device_url.endswith("/contoso.onmicrosoft.com/oauth2/v2.0/devicecode")
    assert auth.scope == "https://outlook.office365.com/.default"
    assert server.password is None


def test_a_signed_in_microsoft_user_gets_the_protocols_delegated_scope():
    text = """\
incoming_servers:
  - name: inbox
    type: imap
    provider: office365
    username: support@contoso.com
    auth: {oauth2: {provider: microsoft, tenant: contoso.onmicrosoft.com, client_id: abc}}
  - name: pop
    type: pop
    provider: office365
    username: support@contoso.com
    auth: {oauth2: {provider: microsoft, tenant: contoso.onmicrosoft.com, client_id: abc,
                    refresh_token: {file: rt.txt}}}
"""
    loaded = load(text)
    assert loaded.problems == ()
    imap, pop = loaded.config.incoming_servers
    assert imap.auth.grant == pop.auth.grant == "refresh_token"
    assert imap.auth.scope == "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"
    assert pop.auth.scope == "https://outlook.office.com/POP.AccessAsUser.All offline_access"
    assert pop.auth.refresh_token.ref == "/srv/mailsync/rt.txt"   # relative to the config


def test_a_google_service_account():
    text = """\
incoming_servers:
  - name: gmail
    type: imap
    provider: gmail
    username: sales@example.com
    auth:
      oauth2:
        provider: google
        service_account_key: {credential: sa.json}
        subject: sales@example.com
"""
    loaded = load(text)
    assert loaded.problems == ()
    auth = loaded.config.incoming_servers[0].auth
    assert (auth.grant, auth.token_url, auth.scope) == (
        "service_account", "https://oauth2.googleapis.com/token", "https://mail.google.com/")


def test_what_is_wrong_with_a_block_is_said_where_it_is():
    text = """\
outgoing_servers:
  - name: both
    host: smtp.example.com
    username: u@example.com
    password: {env: P}
    auth: {oauth2: {provider: generic, client_id: x, client_secret: {env: S},
                    token_url: "http://sso.example.com/token", scope: mail}}
  - name: nouser
    host: smtp.example.com
    auth: {oauth2: {provider: microsoft, client_id: x, client_secret: {env: S}}}
  - name: google-cc
    host: smtp.gmail.com
    username: u@example.com
    auth: {oauth2: {provider: google, client_id: x, client_secret: {env: S}}}
"""
    found = messages(text)
    assert ("error", "outgoing_servers[0].password",
            "password and auth.oauth2 exclude each other: OAuth2 takes the place of the "
            "password (remove one)") in found
    assert ("error", "outgoing_servers[0].auth.oauth2.token_url",
            "token_url 'http://sso.example.com/token' must be https (http only to a loopback "
            "address, for tests)") in found
    assert ("error", "outgoing_servers[1]",
            "username is missing: with auth.oauth2 it names the mailbox the token is for "
            "(user= of XOAUTH2)") in found
    assert any(p == "outgoing_servers[1].auth.oauth2" and "needs tenant" in m
               for _, p, m in found)
    assert any(p == "outgoing_servers[2].auth.oauth2" and "no client_credentials" in m
               for _, p, m in found)
    assert all(s == "error" for s, _, _ in found), found


def test_a_loopback_token_url_is_allowed_for_tests_and_generic_needs_url_and_scope():
    ok = """\
outgoing_servers:
  - name: local
    host: 127.0.0.1
    username: u@example.com
    auth: {oauth2: {provider: generic, client_id: x, client_secret: {env: S},
                    token_url: "http://127.0.0.1:8080/token", scope: mail}}
"""
    assert problems(ok) == []
    bad = ok.replace(', scope: mail', '')
    assert ("error", "outgoing_servers[0].auth.oauth2",
            "provider generic needs scope (no preset fills it)") in messages(bad)


def test_a_password_on_a_microsoft_preset_warns_with_the_dates():
    text = """\
outgoing_servers:
  - {name: o365, provider: office365, username: u@contoso.com, password: {env: P}}
"""
    ((severity, path, message),) = messages(text)
    assert (severity, path) == ("warning", "outgoing_servers[0].password")
    assert "October 2022" in message and "end of December 2026" in message
    assert "MC786329" in message and "auth.oauth2" in message


def test_the_plan_shows_a_changed_client_secret_as_changed_only():
    old = load(M365).config
    new = load(M365.replace("{credential: m365-secret}", "{env: NEW_SECRET}")).config
    rendered = diff(old, new).render()
    assert "~ outgoing_servers.m365" in rendered
    assert "auth.client_secret: (changed)" in rendered
    assert "NEW_SECRET" not in rendered and "m365-secret" not in rendered
