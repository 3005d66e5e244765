"""Who a message says it is from: foreign originator headers never reach the wire, and a
spool file may only submit as a user its Unix owner is allowed to be (`unix_users`)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any, get_args

import pytest

from mailsync.config.load import load_text
from mailsync.config.model import Config
from mailsync.outbound.identity import Submitters, unix_name
from mailsync.outbound.ingest import Ingester
from mailsync.outbound.spool import drop, ensure_dirs
from mailsync.outbound.types import Rejection, RejectReason
from mailsync.telemetry.metrics import REJECT_REASONS, Metrics
from tests.conftest import ROOT, need
from tests.outbound_helpers import (
    history,
    load,
    open_store,
    run_once,
    server_yaml,
    write_config,
)

# --- Foreign originator headers ----------------------------------------------------------

HEAD = (b"X-Mailsync-User: alice\r\n"
        b"To: Ann <ann@example.org>\r\n"
        b"Subject: Statement\r\n"
        b"Sender: ceo@bank.example\r\n"
        b"Resent-From: ceo@bank.example\r\n"
        b"Resent-To: victim@bank.example\r\n"
        b"Return-Path: <ceo@bank.example>\r\n"
        b"Keywords: kept,\r\n"
        b"\tfolded\r\n"
        b"DKIM-Signature: v=1; a=rsa-sha256; d=bank.example; s=sel;\r\n"
        b"\th=from:to:subject; bh=AAAA;\r\n"
        b"  b=BBBBforged\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n")
BODY = b"Dear Ann,\r\n\r\nSender: not a header here\r\nBye\r\n"


def test_foreign_originator_headers_never_reach_the_wire(tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    (tmp_path / "spool" / "new" / "statement.eml").write_bytes(HEAD + b"\r\n" + BODY)

    out = run_once(cfg)
    assert "1 sent" in out.output
    (got,) = srv.wait_for(1)
    head, _, body = got.data.partition(b"\r\n\r\n")
    assert body == BODY  # the body byte for byte, its "Sender:" line included
    assert b"bank.example" not in head and b"BBBBforged" not in head
    assert b"h=from:to:subject" not in head
    names = [line.split(b":")[0].lower() for line in head.split(b"\r\n")
             if line[:1] not in (b" ", b"\t")]
    assert not [n for n in names if n in (b"sender", b"return-path", b"dkim-signature")
                or n.startswith(b"resent-")], names
    # The rest of the header block is kept byte for byte.
    for kept in (b"To: Ann <ann@example.org>\r\n", b"Subject: Statement\r\n",
                 b"Keywords: kept,\r\n\tfolded\r\n",
                 b"Content-Type: text/plain; charset=utf-8\r\n"):
        assert kept in head + b"\r\n", kept
    assert message_from_bytes(got.data)["From"] == "Sales Team <sales@example.com>"


def test_originator_headers_of_a_json_file_are_removed_too(tmp_path, smtp_server):
    srv = smtp_server()
    cfg = write_config(tmp_path, server_yaml("main", srv.port))
    drop(tmp_path / "spool", user="alice", to=["ann@example.org"], subject="Hi", text="x",
         headers={"Sender": "ceo@bank.example", "Resent-From": "ceo@bank.example",
                  "Return-Path": "<ceo@bank.example>", "DKIM-Signature": "v=1; d=bank.example",
                  "X-Campaign": "spring"})
    run_once(cfg)
    (got,) = srv.wait_for(1)
    assert b"bank.example" not in got.data
    assert message_from_bytes(got.data)["X-Campaign"] == "spring"
    assert [r["status"] for r in history(cfg)] == ["sent"]


# --- Who may submit as a user (unix_users) -------------------------------------------------

SUBMIT_GROUP = "mailsync-test-submit"
CRM, OPS = "mailsync-test-crm", "mailsync-test-ops"
MAILSYNC = Path(sys.executable).parent / "mailsync"
SPARE_UID = 54321  # listed by number for ops; no passwd entry
STRANGER_UID = 54322  # listed nowhere, no passwd entry


def _retry(args: list[str], done: Callable[[], bool]) -> None:
    """Run a shadow tool; another process holding /etc/passwd's lock makes it fail."""
    for _ in range(20):
        if done():
            return
        if subprocess.run(args, capture_output=True).returncode == 0 and done():
            return
        time.sleep(0.25)
    pytest.fail(f"{' '.join(args)} failed")


def _has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _member(user: str, group: str) -> bool:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return False
    gid = grp.getgrnam(group).gr_gid
    return entry.pw_gid == gid or user in grp.getgrnam(group).gr_mem


