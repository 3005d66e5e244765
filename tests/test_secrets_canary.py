"""No secret value ever reaches the output of validate or plan.

The config holds canary values: plain-text passwords of an outgoing server, an incoming
server and an account, and references ({env}, {file}, {credential}) whose values are
canaries too. Every command's stdout and stderr are searched for them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mailsync.cli import main
from mailsync.store import Store

PLAIN_OUT = "CANARY-plain-outgoing-1a2b"
PLAIN_IN = "CANARY-plain-incoming-3c4d"
PLAIN_ACCOUNT = "CANARY-plain-account-5e6f"
PLAIN_OUT_OLD = "CANARY-plain-outgoing-OLD-7a8b"
ENV_VALUE = "CANARY-env-value-9c0d"
ENV_VALUE_OLD = "CANARY-env-value-OLD-1e2f"
FILE_VALUE = "CANARY-file-value-3a4b"
CREDENTIAL_VALUE = "CANARY-credential-value-5c6d"
CLIENT_SECRET = "CANARY-oauth2-client-secret-7e8f"
CLIENT_SECRET_OLD = "CANARY-oauth2-client-secret-OLD-9a0b"
REFRESH_TOKEN = "CANARY-oauth2-refresh-token-1c2d"
CANARIES = [PLAIN_OUT, PLAIN_IN, PLAIN_ACCOUNT, PLAIN_OUT_OLD, ENV_VALUE, ENV_VALUE_OLD,
            FILE_VALUE, CREDENTIAL_VALUE, CLIENT_SECRET, CLIENT_SECRET_OLD, REFRESH_TOKEN]

CONFIG = f"""\
version: 1
daemon: {{state_dir: ./state}}
alias_domain: {{domain: example.com, default_from: noreply}}
users: [alice, bob]
outgoing_servers:
  - name: relay
    host: smtp.example.com
    username: relay@example.com
    password: {PLAIN_OUT}
    from_filter: example.com
  - name: env-relay
    host: env.example.com
    username: env@example.com
    password: {{env: MAILSYNC_CANARY_SMTP}}
  - name: file-relay
    host: file.example.com
    username: file@example.com
    password: {{file: ./relay.secret}}
  - name: m365
    provider: office365
    username: relay@contoso.com
    auth:
      oauth2:
        provider: microsoft
        tenant: contoso.onmicrosoft.com
        client_id: app
        client_secret: {CLIENT_SECRET}
        refresh_token: {REFRESH_TOKEN}
incoming_servers:
  - name: support
    type: imap
    provider: gmail
    username: support@gmail.com
    password: {PLAIN_IN}
  - name: billing
    type: pop
    host: pop.example.com
    username: billing@example.com
    password: {{credential: billing-pop}}
accounts:
  - name: sales
    email: sales@example.org
    server: relay
    granted_to: [alice]
  - name: newsletter
    email: news@gmail.com
    provider: gmail
    username: news@gmail.com
    password: {PLAIN_ACCOUNT}
    tls_verify: false
    granted_to: [bob]
