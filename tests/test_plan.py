"""The plan: diff of two configs (pure), its rendering, the CLI, and properties over
generated configs."""

from __future__ import annotations

import hashlib
import itertools
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailsync.cli import main
from mailsync.config import Config, load_text
from mailsync.config.plan import SECTIONS, Change, apply, diff, flatten
from mailsync.store import Store

BASE = Path("/srv/mailsync")


def model(text: str) -> Config:
    loaded = load_text(text, "c.yaml", BASE)
    assert loaded.config is not None, [p.render() for p in loaded.problems]
    return loaded.config


OLD = """\
version: 1
daemon: {state_dir: ./state}
users: [alice, bob, carol]
outgoing_servers:
  - name: relay
    host: smtp.example.com
    username: relay@example.com
    password: {env: SMTP_PASSWORD}
    timeout: 30s
  - name: old
    host: old.example.com
accounts:
  - name: sales
    sender_name: Sales
    email: sales@example.com
    server: relay
    granted_to: [alice, bob]
activity_types:
  - name: Reply
    delay: {count: 1}
"""

NEW = """\
version: 1
daemon: {state_dir: ./state}
users: [alice, bob, carol]
outgoing_servers:
  - name: relay
    host: smtp.example.com
    username: relay@example.com
    password: {env: SMTP_PASSWORD_2}
    timeout: 1m
    tls_verify: false
  - name: backup
    host: backup.example.com
accounts:
  - name: sales
    email: sales@example.com
    server: relay
    granted_to: [alice, carol]
activity_types:
  - name: Reply
    delay: {count: 2}
"""

NEW_RENDERED = """\
~ outgoing_servers.relay
    tls_verify: true -> false
    password: (changed)
    timeout: 30s -> 1m
+ outgoing_servers.backup
- outgoing_servers.old
~ accounts.sales
    granted_to: +carol -bob
    sender_name: Sales -> (none)
~ activity_types.Reply
    delay.count: 1 -> 2

Plan: 1 to add, 3 to change, 1 to remove."""


# --- diff and rendering --------------------------------------------------------------------


def test_diff_of_a_config_with_itself_is_empty(example_text):
    config = model(example_text)
    plan = diff(config, config)
    assert plan.empty
    assert plan.actions == ()
    # The Plan line is always the last, for scripts; "No changes." above it.
    assert plan.render() == "No changes.\nPlan: 0 to add, 0 to change, 0 to remove."
    assert plan.summary() == "No changes."


def test_diff_of_two_loads_of_the_same_text_is_empty(example_text):
    assert diff(model(example_text), model(example_text)).empty


def test_add_change_remove_lines_and_summary():
    plan = diff(model(OLD), model(NEW))
    assert plan.render() == NEW_RENDERED
    assert (plan.count("+"), plan.count("~"), plan.count("-")) == (1, 3, 1)


def test_granted_to_renders_added_and_removed_users():
    old = model(OLD)
    new = model(OLD.replace("granted_to: [alice, bob]", "granted_to: [alice, bob, carol]"))
    assert diff(old, new).render().splitlines()[:2] == [
        "~ accounts.sales", "    granted_to: +carol"]
    assert diff(new, old).render().splitlines()[1] == "    granted_to: -carol"


def test_unix_users_of_a_user_show_as_a_change_of_that_user():
    bound = OLD.replace("users: [alice, bob, carol]",
                        "users: [alice, {name: bob, unix_users: [bob]}, carol]")
    plan = diff(model(OLD), model(bound))
    assert plan.render() == ("~ users.bob\n    unix_users: (none) -> [bob]\n\n"
                             "Plan: 0 to add, 1 to change, 0 to remove.")
    widened = bound.replace("unix_users: [bob]", "unix_users: [bob, crm, 1001]")
    assert diff(model(bound), model(widened)).render().splitlines()[:2] == [
        "~ users.bob", "    unix_users: +crm +1001"]
    assert diff(model(widened), model(bound)).render().splitlines()[1] == (
        "    unix_users: -crm -1001")
    assert diff(model(bound), model(OLD)).render().splitlines()[1] == (
        "    unix_users: [bob] -> (none)")
    # A name written as a mapping without unix_users is the same user as before.
    assert diff(model(OLD), model(OLD.replace("bob,", "{name: bob},"))).empty
    as_json = diff(model(OLD), model(bound)).as_dict()["actions"]
    assert as_json == [{"action": "change", "address": "users.bob", "section": "users",
                        "name": "bob",
                        "changes": [{"attr": "unix_users", "old": None, "new": ["bob"]}]}]


