"""validate warns when an account's eligible servers at one priority mix a server with a
from_filter and one without: the unfiltered one silently sends as the account too."""

from __future__ import annotations

import pytest

from mailsync.cli import main
from mailsync.config import load_text
from mailsync.outbound.routing import servers_for

SERVERS = """\
version: 1
users: [{name: alice, unix_users: [alice]}]
outgoing_servers:
  - name: erp-relay
    host: erp.example.com
    from_filter: [example.com]
  - name: any-relay
    host: smtp.example.net
{extra}accounts:
  - name: sales
    email: sales@example.com
    granted_to: [alice]
{account}"""


def validate(runner, write_config, extra: str = "", account: str = ""):
    path = write_config(SERVERS.replace("{extra}", extra).replace("{account}", account))
    result = runner.invoke(main, ["validate", str(path)])
    return path, result.exit_code, [line.removeprefix(f"{path}:")
                                    for line in result.stdout.splitlines()]


def test_a_mix_at_one_priority_is_a_warning_on_the_account(runner, write_config):
    path, code, lines = validate(runner, write_config)
    assert code == 0
    assert lines == [
        "10:5: warning: accounts[0]: account 'sales' (sales@example.com): its outgoing "
        "servers at priority 10 mix from_filter (erp-relay) and none (any-relay): any-relay "
        "sends as sales@example.com too, whenever erp-relay cannot; give any-relay a "
        "from_filter or another priority, or set the account's server",
        "0 errors, 1 warning",
    ]
    # What the warning says is what routing does: the unfiltered server is in the order.
    config = load_text(path.read_text(), str(path), path.parent).config
    assert config is not None
    account = config.accounts[0]
    assert [s.name for s in servers_for(config, account, account.email)] == [
        "erp-relay", "any-relay"]


@pytest.mark.parametrize(("extra", "account"), [
    ("    priority: 20\n", ""),                                     # another priority
    ("    from_filter: [example.net]\n", ""),                       # both filtered
    ("", "    server: erp-relay\n"),                                # the account names one
])
def test_no_warning_without_a_mix(runner, write_config, extra, account):
    _, code, lines = validate(runner, write_config, extra, account)
    assert (code, lines) == (0, ["0 errors, 0 warnings"])


def test_a_filter_that_does_not_allow_the_account_is_no_mix(runner, write_config):
    text = SERVERS.replace("{extra}", "").replace("{account}", "")
    text = text.replace("from_filter: [example.com]", "from_filter: [example.org]")
    path = write_config(text)
    result = runner.invoke(main, ["validate", str(path)])
    assert result.stdout.splitlines() == ["0 errors, 0 warnings"]
