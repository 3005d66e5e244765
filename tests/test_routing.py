"""Account choice by grants, From rewriting and the outgoing server failover order."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailsync.config.load import load_text
from mailsync.config.model import Account, Config, OutgoingServer
from mailsync.outbound.routing import choose_account, from_rewrite, servers_for
from mailsync.outbound.types import Rejection

GRANTS = """
version: 1
users: [alice, bob, carol, dave]
outgoing_servers:
  - {name: relay, host: relay.example.com}
accounts:
  - {name: sales, email: sales@example.com, server: relay, granted_to: [alice, bob]}
  - {name: support, email: support@example.com, server: relay, granted_to: [alice]}
  - {name: newsletter, email: news@example.com, server: relay, granted_to: [carol]}
"""

# Servers declared out of priority order, with several filters that match.
ROUTES = """
version: 1
users: [alice]
alias_domain: {domain: example.com, default_from: notifications}
outgoing_servers:
  - {name: any-b, host: b.example.net, priority: 5}
  - {name: domain-2, host: d2.example.com, from_filter: example.com, priority: 20}
  - {name: exact, host: x.example.com, from_filter: [sales@example.com], priority: 50}
  - {name: domain-1, host: d1.example.com, from_filter: [EXAMPLE.COM], priority: 10}
  - {name: any-a, host: a.example.net, priority: 5}
  - {name: any-c, host: c.example.net, priority: 5}
  - {name: other, host: o.example.org, from_filter: example.org, priority: 1}
  - {name: any-late, host: l.example.net, priority: 30}
accounts:
  - {name: sales, email: sales@example.com, granted_to: [alice]}
  - {name: pinned, email: sales@example.com, server: domain-2, granted_to: [alice]}
  - name: own
    email: own@gmail.com
    provider: gmail
    username: own@gmail.com
    password: {env: OWN_PASSWORD}
    granted_to: [alice]
"""


def load(text: str, tmp_path: Path) -> Config:
    loaded = load_text(text, "config.yaml", tmp_path)
    assert loaded.config is not None, loaded.errors
    return loaded.config


def account(config: Config, name: str) -> Account:
    found = config.account(name)
    assert found is not None
    return found


def names(servers: tuple[OutgoingServer, ...]) -> list[str]:
    return [s.name for s in servers]


# --- choose_account -------------------------------------------------------------------


def test_unknown_user_is_rejected_naming_the_declared_users(tmp_path):
    got = choose_account(load(GRANTS, tmp_path), "mallory", None)
    assert isinstance(got, Rejection)
    assert got.reason == "unknown_user"
    assert "'mallory'" in got.detail and "alice, bob, carol, dave" in got.detail


def test_named_granted_account_is_chosen(tmp_path):
    got = choose_account(load(GRANTS, tmp_path), "alice", "support")
    assert isinstance(got, Account) and got.name == "support"


def test_named_account_not_granted_is_rejected_with_the_grants(tmp_path):
    got = choose_account(load(GRANTS, tmp_path), "carol", "sales")
    assert got == Rejection("ungranted_account",
                            "user 'carol' may not use account 'sales' (granted: newsletter)")


def test_named_account_that_does_not_exist_is_ungranted(tmp_path):
    got = choose_account(load(GRANTS, tmp_path), "bob", "nope")
    assert isinstance(got, Rejection)
    assert got.reason == "ungranted_account"
    assert "'nope'" in got.detail and "no such account" in got.detail
    assert "granted: sales" in got.detail


def test_single_grant_is_used_when_no_account_is_named(tmp_path):
    got = choose_account(load(GRANTS, tmp_path), "bob", None)
    assert isinstance(got, Account) and got.name == "sales"


def test_several_grants_and_no_account_named_is_rejected(tmp_path):
    got = choose_account(load(GRANTS, tmp_path), "alice", None)
    assert isinstance(got, Rejection)
    assert got.reason == "no_account"
    assert "granted: sales, support" in got.detail
    assert "X-Mailsync-Account" in got.detail and '"account"' in got.detail


def test_no_grant_and_no_account_named_is_rejected(tmp_path):
    got = choose_account(load(GRANTS, tmp_path), "dave", None)
    assert isinstance(got, Rejection)
    assert got.reason == "no_account"
    assert "'dave'" in got.detail and "granted: none" in got.detail


def test_details_are_one_line_even_for_hostile_names(tmp_path):
    got = choose_account(load(GRANTS, tmp_path), "alice", "x\r\nBcc: evil@example.net")
    assert isinstance(got, Rejection)
    assert "\n" not in got.detail and "\r" not in got.detail


# --- servers_for ----------------------------------------------------------------------


def test_order_is_exact_then_domain_then_any_each_by_priority(tmp_path):
    config = load(ROUTES, tmp_path)
    got = servers_for(config, account(config, "sales"), "sales@example.com")
    assert names(got) == ["exact", "domain-1", "domain-2", "any-b", "any-a", "any-c",
                          "any-late"]


def test_servers_whose_filter_refuses_the_address_are_left_out(tmp_path):
    config = load(ROUTES, tmp_path)
    got = servers_for(config, account(config, "sales"), "someone@example.org")
    assert names(got) == ["other", "any-b", "any-a", "any-c", "any-late"]
    got = servers_for(config, account(config, "sales"), "info@example.com")
    assert "exact" not in names(got) and "other" not in names(got)
    assert names(got)[:2] == ["domain-1", "domain-2"]


def test_filter_matches_ignore_case(tmp_path):
    config = load(ROUTES, tmp_path)
    got = servers_for(config, account(config, "sales"), "Sales@Example.COM")
    assert names(got)[:3] == ["exact", "domain-1", "domain-2"]


@pytest.mark.parametrize(("spread", "first"), [(0, "any-b"), (1, "any-a"), (2, "any-c"),
                                               (3, "any-b"), (7, "any-a")])
def test_equal_priorities_rotate_by_spread(tmp_path, spread, first):
    config = load(ROUTES, tmp_path)
    got = names(servers_for(config, account(config, "sales"), "x@example.net", spread=spread))
    assert got[0] == first
    # Every server is still there to fail over to; the lower-priority one stays last.
    assert sorted(got[:3]) == ["any-a", "any-b", "any-c"]
    assert got[3] == "any-late"


def test_consecutive_messages_start_on_every_equal_server(tmp_path):
    config = load(ROUTES, tmp_path)
    sales = account(config, "sales")
    starts = {servers_for(config, sales, "x@example.net", spread=i)[0].name for i in range(3)}
    assert starts == {"any-a", "any-b", "any-c"}


def test_account_server_is_the_only_one(tmp_path):
    config = load(ROUTES, tmp_path)
    got = servers_for(config, account(config, "pinned"), "sales@example.com", spread=5)
    assert names(got) == ["domain-2"]


def test_account_server_refusing_the_address_leaves_none(tmp_path):
    config = load(ROUTES, tmp_path)
    assert servers_for(config, account(config, "pinned"), "someone@example.org") == ()


def test_own_login_is_the_only_one(tmp_path):
    config = load(ROUTES, tmp_path)
    own = account(config, "own")
    got = servers_for(config, own, "own@gmail.com")
    assert got == (own.own_login,)
    assert got[0].host == "smtp.gmail.com"


def test_no_server_may_send_gives_an_empty_order(tmp_path):
    text = """