def test_reordering_a_list_is_shown_whole():
    new = model(OLD.replace("granted_to: [alice, bob]", "granted_to: [bob, alice]"))
    assert diff(model(OLD), new).render().splitlines()[1] == (
        "    granted_to: [alice, bob] -> [bob, alice]")


def test_nested_attribute_is_dotted():
    plan = diff(model(OLD), model(OLD.replace("delay: {count: 1}", "delay: {count: 2}")))
    assert plan.render() == ("~ activity_types.Reply\n    delay.count: 1 -> 2\n\n"
                             "Plan: 0 to add, 1 to change, 0 to remove.")


def test_secrets_are_only_shown_as_changed():
    old = OLD.replace("{env: SMTP_PASSWORD}", "canary-old-9f2")
    new = OLD.replace("{env: SMTP_PASSWORD}", "canary-new-7c1")
    plan = diff(model(old), model(new))
    assert plan.render().splitlines()[:2] == ["~ outgoing_servers.relay", "    password: (changed)"]
    (action,) = plan.actions
    (change,) = action.changes
    assert change.secret
    assert change.as_dict() == {"attr": "password", "secret": True, "changed": True}
    dumped = plan.render() + json.dumps(plan.as_dict()) + repr(plan)
    assert "canary-old-9f2" not in dumped
    assert "canary-new-7c1" not in dumped


def test_unchanged_secret_is_not_a_change():
    assert diff(model(OLD), model(OLD.replace("timeout: 30s", "timeout: 30s\n    port: 587"))).empty


def test_equal_durations_written_differently_are_not_a_change():
    assert diff(model(OLD), model(OLD.replace("timeout: 30s", "timeout: 30s"))).empty
    assert diff(model(OLD.replace("count: 1}", "count: 1, unit: days}")), model(OLD)).empty
    old = model(OLD.replace("timeout: 30s", "timeout: 60s"))
    assert diff(old, model(OLD.replace("timeout: 30s", "timeout: 1m"))).empty


def test_added_object_as_json_hides_its_secret():
    new = OLD + "  - {name: Call}\n"
    new = new.replace("  - name: old\n    host: old.example.com\n",
                      "  - name: old\n    host: old.example.com\n"
                      "  - {name: extra, host: x.example.com, username: u, "
                      "password: canary-added-3b}\n")
    plan = diff(model(OLD), model(new))
    assert [a.address for a in plan.actions] == ["outgoing_servers.extra", "activity_types.Call"]
    extra = plan.as_dict()["actions"][0]
    assert extra["action"] == "add"
    assert extra["attributes"]["password"] == "(secret)"
    assert extra["attributes"]["host"] == "x.example.com"
    assert "canary-added-3b" not in json.dumps(plan.as_dict())


def test_plan_from_nothing_adds_everything(example_text):
    config = model(example_text)
    plan = diff(None, config)
    assert plan.count("~") == plan.count("-") == 0
    addresses = [a.address for a in plan.actions]
    assert addresses[:5] == ["daemon", "alias_domain", "users.alice", "users.bob",
                             "users.crm-app"]
    assert "accounts.newsletter" in addresses
    assert plan.summary() == f"Plan: {len(addresses)} to add, 0 to change, 0 to remove."


ADMIN = """\
admin:
  users:
    - {name: ann, password_hash: {env: ANN_HASH}, role: operator}
    - {name: bo, password_hash: {env: BO_HASH}}
"""