@pytest.fixture(scope="session")
def unix_users() -> dict[str, int]:
    """Two unprivileged Unix users in one spool-writer group (created when missing)."""
    need(os.geteuid() == 0, "creating Unix users and writing spool files as them needs root")
    need(all(shutil.which(t) for t in ("useradd", "groupadd", "usermod", "runuser")),
         "useradd, groupadd, usermod and runuser are needed")
    _retry(["groupadd", "--system", SUBMIT_GROUP], lambda: _has_group(SUBMIT_GROUP))
    for user in (CRM, OPS):
        _retry(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                "--gid", SUBMIT_GROUP, user], lambda u=user: _member_or_exists(u))
        _retry(["usermod", "-a", "-G", SUBMIT_GROUP, user],
               lambda u=user: _member(u, SUBMIT_GROUP))
    for uid in (SPARE_UID, STRANGER_UID):
        assert unix_name(uid) is None, f"uid {uid} is taken on this machine"
    return {user: pwd.getpwnam(user).pw_uid for user in (CRM, OPS)}


def _member_or_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


def identity_config(top: Path, port: int) -> Path:
    text = (
        "version: 1\ndaemon: {state_dir: ./state, spool_dir: ./spool}\n"
        "users:\n  - alice\n"
        f"  - {{name: crm-app, unix_users: [{CRM}]}}\n"
        f"  - {{name: ops, unix_users: [{OPS}, {SPARE_UID}]}}\n"
        f"outgoing_servers:\n{server_yaml('main', port)}"
        "accounts:\n"
        "  - {name: crm, email: crm@example.com, server: main, granted_to: [crm-app]}\n"
        "  - {name: ops, email: ops@example.com, server: main, granted_to: [ops]}\n"
        "  - {name: sales, email: sales@example.com, server: main, granted_to: [alice]}\n")
    path = top / "config.yaml"
    path.write_text(text)
    path.chmod(0o644)
    return path


@pytest.fixture
def shared(unix_users, smtp_server) -> Iterator[tuple[Path, Path, Any]]:
    """A directory the test users can reach, a config in it, and its SMTP server; the
    spool as systemd-tmpfiles makes it (tmp/ and new/ 3770, rejected/ 2750, group
    writable by the submitters), owned here by root, the daemon of these tests."""
    top = Path(tempfile.mkdtemp(prefix="mailsync-identity-"))
    top.chmod(0o755)
    srv = smtp_server()
    cfg = identity_config(top, srv.port)
    gid = grp.getgrnam(SUBMIT_GROUP).gr_gid
    spool = top / "spool"
    for sub, mode in (("", 0o750), ("tmp", 0o3770), ("new", 0o3770), ("rejected", 0o2750)):
        (spool / sub).mkdir(exist_ok=True)
        os.chown(spool / sub, 0, gid)
        (spool / sub).chmod(mode)
    try:
        yield top, cfg, srv
    finally:
        shutil.rmtree(top)


def as_user(user: str, *args: str, input: bytes = b"", cwd: Path,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["runuser", "-u", user, "--", *args], input=input, cwd=cwd,
                          capture_output=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def checkout_view(unix_users) -> Iterator[str]:
    """The PYTHONPATH under which the test users import this checkout's mailsync and the
    venv's packages: the directories themselves, or, when a directory above them is closed
    to those users (a clone in a 0700 ``mktemp -d``), bind mounts of both below a
    directory they may traverse."""
    packages = sysconfig.get_paths()["purelib"]
    probe = ["runuser", "-u", CRM, "--", "test", "-r", str(ROOT / "mailsync" / "__init__.py"),
             "-a", "-r", packages]
    if subprocess.run(probe, capture_output=True).returncode == 0:
        yield f"{ROOT}:{packages}"
        return
    top = Path(tempfile.mkdtemp(prefix="mailsync-checkout-"))
    top.chmod(0o755)
    (top / "src").mkdir(mode=0o755)
    mounts = [(ROOT / "mailsync", top / "src" / "mailsync"), (Path(packages), top / "packages")]
    done: list[Path] = []
    try:
        for source, target in mounts:
            target.mkdir(mode=0o755)
            mounted = subprocess.run(["mount", "--bind", str(source), str(target)],
                                     capture_output=True, text=True)
            need(mounted.returncode == 0, f"cannot bind-mount {source}: "
                                          f"{mounted.stderr.strip()}")
            done.append(target)
        yield f"{top / 'src'}:{top / 'packages'}"
    finally:
        for target in done:
            if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], check=False)
        shutil.rmtree(top, ignore_errors=True)


