"""The semantic checks of mailsync/config/checks.py, each placed on its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsync.cli import main
from mailsync.config import load_text
from mailsync.config.problems import Problem


def problems(text: str) -> list[Problem]:
    return list(load_text(text, "c.yaml", Path("/srv/mailsync")).problems)


def where(text: str) -> list[tuple[int, int, str, str]]:
    """(line, column, severity, path) of every problem."""
    return [(p.line, p.column, p.severity, p.path) for p in problems(text)]


def only(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


SERVERS = """\
version: 1
users: [alice, {name: bob, unix_users: [bob]}]
outgoing_servers:
  - {name: relay, host: smtp.example.com}
  - {name: backup, host: backup.example.com}
"""  # 5 lines


# --- references -------------------------------------------------------------------------------


def test_account_with_undeclared_server_suggests_the_close_match():
    p = only(SERVERS + "accounts:\n  - name: sales\n    email: s@example.com\n    server: rely\n")
    assert (p.line, p.column, p.severity, p.path) == (9, 13, "error", "accounts[0].server")
    assert p.message == ("'rely' is not a declared outgoing server; did you mean 'relay'? "
                         "(declared: backup, relay)")


def test_account_with_undeclared_server_without_a_close_match_lists_the_declared():
    p = only(SERVERS + "accounts:\n  - {name: sales, email: s@example.com, server: zzz}\n")
    assert (p.line, p.path) == (7, "accounts[0].server")
    assert p.message == "'zzz' is not a declared outgoing server (declared: backup, relay)"


def test_account_server_when_none_are_declared():
    p = only("version: 1\naccounts:\n  - {name: sales, email: s@example.com, server: relay}\n")
    assert (p.line, p.column, p.path) == (3, 49, "accounts[0].server")
    assert p.message == "'relay' is not a declared outgoing server (none are declared)"


def test_grant_to_undeclared_user():
    text = SERVERS + ("accounts:\n  - name: sales\n    email: s@example.com\n    server: relay\n"
                      "    granted_to: [alice, alise, carol]\n")
    found = problems(text)
    assert [(p.line, p.column, p.path) for p in found] == [
        (10, 25, "accounts[0].granted_to[1]"), (10, 32, "accounts[0].granted_to[2]")]
    assert found[0].message == ("'alise' is not a declared user; did you mean 'alice'? "
                                "(declared: alice, bob)")
    assert found[1].message == "'carol' is not a declared user (declared: alice, bob)"


TYPES = """\
version: 1
users: [alice, bob]
activity_types:
  - {name: Reply, default_user: alice}
  - {name: Call, default_user: bob}