def test_the_console_and_its_users_are_planned_and_a_hash_only_as_changed():
    old = OLD + ADMIN
    new = OLD + ADMIN.replace("{env: BO_HASH}}", "{env: BO_HASH_2}, role: operator}") \
        .replace("    - {name: ann, password_hash: {env: ANN_HASH}, role: operator}\n", "") \
        + "  allow_remote: true\n  session_lifetime: 2h\n"
    new = new.replace("  users:\n", "  users:\n    - {name: cy, password_hash: {env: CY_HASH}}\n")
    plan = diff(model(old), model(new))
    assert plan.render() == (
        "~ admin\n    allow_remote: false -> true\n    session_lifetime: 8h -> 2h\n"
        "+ admin.users.cy\n"
        "~ admin.users.bo\n    password_hash: (changed)\n    role: viewer -> operator\n"
        "- admin.users.ann\n\nPlan: 1 to add, 2 to change, 1 to remove.")
    added = next(a for a in plan.as_dict()["actions"] if a["address"] == "admin.users.cy")
    assert added["attributes"] == {"password_hash": "(secret)", "role": "viewer"}
    assert [a.address for a in diff(model(OLD), model(old)).actions] == [
        "admin", "admin.users.ann", "admin.users.bo"]
    assert diff(model(old), model(OLD)).render().splitlines()[0] == "- admin"


def test_the_suppression_expiry_is_planned():
    plan = diff(model(OLD), model(OLD + "suppression: {expiry: 7d}\n"))
    assert plan.render() == ("~ suppression\n    expiry: 30d -> 7d\n\n"
                             "Plan: 0 to add, 1 to change, 0 to remove.")
    assert diff(model(OLD), model(OLD + "suppression: {expiry: 30d}\n")).empty


def test_singletons_are_added_and_removed_by_section_name():
    with_alias = OLD.replace("users:", "alias_domain: {domain: example.com}\nusers:")
    plan = diff(model(OLD), model(with_alias))
    assert plan.render().splitlines()[0] == "+ alias_domain"
    plan = diff(model(with_alias), model(OLD))
    assert plan.render().splitlines()[0] == "- alias_domain"


def test_change_rendering_of_plain_values():
    assert Change("port", 25, 587).render() == "port: 25 -> 587"
    assert Change("tls_verify", True, False).render() == "tls_verify: true -> false"
    assert Change("folder", None, "INBOX").render() == "folder: (none) -> INBOX"
    assert Change("from_filter", ("a.com",), ("a.com", "b.com")).render() == "from_filter: +b.com"


def test_plan_as_dict():
    data = diff(model(OLD), model(NEW)).as_dict()
    assert (data["add"], data["change"], data["remove"]) == (1, 3, 1)
    assert [(a["action"], a["address"]) for a in data["actions"]] == [
        ("change", "outgoing_servers.relay"), ("add", "outgoing_servers.backup"),
        ("remove", "outgoing_servers.old"), ("change", "accounts.sales"),
        ("change", "activity_types.Reply")]
    assert data["actions"][3]["changes"][0] == {
        "attr": "granted_to", "old": ["alice", "bob"], "new": ["alice", "carol"]}


def test_apply_of_the_diff_gives_the_new_flat_config():
    old, new = model(OLD), model(NEW)
    assert apply(flatten(old), diff(old, new)) == flatten(new)
    assert apply(flatten(new), diff(new, old)) == flatten(old)
    assert apply({}, diff(None, new)) == flatten(new)


# --- CLI ----------------------------------------------------------------------------------------


@pytest.fixture
def files(write_config):
    return write_config(OLD, "old.yaml"), write_config(NEW, "config.yaml")


def test_cli_plan_against(runner, files):
    old, new = files
    result = runner.invoke(main, ["plan", "-c", str(new), "--against", str(old)])
    assert result.exit_code == 0, result.output
    assert result.stdout == NEW_RENDERED + "\n"
    # The new file's warning (tls_verify: false) goes to stderr, not into the plan.
    assert "tls_verify is false" in result.stderr


