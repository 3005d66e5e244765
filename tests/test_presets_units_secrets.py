"""Provider presets, durations and sizes, secret references, relative paths."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsync.cli import main
from mailsync.config import load_file, load_text
from mailsync.config.presets import resolve_endpoint
from mailsync.config.schema import schema
from mailsync.config.secrets import Secret, from_config
from mailsync.config.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    parse_when,
)
from mailsync.errors import SecretError

# --- presets --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "protocol", "expected"),
    [
        ("gmail", "smtp", ("smtp.gmail.com", 587, "starttls")),
        ("gmail", "imap", ("imap.gmail.com", 993, "ssl")),
        ("gmail", "pop", ("pop.gmail.com", 995, "ssl")),
        ("outlook", "smtp", ("smtp-mail.outlook.com", 587, "starttls")),
        ("outlook", "imap", ("outlook.office365.com", 993, "ssl")),
        ("office365", "smtp", ("smtp.office365.com", 587, "starttls")),
        ("office365", "pop", ("outlook.office365.com", 995, "ssl")),
        ("yahoo", "smtp", ("smtp.mail.yahoo.com", 465, "ssl")),
        ("yahoo", "imap", ("imap.mail.yahoo.com", 993, "ssl")),
        ("zoho", "smtp", ("smtp.zoho.com", 465, "ssl")),
        ("zoho", "pop", ("pop.zoho.com", 995, "ssl")),
        ("icloud", "smtp", ("smtp.mail.me.com", 587, "starttls")),
        ("icloud", "imap", ("imap.mail.me.com", 993, "ssl")),
    ],
)
def test_preset_fills_host_port_and_security(provider, protocol, expected):
    assert resolve_endpoint(protocol, provider, None, None, None) == expected


@pytest.mark.parametrize("provider", [None, "custom"])
def test_no_preset_leaves_host_unset(provider):
    assert resolve_endpoint("smtp", provider, None, None, None) == (None, 587, "starttls")


def test_icloud_has_no_pop_preset():
    assert resolve_endpoint("pop", "icloud", None, None, None) == (None, 110, "starttls")


def test_explicit_port_only_overrides_the_preset_and_security_follows_it():
    assert resolve_endpoint("smtp", "gmail", None, 465, None) == ("smtp.gmail.com", 465, "ssl")
    assert resolve_endpoint("smtp", "yahoo", None, 587, None) == (
        "smtp.mail.yahoo.com", 587, "starttls")


def test_explicit_security_only_overrides_the_preset_and_port_follows_it():
    assert resolve_endpoint("smtp", "gmail", None, None, "ssl") == ("smtp.gmail.com", 465, "ssl")
    assert resolve_endpoint("imap", "gmail", None, None, "starttls") == (
        "imap.gmail.com", 143, "starttls")
    assert resolve_endpoint("smtp", "zoho", None, None, "none") == ("smtp.zoho.com", 25, "none")


def test_explicit_host_only_keeps_the_presets_port_and_security():
    assert resolve_endpoint("smtp", "gmail", "relay.example.com", None, None) == (
        "relay.example.com", 587, "starttls")


def test_explicit_port_and_security_both_win():
    assert resolve_endpoint("smtp", "gmail", None, 2525, "none") == ("smtp.gmail.com", 2525, "none")


@pytest.mark.parametrize(
    ("protocol", "security", "port"),
    [
        ("smtp", "none", 25), ("smtp", "starttls", 587), ("smtp", "ssl", 465),
        ("imap", "none", 143), ("imap", "starttls", 143), ("imap", "ssl", 993),
        ("pop", "none", 110), ("pop", "starttls", 110), ("pop", "ssl", 995),
    ],
)
def test_port_defaults_from_security(protocol, security, port):
    assert resolve_endpoint(protocol, None, "h.example.com", None, security) == (
        "h.example.com", port, security)


@pytest.mark.parametrize(("protocol", "port"), [("smtp", 465), ("imap", 993), ("pop", 995)])
def test_security_is_inferred_ssl_from_implicit_tls_ports(protocol, port):
    assert resolve_endpoint(protocol, None, "h.example.com", port, None)[2] == "ssl"


@pytest.mark.parametrize(("protocol", "port"), [("smtp", 25), ("smtp", 587), ("smtp", 2525),
                                                 ("imap", 143), ("pop", 110)])
def test_security_is_never_inferred_as_plain_text(protocol, port):
    assert resolve_endpoint(protocol, None, "h.example.com", port, None)[2] == "starttls"


@pytest.mark.parametrize(("protocol", "port"), [("smtp", 587), ("imap", 143), ("pop", 110)])
def test_nothing_given_means_starttls_on_its_default_port(protocol, port):
    assert resolve_endpoint(protocol, None, "h.example.com", None, None) == (
        "h.example.com", port, "starttls")


def test_model_applies_presets_to_every_kind_of_login(tmp_path):
    text = """\