"""  # 5 lines


def test_incoming_activity_with_undeclared_type():
    text = TYPES + ("incoming_servers:\n  - name: drop\n    type: local\n    path: ./m\n"
                    "    activity: {type: Replay, user: alice}\n")
    p = only(text)
    assert (p.line, p.column, p.severity, p.path) == (10, 22, "error",
                                                      "incoming_servers[0].activity.type")
    assert p.message == ("'Replay' is not a declared activity type; did you mean 'Reply'? "
                         "(declared: Call, Reply)")


def test_incoming_activity_with_undeclared_user():
    text = TYPES + ("incoming_servers:\n  - name: drop\n    type: local\n    path: ./m\n"
                    "    activity:\n      type: Reply\n      user: carol\n")
    p = only(text)
    assert (p.line, p.column, p.path) == (12, 13, "incoming_servers[0].activity.user")
    assert p.message == "'carol' is not a declared user (declared: alice, bob)"


def test_incoming_activity_without_user_needs_the_types_default_user():
    text = ("version: 1\nactivity_types:\n  - name: Note\n"
            "incoming_servers:\n  - {name: drop, type: local, path: ./m, activity: {type: Note}}\n")
    p = only(text)
    assert (p.line, p.path) == (5, "incoming_servers[0].activity")
    assert "default_user on type 'Note'" in p.message


def test_incoming_activity_without_user_uses_the_types_default_user():
    text = TYPES + ("incoming_servers:\n"
                    "  - {name: d, type: local, path: ./m, activity: {type: Call}}\n")
    assert problems(text) == []


def test_default_user_must_be_a_declared_user():
    p = only(TYPES + "  - name: Meeting\n    default_user: alicia\n")
    assert (p.line, p.column, p.path) == (7, 19, "activity_types[2].default_user")
    assert p.message == ("'alicia' is not a declared user; did you mean 'alice'? "
                         "(declared: alice, bob)")


def test_default_next_must_be_a_declared_type():
    p = only(TYPES + "  - name: Meeting\n    default_next: Cal\n")
    assert (p.line, p.column, p.path) == (7, 19, "activity_types[2].default_next")
    assert p.message == ("'Cal' is not a declared activity type; did you mean 'Call'? "
                         "(declared: Call, Meeting, Reply)")


def test_recommended_next_must_be_declared_types():
    p = only(TYPES + "  - name: Meeting\n    recommended_next: [Call, Lunch]\n")
    assert (p.line, p.column, p.path) == (7, 30, "activity_types[2].recommended_next[1]")
    assert p.message.startswith("'Lunch' is not a declared activity type")


def test_chaining_trigger_needs_default_next():
    p = only(TYPES + "  - name: Meeting\n    chaining: trigger\n")
    assert (p.line, p.column, p.severity, p.path) == (7, 15, "error", "activity_types[2].chaining")
    assert "needs default_next" in p.message


def test_chaining_trigger_with_default_next_is_fine():
    assert problems(TYPES + "  - {name: Meeting, chaining: trigger, default_next: Call}\n") == []


def test_every_reference_problem_is_reported_at_once():
    text = TYPES + ("  - {name: M, default_user: x, default_next: y, recommended_next: [z]}\n"
                    "accounts:\n  - {name: a, email: a@example.com, server: s}\n")
    assert [p.path for p in problems(text)] == [
        "activity_types[2].default_user", "activity_types[2].default_next",
        "activity_types[2].recommended_next[0]", "accounts[0].server"]


# --- duplicate names ----------------------------------------------------------------------


DUPLICATES = """\
version: 1
users: [alice, bob, alice]
outgoing_servers:
  - {name: relay, host: a.example.com}
  - {name: relay, host: b.example.com}
incoming_servers:
  - {name: box, type: local, path: ./a}
  - {name: box, type: local, path: ./b}
accounts:
  - {name: sales, email: a@example.com, server: relay}
  - {name: sales, email: b@example.com, server: relay}
activity_types:
  - {name: Reply}
  - {name: Reply}
"""


@pytest.mark.parametrize(
    ("line", "column", "path", "message"),
    [
        (2, 21, "users[2]", "duplicate user name 'alice' (also users[0])"),
        (5, 12, "outgoing_servers[1].name",
         "duplicate outgoing server name 'relay' (also outgoing_servers[0])"),
        (8, 12, "incoming_servers[1].name",
         "duplicate incoming server name 'box' (also incoming_servers[0])"),
        (11, 12, "accounts[1].name", "duplicate account name 'sales' (also accounts[0])"),
        (14, 12, "activity_types[1].name",
         "duplicate activity type name 'Reply' (also activity_types[0])"),
    ],
)
def test_duplicate_names(line, column, path, message):
    found = {p.path: p for p in problems(DUPLICATES)}
    assert len(found) == 5
    p = found[path]
    assert (p.line, p.column, p.severity) == (line, column, "error")
    assert p.message == f"{message}; names must be unique"


def test_same_name_in_different_lists_is_fine():
    text = ("version: 1\nusers: [sales]\n"
            "outgoing_servers:\n  - {name: sales, host: h.example.com}\n"
            "incoming_servers:\n  - {name: sales, type: local, path: ./m}\n"
            "accounts:\n  - {name: sales, email: s@example.com, server: sales}\n"
            "activity_types:\n  - {name: sales}\n")
    assert problems(text) == []


def test_duplicate_user_given_as_a_mapping_points_at_its_name():
    found = where("version: 1\nusers:\n  - alice\n  - {name: alice, unix_users: [a]}\n")
    assert found == [(4, 12, "error", "users[1].name")]


# --- users bound to Unix accounts ------------------------------------------------------------

GRANTED = """\
version: 1
outgoing_servers:
  - {name: relay, host: smtp.example.com}
accounts:
  - {name: sales, email: s@example.com, server: relay, granted_to: [alice]}