def test_cli_detailed_exitcode(runner, files, write_config):
    old, new = files
    args = ["plan", "-c", str(new), "--detailed-exitcode", "--against"]
    changed = runner.invoke(main, [*args, str(old)])
    assert changed.exit_code == 2
    assert changed.stdout.endswith("Plan: 1 to add, 3 to change, 1 to remove.\n")
    same = runner.invoke(main, [*args, str(new)])
    assert same.exit_code == 0
    assert same.stdout == "No changes.\nPlan: 0 to add, 0 to change, 0 to remove.\n"
    bad = write_config(NEW + "bogus: 1\n", "bad.yaml")
    invalid = runner.invoke(main, ["plan", "-c", str(bad), "--detailed-exitcode",
                                   "--against", str(old)])
    assert invalid.exit_code == 1
    assert invalid.stdout == ""
    # A mistyped option is an error (1), not "changes" (2); without the flag it is the
    # usage error every command exits 2 with.
    typo = runner.invoke(main, [*args, str(old), "--formt", "json"])
    assert typo.exit_code == 1 and "Did you mean '--format'?" in typo.output
    assert runner.invoke(main, ["plan", "-c", str(new), "--formt", "json"]).exit_code == 2


def test_cli_without_detailed_exitcode_changes_exit_0(runner, files):
    old, new = files
    assert runner.invoke(main, ["plan", "-c", str(new), "--against", str(old)]).exit_code == 0


