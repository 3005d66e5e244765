"""Schema rules, each located at FILE:LINE:COL; the validate command; the schema file itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from mailsync.cli import main
from mailsync.config import load_text
from tests.conftest import EXAMPLE, ROOT

SCHEMA_FILE = ROOT / "schemas" / "mailsync.schema.json"
SERVER = "outgoing_servers:\n  - name: relay\n    host: smtp.example.com\n"


@pytest.fixture
def validate(runner, write_config):
    """Write ``text`` and run ``mailsync validate`` on it: (path, exit code, lines, stderr)."""

    def run(text: str, *args: str):
        path = write_config(text)
        result = runner.invoke(main, ["validate", str(path), *args])
        # A crash also exits 1 under the runner: tell it apart from "invalid".
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            repr(result.exception))
        return path, result.exit_code, result.stdout.splitlines(), result.stderr

    return run


def only_problem(validate, text: str) -> tuple[str, str]:
    """Validate ``text``, expect exactly one error; return (location, "PATH: message")."""
    path, code, lines, _ = validate(text)
    assert code == 1, lines
    assert lines[-1] == "1 error, 0 warnings", lines
    assert len(lines) == 2, lines
    prefix = f"{path}:"
    assert lines[0].startswith(prefix)
    location, _, rest = lines[0][len(prefix):].partition(": error: ")
    return location, rest


# --- one test per schema rule --------------------------------------------------------------


def test_unknown_top_level_key_points_at_the_key(validate):
    location, rest = only_problem(validate, "version: 1\nusers: [a]\naccount:\n  - name: x\n")
    assert location == "3:1"
    assert rest.startswith("account: unknown key 'account'; did you mean 'accounts'? ")
    assert ("(allowed: accounts, activity_types, admin, alias_domain, daemon, dkim, "
            "incoming_servers, outgoing_servers, suppression, users, version, webhooks)") in rest


def test_unknown_nested_key_points_at_the_key(validate):
    text = "version: 1\n" + SERVER + "    usernme: relay@example.com\n"
    location, rest = only_problem(validate, text)
    assert location == "5:5"
    assert rest.startswith("outgoing_servers[0].usernme: unknown key 'usernme'; "
                           "did you mean 'username'? (allowed: ")
    assert "host, max_connections, name, password" in rest


def test_unknown_key_in_a_flow_mapping_points_at_the_key(validate):
    location, rest = only_problem(validate, "version: 1\ndaemon:\n  retry: {first: 5m, maxi: 1h}\n")
    assert location == "3:22"
    assert rest.startswith("daemon.retry.maxi: unknown key 'maxi'; did you mean 'max'?")
    assert "(allowed: first, lifetime, max)" in rest


def test_unknown_key_without_a_close_match_has_no_suggestion(validate):
    location, rest = only_problem(validate, "version: 1\nzzz: 1\n")
    assert location == "2:1"
    assert "did you mean" not in rest
    assert "(allowed: " in rest


def test_missing_required_key_points_at_the_mapping(validate):
    text = "version: 1\n" + SERVER + "accounts:\n  - email: a@example.com\n    server: relay\n"
    location, rest = only_problem(validate, text)
    assert location == "6:5"
    assert rest == "accounts[0]: missing required key 'name'"


def test_missing_required_key_of_a_flow_mapping_points_at_its_brace(validate):
    text = "version: 1\n" + SERVER + "accounts:\n  - {name: a, server: relay}\n"
    location, rest = only_problem(validate, text)
    assert location == "6:5"
    assert rest == "accounts[0]: missing required key 'email'"


def test_missing_version_points_at_the_top(validate):
    location, rest = only_problem(validate, "users: [a]\n")
    assert location == "1:1"
    assert rest == "(root): missing required key 'version'"


def test_each_missing_required_key_is_reported_once(validate):
    text = "version: 1\n" + SERVER + "accounts:\n  - server: relay\n"
    path, code, lines, _ = validate(text)
    assert code == 1
    assert lines == [
        f"{path}:6:5: error: accounts[0]: missing required key 'email'",
        f"{path}:6:5: error: accounts[0]: missing required key 'name'",
        "2 errors, 0 warnings",
    ]


@pytest.mark.parametrize(
    ("snippet", "location", "expected"),
    [
        ("    priority: high\n", "5:15",
         "outgoing_servers[0].priority: expected a whole number, got a string 'high'"),
        ("    tls_verify: 'yes'\n", "5:17",
         "outgoing_servers[0].tls_verify: expected true or false, got a string 'yes'"),
        ("    max_connections: 2.5\n", "5:22",
         "outgoing_servers[0].max_connections: expected a whole number, got a number 2.5"),
    ],
)
def test_wrong_type(validate, snippet, location, expected):
    got_location, rest = only_problem(validate, "version: 1\n" + SERVER + snippet)
    assert got_location == location
    assert rest == expected


def test_wrong_type_of_an_any_of_is_located(validate):
    location, rest = only_problem(validate, "version: 1\n" + SERVER + "    from_filter: {a: b}\n")
    assert location == "5:18"
    assert rest.startswith("outgoing_servers[0].from_filter: ")


def test_wrong_type_of_an_any_of_says_what_is_allowed(validate):
    _, rest = only_problem(validate, "version: 1\n" + SERVER + "    from_filter: {a: b}\n")
    assert rest == "outgoing_servers[0].from_filter: expected a string or a list, got a mapping"



@pytest.mark.parametrize(("text", "expected"), [
    ("version: 1\nusers:\n", "users: expected a list, got nothing"),
    ("version: 1\n" + SERVER + "    port: true\n",
     "outgoing_servers[0].port: expected a whole number, got true"),
])
def test_wrong_type_message_of_null_and_booleans(validate, text, expected):
    _, rest = only_problem(validate, text)
    assert rest == expected


def test_unknown_float_key_is_a_problem(validate):
    location, rest = only_problem(validate, "version: 1\n1.5: x\n")
    assert location == "2:1"
    assert "unknown key '1.5'" in rest

def test_wrong_type_of_a_list(validate):
    location, rest = only_problem(validate, "version: 1\nusers: alice\n")
    assert location == "2:8"
    assert rest == "users: expected a list, got a string 'alice'"


def test_bad_enum(validate):
    location, rest = only_problem(validate, "version: 1\n" + SERVER + "    security: smtps\n")
    assert location == "5:15"
    assert rest == ("outgoing_servers[0].security: 'smtps' is not allowed "
                    "(allowed: none, starttls, ssl)")


def test_bad_enum_of_incoming_type(validate):
    text = "version: 1\nincoming_servers:\n  - name: x\n    type: maildir\n    path: ./m\n"
    location, rest = only_problem(validate, text)
    assert location == "4:11"
    assert rest == "incoming_servers[0].type: 'maildir' is not allowed (allowed: pop, imap, local)"


def test_bad_duration(validate):
    location, rest = only_problem(validate, "version: 1\n" + SERVER + "    timeout: 5 minutes\n")
    assert location == "5:14"
    assert rest.startswith("outgoing_servers[0].timeout: '5 minutes' is not valid: expected ")


def test_bad_nested_duration(validate):
    location, rest = only_problem(validate, "version: 1\ndaemon:\n  retry:\n    first: 5 minutes\n")
    assert location == "4:12"
    assert rest.startswith("daemon.retry.first: '5 minutes' is not valid")


def test_bad_size(validate):
    location, rest = only_problem(validate, "version: 1\ndaemon:\n  max_message_size: 25MB\n")
    assert location == "3:21"
    assert rest.startswith("daemon.max_message_size: '25MB' is not valid")


def test_bad_email(validate):
    text = "version: 1\n" + SERVER + "accounts:\n  - name: a\n    email: sales@example\n"
    location, rest = only_problem(validate, text)
    assert location == "7:12"
    assert rest.startswith("accounts[0].email: 'sales@example' is not valid")


def test_bad_email_without_at_sign_is_one_problem(validate):
    text = "version: 1\n" + SERVER + "accounts:\n  - name: a\n    email: not-an-address\n"
    location, rest = only_problem(validate, text)
    assert location == "7:12"


@pytest.mark.parametrize(
    ("text", "allowed"),
    [
        ("version: 1\n" + SERVER + "    timeout: 5 minutes\n", "s, m, h or d"),
        ("version: 1\ndaemon:\n  max_message_size: 25MB\n", "B, KiB, MiB or GiB"),
        ("version: 1\n" + SERVER + "accounts:\n  - name: a\n    email: sales@example\n",
         "e-mail address"),
    ],
)
def test_pattern_message_says_what_is_allowed(validate, text, allowed):
    _, rest = only_problem(validate, text)
    assert allowed in rest



@pytest.mark.parametrize(("snippet", "location"), [
    ('accounts:\n  - {name: a, email: "a@example.com\\n", server: relay}\n', "6:22"),
    ('users: ["alice\\n"]\n', "5:9"),
])
def test_trailing_newline_does_not_match_a_pattern(validate, snippet, location):
    got, rest = only_problem(validate, "version: 1\n" + SERVER + snippet)
    assert got == location
    assert "is not valid" in rest

@pytest.mark.parametrize(("port", "word"), [("70000", "at most 65535"), ("0", "at least 1")])
def test_port_out_of_range(validate, port, word):
    location, rest = only_problem(validate, "version: 1\n" + SERVER + f"    port: {port}\n")
    assert location == "5:11"
    assert rest == f"outgoing_servers[0].port: {port} is out of range: must be {word}"


@pytest.mark.parametrize(("value", "shown"), [("2", "2"), ("'1'", "'1'")])
def test_version_must_be_1(validate, value, shown):
    location, rest = only_problem(validate, f"version: {value}\n")
    assert location == "1:10"
    assert rest == f"version: {shown} is not allowed (allowed: 1)"


# --- secrets ---------------------------------------------------------------------------------

SECRET_HOST = "version: 1\n" + SERVER + "    username: relay\n"


@pytest.mark.parametrize(
    "secret", ["{env: SMTP_PASSWORD}", "{file: ./smtp.secret}", "{credential: smtp-relay}",
               "\n      file: /etc/mailsync/secret"],
)
def test_secret_reference_forms_are_accepted(validate, secret):
    _, code, lines, _ = validate(SECRET_HOST + f"    password: {secret}\n")
    assert code == 0
    assert lines == ["0 errors, 0 warnings"]


def test_secret_with_two_sources_is_refused(validate):
    location, rest = only_problem(validate, SECRET_HOST + "    password: {env: X, file: Y}\n")
    assert location == "6:15"
    assert rest == ("outgoing_servers[0].password: a secret takes exactly one of: "
                    "env, file, credential")


def test_secret_with_no_source_is_refused(validate):
    location, rest = only_problem(validate, SECRET_HOST + "    password: {}\n")
    assert location == "6:15"
    assert "exactly one of: env, file, credential" in rest


def test_secret_of_an_unknown_kind_is_refused_at_its_key(validate):
    location, rest = only_problem(validate, SECRET_HOST + "    password: {vault: x}\n")
    assert location == "6:16"
    assert rest == ("outgoing_servers[0].password.vault: unknown key 'vault' "
                    "(allowed: credential, env, file)")


def test_secret_env_name_must_be_a_variable_name(validate):
    location, rest = only_problem(validate, SECRET_HOST + "    password: {env: 1X}\n")
    assert location == "6:21"
    assert rest.startswith("outgoing_servers[0].password.env: '1X' is not valid")


def test_plain_string_secret_is_accepted_with_a_warning(validate):
    path, code, lines, _ = validate(SECRET_HOST + "    password: hunter2\n")
    assert code == 0
    assert lines[0].startswith(f"{path}:6:15: warning: outgoing_servers[0].password: "
                               "plain-text password in the config")
    assert lines[1] == "0 errors, 1 warning"


def test_empty_plain_secret_is_refused(validate):
    location, rest = only_problem(validate, SECRET_HOST + "    password: ''\n")
    assert location == "6:15"
    assert rest == "outgoing_servers[0].password: must not be empty"


# --- incoming servers ------------------------------------------------------------------------


def test_local_incoming_server_needs_a_path(validate):
    text = "version: 1\nincoming_servers:\n  - name: drop\n    type: local\n"
    location, rest = only_problem(validate, text)
    assert location == "3:5"
    assert rest == "incoming_servers[0]: missing required key 'path'"


@pytest.mark.parametrize(("present", "missing"), [("username: u", "password"),
                                                   ("password: {env: P}", "username")])
def test_imap_needs_username_and_password(validate, present, missing):
    text = ("version: 1\nincoming_servers:\n  - name: box\n    type: imap\n"
            f"    host: imap.example.com\n    {present}\n")
    location, rest = only_problem(validate, text)
    assert location == "3:5"
    assert rest == f"incoming_servers[0]: missing required key '{missing}'"


def test_imap_without_username_and_password_reports_each_once(validate):
    text = ("version: 1\nincoming_servers:\n  - name: box\n    type: imap\n"
            "    host: imap.example.com\n")
    path, code, lines, _ = validate(text)
    assert code == 1
    assert lines == [
        f"{path}:3:5: error: incoming_servers[0]: missing required key 'password'",
        f"{path}:3:5: error: incoming_servers[0]: missing required key 'username'",
        "2 errors, 0 warnings",
    ]


# --- whole files -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "# nothing but a comment\n"])
def test_empty_file(validate, text):
    location, rest = only_problem(validate, text)
    assert location == "1:1"
    assert rest.startswith("(root): the file is empty")


def test_a_list_instead_of_a_mapping(validate):
    location, rest = only_problem(validate, "- version: 1\n")
    assert location == "1:1"
    assert rest == "(root): expected a mapping, got a list"


def test_yaml_syntax_error(validate):
    location, rest = only_problem(validate, "version: 1\nusers: [alice\naccounts: []\n")
    assert location == "3:9"
    assert rest == ("(root): YAML syntax error: while parsing a flow sequence "
                    "did not find expected ',' or ']'")


def test_yaml_syntax_error_in_a_block(validate):
    location, rest = only_problem(validate, "version: 1\nusers:\n  - a\n   b: c\n")
    assert location == "4:5"
    assert rest == "(root): YAML syntax error: mapping values are not allowed in this context"


def test_duplicate_key_is_an_error_and_the_rest_is_still_checked(validate):
    text = "version: 1\nusers: [a]\nusers: [b]\n" + SERVER + "    port: 0\n"
    path, code, lines, _ = validate(text)
    assert code == 1
    assert lines[0].startswith(f"{path}:3:1: error: users: duplicate key 'users' "
                               "(first defined on line 2)")
    assert lines[1].startswith(f"{path}:7:11: error: outgoing_servers[0].port: ")
    assert lines[-1] == "2 errors, 0 warnings"


def test_non_utf8_file_is_unreadable(runner, tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("version: 1\nusers: [café]\n".encode("latin-1"))
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"{path}: not UTF-8 text" in result.stderr


def test_missing_file_is_unreadable(runner, tmp_path):
    path = tmp_path / "nope.yaml"
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"{path}: no such file" in result.stderr
    assert result.stdout == "0 errors, 0 warnings; 1 file not read\n"  # not a clean bill


def test_directory_is_a_usage_error(runner, tmp_path):
    result = runner.invoke(main, ["validate", str(tmp_path)])
    assert result.exit_code == 2
    assert "is a directory" in result.stderr


def test_unknown_option_is_a_usage_error(runner, write_config):
    result = runner.invoke(main, ["validate", "--frmat", "json", str(write_config("version: 1\n"))])
    assert result.exit_code == 2
    assert "No such option" in result.stderr


FOUR_ERRORS = """\
version: 1
daemon:
  log_format: xml