def mailsync_as(user: str, *args: str, input: bytes = b"", cwd: Path,
                pythonpath: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """``mailsync ARGS`` run by ``user``: the venv's own script when the user may execute
    its interpreter; otherwise (an interpreter under root's home, as pyenv puts it) the
    system Python of the same version with this checkout and the venv's packages on
    ``pythonpath`` (see checkout_view)."""
    if as_user(user, sys.executable, "-c", "", cwd=cwd).returncode == 0:
        return as_user(user, str(MAILSYNC), *args, input=input, cwd=cwd)
    python = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}",
                          path="/usr/local/bin:/usr/bin:/bin")
    need(python is not None, f"{user} cannot run {sys.executable}, and there is no system "
                             f"Python {sys.version_info.major}.{sys.version_info.minor}")
    assert python is not None
    if pythonpath is None:
        pythonpath = f"{ROOT}:{sysconfig.get_paths()['purelib']}"
    return as_user(user, python, "-m", "mailsync", *args, input=input, cwd=cwd,
                   env={"PYTHONPATH": pythonpath})


def write_as(user: str, top: Path, name: str, doc: dict[str, Any]) -> None:
    """What any spool writer can do: write tmp/NAME and rename it into new/."""
    done = as_user(user, "sh", "-c", 'cat > "spool/tmp/$1" && mv "spool/tmp/$1" "spool/new/$1"',
                   "sh", name, input=json.dumps(doc).encode(), cwd=top)
    assert done.returncode == 0, done.stderr


def test_mailsync_send_as_the_bound_unix_user_is_sent(shared, unix_users, checkout_view):
    top, cfg, srv = shared
    done = mailsync_as(CRM, "send", "-c", str(cfg), "--user", "crm-app",
                       "--to", "ann@example.org", "--subject", "From the CRM",
                       input=b"Hello Ann\n", cwd=top, pythonpath=checkout_view)
    assert done.returncode == 0, done.stderr
    spooled = Path(done.stdout.decode().strip())
    assert spooled.parent == top / "spool" / "new"
    assert spooled.stat().st_uid == unix_users[CRM]  # written as the calling user

    out = run_once(cfg)
    assert "1 sent" in out.output and "rejected" not in out.output.replace("0 rejected", "")
    (got,) = srv.wait_for(1)
    assert got.rcpt_tos == ("ann@example.org",)
    assert message_from_bytes(got.data)["From"] == "crm@example.com"
    (row,) = history(cfg)
    assert (row["status"], row["user"], row["account"]) == ("sent", "crm-app", "crm")


def test_a_file_claiming_a_user_bound_to_another_unix_user_is_rejected(shared):
    top, cfg, srv = shared
    base = {"to": ["ann@example.org"], "text": "x"}
    write_as(CRM, top, "forged.json", {**base, "user": "ops", "subject": "forged"})
    write_as(CRM, top, "own.json", {**base, "user": "crm-app", "subject": "own"})
    write_as(CRM, top, "unbound.json", {**base, "user": "alice", "subject": "unbound"})

    out = run_once(cfg)
    assert "2 sent" in out.output and "1 rejected" in out.output
    got = srv.wait_for(2)
    time.sleep(0.2)
    assert sorted(message_from_bytes(m.data)["Subject"] for m in srv.messages) == [
        "own", "unbound"]
    assert all(b"forged" not in m.data for m in got)
    detail = (f"file owned by Unix user '{CRM}' may not submit as 'ops' "
              f"(allowed: {OPS}, uid {SPARE_UID})")
    error = (top / "spool" / "rejected" / "forged.json.error").read_text()
    assert error.splitlines()[0] == f"impersonation: {detail}"
    (row,) = history(cfg, "--status", "rejected")
    assert (row["reason"], row["user"], row["subject"], row["error"]) == (
        "impersonation", "ops", "forged", detail)
    assert list((top / "spool" / "new").iterdir()) == []


def test_impersonation_is_counted_by_reason(shared):
    top, cfg, _ = shared
    write_as(OPS, top, "forged.json", {"user": "crm-app", "to": ["a@example.org"],
                                       "subject": "x"})
    config = load(cfg)
    store, outbound = open_store(cfg)
    metrics = Metrics()
    metrics.prime(config)
    value = metrics.registry.get_sample_value
    assert value("mailsync_messages_rejected_total", {"reason": "impersonation"}) == 0
    try:
        stats = Ingester(config, outbound, metrics).run_once()
    finally:
        store.close()
    assert (stats.queued, stats.rejected) == (0, 1)
    assert value("mailsync_messages_rejected_total", {"reason": "impersonation"}) == 1


