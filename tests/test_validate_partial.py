"""validate reports the semantic problems of the parts that fit the schema, even when other
parts do not: one CI run shows every problem, each on its line."""

from __future__ import annotations

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsync.cli import main
from mailsync.config import load_text

HEAD = "version: 1\nusers: [{name: alice, unix_users: [alice]}]\n"


def validate(runner, write_config, text: str) -> tuple[int, list[str]]:
    path = write_config(HEAD + text)
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, [line.removeprefix(f"{path}:") for line in result.stdout.splitlines()]


def test_a_bad_enum_and_a_dangling_server_reference_are_both_reported(runner, write_config):
    code, lines = validate(runner, write_config, """\
outgoing_servers:
  - name: relay
    host: smtp.example.com
    security: tls
accounts:
  - name: sales
    email: sales@example.com
    server: rellay
    granted_to: [alice]
""")
    assert code == 1
    assert lines == [
        "6:15: error: outgoing_servers[0].security: 'tls' is not allowed "
        "(allowed: none, starttls, ssl)",
        "10:13: error: accounts[0].server: 'rellay' is not a declared outgoing server; "
        "did you mean 'relay'? (declared: relay)",
        "2 errors, 0 warnings",
    ]


def test_an_entry_the_schema_refuses_still_counts_as_declared(runner, write_config):
    code, lines = validate(runner, write_config, """\
outgoing_servers:
  - name: relay
    host: smtp.example.com
    port: 99999
    max_connections: many
accounts:
  - name: sales
    email: sales@example.com
    server: relay
    granted_to: [alice, bob]
""")
    assert code == 1
    assert [line.split(": error: ")[1].split(":")[0] for line in lines[:-1]] == [
        "outgoing_servers[0].port", "outgoing_servers[0].max_connections",
        "accounts[0].granted_to[1]"]
    assert "'bob' is not a declared user" in lines[2]
    assert not any("not a declared outgoing server" in line for line in lines)


def test_a_refused_entry_shifts_no_line_or_index(runner, write_config):
    code, lines = validate(runner, write_config, """\
outgoing_servers:
  - {name: relay, host: smtp.example.com}
accounts:
  - name: broken
    server: relay
  - name: sales
    email: sales@example.com
    server: nowhere
    granted_to: [alice]
activity_types:
  - {name: To Do, chaining: sometimes}
  - {name: Call, chaining: trigger, default_next: Nothing}
""")
    assert code == 1
    assert lines == [
        "6:5: error: accounts[0]: missing required key 'email'",
        "10:13: error: accounts[1].server: 'nowhere' is not a declared outgoing server "
        "(declared: relay)",
        "13:29: error: activity_types[0].chaining: 'sometimes' is not allowed "
        "(allowed: trigger, suggest)",
        "14:51: error: activity_types[1].default_next: 'Nothing' is not a declared activity "
        "type (declared: Call, To Do)",
        "4 errors, 0 warnings",
    ]


def test_daemon_checks_run_beside_an_unknown_key_and_a_bad_value(runner, write_config):
    code, lines = validate(runner, write_config, """\
daemon:
  log_format: xml
  retry: {first: 2h, max: 1h}
colour: blue
""")
    assert code == 1
    assert lines[:-1] == [
        "4:15: error: daemon.log_format: 'xml' is not allowed (allowed: text, json)",
        "5:18: error: daemon.retry.first: retry.first is longer than retry.max",
        "6:1: error: colour: unknown key 'colour' (allowed: accounts, activity_types, "
        "admin, alias_domain, daemon, dkim, incoming_servers, outgoing_servers, suppression, "
        "users, version, webhooks)",
    ]


def test_warnings_of_the_fitting_part_are_reported_too(runner, write_config):
    code, lines = validate(runner, write_config, """\
outgoing_servers:
  - name: relay
    host: smtp.example.com
    port: 465
    security: starttls
    priority: first
""")
    assert code == 1
    assert lines == [
        "6:11: warning: outgoing_servers[0].port: security starttls on port 465, an "
        "implicit-TLS port: almost surely wrong (use ssl)",
        "8:15: error: outgoing_servers[0].priority: expected a whole number, got a string "
        "'first'",
        "1 error, 1 warning",
    ]


def test_a_file_that_is_not_a_mapping_has_only_its_schema_problem(runner, write_config):
    path = write_config("- version: 1\n")
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1] == "1 error, 0 warnings"


_KEYS = ["version", "users", "outgoing_servers", "accounts", "activity_types", "daemon",
         "name", "host", "server", "email", "granted_to", "port", "retry", "first", "password",
         "env", "incoming_servers", "type", "activity", "default_next", "alias_domain", "x"]
_LEAF = st.one_of(st.sampled_from(["relay", "a@example.com", "To Do", "imap", "5m", ""]),
                  st.integers(-1, 70000), st.booleans(), st.none())
_DATA = st.recursive(_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)),
    max_leaves=25)


@settings(max_examples=300, deadline=None, database=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _DATA, max_size=6))
def test_checking_the_fitting_part_never_raises(tmp_path_factory, data):
    text = yaml.safe_dump(data)
    loaded = load_text(text, "f.yaml", tmp_path_factory.getbasetemp())
    assert all(p.line >= 1 for p in loaded.problems)


def test_strict_makes_a_warning_fail_and_leaves_a_clean_file_passing(runner, write_config):
    warned = write_config(HEAD + """\
outgoing_servers:
  - name: relay
    host: smtp.example.com
    port: 465
    security: starttls
""")
    plain = runner.invoke(main, ["validate", str(warned)])
    assert (plain.exit_code, plain.stdout.splitlines()[-1]) == (0, "0 errors, 1 warning")
    strict = runner.invoke(main, ["validate", "--strict", str(warned)])
    assert (strict.exit_code, strict.stdout) == (1, plain.stdout)  # the same report
    clean = write_config(HEAD)
    assert runner.invoke(main, ["validate", "--strict", str(clean)]).exit_code == 0
