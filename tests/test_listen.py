"""daemon.metrics_listen: ports 1-65535 and real hosts, with an error that says which part."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailsync.cli import main
from mailsync.config import listen
from mailsync.config.schema import schema

PATTERN = re.compile(schema()["$defs"]["listen"]["pattern"])


def _validate(runner, write_config, value: str) -> list[str]:
    path = write_config(f"version: 1\ndaemon:\n  metrics_listen: '{value}'\n")
    result = runner.invoke(main, ["validate", str(path)])
    return [line.removeprefix(f"{path}:") for line in result.stdout.splitlines()]


@pytest.mark.parametrize(("value", "why"), [
    ("127.0.0.1:99999", "the port 99999 is out of range (1-65535)"),
    ("127.0.0.1:65536", "the port 65536 is out of range (1-65535)"),
    ("127.0.0.1:0", "the port 0 is out of range (1-65535)"),
    ("127.0.0.1:09877", "the port 09877 has a leading zero (write 9877)"),
    ("127.0.0.1:http", "the port 'http' is not a number"),
    ("127.0.0.1", "no port (HOST:PORT)"),
    ("256.0.0.1:9877", "'256.0.0.1' is not an IPv4 address (four numbers 0-255)"),
    ("10.1:9877", "'10.1' is not an IPv4 address (four numbers 0-255)"),
    ("::1:9877", "an IPv6 address takes brackets: [::1]:9877"),
    ("[::1::2]:9877", "'::1::2' is not an IPv6 address"),
    ("[fe80::1%eth0]:9877", "'[fe80::1%eth0]' is not a bracketed IPv6 address"),
    ("metrics_host:9877", "'metrics_host' is not a host name"),
    ("-metrics:9877", "'-metrics' is not a host name"),
    (":9877", "no host before the port"),
])
def test_a_bad_listen_address_says_which_part_is_wrong(runner, write_config, value, why):
    lines = _validate(runner, write_config, value)
    assert lines[-1] == "1 error, 0 warnings"
    assert lines[0].startswith(f"3:19: error: daemon.metrics_listen: {value!r} is not a valid "
                               f"listen address: {why}")
    assert lines[0].endswith(f"(allowed: {listen.ALLOWED})")


@pytest.mark.parametrize("value", ["127.0.0.1:9877", "0.0.0.0:1", "[::1]:65535", "[::]:9100",
                                   "[::ffff:10.0.0.1]:9877", "localhost:9877",
                                   "metrics.example.com:9100", "host-1:80"])
def test_good_listen_addresses_validate(runner, write_config, value):
    assert _validate(runner, write_config, value) == ["0 errors, 0 warnings"]


def _reference(value: str) -> bool:
    """What a listen address is, said with ipaddress instead of a regular expression."""
    host, sep, port = value.rpartition(":")
    if not sep or not re.fullmatch(r"[1-9][0-9]{0,4}", port) or int(port) > 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        try:
            return "%" not in host and bool(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            return False
    if re.fullmatch(r"[0-9.]+", host):
        try:
            return bool(ipaddress.IPv4Address(host))
        except ValueError:
            return False
    labels = host.split(".")
    return all(re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", x) for x in labels) \
        and not labels[-1].isdigit()


_PARTS = st.sampled_from(["1", "0", "255", "256", "65535", "65536", "a", "ab", "-", ".", ":",
                          "::", "[", "]", "ffff", "1.2.3.4", "x" * 63, "_", "%", "9877"])


@settings(max_examples=2000, deadline=None, database=None)
@given(st.lists(_PARTS, min_size=1, max_size=8).map("".join))
@example("1-1:1")  # a host name of digits and '-' (the pattern once wanted a letter)
@example("256.1.1.1:80")
def test_the_schema_pattern_and_the_explanation_agree_with_ipaddress(value):
    ok = _reference(value)
    assert bool(PATTERN.match(value)) == ok, value
    assert (listen.explain(value) == "") == ok, value