def test_mailsync_send_refuses_to_submit_as_a_user_bound_to_someone_else(shared,
                                                                          checkout_view):
    top, cfg, _ = shared
    done = mailsync_as(OPS, "send", "-c", str(cfg), "--user", "crm-app",
                       "--to", "ann@example.org", "--subject", "x", input=b"x\n", cwd=top,
                       pythonpath=checkout_view)
    assert done.returncode == 1
    assert done.stderr.decode().strip() == (
        f"error: impersonation: file owned by Unix user '{OPS}' may not submit as "
        f"'crm-app' (allowed: {CRM})")
    assert list((top / "spool" / "new").iterdir()) == []
    assert list((top / "spool" / "tmp").iterdir()) == []


def test_owners_by_uid_listed_and_unknown(shared):
    top, cfg, srv = shared
    new = top / "spool" / "new"
    for name, user, uid in (("by-uid.json", "ops", SPARE_UID),
                            ("stranger.json", "crm-app", STRANGER_UID)):
        (new / name).write_text(json.dumps({"user": user, "to": ["a@example.org"],
                                            "subject": name}))
        os.chown(new / name, uid, -1)
    out = run_once(cfg)
    assert "1 sent" in out.output and "1 rejected" in out.output
    (got,) = srv.wait_for(1)
    assert message_from_bytes(got.data)["Subject"] == "by-uid.json"
    error = (top / "spool" / "rejected" / "stranger.json.error").read_text()
    assert error.splitlines()[0] == (
        f"impersonation: file owned by uid {STRANGER_UID} may not submit as 'crm-app' "
        f"(allowed: {CRM})")


def test_root_and_the_daemons_own_user_may_submit_as_anyone(tmp_path, smtp_server):
    srv = smtp_server()
    cfg = identity_config(tmp_path, srv.port)
    ensure_dirs(tmp_path / "spool")
    # Written by this process: its own user (the daemon's, below) or root.
    drop(tmp_path / "spool", user="crm-app", to=["ann@example.org"], subject="ops", text="x")
    out = run_once(cfg)
    assert "1 sent" in out.output
    assert [r["user"] for r in history(cfg)] == ["crm-app"]


# --- The decision itself -------------------------------------------------------------------


def _config(users: str) -> Config:
    loaded = load_text(f"version: 1\nusers: {users}\n", "c.yaml", Path("/srv"))
    assert loaded.config is not None, loaded.problems
    return loaded.config


def test_submitters_decide_by_name_or_uid_and_look_each_owner_up_once():
    looked: list[int] = []

    def lookup(uid: int) -> str | None:
        looked.append(uid)
        return {1000: "crm", 1002: "eve"}.get(uid)

    config = _config("[alice, {name: crm-app, unix_users: [crm, 1001]}]")
    who = Submitters(config, trusted=(0, 999), lookup=lookup)
    assert who.bound
    assert who.check("crm-app", 1000) is None   # by name
    assert who.check("crm-app", 1001) is None   # by uid, no lookup needed
    assert who.check("crm-app", 0) is None and who.check("crm-app", 999) is None  # trusted
    assert who.check("alice", 1002) is None     # unbound: any owner
    assert who.check("nobody-declared", 1002) is None  # left to routing (unknown_user)
    refused = who.check("crm-app", 1002)
    assert refused == Rejection("impersonation", "file owned by Unix user 'eve' may not "
                                "submit as 'crm-app' (allowed: crm, uid 1001)")
    assert who.check("crm-app", 1002) == refused
    assert who.check("crm-app", 4242) == Rejection(
        "impersonation", "file owned by uid 4242 may not submit as 'crm-app' "
                         "(allowed: crm, uid 1001)")
    assert looked == [1000, 1002, 4242]  # once per owner, only when needed


def test_without_bound_users_nothing_is_checked():
    who = Submitters(_config("[alice, {name: bob}]"), lookup=lambda uid: pytest.fail("looked up"))
    assert not who.bound
    assert who.check("alice", 4242) is None


def test_every_rejection_reason_is_primed_and_documented():
    assert sorted(REJECT_REASONS) == sorted(get_args(RejectReason))
    outbound_doc = (ROOT / "docs" / "outbound.md").read_text()
    assert [r for r in REJECT_REASONS if f"`{r}`" not in outbound_doc] == []