version: 1
outgoing_servers:
  - {name: out, provider: yahoo, security: starttls}
incoming_servers:
  - {name: in-imap, type: imap, provider: gmail, port: 143, username: u, password: {env: P}}
  - {name: in-pop, type: pop, provider: zoho, host: mail.example.com, username: u,
     password: {env: P}}
  - {name: drop, type: local, path: ./m}
accounts:
  - {name: a, email: a@outlook.com, provider: outlook, username: u, password: {env: P}}
"""
    loaded = load_text(text, "c.yaml", tmp_path)
    assert loaded.errors == ()
    config = loaded.config
    out = config.outgoing("out")
    assert (out.host, out.port, out.security) == ("smtp.mail.yahoo.com", 587, "starttls")
    imap, pop, drop = config.incoming_servers
    assert (imap.host, imap.port, imap.security, imap.folder) == (
        "imap.gmail.com", 143, "starttls", "INBOX")
    assert (pop.host, pop.port, pop.security, pop.folder) == ("mail.example.com", 995, "ssl", None)
    assert (drop.host, drop.port, drop.security) == (None, None, None)
    own = config.account("a").own_login
    assert (own.host, own.port, own.security) == ("smtp-mail.outlook.com", 587, "starttls")
    assert own.name == "account:a"


# --- durations and sizes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0s", 0), ("30s", 30), ("5m", 300), ("1h", 3600), ("5d", 432000), ("90m", 5400),
     ("007s", 7)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["5 minutes", "5", "m", "-5m", "5M", "1w", "1.5h", "", " 5m",
                                  "5m5s", "5ms"])
def test_parse_duration_refuses_other_text(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59, "59s"), (60, "1m"), (90, "90s"), (7200, "2h"), (5400, "90m"),
     (86400, "1d"), (90000, "25h")],
)
def test_format_duration_uses_the_largest_exact_unit(seconds, text):
    assert format_duration(timedelta(seconds=seconds)) == text


@pytest.mark.parametrize(
    ("text", "size"),
    [("0B", 0), ("1B", 1), ("512KiB", 512 << 10), ("25MiB", 25 << 20), ("2GiB", 2 << 30)],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["25MB", "25 MiB", "1.5MiB", "25mib", "25", "MiB", "-1B", "1TiB"])
def test_parse_size_refuses_other_text(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(("size", "text"), [(0, "0B"), (1023, "1023B"), (1024, "1KiB"),
                                            (1536, "1536B"), (3 << 20, "3MiB"), (1 << 30, "1GiB")])
def test_format_size_uses_the_largest_exact_unit(size, text):
    assert format_size(size) == text


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(min_value=0, max_value=999_999 * 86400))
def test_duration_round_trip_from_a_value(seconds):
    value = timedelta(seconds=seconds)
    text = format_duration(value)
    assert re.fullmatch(r"[0-9]+[smhd]", text)
    assert parse_duration(text) == value


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(min_value=0, max_value=10**6), st.sampled_from("smhd"))
def test_duration_round_trip_from_text(number, unit):
    value = parse_duration(f"{number}{unit}")
    canonical = format_duration(value)
    assert parse_duration(canonical) == value
    assert len(canonical) <= len(f"{number}{unit}")


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(min_value=0, max_value=1 << 50))
def test_size_round_trip_from_a_value(size):
    text = format_size(size)
    assert re.fullmatch(r"[0-9]+(B|KiB|MiB|GiB)", text)
    assert parse_size(text) == size


@settings(max_examples=200, deadline=None, database=None)
@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["B", "KiB", "MiB", "GiB"]))
def test_size_round_trip_from_text(number, unit):
    value = parse_size(f"{number}{unit}")
    assert parse_size(format_size(value)) == value


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(alphabet="0123456789smhdKMGiBb .-", max_size=8))
def test_schema_and_parser_agree_on_durations_and_sizes(text):
    defs = schema()["$defs"]
    if re.search(defs["duration"]["pattern"], text):
        assert parse_duration(text) >= timedelta(0)
    else:
        with pytest.raises(ValueError):
            parse_duration(text)
    if re.search(defs["size"]["pattern"], text):
        assert parse_size(text) >= 0
    else:
        with pytest.raises(ValueError):
            parse_size(text)


@pytest.mark.parametrize(("text", "when"), [
    ("2h", 100_000.0 - 7200), (" 7d ", 100_000.0 - 7 * 86400),  # that long before now
    ("1970-01-02", 86400.0),  # a date: its midnight, UTC
    ("1970-01-01T01:00", 3600.0), ("1970-01-01T03:00+02:00", 3600.0),
])
def test_parse_when_takes_a_duration_ago_or_an_iso_time(text, when):
    assert parse_when(text, 100_000.0) == when


@pytest.mark.parametrize("text", ["soon", "2 hours", "", "99999999999999d"])
def test_parse_when_names_the_value_and_what_is_allowed(text):
    with pytest.raises(ValueError, match=f"{text.strip()!r} is neither a duration nor a date"
                       r" \(allowed: 30m, 2h, 7d ago, or an ISO date"):
        parse_when(text, 0.0)


def test_huge_duration_is_a_value_error():
    with pytest.raises(ValueError):
        parse_duration("9999999999d")


def test_huge_duration_is_a_problem(runner, write_config):
    path = write_config("version: 1\ndaemon:\n  history_retention: 9999999999d\n")
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{path}:3:22: error: daemon.history_retention: ")


def test_model_turns_durations_and_sizes_into_values(tmp_path):
    text = ("version: 1\ndaemon:\n  retry: {first: 30s, max: 2h, lifetime: 3d}\n"
            "  max_message_size: 512KiB\n  history_retention: 1d\n")
    daemon = load_text(text, "c.yaml", tmp_path).config.daemon
    assert daemon.retry.first == timedelta(seconds=30)
    assert daemon.retry.max == timedelta(hours=2)
    assert daemon.retry.lifetime == timedelta(days=3)
    assert daemon.max_message_size == 512 * 1024
    assert daemon.history_retention == timedelta(days=1)


def test_model_defaults(tmp_path):
    daemon = load_text("version: 1\n", "c.yaml", tmp_path).config.daemon
    assert daemon.retry.first == timedelta(minutes=5)
    assert daemon.retry.max == timedelta(hours=1)
    assert daemon.retry.lifetime == timedelta(days=5)
    assert daemon.max_message_size == 25 << 20
    assert daemon.history_retention == timedelta(days=90)
    assert daemon.metrics_listen == "127.0.0.1:9877"


# --- secrets ----------------------------------------------------------------------------------

CANARY = "canary-Zq8-value"


@pytest.mark.parametrize(
    ("value", "kind", "described"),
    [
        ({"env": "SMTP_PASSWORD"}, "env", "{env: SMTP_PASSWORD}"),
        ({"file": "./pw.secret"}, "file", "{file: ./pw.secret}"),
        ({"credential": "smtp"}, "credential", "{credential: smtp}"),
        (CANARY, "plain", "(plain text in the config)"),
    ],
)
def test_secret_forms_and_safe_rendering(value, kind, described):
    secret = from_config(value)
    assert secret.kind == kind
    assert repr(secret) == "Secret('***')"
    assert str(secret) == "Secret('***')"
    assert f"{secret}" == "Secret('***')"
    assert f"{secret!r}" == "Secret('***')"
    assert secret.describe() == described
    assert CANARY not in repr([secret]) + repr({"p": secret}) + secret.describe()


def test_model_repr_never_shows_a_plain_password(tmp_path):
    text = ("version: 1\noutgoing_servers:\n"
            f"  - {{name: r, host: h.example.com, username: u, password: {CANARY}}}\n")
    config = load_text(text, "c.yaml", tmp_path).config
    assert config.outgoing("r").password.resolve() == CANARY
    assert CANARY not in repr(config)
    assert CANARY not in str(config)
    assert "Secret('***')" in repr(config)


def test_resolve_plain():
    assert Secret("plain", CANARY).resolve(environ={}) == CANARY


def test_resolve_env():
    assert Secret("env", "SMTP_PASSWORD").resolve(environ={"SMTP_PASSWORD": CANARY}) == CANARY


def test_resolve_env_reads_the_process_environment_by_default(monkeypatch):
    monkeypatch.setenv("MAILSYNC_TEST_SECRET", CANARY)
    assert Secret("env", "MAILSYNC_TEST_SECRET").resolve() == CANARY


def test_resolve_missing_env_names_the_variable():
    with pytest.raises(SecretError) as info:
        Secret("env", "SMTP_PASSWORD").resolve(environ={"OTHER": CANARY})
    assert str(info.value) == "environment variable SMTP_PASSWORD is not set"


def test_resolve_file_strips_surrounding_whitespace(tmp_path):
    (tmp_path / "pw").write_text(f"  {CANARY}\n")
    assert Secret("file", str(tmp_path / "pw")).resolve(environ={}) == CANARY


def test_resolve_relative_file_from_the_base_dir(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "pw").write_text(CANARY)
    monkeypatch.chdir(tmp_path)
    secret = Secret("file", "pw")
    assert secret.resolve(environ={}, base_dir=tmp_path / "conf") == CANARY
    with pytest.raises(SecretError):
        secret.resolve(environ={})  # not found from the working directory


def test_resolve_missing_file_names_the_path(tmp_path):
    with pytest.raises(SecretError) as info:
        Secret("file", "nope").resolve(environ={}, base_dir=tmp_path)
    assert str(info.value) == f"secret file {tmp_path / 'nope'} does not exist"


def test_resolve_unreadable_file_names_the_path_not_a_value(tmp_path):
    with pytest.raises(SecretError) as info:
        Secret("file", str(tmp_path)).resolve(environ={})
    assert str(info.value).startswith(f"secret file {tmp_path} cannot be read: ")


def test_resolve_credential(tmp_path):
    (tmp_path / "smtp-relay").write_text(CANARY + "\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert Secret("credential", "smtp-relay").resolve(environ=env) == CANARY


def test_resolve_credential_without_credentials_directory():
    with pytest.raises(SecretError) as info:
        Secret("credential", "smtp-relay").resolve(environ={"X": CANARY})
    assert str(info.value).startswith("credential smtp-relay: $CREDENTIALS_DIRECTORY is not set")


def test_resolve_missing_credential_names_it(tmp_path):
    (tmp_path / "other").write_text(CANARY)
    with pytest.raises(SecretError) as info:
        Secret("credential", "smtp-relay").resolve(
            environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert str(info.value) == "credential smtp-relay does not exist"
    assert CANARY not in str(info.value)


def test_secrets_compare_by_reference():
    assert Secret("env", "A") == Secret("env", "A")
    assert Secret("env", "A") != Secret("env", "B")
    assert Secret("env", "A") != Secret("file", "A")


# --- relative paths ---------------------------------------------------------------------------


def test_relative_paths_are_taken_from_the_config_files_directory(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = conf_dir / "config.yaml"
    path.write_text("version: 1\ndaemon:\n  state_dir: ./state\n  spool_dir: spool\n"
                    "incoming_servers:\n"
                    "  - {name: d, type: local, path: ./mail/drop}\n"
                    "  - {name: i, type: imap, host: i.example.com, username: u,\n"
                    "     password: {file: ./pw}, deliver_to: {maildir: ../copies}}\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_file(Path("../etc/config.yaml")).config
    assert config.daemon.state_dir.resolve() == conf_dir / "state"
    assert config.daemon.spool_dir.resolve() == conf_dir / "spool"
    drop, imap = config.incoming_servers
    assert drop.path.resolve() == conf_dir / "mail" / "drop"
    assert imap.deliver_to.resolve() == tmp_path / "copies"
    (conf_dir / "pw").write_text(CANARY)
    assert imap.password.resolve(environ={}, base_dir=path.resolve().parent) == CANARY


def test_relative_secret_file_is_taken_from_the_config_files_directory(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "relay.secret").write_text(CANARY + "\n")
    path = conf_dir / "config.yaml"
    path.write_text("version: 1\noutgoing_servers:\n  - {name: r, host: h.example.com, "
                    "username: u, password: {file: ./relay.secret}}\n")
    monkeypatch.chdir(tmp_path)
    secret = load_file(Path("etc/config.yaml")).config.outgoing("r").password
    assert secret.kind == "file"
    assert secret.resolve(environ={}) == CANARY
    assert repr(secret) == "Secret('***')"


def test_default_state_and_spool_dirs_are_next_to_the_config(tmp_path):
    config = load_text("version: 1\n", "c.yaml", tmp_path).config
    assert config.daemon.state_dir == tmp_path / "var" / "state"
    assert config.daemon.spool_dir == tmp_path / "var" / "spool"


def test_absolute_and_home_paths_are_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = "version: 1\ndaemon: {state_dir: /var/lib/mailsync, spool_dir: ~/spool}\n"
    daemon = load_text(text, "c.yaml", tmp_path / "etc").config.daemon
    assert daemon.state_dir == Path("/var/lib/mailsync")
    assert daemon.spool_dir == tmp_path / "home" / "spool"