"""

OLD_CONFIG = (CONFIG.replace(PLAIN_OUT, PLAIN_OUT_OLD)
              .replace("{env: MAILSYNC_CANARY_SMTP}", "{env: MAILSYNC_CANARY_SMTP_OLD}")
              .replace("{file: ./relay.secret}", f"{PLAIN_OUT_OLD}")
              .replace(CLIENT_SECRET, CLIENT_SECRET_OLD))


@pytest.fixture
def canary(tmp_path, write_config):
    """The canary config (and its secrets on disk), and an environment holding canaries."""
    (tmp_path / "relay.secret").write_text(FILE_VALUE + "\n")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "billing-pop").write_text(CREDENTIAL_VALUE)
    env = {
        "MAILSYNC_CANARY_SMTP": ENV_VALUE,
        "MAILSYNC_CANARY_SMTP_OLD": ENV_VALUE_OLD,
        "CREDENTIALS_DIRECTORY": str(credentials),
    }
    return write_config(CONFIG), write_config(OLD_CONFIG, "old.yaml"), env


def run(runner, args: list[str], env: dict[str, str]):
    result = runner.invoke(main, args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        repr(result.exception))
    seen = result.stdout + result.stderr + (repr(result.exception) if result.exception else "")
    leaked = [c for c in CANARIES if c in seen]
    assert leaked == [], f"secret values in the output of {args}: {leaked}\n{seen}"
    return result


def test_the_canaries_are_resolvable(canary, tmp_path):
    # Guard for the tests below: the secrets do hold the canary values.
    from mailsync.config import load_file

    config_path, _, env = canary
    config = load_file(config_path).config
    base = tmp_path
    assert config.outgoing("relay").password.resolve(env) == PLAIN_OUT
    assert config.outgoing("env-relay").password.resolve(env) == ENV_VALUE
    assert config.outgoing("file-relay").password.resolve(env, base) == FILE_VALUE
    assert config.incoming_servers[1].password.resolve(env) == CREDENTIAL_VALUE


def test_validate_text(runner, canary):
    config_path, _, env = canary
    result = run(runner, ["validate", str(config_path)], env)
    assert result.exit_code == 0
    out = result.stdout
    # The plain-text passwords are warned about (by location), the gmail ones too.
    assert out.count("plain-text password in the config") == 3
    assert "gmail needs a 16-character App Password" in out
    assert "incoming_servers[0].password" in out


def test_validate_json(runner, canary):
    config_path, _, env = canary
    result = run(runner, ["validate", "--format", "json", str(config_path)], env)
    assert result.exit_code == 0
    assert '"severity": "warning"' in result.stdout


def test_validate_of_an_invalid_file_with_canaries(runner, canary, write_config):
    _, _, env = canary
    bad = write_config(CONFIG.replace("server: relay", "server: rely")
                       .replace("type: pop", "type: pop\n    folder: INBOX")
                       + "    bogus: 1\n", "bad.yaml")
    for fmt in ("text", "json"):
        result = run(runner, ["validate", "--format", fmt, str(bad)], env)
        assert result.exit_code == 1
        assert "bogus" in result.stdout


def test_validate_of_a_semantically_invalid_file_with_canaries(runner, canary, write_config):
    _, _, env = canary
    bad = write_config(CONFIG.replace("server: relay", "server: rely"), "bad.yaml")
    result = run(runner, ["validate", str(bad)], env)
    assert result.exit_code == 1
    assert "'rely' is not a declared outgoing server" in result.stdout


def test_plan_from_nothing(runner, canary):
    config_path, _, env = canary
    for fmt in ("text", "json"):
        result = run(runner, ["plan", "-c", str(config_path), "--format", fmt], env)
        assert result.exit_code == 0
        assert "outgoing_servers.relay" in result.stdout
    assert '"password": "(secret)"' in result.stdout


def test_plan_against_a_file_with_changed_passwords(runner, canary):
    config_path, old_path, env = canary
    result = run(runner, ["plan", "-c", str(config_path), "--against", str(old_path)], env)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[:8] == [
        "~ outgoing_servers.relay", "    password: (changed)",
        "~ outgoing_servers.env-relay", "    password: (changed)",
        "~ outgoing_servers.file-relay", "    password: (changed)",
        "~ outgoing_servers.m365", "    auth.client_secret: (changed)",
    ]
    result = run(runner, ["plan", "-c", str(config_path), "--against", str(old_path),
                          "--format", "json", "--detailed-exitcode"], env)
    assert result.exit_code == 2
    assert result.stdout.count('"secret": true') == 4


def test_plan_against_the_applied_config(runner, canary, tmp_path):
    config_path, _, env = canary
    store = Store.open(tmp_path / "state")
    store.record_applied_config(OLD_CONFIG, hashlib.sha256(OLD_CONFIG.encode()).hexdigest(),
                                "test")
    store.close()
    for fmt in ("text", "json"):
        result = run(runner, ["plan", "-c", str(config_path), "--format", fmt], env)
        assert result.exit_code == 0
        assert "changed" in result.stdout


def test_plan_refusing_an_invalid_file_with_canaries(runner, canary, write_config):
    _, old_path, env = canary
    bad = write_config(CONFIG.replace("server: relay", "server: rely"), "bad.yaml")
    result = run(runner, ["plan", "-c", str(bad), "--against", str(old_path)], env)
    assert result.exit_code == 1
    assert "refused" in result.stderr


def test_a_numeric_password_is_not_echoed(runner, write_config):
    path = write_config("version: 1\noutgoing_servers:\n  - name: r\n    host: h.example.com\n"
                        "    username: u\n    password: 31415926535\n")
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert "outgoing_servers[0].password" in result.stdout
    assert "31415926535" not in result.stdout


def test_secret_values_are_not_in_the_model_repr(canary):
    from mailsync.config import load_file

    config_path, _, _ = canary
    text = repr(load_file(Path(config_path)).config)
    assert [c for c in CANARIES if c in text] == []
    assert text.count("Secret('***')") == 8  # 6 passwords, a client secret, a refresh token


WEBHOOK_SECRET = "CANARY-webhook-secret-2b3c"
SESSION_KEY = "CANARY-admin-session-key-4d5e-0123456789abcdef"
ADMIN_HASH = "CANARY-argon2-hash-6f7a"
NEW_SECRETS = [WEBHOOK_SECRET, SESSION_KEY, ADMIN_HASH]


def test_webhook_secrets_and_the_consoles_key_stay_out_of_validate_and_plan(
        runner, canary, write_config, tmp_path):
    """The secrets of the deliverability and admin sections (plain text, and a password
    hash read from a file) are no more shown than the servers' passwords."""
    _, _, env = canary
    (tmp_path / "carol.argon2").write_text(ADMIN_HASH + "\n")
    extra = (f"webhooks:\n  - url: http://127.0.0.1:9/hooks\n    secret: {WEBHOOK_SECRET}\n"
             f"admin:\n  session_key: {SESSION_KEY}\n  users:\n    - name: carol\n"
             f"      password_hash: {{file: ./carol.argon2}}\n      role: operator\n")
    path = write_config(CONFIG + extra, "deliverability.yaml")
    changed = write_config(CONFIG + extra.replace(WEBHOOK_SECRET, WEBHOOK_SECRET + "-x")
                           .replace(SESSION_KEY, SESSION_KEY + "-x"), "changed.yaml")
    outputs = []
    for args in (["validate", str(path)], ["validate", "--format", "json", str(path)],
                 ["plan", "-c", str(path)], ["plan", "-c", str(path), "--format", "json"],
                 ["plan", "-c", str(changed), "--against", str(path)]):
        result = run(runner, args, env)
        assert result.exit_code in (0, 2), (args, result.output)
        outputs.append(result.stdout + result.stderr)
    seen = "\n".join(outputs)
    assert [s for s in NEW_SECRETS if s in seen] == []
    assert "webhooks" in seen  # the plan did show the section whose secret it hid
    assert "session_key: (changed)" in seen and "admin.users.carol" in seen