version: 1
users: [alice]
outgoing_servers:
  - {name: relay, host: relay.example.com, from_filter: example.com}
accounts:
  - {name: gm, email: me@gmail.com, granted_to: [alice]}
"""
    config = load(text, tmp_path)
    assert servers_for(config, account(config, "gm"), "me@gmail.com") == ()


# --- from_rewrite ---------------------------------------------------------------------

REWRITE = """
version: 1
users: [alice]
alias_domain: {domain: example.com, default_from: notifications}
outgoing_servers:
  - {name: relay, host: relay.example.com, from_filter: example.com}
accounts:
  - {name: gm, email: me@gmail.com, granted_to: [alice]}
  - {name: gm-pinned, email: me@gmail.com, server: relay, granted_to: [alice]}
  - {name: local, email: me@example.com, granted_to: [alice]}
  - name: own
    email: me@gmail.com
    provider: gmail
    username: me@gmail.com
    password: {env: OWN_PASSWORD}
    granted_to: [alice]
"""


def test_rewrite_when_no_declared_server_allows_the_address(tmp_path):
    config = load(REWRITE, tmp_path)
    assert from_rewrite(config, account(config, "gm")) == "notifications@example.com"


def test_rewrite_when_the_account_server_refuses_the_address(tmp_path):
    config = load(REWRITE, tmp_path)
    rewritten = from_rewrite(config, account(config, "gm-pinned"))
    assert rewritten == "notifications@example.com"
    # ...and the rewritten address is one its server may send as.
    assert names(servers_for(config, account(config, "gm-pinned"), rewritten)) == ["relay"]


def test_no_rewrite_when_a_server_allows_the_address(tmp_path):
    config = load(REWRITE, tmp_path)
    assert from_rewrite(config, account(config, "local")) is None


def test_no_rewrite_through_an_own_login(tmp_path):
    config = load(REWRITE, tmp_path)
    assert from_rewrite(config, account(config, "own")) is None


def test_no_rewrite_without_default_from(tmp_path):
    config = load(REWRITE.replace(", default_from: notifications", ""), tmp_path)
    assert config.alias_domain is not None and config.alias_domain.default_from is None
    assert from_rewrite(config, account(config, "gm")) is None


def test_no_rewrite_without_alias_domain(tmp_path):
    text = REWRITE.replace(
        "alias_domain: {domain: example.com, default_from: notifications}\n", "")
    config = load(text, tmp_path)
    assert config.alias_domain is None
    assert from_rewrite(config, account(config, "gm")) is None
