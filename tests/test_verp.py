"""The signed VERP address ``bounce+<id>.<signature>@domain`` and its key file."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailsync.config.model import AliasDomain, Config, Daemon
from mailsync.errors import StoreError
from mailsync.outbound.verp import (
    VerpAddress,
    VerpKey,
    existing_key,
    load_key,
    parse_verp,
    read_verp,
    verp_sender,
)

CONFIG = Config(daemon=Daemon(Path("state"), Path("spool")),
                alias_domain=AliasDomain("example.com", bounce="bounce"))
KEY = VerpKey(bytes(range(32)))
OTHER_KEY = VerpKey(b"\xff" * 32)
# HMAC-SHA256(bytes(range(32)), b"mailsync-verp-1:42"), first 50 bits, base32, lowercase.
SIGNED_42 = "bounce+42.dyycs2mjgx@example.com"


def test_the_address_names_the_message_and_its_signature():
    assert verp_sender(CONFIG, KEY, 42) == SIGNED_42
    assert verp_sender(CONFIG, KEY, 1) == "bounce+1.xoqpg5x4hb@example.com"
    assert verp_sender(CONFIG, OTHER_KEY, 42) != SIGNED_42  # the key makes the signature


def test_a_signed_address_reads_back_whatever_its_case():
    for address in (SIGNED_42, SIGNED_42.upper(), f"<{SIGNED_42}>", " BOUNCE+42.DyYcS2mJgX@"
                    "Example.COM. "):
        assert read_verp(CONFIG, KEY, address) == VerpAddress(42, None), address
        assert parse_verp(CONFIG, KEY, address) == 42


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_round_trip(message_id):
    address = verp_sender(CONFIG, KEY, message_id)
    assert address is not None
    assert parse_verp(CONFIG, KEY, address) == message_id
    assert parse_verp(CONFIG, KEY, address.upper()) == message_id
    assert parse_verp(CONFIG, OTHER_KEY, address) is None


@pytest.mark.parametrize("address, message_id, problem", [
    ("bounce+42@example.com", 42, "unsigned"),             # as before signing, or forged
    ("bounce+42.@example.com", 42, "bad_signature"),
    ("bounce+42.dyycs2mjg@example.com", 42, "bad_signature"),     # truncated
    ("bounce+42.dyycs2mjgxa@example.com", 42, "bad_signature"),   # one too many
    ("bounce+42.dyycs2mjgy@example.com", 42, "bad_signature"),    # one character changed
    ("bounce+43.dyycs2mjgx@example.com", 43, "bad_signature"),    # another message's id
    ("bounce+1.dyycs2mjgx@example.com", 1, "bad_signature"),
    ("bounce+42.dyycs2mjg\u00e9@example.com", 42, "bad_signature"),  # not ASCII
    ("bounce+42.dyycs2mjgx.x@example.com", 42, "bad_signature"),
    ("bounce+0042.dyycs2mjgx@example.com", 42, None),       # leading zeros: the same id
])
def test_wrong_and_missing_signatures(address, message_id, problem):
    assert read_verp(CONFIG, KEY, address) == VerpAddress(message_id, problem)
    assert parse_verp(CONFIG, KEY, address) == (message_id if problem is None else None)


def test_without_a_key_no_signature_is_right():
    assert read_verp(CONFIG, None, SIGNED_42) == VerpAddress(42, "bad_signature")
    assert parse_verp(CONFIG, None, SIGNED_42) is None


@pytest.mark.parametrize("address", [
    "bounce+42.dyycs2mjgx@example.net",      # another domain
    "bounce+42.dyycs2mjgx@sub.example.com",
    "bounces+42.dyycs2mjgx@example.com",     # another local part
    "bounce@example.com",                    # no id
    "bounce+@example.com",
    "bounce+.dyycs2mjgx@example.com",
    "bounce+4x2@example.com",
    "bounce+-4@example.com",
    f"bounce+{2**63}.dyycs2mjgx@example.com",  # past SQLite's integers
    f"bounce+{10**30}.dyycs2mjgx@example.com",  # huge
    "bounce+\u0661\u0662.dyycs2mjgx@example.com",  # non-ASCII digits
    "bounce+42",
    "sales@example.com",
    "",
])
def test_other_addresses_are_not_verp_at_all(address):
    assert read_verp(CONFIG, KEY, address) is None


def test_no_verp_without_a_bounce_local_part():
    bare = Config(daemon=CONFIG.daemon, alias_domain=AliasDomain("example.com"))
    assert verp_sender(bare, KEY, 42) is None
    assert read_verp(bare, KEY, SIGNED_42) is None


@pytest.mark.parametrize("message_id", [-1, 2**63])
def test_an_id_no_message_can_have_is_refused(message_id):
    with pytest.raises(ValueError, match="message id must be in"):
        verp_sender(CONFIG, KEY, message_id)


def test_the_key_never_shows():
    secret = bytes(range(32))
    for shown in (repr(KEY), str(KEY), f"{KEY!r} {KEY}", repr([KEY])):
        assert shown.count("VerpKey(<secret>)") >= 1
        assert secret.hex() not in shown and str(secret) not in shown
    with pytest.raises(ValueError, match=r"32 bytes \(got 5\)"):
        VerpKey(b"short")


# -- the key file ---------------------------------------------------------------------------

def test_the_key_is_made_once_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        key = load_key(tmp_path)
    finally:
        os.umask(old)
    path = tmp_path / "verp.key"
    assert path.stat().st_size == 32 and path.stat().st_mode & 0o777 == 0o600
    again = load_key(tmp_path)
    assert again.sign(7) == key.sign(7) and existing_key(tmp_path).sign(7) == key.sign(7)
    assert [p.name for p in tmp_path.iterdir()] == ["verp.key"]  # no temporary file left


def test_no_key_is_made_when_only_reading(tmp_path):
    assert existing_key(tmp_path) is None
    assert not (tmp_path / "verp.key").exists()


def test_processes_starting_at_once_agree_on_one_key(tmp_path):
    code = ("import sys; from pathlib import Path; from mailsync.outbound.verp import load_key;"
            "print(load_key(Path(sys.argv[1])).sign(1))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True) for _ in range(6)]
    signatures = {p.communicate(timeout=30)[0].strip() for p in procs}
    assert len(signatures) == 1 and len(next(iter(signatures))) == 10
    assert load_key(tmp_path).sign(1) in signatures


@pytest.mark.parametrize("content", [b"", b"x" * 31, b"x" * 33])
def test_a_key_of_the_wrong_size_is_an_error_not_replaced(tmp_path, content):
    path = tmp_path / "verp.key"
    path.write_bytes(content)
    with pytest.raises(StoreError) as caught:
        load_key(tmp_path)
    message = str(caught.value)
    assert str(path) in message and "must be 32 bytes" in message
    assert f"found {len(content)}" in message and "restore it" in message
    assert path.read_bytes() == content


def test_an_unreadable_key_is_an_error(tmp_path):
    (tmp_path / "verp.key").mkdir()
    with pytest.raises(StoreError, match=r"verp.key: cannot read the VERP key: Is a directory"):
        load_key(tmp_path)


def test_an_open_key_file_is_warned_about(tmp_path, caplog):
    path = tmp_path / "verp.key"
    path.write_bytes(bytes(range(32)))
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="mailsync.verp"):
        key = load_key(tmp_path)
    assert key.sign(42) == KEY.sign(42)
    assert "mode 0644" in caplog.text and "chmod 600" in caplog.text
    assert bytes(range(32)).hex() not in caplog.text


def test_commands_that_send_or_poll_stop_on_a_broken_key(tmp_path, smtp_server):
    from mailsync.outbound.spool import drop
    from tests.outbound_helpers import history, run, server_yaml, write_config

    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    with cfg.open("a") as f:
        f.write("incoming_servers:\n  - name: drop\n    type: local\n    path: ./drop\n")
    for sub in ("new", "cur", "tmp"):
        (tmp_path / "drop" / sub).mkdir(parents=True)
    (tmp_path / "drop" / "new" / "1.m").write_bytes(b"To: bounce+1@example.com\r\n\r\nx\r\n")
    (tmp_path / "state").mkdir()
    key = tmp_path / "state" / "verp.key"
    key.write_bytes(b"short")
    drop(tmp_path / "spool", user="alice", to=["ann@example.org"], subject="s", text="x")

    for args in (["run", "--once"], ["inbox", "poll"]):
        result = run([*args, "-c", str(cfg)])
        assert result.exit_code == 1, result.output
        # (The first run also logs that state_dir/store-id now records the new store.)
        assert any(line.startswith(f"error: {key}: the VERP key must be 32 bytes, "
                                   "found 5: restore it")
                   for line in result.stderr.splitlines()), result.stderr
    assert srv.messages == [] and history(cfg) == []  # nothing sent or polled
    assert len(list((tmp_path / "spool" / "new").iterdir())) == 1
    assert len(list((tmp_path / "drop" / "new").iterdir())) == 1
    assert key.read_bytes() == b"short"