def test_cli_json(runner, files):
    old, new = files
    result = runner.invoke(main, ["plan", "-c", str(new), "--against", str(old),
                                  "--format", "json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["file"] == str(new)
    assert data["against"] == str(old)
    assert (data["add"], data["change"], data["remove"]) == (1, 3, 1)
    assert data["actions"][0] == {
        "action": "change", "address": "outgoing_servers.relay", "section": "outgoing_servers",
        "name": "relay", "changes": [
            {"attr": "tls_verify", "old": True, "new": False},
            {"attr": "password", "secret": True, "changed": True},
            {"attr": "timeout", "old": "30s", "new": "1m"},
        ]}


def test_cli_refuses_an_invalid_new_file(runner, files, write_config):
    old, _ = files
    bad = write_config(NEW.replace("server: relay", "server: rely") + "bogus: 1\n", "bad.yaml")
    result = runner.invoke(main, ["plan", "-c", str(bad), "--against", str(old)])
    assert result.exit_code == 1
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if ": warning: " not in line]
    # Every problem at once: the schema's and the semantic ones of the parts that fit it.
    assert errors == [
        f"{bad}:16:13: error: accounts[0].server: 'rely' is not a declared outgoing server; "
        "did you mean 'relay'? (declared: backup, relay)",
        f"{bad}:21:1: error: bogus: unknown key 'bogus' (allowed: accounts, activity_types, "
        "admin, alias_domain, daemon, dkim, incoming_servers, outgoing_servers, suppression, "
        "users, version, webhooks)",
        f"{bad}: refused: 2 errors, 2 warnings",
    ]


def test_cli_refuses_a_new_file_with_semantic_errors(runner, files, write_config):
    old, _ = files
    bad = write_config(NEW.replace("server: relay", "server: rely"), "bad.yaml")
    result = runner.invoke(main, ["plan", "-c", str(bad), "--against", str(old)])
    assert result.exit_code == 1
    assert f"{bad}:16:13: error: accounts[0].server: 'rely' is not a declared" in result.stderr
    # The warnings: tls_verify false, and no user naming its unix_users.
    assert result.stderr.splitlines()[-1] == f"{bad}: refused: 1 error, 2 warnings"


def test_cli_missing_new_file(runner, tmp_path):
    result = runner.invoke(main, ["plan", "-c", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "no such file" in result.stderr


def test_cli_unloadable_against_file(runner, files, write_config):
    _, new = files
    broken = write_config("version: 1\nusers: [a\n", "broken.yaml")
    result = runner.invoke(main, ["plan", "-c", str(new), "--against", str(broken)])
    assert result.exit_code == 1
    assert "YAML syntax error" in result.stderr
    assert result.stdout == ""


def _record(state_dir: Path, text: str) -> None:
    store = Store.open(state_dir)
    try:
        store.record_applied_config(text, hashlib.sha256(text.encode()).hexdigest(), "test")
    finally:
        store.close()


def test_cli_plans_against_the_last_applied_config(runner, files, tmp_path):
    _, new = files
    _record(tmp_path / "state", NEW.replace("count: 2", "count: 5"))
    _record(tmp_path / "state", OLD)  # the last one counts
    result = runner.invoke(main, ["plan", "-c", str(new), "--detailed-exitcode"])
    assert result.exit_code == 2, result.output
    assert result.stdout == NEW_RENDERED + "\n"
    as_json = runner.invoke(main, ["plan", "-c", str(new), "--format", "json"])
    assert json.loads(as_json.stdout)["against"].startswith("applied config of ")


def test_cli_no_changes_against_the_last_applied_config(runner, files, tmp_path):
    _, new = files
    _record(tmp_path / "state", NEW)
    result = runner.invoke(main, ["plan", "-c", str(new), "--detailed-exitcode"])
    assert result.exit_code == 0
    assert result.stdout == "No changes.\nPlan: 0 to add, 0 to change, 0 to remove.\n"


@pytest.mark.parametrize("store", ["none", "empty"])
def test_cli_with_nothing_applied_adds_everything(runner, files, tmp_path, store):
    _, new = files
    if store == "empty":
        Store.open(tmp_path / "state").close()
    result = runner.invoke(main, ["plan", "-c", str(new), "--format", "json",
                                  "--detailed-exitcode"])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["against"] == "(nothing applied yet)"
    assert data["change"] == data["remove"] == 0
    assert {a["action"] for a in data["actions"]} == {"add"}
    assert [a["address"] for a in data["actions"]] == [
        "daemon", "users.alice", "users.bob", "users.carol", "outgoing_servers.relay",
        "outgoing_servers.backup", "accounts.sales", "activity_types.Reply", "suppression"]


def test_cli_with_an_unreadable_applied_config_plans_from_nothing(runner, files, tmp_path):
    _, new = files
    _record(tmp_path / "state", "version: 1\nusers: [a\n")
    result = runner.invoke(main, ["plan", "-c", str(new)])
    assert result.exit_code == 0
    assert "the last applied config no longer loads" in result.stderr
    assert result.stdout.endswith("Plan: 9 to add, 0 to change, 0 to remove.\n")


# --- properties over generated configs ---------------------------------------------------------

CORE_USERS = ["alice", "bob"]
PORTS = [25, 110, 143, 465, 587, 993, 995, 2525]
SECURITIES = ["none", "starttls", "ssl"]
TIMEOUTS = ["10s", "20s", "45s", "90s", "2m", "1h"]
HOSTS = [f"h{i}.example.com" for i in range(4)]
USERNAMES = ["u1", "u2", "u3"]
PASSWORDS = [{"env": "P1"}, {"env": "P2"}, {"file": "./p3"}, {"credential": "p4"}, "plain-p5"]
EMAILS = ["a@example.com", "b@example.com", "c@example.org"]
NAMES = ["Sales", "Support", "News"]


def _lists(values: list[str], size: int) -> list[list[str]]:
    return [list(p) for n in range(size + 1) for p in itertools.permutations(values, n)]


# Each field: YAML key -> (its name in the flattened plan, the values it may take). Values of
# one field are pairwise different once loaded, so changing a field always changes the model.
OUTGOING = {
    "host": ("host", HOSTS),
    "port": ("port", PORTS),
    "security": ("security", SECURITIES),
    "tls_verify": ("tls_verify", [True, False]),
    "username": ("username", USERNAMES),
    "password": ("password", PASSWORDS),
    "from_filter": ("from_filter", _lists(["example.com", "example.org", "x@example.net"], 2)),
    "priority": ("priority", [0, 1, 10, 20]),
    "max_connections": ("max_connections", [1, 2, 4, 8]),
    "timeout": ("timeout", TIMEOUTS),
}
ACCOUNT = {
    "email": ("email", EMAILS),
    "sender_name": ("sender_name", NAMES),
    "granted_to": ("granted_to", _lists(CORE_USERS, 2)),
}
OWN_LOGIN = {
    **ACCOUNT,
    **{key: (f"own_login.{attr}", values) for key, (attr, values) in OUTGOING.items()
       if key not in ("from_filter", "priority")},
}
NETWORK_INCOMING = {
    "host": ("host", HOSTS),
    "port": ("port", PORTS),
    "security": ("security", SECURITIES),
    "tls_verify": ("tls_verify", [True, False]),
    "username": ("username", USERNAMES),
    "password": ("password", PASSWORDS),
    "poll_interval": ("poll_interval", TIMEOUTS),
    "keep_on_server": ("keep_on_server", [True, False]),
    "timeout": ("timeout", TIMEOUTS),
    "activity": ("activity.user", [{"type": "Core", "user": u} for u in CORE_USERS]),
    "deliver_to": ("deliver_to", [{"maildir": f"./copies/{i}"} for i in range(3)]),
}
INCOMING = {
    "imap": {**NETWORK_INCOMING, "folder": ("folder", ["INBOX", "Support", "Archive"])},
    "pop": NETWORK_INCOMING,
    "local": {
        "path": ("path", [f"./mail/{i}" for i in range(3)]),
        "poll_interval": ("poll_interval", TIMEOUTS),
        "activity": ("activity.user", [{"type": "Core", "user": u} for u in CORE_USERS]),
    },
}
ACTIVITY_TYPE = {
    "action": ("action", ["none", "email", "phonecall", "meeting", "upload_document"]),
    "default_user": ("default_user", CORE_USERS),
    "model": ("model", ["crm.lead", "res.partner"]),
    "default_summary": ("default_summary", ["Call back", "Answer"]),
    "icon": ("icon", ["fa-phone", "fa-reply"]),
    "decoration": ("decoration", ["none", "warning", "danger"]),
    "delay": None,  # three nested fields, below
    "recommended_next": ("recommended_next", [[], ["Core"]]),
    "default_description": ("default_description", ["", "Within a day."]),
}
DELAY = {
    "count": ("delay.count", [0, 1, 2, 30]),
    "unit": ("delay.unit", ["days", "weeks", "months"]),
    "from": ("delay.base", ["previous_deadline", "completion_date"]),
}
DAEMON = {
    "state_dir": ("state_dir", ["./state", "/var/lib/mailsync"]),
    "spool_dir": ("spool_dir", ["./spool", "/var/spool/mailsync"]),
    "metrics_listen": ("metrics_listen", ["127.0.0.1:9877", "[::1]:9100"]),
    "log_format": ("log_format", ["text", "json"]),
    "max_message_size": ("max_message_size", ["1KiB", "512KiB", "25MiB", "1GiB"]),
    "history_retention": ("history_retention", ["1d", "30d", "90d"]),
    "auto_reload": ("auto_reload", [True, False]),
}
RETRY = {  # ranges that never overlap, so first <= max <= lifetime always holds
    "first": ("retry.first", ["10s", "1m", "5m"]),
    "max": ("retry.max", ["10m", "30m", "1h"]),
    "lifetime": ("retry.lifetime", ["2h", "1d", "5d"]),
}
ALIAS = {
    "domain": ("domain", ["example.com", "example.org"]),
    "catchall": ("catchall", ["catchall", "replies"]),
    "bounce": ("bounce", ["bounce", "bounces"]),
    "default_from": ("default_from", ["noreply", "notifications"]),
}

POOLS = {
    "users": [f"user-{i}" for i in range(4)],
    "outgoing_servers": [f"out-{i}" for i in range(4)],
    "incoming_servers": [f"in-{i}" for i in range(4)],
    "accounts": [f"acc-{i}" for i in range(4)],
    "activity_types": [f"Type{i}" for i in range(4)],
}


def _fields(section: str, obj: dict[str, Any]) -> dict[str, tuple[str, list[Any]]]:
    """The mutable fields of an object (flat name and values), with nested ones expanded."""
    if section == "outgoing_servers":
        return OUTGOING
    if section == "incoming_servers":
        return INCOMING[obj["type"]]
    if section == "accounts":
        return OWN_LOGIN if "server" not in obj else ACCOUNT
    if section == "activity_types":
        fields = {k: v for k, v in ACTIVITY_TYPE.items() if v is not None}
        return {**fields, **{f"delay.{k}": v for k, v in DELAY.items()}}
    if section == "daemon":
        return {**DAEMON, **{f"retry.{k}": v for k, v in RETRY.items()}}
    if section == "alias_domain":
        return ALIAS
    raise AssertionError(section)


def _set(obj: dict[str, Any], key: str, value: Any) -> None:
    head, dot, tail = key.partition(".")
    if dot:
        obj.setdefault(head, {})[tail] = value
    else:
        obj[key] = value


def _get(obj: dict[str, Any], key: str) -> Any:
    head, dot, tail = key.partition(".")
    return obj[head][tail] if dot else obj[key]


@cache
def _picks(count: int) -> st.SearchStrategy[list[int]]:
    # One draw per object instead of one per field: drawing is most of these tests' time.
    return st.lists(st.integers(0, 1 << 16), min_size=count, max_size=count)


@st.composite
def _object(draw, section: str, name: str | None) -> dict[str, Any]:
    obj: dict[str, Any] = {} if name is None else {"name": name}
    kind, own = draw(_picks(2))
    if section == "incoming_servers":
        obj["type"] = sorted(INCOMING)[kind % len(INCOMING)]
    if section == "accounts" and own % 2:
        obj["server"] = "core"
    fields = _fields(section, obj)
    for (key, (_, values)), pick in zip(fields.items(), draw(_picks(len(fields))), strict=True):
        _set(obj, key, values[pick % len(values)])
    if section == "activity_types":
        obj["chaining"] = "suggest"
    return obj


def _core(section: str) -> list[str]:
    return {"outgoing_servers": ["core"], "activity_types": ["Core"], "users": CORE_USERS}.get(
        section, [])


@st.composite
def configs(draw) -> dict[str, Any]:
    """A small valid config, as the dict that is dumped to YAML."""
    data: dict[str, Any] = {"version": 1, "daemon": draw(_object("daemon", None))}
    if draw(st.booleans()):
        data["alias_domain"] = draw(_object("alias_domain", None))
    data["users"] = CORE_USERS + draw(st.lists(st.sampled_from(POOLS["users"]), unique=True,
                                               max_size=2))
    for section in SECTIONS[3:]:
        names = _core(section) + draw(st.lists(st.sampled_from(POOLS[section]), unique=True,
                                               max_size=2))
        data[section] = [draw(_object(section, name)) for name in names]
    return data


@st.composite
def edits(draw, old: dict[str, Any]):
    """A new config from ``old``: some objects added, some removed, some fields changed.

    Returns the new config and the expected plan: {(op, section, name): changed attrs}.
    """
    new: dict[str, Any] = {"version": 1}
    expected: dict[tuple[str, str, str], set[str]] = {}

    def mutate(section: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = json.loads(json.dumps(obj))
        fields = _fields(section, obj)
        keys = sorted(fields)
        count, *picks = draw(_picks(7))
        chosen = list(dict.fromkeys(keys[p % len(keys)] for p in picks[:count % 4]))
        for key, pick in zip(chosen, picks[3:], strict=False):
            values = fields[key][1]
            current = values.index(_get(obj, key))
            # Any other value of the field: its index shifted by 1 .. len - 1.
            _set(obj, key, values[(current + 1 + pick % (len(values) - 1)) % len(values)])
        if chosen:
            expected[("~", section, name)] = {fields[k][0] for k in chosen}
        return obj

    new["daemon"] = mutate("daemon", "", old["daemon"])
    has_alias = draw(st.booleans())
    if has_alias and "alias_domain" in old:
        new["alias_domain"] = mutate("alias_domain", "", old["alias_domain"])
    elif has_alias:
        new["alias_domain"] = draw(_object("alias_domain", None))
        expected[("+", "alias_domain", "")] = set()
    elif "alias_domain" in old:
        expected[("-", "alias_domain", "")] = set()

    kept_users = [u for u in old["users"] if u in CORE_USERS or draw(st.booleans())]
    added_users = draw(st.lists(st.sampled_from([u for u in POOLS["users"]
                                                 if u not in old["users"]]),
                                unique=True, max_size=2))
    new["users"] = kept_users + added_users
    for user in set(old["users"]) - set(kept_users):
        expected[("-", "users", user)] = set()
    for user in added_users:
        expected[("+", "users", user)] = set()

    for section in SECTIONS[3:]:
        before = {o["name"]: o for o in old[section]}
        objects = []
        for name, obj in before.items():
            if name not in _core(section) and draw(st.booleans()):
                expected[("-", section, name)] = set()
            else:
                objects.append(mutate(section, name, obj))
        free = [n for n in POOLS[section] if n not in before]
        for name in draw(st.lists(st.sampled_from(free), unique=True, max_size=2)):
            objects.append(draw(_object(section, name)))
            expected[("+", section, name)] = set()
        new[section] = objects
    # Incoming servers take daemon.max_message_size as their own max_message_size: a change
    # of it changes each incoming server kept (their pollers restart with the new cap).
    if (new["daemon"].get("max_message_size", "25MiB")
            != old["daemon"].get("max_message_size", "25MiB")):
        kept = {o["name"] for o in old["incoming_servers"]}
        for obj in new["incoming_servers"]:
            if obj["name"] in kept:
                expected.setdefault(("~", "incoming_servers", obj["name"]), set()).add(
                    "max_message_size")
    return new, expected


# yaml.safe_dump with libyaml's emitter: the pure-Python one is most of the test's time.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _load(data: dict[str, Any]) -> Config:
    return model(yaml.dump(data, Dumper=_DUMPER, sort_keys=False))


FAST = settings(max_examples=20, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FAST
@given(configs())
def test_generated_config_diffed_with_itself_is_empty(data):
    config = _load(data)
    plan = diff(config, config)
    assert plan.empty
    assert plan.render() == "No changes.\nPlan: 0 to add, 0 to change, 0 to remove."
    assert diff(config, _load(data)).empty


@settings(FAST, max_examples=40)
@given(st.data())
def test_plan_of_a_random_edit_is_exactly_the_edit_and_applies(data):
    old_data = data.draw(configs())
    new_data, expected = data.draw(edits(old_data))
    old, new = _load(old_data), _load(new_data)
    plan = diff(old, new)
    # Adds, removes and changes are exactly the edited objects; every changed field is a
    # Change (and nothing else is).
    got = {(a.op, a.section, a.name): {c.attr for c in a.changes} for a in plan.actions}
    assert got == expected
    assert plan.count("+") == sum(op == "+" for op, _, _ in expected)
    assert plan.count("-") == sum(op == "-" for op, _, _ in expected)
    order = [SECTIONS.index(a.section) for a in plan.actions]
    assert order == sorted(order)
    for action in plan.actions:
        for change in action.changes:
            assert change.old != change.new
            if change.secret:
                assert change.render() == f"{change.attr}: (changed)"
    # Applying the plan to the old config gives the new one (and back).
    assert apply(flatten(old), plan) == flatten(new)
    assert apply(flatten(new), diff(new, old)) == flatten(old)
    assert apply({}, diff(None, new)) == flatten(new)
