"""Maildirs: the local source (new/ → cur/) and deliver_to (each message written once)."""

from __future__ import annotations

import os
import sqlite3

from mailsync.inbound import records
from mailsync.inbound.maildir import LocalSource, MaildirWriter
from mailsync.inbound.source import Incoming
from tests.dovecot import (  # noqa: F401  (fixtures)
    dovecot_fixture,
    incoming_yaml,
    mailbox_fixture,
    message,
    rig_fixture,
)


def _maildir(path):
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def _local(rig, tmp_path, keep=True):
    _maildir(tmp_path / "drop")
    return rig("  - name: drop\n    type: local\n    path: ./drop\n"
               f"    keep_on_server: {'true' if keep else 'false'}\n")


def _put(maildir, name, raw):
    (maildir / "new" / name).write_bytes(raw)


def test_local_takes_new_files_once_and_moves_them_to_cur(rig, tmp_path):
    r = _local(rig, tmp_path)
    drop = tmp_path / "drop"
    _put(drop, "1700000000.a.host", message(1))
    _put(drop, "1700000001.b.host", message(2))
    _put(drop, ".hidden", message(9))
    poller = r.poller("drop")

    first = poller.poll_once()
    again = poller.poll_once()
    _put(drop, "1700000002.c.host", message(3))
    third = poller.poll_once()

    assert (first.fetched, again.fetched, third.fetched) == (2, 0, 1)
    assert [row["source_key"] for row in r.rows()] == [
        "1700000000.a.host", "1700000001.b.host", "1700000002.c.host"]
    assert r.rows()[0]["raw"] == message(1)
    assert sorted(os.listdir(drop / "cur")) == [
        "1700000000.a.host:2,", "1700000001.b.host:2,", "1700000002.c.host:2,"]
    assert os.listdir(drop / "new") == [".hidden"]


def test_local_file_left_in_new_by_a_crash_is_moved_not_stored_again(rig, tmp_path,
                                                                     monkeypatch):
    r = _local(rig, tmp_path)
    drop = tmp_path / "drop"
    _put(drop, "1700000000.a.host", message(1))

    def crash(self, batch):
        raise OSError("killed between the commit and the move")

    with monkeypatch.context() as m:
        m.setattr(LocalSource, "acknowledge", crash)
        first = r.poller("drop").poll_once()
    assert not first.ok and first.fetched == 1
    assert os.listdir(drop / "new") == ["1700000000.a.host"]

    second = r.poller("drop").poll_once()

    assert second.ok and second.fetched == 0
    assert os.listdir(drop / "cur") == ["1700000000.a.host:2,"]
    assert len(r.rows()) == 1


def test_local_keep_on_server_false_removes_the_files(rig, tmp_path):
    r = _local(rig, tmp_path, keep=False)
    drop = tmp_path / "drop"
    _put(drop, "1700000000.a.host", message(1))
    assert r.poller("drop").poll_once().fetched == 1
    assert os.listdir(drop / "new") == [] and os.listdir(drop / "cur") == []


def test_local_path_that_is_not_a_maildir_fails_the_poll_with_the_reason(rig, tmp_path):
    r = rig("  - name: drop\n    type: local\n    path: ./nowhere\n")
    result = r.poller("drop").poll_once()
    assert not result.ok and result.kind == "folder"
    assert result.error == f"drop ({tmp_path / 'nowhere'}): not a Maildir (no new/ and cur/)"
    assert r.metric("mailsync_mailbox_polls_total", server="drop", result="failure") == 1
    assert r.metric("mailsync_server_up", server="drop", direction="incoming") == 0


def test_writer_names_are_deterministic_and_files_are_written_once(tmp_path):
    writer = MaildirWriter(tmp_path / "out", "support")
    other = MaildirWriter(tmp_path / "out", "sales")
    assert writer.name_for("17/1") == writer.name_for("17/1")
    assert len({writer.name_for("17/1"), writer.name_for("17/2"), other.name_for("17/1")}) == 3
    assert all("/" not in n and ":" not in n for n in (writer.name_for("a/b:c"),))

    assert writer.deliver([Incoming("17/1", b"one"), Incoming("17/2", b"two")]) == 2
    # A mail reader moved one to cur/ and flagged it: it is still "there".
    name = writer.name_for("17/1")
    os.rename(tmp_path / "out/new" / name, tmp_path / "out/cur" / f"{name}:2,S")
    writer.begin_poll()
    assert writer.deliver([Incoming("17/1", b"one"), Incoming("17/3", b"three")]) == 1
    assert sorted(os.listdir(tmp_path / "out/new")) == sorted(
        [writer.name_for("17/2"), writer.name_for("17/3")])
    assert os.listdir(tmp_path / "out/tmp") == []
    assert (tmp_path / "out/new" / writer.name_for("17/3")).read_bytes() == b"three"


def test_deliver_to_writes_each_fetched_message_once_even_after_a_failed_commit(
        rig, mailbox, tmp_path, monkeypatch):
    mailbox.append(message(1), message(2), message(3))
    out = tmp_path / "copies"
    r = rig(incoming_yaml(mailbox, "support", tmp_path / "pw",
                          extra=f"    deliver_to: {{maildir: {out}}}\n"))
    real_insert = records.insert_fetched

    def failing_insert(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    with monkeypatch.context() as m:  # the files are renamed into new/, the commit fails
        m.setattr(records, "insert_fetched", failing_insert)
        first = r.poller("support").poll_once()
    assert not first.ok and first.delivered == 3 and r.rows() == []
    assert records.insert_fetched is real_insert

    second = r.poller("support").poll_once()

    assert second.ok and second.fetched == 3 and second.delivered == 0
    files = sorted(os.listdir(out / "new"))
    assert len(files) == 3
    assert sorted((out / "new" / f).read_bytes() for f in files) == sorted(
        row["raw"] for row in r.rows())
    mailbox.append(message(4))
    third = r.poller("support").poll_once()
    assert third.delivered == 1 and len(os.listdir(out / "new")) == 4