users: [alice]
outgoing_servers:
  - name: relay
    host: smtp.example.com
    port: 99999
accounts:
  - name: sales
    email: sales@example.com
    server: relay
    granted_to: alice
activity_types:
  - name: Reply
    colour: red
"""


def test_every_problem_is_printed_not_just_the_first(validate):
    path, code, lines, _ = validate(FOUR_ERRORS)
    assert code == 1
    assert [line.split(": error: ")[0] for line in lines[:-1]] == [
        f"{path}:3:15", f"{path}:8:11", f"{path}:13:17", f"{path}:16:5",
    ]
    paths = [line.split(": error: ")[1].split(":")[0] for line in lines[:-1]]
    assert paths == ["daemon.log_format", "outgoing_servers[0].port", "accounts[0].granted_to",
                     "activity_types[0].colour"]
    assert lines[-1] == "4 errors, 0 warnings"


def test_summary_counts_errors_and_warnings(validate):
    text = ("version: 1\nusers: [{name: alice, unix_users: [alice]}]\n" + SERVER +
            "    username: relay\n"
            "    password: hunter2\n    tls_verify: false\n"
            "accounts:\n  - {name: a, email: a@example.com, server: relay, granted_to: [bob]}\n")
    path, code, lines, _ = validate(text)
    assert code == 1
    assert lines[-1] == "1 error, 2 warnings"
    assert sum(": warning: " in line for line in lines) == 2
    assert sum(": error: " in line for line in lines) == 1


def test_valid_file_with_warnings_exits_0(validate):
    _, code, lines, _ = validate(SECRET_HOST + "    password: hunter2\n")
    assert code == 0
    assert lines[-1] == "0 errors, 1 warning"


def test_valid_file_exits_0(validate):
    _, code, lines, stderr = validate("version: 1\n")
    assert code == 0
    assert lines == ["0 errors, 0 warnings"]
    assert stderr == ""


def test_json_format(validate):
    path, code, lines, _ = validate(FOUR_ERRORS, "--format", "json")
    assert code == 1
    items = json.loads("\n".join(lines))
    assert isinstance(items, list) and len(items) == 4
    for item in items:
        assert set(item) == {"file", "line", "column", "severity", "path", "message"}
        assert item["file"] == str(path)
        assert item["severity"] == "error"
    assert items[0] == {
        "file": str(path), "line": 3, "column": 15, "severity": "error",
        "path": "daemon.log_format",
        "message": "'xml' is not allowed (allowed: text, json)",
    }
    assert [(i["line"], i["column"]) for i in items] == [(3, 15), (8, 11), (13, 17), (16, 5)]


def test_json_format_of_a_valid_file_is_an_empty_list(validate):
    _, code, lines, _ = validate("version: 1\n", "--format", "json")
    assert code == 0
    assert json.loads("\n".join(lines)) == []


def test_json_format_with_a_warning(validate):
    _, code, lines, _ = validate(SECRET_HOST + "    password: hunter2\n", "--format", "json")
    assert code == 0
    (item,) = json.loads("\n".join(lines))
    assert (item["severity"], item["line"], item["column"]) == ("warning", 6, 15)


def test_several_files(runner, write_config):
    good = write_config("version: 1\n", "good.yaml")
    bad = write_config("version: 2\n", "bad.yaml")
    worse = write_config("version: 1\nusers: alice\n", "worse.yaml")
    result = runner.invoke(main, ["validate", str(good), str(bad), str(worse)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{bad}:1:10: error: version: 2 is not allowed (allowed: 1)",
        f"{worse}:2:8: error: users: expected a list, got a string 'alice'",
        "2 errors, 0 warnings",
    ]


def test_several_files_with_one_unreadable_still_checks_the_others(runner, write_config, tmp_path):
    bad = write_config("version: 2\n", "bad.yaml")
    missing = tmp_path / "missing.yaml"
    result = runner.invoke(main, ["validate", str(missing), str(bad)])
    assert result.exit_code == 2
    assert f"{missing}: no such file" in result.stderr
    assert result.stdout.splitlines() == [
        f"{bad}:1:10: error: version: 2 is not allowed (allowed: 1)",
        "1 error, 0 warnings; 1 file not read",
    ]


def test_several_valid_files_exit_0(runner, write_config):
    a = write_config("version: 1\n", "a.yaml")
    b = write_config("version: 1\nusers: [x]\n", "b.yaml")
    result = runner.invoke(main, ["validate", str(a), str(b)])
    assert result.exit_code == 0
    assert result.stdout == "0 errors, 0 warnings\n"


def test_config_option(runner, write_config):
    path = write_config("version: 2\n", "other.yaml")
    result = runner.invoke(main, ["validate", "-c", str(path)])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{path}:1:10: error: version: ")
    result = runner.invoke(main, ["validate", "--config", str(path), "--format", "json"])
    assert json.loads(result.stdout)[0]["file"] == str(path)


def test_mailsync_config_variable_is_the_default(runner, write_config, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    write_config("version: 1\n", "config.yaml")
    path = write_config("version: 3\n", "from-env.yaml")
    result = runner.invoke(main, ["validate"], env={"MAILSYNC_CONFIG": str(path)})
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{path}:1:10: error: version: 3 is not allowed")


def test_c_option_wins_over_mailsync_config(runner, write_config):
    good = write_config("version: 1\n", "good.yaml")
    bad = write_config("version: 3\n", "bad.yaml")
    result = runner.invoke(main, ["validate", "-c", str(good)], env={"MAILSYNC_CONFIG": str(bad)})
    assert result.exit_code == 0
    assert result.stdout == "0 errors, 0 warnings\n"


def test_config_yaml_in_the_current_directory_is_the_last_default(runner, write_config,
                                                                  monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MAILSYNC_CONFIG", raising=False)
    write_config("version: 4\n", "config.yaml")
    result = runner.invoke(main, ["validate"])
    assert result.exit_code == 1
    assert result.stdout.startswith("config.yaml:1:10: error: version: 4 is not allowed")


def test_load_text_returns_problems_and_no_model_on_errors(tmp_path):
    loaded = load_text(FOUR_ERRORS, "x.yaml", tmp_path)
    assert loaded.config is None
    assert len(loaded.errors) == 4
    assert [p.line for p in loaded.problems] == [3, 8, 13, 16]


def test_load_text_returns_the_model_with_warnings(tmp_path):
    loaded = load_text(SECRET_HOST + "    password: hunter2\n", "x.yaml", tmp_path)
    assert loaded.config is not None
    assert loaded.errors == ()
    assert [(w.line, w.column, w.path) for w in loaded.warnings] == [
        (6, 15, "outgoing_servers[0].password")]


# --- the schema file -------------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text("utf-8"))


def _resolve(node: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = schema["$defs"][node["$ref"].rpartition("/")[2]]
        return {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _nodes(node: Any, pointer: str = "#"):
    """Every schema object in the file, with its JSON pointer."""
    if isinstance(node, dict):
        yield pointer, node
        for key, value in node.items():
            yield from _nodes(value, f"{pointer}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _nodes(value, f"{pointer}/{i}")


def _is_schema_node(pointer: str) -> bool:
    # Skip name → schema maps ("properties", "$defs") and the conditions of if/then rules.
    return not (pointer.endswith("/properties") or pointer.endswith("/$defs")
                or "/if" in pointer)


def test_every_property_in_the_schema_has_a_description():
    schema = _schema()
    missing = []
    for pointer, node in _nodes(schema):
        if not _is_schema_node(pointer):
            continue
        for name, prop in node.get("properties", {}).items():
            if "description" not in _resolve(prop, schema):
                missing.append(f"{pointer}/properties/{name}")
    assert missing == []


def test_every_definition_has_a_description():
    schema = _schema()
    assert [name for name, d in schema["$defs"].items() if "description" not in d] == []


def test_every_object_refuses_additional_properties():
    schema = _schema()
    objects = [
        (pointer, node) for pointer, node in _nodes(schema)
        if _is_schema_node(pointer) and isinstance(node, dict)
        and ("properties" in node or node.get("type") == "object"
             or (isinstance(node.get("type"), list) and "object" in node["type"]))
    ]
    assert len(objects) >= 10
    assert [p for p, node in objects if node.get("additionalProperties") is not False] == []


def test_shipped_schema_is_the_schemas_directory_copy():
    shipped = ROOT / "mailsync" / "data" / "mailsync.schema.json"
    assert json.loads(shipped.read_text("utf-8")) == _schema()


def test_schema_command_prints_the_schema(runner):
    result = runner.invoke(main, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == _schema()


# --- the example file ------------------------------------------------------------------------


def test_example_starts_with_the_yaml_language_server_modeline():
    first = EXAMPLE.read_text("utf-8").splitlines()[0]
    assert first == "# yaml-language-server: $schema=./schemas/mailsync.schema.json"
    target = first.partition("$schema=")[2]
    assert (EXAMPLE.parent / target).resolve() == SCHEMA_FILE.resolve()


def _used_properties(node: dict[str, Any], pointer: str, data: Any, schema: dict[str, Any],
                     used: dict[str, set[str]]) -> None:
    """Record, per object definition, the property names ``data`` uses."""
    if "$ref" in node:
        pointer = node["$ref"]
        node = _resolve(node, schema)
    if isinstance(data, dict) and "properties" in node:
        for key, value in data.items():
            used.setdefault(pointer, set()).add(key)
            if key in node["properties"]:
                _used_properties(node["properties"][key], f"{pointer}/properties/{key}", value,
                                 schema, used)
    if isinstance(data, list) and "items" in node:
        for item in data:
            _used_properties(node["items"], f"{pointer}/items", item, schema, used)
    for branch in node.get("anyOf", ()):  # e.g. a user: a name, or a mapping
        _used_properties(branch, pointer, data, schema, used)


def _declared_properties(node: Any, pointer: str, declared: dict[str, set[str]]) -> None:
    if isinstance(node, dict):
        if "properties" in node:
            declared[pointer] = set(node["properties"])
            for key, value in node["properties"].items():
                _declared_properties(value, f"{pointer}/properties/{key}", declared)
        if "items" in node:
            _declared_properties(node["items"], f"{pointer}/items", declared)
        for name, definition in node.get("$defs", {}).items():
            _declared_properties(definition, f"#/$defs/{name}", declared)


def _unused_in_example() -> list[str]:
    schema = _schema()
    data = yaml.safe_load(EXAMPLE.read_text("utf-8"))
    used: dict[str, set[str]] = {}
    _used_properties(schema, "#", data, schema, used)
    declared: dict[str, set[str]] = {}
    _declared_properties(schema, "#", declared)
    return sorted(f"{pointer}: {key}" for pointer, keys in declared.items()
                  for key in keys - used.get(pointer, set()))


def test_the_walk_finds_the_example_keys():
    unused = _unused_in_example()
    # Sanity of the walk itself: keys the example certainly uses are not reported.
    assert "#/$defs/account: email" not in unused
    assert "#/$defs/secret: credential" not in unused
    assert "#/$defs/daemon/properties/retry: lifetime" not in unused
    assert "#/$defs/activity_type/properties/delay: from" not in unused


# daemon.store takes one backend: the example (which `make demo` runs, with no database
# server) takes SQLite's and shows the PostgreSQL form in a comment.
_ONLY_IN_A_COMMENT = [
    "#/$defs/daemon/properties/store/properties/postgresql: dsn",
    "#/$defs/daemon/properties/store/properties/postgresql: pool_size",
    "#/$defs/daemon/properties/store: postgresql",
]


def test_example_uses_every_property_of_the_schema():
    assert _unused_in_example() == _ONLY_IN_A_COMMENT



# --- users bound to Unix accounts ------------------------------------------------------------


def test_a_user_may_be_a_mapping_with_unix_users(validate):
    path, code, lines, _ = validate(
        "version: 1\nusers:\n  - alice\n  - {name: crm-app, unix_users: [crm, _svc.x-1$, 1001]}\n")
    assert (code, lines) == (0, ["0 errors, 0 warnings"])
    config = load_text(path.read_text(), str(path), path.parent).config
    assert config is not None
    assert config.users == ("alice", "crm-app")
    assert config.unix_users("crm-app") == ("crm", "_svc.x-1$", 1001)
    assert config.unix_users("alice") == ()


@pytest.mark.parametrize(("value", "column", "message"), [
    ("'crm app'", 30, "'crm app' is not valid: expected a Unix user name: letters, digits, "
                      "'_', '.' and '-', starting with a letter or '_', at most 32 characters "
                      "(a numeric uid is written as a number, without quotes)"),
    ("'1001'", 30, "'1001' is not valid: expected a Unix user name"),
    ("'-rf'", 30, "'-rf' is not valid: expected a Unix user name"),
    ("a" * 33, 30, f"{'a' * 33!r} is not valid: expected a Unix user name"),
    ("-1", 30, "-1 is out of range: must be at least 0"),
    ("4294967295", 30, "4294967295 is out of range: must be at most 4294967294"),
    ("1.5", 30, "expected a string or a whole number, got a number 1.5"),
])
def test_a_bad_unix_user_is_refused_at_its_place(validate, value, column, message):
    location, rest = only_problem(
        validate, f"version: 1\nusers:\n  - {{name: crm, unix_users: [{value}]}}\n")
    assert location == f"3:{column}"
    assert rest.startswith("users[0].unix_users[0]: " + message), rest


def test_empty_unix_users_is_refused(validate):
    location, rest = only_problem(validate, "version: 1\nusers:\n  - {name: crm, unix_users: []}\n")
    assert (location, rest) == ("3:29", "users[0].unix_users: must not be empty")


def test_misspelt_key_of_a_user_mapping_suggests_unix_users(validate):
    location, rest = only_problem(validate, "version: 1\nusers:\n  - name: crm\n"
                                            "    unix_user: [crm]\n")
    assert location == "4:5"
    assert rest == ("users[0].unix_user: unknown key 'unix_user'; did you mean 'unix_users'? "
                    "(allowed: name, unix_users)")


def test_a_user_mapping_needs_a_name(validate):
    location, rest = only_problem(validate, "version: 1\nusers:\n  - unix_users: [crm]\n")
    assert (location, rest) == ("3:5", "users[0]: missing required key 'name'")