"""


def test_without_any_unix_users_validate_warns_once(runner, write_config):
    path = write_config(GRANTED + "users: [alice, bob, crm-app]\n")
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"{path}:6:8: warning: users: no user names its unix_users: grants only guard against "
        "mistakes, since any process that can write to the spool can submit as any user; "
        "bind each user to the Unix accounts that may submit as it, e.g. "
        "{name: crm-app, unix_users: [crm]}",
        "0 errors, 1 warning"]


def test_one_bound_user_silences_the_warning():
    assert problems(GRANTED + "users: [alice, {name: crm-app, unix_users: [crm]}]\n") == []


def test_no_warning_when_nothing_can_be_sent():
    assert problems("version: 1\nusers: [alice, bob]\n") == []


def test_unix_users_need_not_exist_here():
    text = GRANTED + "users: [{name: alice, unix_users: [no-such-user-here, 4000000000]}]\n"
    assert problems(text) == []


def test_a_unix_user_listed_twice_is_an_error():
    text = GRANTED + "users:\n  - {name: alice, unix_users: [crm, 1001, crm]}\n"
    (p,) = problems(text)
    assert (p.line, p.column, p.severity, p.path) == (7, 43, "error", "users[0].unix_users[2]")
    assert p.message == "Unix user 'crm' is listed twice for user 'alice'"


# --- security and port ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "extra", "port", "security", "word"),
    [
        ("outgoing_servers", "", 25, "ssl", "security ssl (implicit TLS) on port 25"),
        ("outgoing_servers", "", 587, "ssl", "security ssl (implicit TLS) on port 587"),
        ("outgoing_servers", "", 465, "starttls", "security starttls on port 465"),
        ("incoming_servers", "type: imap, ", 143, "ssl", "security ssl (implicit TLS) on port 143"),
        ("incoming_servers", "type: imap, ", 993, "starttls", "security starttls on port 993"),
        ("incoming_servers", "type: pop, ", 110, "ssl", "security ssl (implicit TLS) on port 110"),
        ("incoming_servers", "type: pop, ", 995, "starttls", "security starttls on port 995"),
    ],
)
def test_security_port_mismatch_warns(section, extra, port, security, word):
    login = "username: u, password: {env: P}, " if section == "incoming_servers" else ""
    text = (f"version: 1\n{section}:\n  - {{name: s, {extra}host: h.example.com, {login}"
            f"port: {port}, security: {security}}}\n")
    p = only(text)
    assert (p.line, p.severity, p.path) == (3, "warning", f"{section}[0].port")
    assert p.column == text.splitlines()[2].index(f"port: {port}") + 7
    assert p.message.startswith(word)
    assert "almost surely wrong" in p.message


def test_security_port_mismatch_warns_on_an_accounts_own_login():
    text = ("version: 1\naccounts:\n  - {name: a, email: a@example.com, host: h.example.com, "
            "username: u, password: {env: P}, port: 465, security: starttls}\n")
    p = only(text)
    assert (p.line, p.severity, p.path) == (3, "warning", "accounts[0].port")


@pytest.mark.parametrize(
    ("port", "security"),
    [(465, "ssl"), (587, "starttls"), (25, "starttls"), (25, "none"), (2525, "ssl")],
)
def test_consistent_security_and_port_do_not_warn(port, security):
    text = f"version: 1\noutgoing_servers:\n  - {{name: s, host: h.example.com, port: {port}, " \
           f"security: {security}}}\n"
    assert problems(text) == []


def test_port_without_explicit_security_does_not_warn():
    # security is inferred from the port, so the pair cannot be inconsistent.
    text = "version: 1\noutgoing_servers:\n  - {name: s, host: h.example.com, port: 465}\n"
    assert problems(text) == []


# --- from_filter ------------------------------------------------------------------------------


def test_alias_domain_that_no_from_filter_allows_warns():
    text = ("version: 1\nalias_domain:\n  domain: example.com\n  default_from: noreply\n"
            "outgoing_servers:\n  - {name: a, host: h.example.com, from_filter: other.com}\n"
            "  - {name: b, host: h.example.com, from_filter: [x@example.com]}\n")
    p = only(text)
    assert (p.line, p.column, p.severity, p.path) == (3, 11, "warning", "alias_domain.domain")
    assert p.message.startswith("no outgoing server's from_filter allows example.com")


@pytest.mark.parametrize("filters", ["[other.com, example.com]", "noreply@example.com",
                                     "EXAMPLE.COM"])
def test_alias_domain_allowed_by_a_from_filter_does_not_warn(filters):
    text = ("version: 1\nalias_domain: {domain: example.com, default_from: noreply}\n"
            f"outgoing_servers:\n  - {{name: a, host: h.example.com, from_filter: {filters}}}\n")
    assert problems(text) == []


def test_alias_domain_with_a_server_without_from_filter_does_not_warn():
    text = ("version: 1\nalias_domain: {domain: example.com}\noutgoing_servers:\n"
            "  - {name: a, host: h.example.com, from_filter: other.com}\n"
            "  - {name: any, host: h.example.com}\n")
    assert problems(text) == []


def test_account_refused_by_its_servers_from_filter_warns_with_default_from():
    text = ("version: 1\nalias_domain: {domain: example.com, default_from: noreply}\n"
            "outgoing_servers:\n  - {name: a, host: h.example.com, from_filter: [example.com]}\n"
            "accounts:\n  - name: s\n    email: s@example.org\n    server: a\n")
    p = only(text)
    assert (p.line, p.column, p.severity, p.path) == (7, 12, "warning", "accounts[0].email")
    assert p.message == ("server 'a' may not send as s@example.org (from_filter: example.com): "
                         "From will be rewritten to noreply@example.com with s@example.org "
                         "in Reply-To")


def test_account_refused_by_its_servers_from_filter_warns_without_default_from():
    text = ("version: 1\noutgoing_servers:\n  - {name: a, host: h.example.com, "
            "from_filter: [example.com, b@example.org]}\n"
            "accounts:\n  - name: s\n    email: s@example.org\n    server: a\n")
    p = only(text)
    assert (p.line, p.column, p.severity, p.path) == (6, 12, "warning", "accounts[0].email")
    assert p.message == ("server 'a' may not send as s@example.org (from_filter: example.com, "
                         "b@example.org) and no alias_domain.default_from is set: its messages "
                         "will fail")


def test_account_allowed_by_its_servers_from_filter_does_not_warn():
    text = ("version: 1\noutgoing_servers:\n  - {name: a, host: h.example.com, "
            "from_filter: [S@Example.org]}\n"
            "accounts:\n  - {name: s, email: s@example.org, server: a}\n")
    assert problems(text) == []


def test_account_without_server_refused_by_every_from_filter_warns():
    text = ("version: 1\noutgoing_servers:\n  - {name: a, host: h.example.com, "
            "from_filter: example.com}\naccounts:\n  - {name: s, email: s@example.org}\n")
    p = only(text)
    assert (p.line, p.severity, p.path) == (5, "warning", "accounts[0].email")
    assert p.message.startswith("no outgoing server's from_filter allows s@example.org")


def test_account_without_any_way_to_send_errors():
    p = only("version: 1\naccounts:\n  - name: s\n    email: s@example.com\n")
    assert (p.line, p.column, p.severity, p.path) == (3, 5, "error", "accounts[0]")
    assert p.message.startswith("no way to send")


# --- logins -----------------------------------------------------------------------------------


def test_account_with_both_server_and_own_login_errors():
    text = SERVERS + ("accounts:\n  - name: s\n    email: s@example.com\n    server: relay\n"
                      "    username: s@example.com\n    password: {env: P}\n")
    p = only(text)
    assert (p.line, p.column, p.severity, p.path) == (10, 15, "error", "accounts[0].username")
    assert p.message.startswith("username conflicts with server")


@pytest.mark.parametrize("key_value", ["provider: gmail", "host: h.example.com", "port: 587",
                                       "timeout: 10s", "max_connections: 2"])
def test_any_login_key_next_to_server_errors(key_value):
    text = SERVERS + f"accounts:\n  - name: s\n    email: s@example.com\n    server: relay\n" \
                     f"    {key_value}\n"
    p = only(text)
    key = key_value.partition(":")[0]
    assert (p.line, p.severity, p.path) == (10, "error", f"accounts[0].{key}")
    assert p.message.startswith(f"{key} conflicts with server")


@pytest.mark.parametrize("provider", ["", "    provider: custom\n"])
def test_own_login_without_host_and_without_provider_errors(provider):
    text = ("version: 1\naccounts:\n  - name: s\n    email: s@example.com\n" + provider
            + "    username: s\n    password: {env: P}\n")
    p = only(text)
    assert (p.line, p.column, p.severity, p.path) == (3, 5, "error", "accounts[0]")
    assert p.message.startswith("no host: set host, or a provider preset (gmail, ")


def test_outgoing_server_without_host_and_without_provider_errors():
    p = only("version: 1\noutgoing_servers:\n  - name: relay\n    priority: 1\n")
    assert (p.line, p.column, p.severity, p.path) == (3, 5, "error", "outgoing_servers[0]")
    assert p.message.startswith("no host")


def test_icloud_has_no_pop_preset():
    text = ("version: 1\nincoming_servers:\n  - name: box\n    type: pop\n    provider: icloud\n"
            "    username: u\n    password: {env: P}\n")
    p = only(text)
    assert (p.line, p.column, p.severity) == (5, 15, "error")
    assert p.path == "incoming_servers[0].provider"
    assert p.message == "provider icloud offers no POP preset: set host, or choose another type"


def test_icloud_pop_with_an_explicit_host_is_fine():
    text = ("version: 1\nincoming_servers:\n  - {name: box, type: pop, provider: icloud, "
            "host: pop.example.com, username: u, password: {env: P}}\n")
    assert problems(text) == []


@pytest.mark.parametrize(
    ("section", "head", "given", "missing"),
    [
        ("outgoing_servers", "  - name: r\n    host: h.example.com\n", "username: u", "password"),
        ("outgoing_servers", "  - name: r\n    host: h.example.com\n", "password: {env: P}",
         "username"),
        ("accounts", "  - name: r\n    email: r@example.com\n    host: h.example.com\n",
         "username: u", "password"),
        ("accounts", "  - name: r\n    email: r@example.com\n    host: h.example.com\n",
         "password: {env: P}", "username"),
    ],
)
def test_username_and_password_go_together(section, head, given, missing):
    p = only(f"version: 1\n{section}:\n{head}    {given}\n")
    assert (p.line, p.column, p.severity, p.path) == (3, 5, "error", f"{section}[0]")
    assert p.message == f"{missing} is missing: username and password go together"


@pytest.mark.parametrize("key_value", ["host: h.example.com", "port: 143", "security: ssl",
                                       "provider: gmail", "username: u", "password: {env: P}",
                                       "folder: INBOX", "tls_verify: true"])
def test_local_incoming_server_refuses_network_keys(key_value):
    text = f"version: 1\nincoming_servers:\n  - name: drop\n    type: local\n    path: ./m\n" \
           f"    {key_value}\n"
    p = only(text)
    key = key_value.partition(":")[0]
    assert (p.line, p.column, p.severity, p.path) == (6, len(key) + 7, "error",
                                                      f"incoming_servers[0].{key}")
    assert p.message == f"{key} does not apply to a local Maildir (type: local takes path)"


def test_pop_with_folder_errors():
    text = ("version: 1\nincoming_servers:\n  - name: box\n    type: pop\n    host: p.example.com\n"
            "    username: u\n    password: {env: P}\n    folder: INBOX\n")
    p = only(text)
    assert (p.line, p.column, p.severity, p.path) == (8, 13, "error", "incoming_servers[0].folder")
    assert p.message == "folder applies to IMAP only (POP3 has one mailbox)"


def test_imap_with_path_errors():
    text = ("version: 1\nincoming_servers:\n  - {name: box, type: imap, host: i.example.com, "
            "username: u, password: {env: P}, path: ./m}\n")
    p = only(text)
    assert (p.severity, p.path) == ("error", "incoming_servers[0].path")
    assert p.message == "path applies to type local only (this server is imap)"


# --- daemon -----------------------------------------------------------------------------------


def test_retry_first_longer_than_max_errors():
    p = only("version: 1\ndaemon:\n  retry:\n    first: 2h\n    max: 1h\n")
    assert (p.line, p.column, p.severity, p.path) == (4, 12, "error", "daemon.retry.first")
    assert p.message == "retry.first is longer than retry.max"


def test_retry_first_longer_than_the_default_max_errors():
    p = only("version: 1\ndaemon:\n  retry: {first: 90m}\n")
    assert (p.line, p.column, p.path) == (3, 18, "daemon.retry.first")


def test_retry_max_longer_than_lifetime_errors():
    p = only("version: 1\ndaemon:\n  retry: {max: 6d}\n")
    assert (p.line, p.column, p.severity, p.path) == (3, 16, "error", "daemon.retry.max")
    assert p.message == "retry.max is longer than retry.lifetime"


def test_retry_equal_bounds_are_fine():
    assert problems("version: 1\ndaemon:\n  retry: {first: 1h, max: 60m, lifetime: 3600s}\n") == []


# --- risky settings -----------------------------------------------------------------------------


def test_tls_verify_false_warns():
    p = only("version: 1\noutgoing_servers:\n  - name: r\n    host: h.example.com\n"
             "    tls_verify: false\n")
    assert (p.line, p.column, p.severity, p.path) == (5, 17, "warning",
                                                      "outgoing_servers[0].tls_verify")
    assert "not checked" in p.message


def test_tls_verify_false_warns_on_incoming_servers():
    p = only("version: 1\nincoming_servers:\n  - {name: b, type: imap, host: i.example.com, "
             "username: u, password: {env: P}, tls_verify: false}\n")
    assert (p.severity, p.path) == ("warning", "incoming_servers[0].tls_verify")


def test_tls_verify_false_without_tls_does_not_warn():
    assert problems("version: 1\noutgoing_servers:\n  - {name: r, host: h.example.com, "
                    "security: none, tls_verify: false}\n") == []


@pytest.mark.parametrize(
    ("section", "head"),
    [
        ("outgoing_servers", "  - name: r\n    host: h.example.com\n"),
        ("incoming_servers", "  - name: r\n    type: imap\n    host: h.example.com\n"),
        ("accounts", "  - name: r\n    email: r@example.com\n    host: h.example.com\n"),
    ],
)
def test_plain_text_password_warns(section, head):
    text = f"version: 1\n{section}:\n{head}    username: u\n    password: hunter2\n"
    p = only(text)
    line = text.count("\n")
    assert (p.line, p.column, p.severity, p.path) == (line, 15, "warning",
                                                      f"{section}[0].password")
    assert p.message.startswith("plain-text password in the config: use {env: NAME}")
    assert "hunter2" not in p.message


GMAIL = ("version: 1\naccounts:\n  - name: news\n    email: news@gmail.com\n    provider: gmail\n"
         "    username: news@gmail.com\n")


def test_gmail_plain_password_that_is_not_an_app_password_warns():
    found = problems(GMAIL + "    password: my-long-account-password\n")
    assert [(p.line, p.column, p.severity, p.path) for p in found] == [
        (7, 15, "warning", "accounts[0].password"), (7, 15, "warning", "accounts[0].password")]
    assert found[0].message.startswith("gmail needs a 16-character App Password")
    assert found[1].message.startswith("plain-text password")


def test_gmail_incoming_plain_password_that_is_not_an_app_password_warns():
    text = ("version: 1\nincoming_servers:\n  - {name: g, type: imap, provider: gmail, "
            "username: u@gmail.com, password: short}\n")
    assert any(p.message.startswith("gmail needs a 16-character App Password")
               for p in problems(text))


@pytest.mark.parametrize("password", ["abcd efgh ijkl mnop", "abcdefghijklmnop"])
def test_gmail_sixteen_character_app_password_does_not_get_that_warning(password):
    found = problems(GMAIL + f"    password: {password}\n")
    assert [p.message.split(":")[0] for p in found] == ["plain-text password in the config"]


def test_gmail_password_reference_gets_no_warning():
    assert problems(GMAIL + "    password: {env: GMAIL_APP_PASSWORD}\n") == []


# --- through the CLI --------------------------------------------------------------------------


def test_semantic_problems_through_validate(runner, write_config):
    path = write_config(SERVERS + "accounts:\n  - {name: s, email: s@example.com, server: rely}\n"
                        "  - {name: t, email: t@example.com, server: relay, granted_to: [carol]}\n")
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{path}:7:45: error: accounts[0].server: 'rely' is not a declared outgoing server; "
        "did you mean 'relay'? (declared: backup, relay)",
        f"{path}:8:65: error: accounts[1].granted_to[0]: 'carol' is not a declared user "
        "(declared: alice, bob)",
        "2 errors, 0 warnings",
    ]
